"""`gat-study flops MODEL`: parameters, per-image GFLOPs and per-iteration MACs of one model size.

MODEL is a registry name (`GAT-XL/2`) or free sizes `w<width>-d<depth>-h<heads>-p<patch>`
(e.g. `w64-d4-h4-p2`; D takes G's sizes).  All counts are analytic (`gat_core.flops`),
in the DiT convention: 1 multiply-accumulate = 1 FLOP, forward pass, per image.  Optionally the
iteration includes VFM alignment to a frozen teacher (`teacher`, a timm name such as
`vit_base_patch14_dinov2`) and gradient checkpointing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gat_core.config import ModelConfig, VFMConfig
from gat_core.flops import (
    PASS_LABELS,
    discriminator_cost,
    dit_cost,
    dit_iteration_passes,
    dit_parameter_count,
    generator_cost,
    iteration_passes,
    parameter_counts,
    vfm_cost,
)
from gat_core.models.registry import parse_preset, preset_names
from orchestrator.plan import si_units

FREE_SIZE = re.compile(r"^w(?P<width>\d+)-d(?P<depth>\d+)-h(?P<heads>\d+)-p(?P<patch_size>\d+)$")
CONVENTION = ("DiT convention: 1 multiply-accumulate (MAC) = 1 FLOP, per image; "
              "torch FlopCounterMode and 'true FLOPs' count 2 per MAC")


def parse_model(model: str) -> ModelConfig:
    """`GAT-B/4` or `w64-d4-h4-p2` -> ModelConfig; ValueError saying what is accepted otherwise."""
    name = model.strip()
    if name.startswith(("GAT-", "DiT-")):
        parse_preset(name)  # a plain ValueError naming the choices
        return ModelConfig(preset=name)  # a DiT- name is the diffusion baseline (family dit)
    match = FREE_SIZE.match(name)
    if not match:
        raise ValueError(f"model: cannot parse {model!r}; expected a registry name ({', '.join(preset_names())}) "
                         "or free sizes like 'w64-d4-h4-p2' (width, depth, heads, patch size)")
    try:
        return ModelConfig(**{k: int(v) for k, v in match.groupdict().items()})
    except ValidationError as err:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise ValueError(f"model: {model!r} is not a valid size: {problems}") from None


def flops_data(model: str, resolution: int = 32, channels: int = 4, num_classes: int = 1000, levels: int = 4, *,
               teacher: str | None = None, teacher_size: int = 224, grad_checkpoint: bool = False) -> dict[str, Any]:
    """Everything `flops_report` prints, as plain numbers (MACs unless named otherwise)."""
    m = parse_model(model)
    if resolution % m.patch_size:
        raise ValueError(f"resolution: patch size {m.patch_size} does not divide resolution {resolution}")
    if levels < 1 or (levels > 1 and m.depth < levels):
        raise ValueError(f"levels: {levels} output heads need 1 <= levels <= depth ({m.depth})")
    g = generator_cost(m, resolution, channels, levels)
    d = discriminator_cost(m, resolution, channels, levels)
    params_g, params_d = parameter_counts(m, channels, levels, num_classes)
    vfm = vfm_cost(VFMConfig(model=teacher, image_size=teacher_size), m, resolution) if teacher else None
    iterations = {}
    for penalty in ("approx", "exact"):
        passes = iteration_passes(g, d, exact_penalty=penalty == "exact", grad_checkpoint=grad_checkpoint, vfm=vfm)
        total = sum(passes.values())
        iterations[penalty] = {"passes": passes, "total": total, "per_g_forward": total / g.total}
    return {
        "model": model, "resolution": resolution, "channels": channels, "num_classes": num_classes, "levels": levels,
        "g": {"width": m.width, "depth": m.depth, "heads": m.heads},
        "d": {"width": m.disc_width, "depth": m.disc_depth, "heads": m.disc_heads, "cond_dim": m.disc_cond_dim},
        "patch_size": m.patch_size, "tokens": (resolution // m.patch_size) ** 2,
        "params_g": params_g, "params_d": params_d,
        "gflops_g": g.total / 1e9, "gflops_d": d.total / 1e9, "macs_g": g.total, "macs_d": d.total,
        "teacher": teacher, "teacher_size": teacher_size if teacher else None, "grad_checkpoint": grad_checkpoint,
        "iteration_macs_per_sample": iterations,
        "convention": CONVENTION,
    }


def dit_flops_data(model: str, resolution: int, channels: int, num_classes: int, *,
                   grad_checkpoint: bool = False) -> dict[str, Any]:
    """What `flops_report` prints for a diffusion-baseline size (`DiT-B/2`): the denoiser's params, GFLOPs per
    image and the MACs of one training iteration per sample (sampling costs NFE x the forward)."""
    m = parse_model(model)
    if resolution % m.patch_size:
        raise ValueError(f"resolution: patch size {m.patch_size} does not divide resolution {resolution}")
    cost = dit_cost(channels, resolution, m.patch_size, m.width, m.depth)
    passes = dit_iteration_passes(cost, grad_checkpoint=grad_checkpoint)
    return {"model": model, "family": "dit", "resolution": resolution, "channels": channels,
            "num_classes": num_classes, "width": m.width, "depth": m.depth, "heads": m.heads,
            "patch_size": m.patch_size, "tokens": (resolution // m.patch_size) ** 2,
            "params": dit_parameter_count(channels, m.patch_size, m.width, m.depth, num_classes),
            "gflops": cost.total / 1e9, "macs": cost.total, "grad_checkpoint": grad_checkpoint,
            "iteration_macs_per_sample": {"passes": passes, "total": sum(passes.values())}, "convention": CONVENTION}


def _dit_report(r: dict[str, Any], defaults_note: str) -> str:
    it = r["iteration_macs_per_sample"]
    lines = [f"{r['model']}: DiT denoiser {r['width']}x{r['depth']}/h{r['heads']}, patch {r['patch_size']}, "
             f"{r['tokens']} tokens; input {r['resolution']}x{r['resolution']}x{r['channels']}, "
             f"{r['num_classes']} classes{defaults_note}", f"({r['convention']})",
             f"params       {r['params'] / 1e6:10.3f}M ({r['params']:,})",
             f"GFLOPs/image {r['gflops']:10.4f}    (one network evaluation; sampling costs NFE x this, x 2 with guidance)",
             "training iteration, MACs per sample" + (", gradient checkpointing:" if r["grad_checkpoint"] else ":")]
    lines += [f"  {k:<10} {si_units(v, 3):>12}" for k, v in it["passes"].items() if v]
    lines.append(f"  {'total':<10} {si_units(it['total'], 3):>12}")
    return "\n".join(lines)


def flops_report(model: str, resolution: int | None = None, channels: int | None = None,
                 num_classes: int | None = None, levels: int = 4, as_json: bool = False, *, teacher: str | None = None,
                 teacher_size: int = 224, grad_checkpoint: bool = False, family: str | None = None) -> str:
    """Text (or JSON) report of params, per-image GFLOPs and per-iteration MACs of one model size.

    Input shape and classes left unset are ImageNet-256 in SD-VAE latents (32x32x4, 1000 classes), and the
    report says so; a study's own shapes come from `gat-study plan` or `flops STUDY.yaml`."""
    unset = [name for name, v in (("resolution 32", resolution), ("channels 4", channels),
                                  ("1000 classes", num_classes)) if v is None]
    defaults_note = f" (defaults: {', '.join(unset)} = ImageNet-256 SD-VAE latents)" if unset else ""
    resolution, channels, num_classes = resolution or 32, channels or 4, num_classes or 1000
    if (family or parse_model(model).family) == "dit":
        r = dit_flops_data(model, resolution, channels, num_classes, grad_checkpoint=grad_checkpoint)
        return json.dumps(r, indent=2) if as_json else _dit_report(r, defaults_note)
    r = flops_data(model, resolution, channels, num_classes, levels, teacher=teacher, teacher_size=teacher_size,
                   grad_checkpoint=grad_checkpoint)
    if as_json:
        return json.dumps(r, indent=2)
    g, d, it = r["g"], r["d"], r["iteration_macs_per_sample"]
    lines = [
        f"{model}: G {g['width']}x{g['depth']}/h{g['heads']}, D {d['width']}x{d['depth']}/h{d['heads']} "
        f"(class projection {d['cond_dim']}), patch {r['patch_size']}, {r['tokens']} tokens; "
        f"input {resolution}x{resolution}x{channels}, {num_classes} classes, K={levels} levels{defaults_note}",
        f"({r['convention']})",
        f"params       G {r['params_g'] / 1e6:10.3f}M ({r['params_g']:,})   "
        f"D {r['params_d'] / 1e6:10.3f}M ({r['params_d']:,})",
        f"GFLOPs/image G {r['gflops_g']:10.4f}    D {r['gflops_d']:10.4f}    (forward pass, 1 MAC = 1 FLOP)",
        "training iteration (one D step + one G step), MACs per sample"
        + (f", VFM teacher {teacher} at {teacher_size} px" if teacher else ", no VFM teacher")
        + (", gradient checkpointing:" if grad_checkpoint else ", no gradient checkpointing:"),
    ]
    width = max(len(v) for v in PASS_LABELS.values())
    lines.append(f"  {'pass'.ljust(width)}  {'approx R1/R2':>14}  {'exact R1/R2':>14}")
    for key, label in PASS_LABELS.items():
        if not (it["approx"]["passes"][key] or it["exact"]["passes"][key]):
            continue
        lines.append(f"  {label.ljust(width)}  {si_units(it['approx']['passes'][key], 3):>14}  "
                     f"{si_units(it['exact']['passes'][key], 3):>14}")
    lines.append(f"  {'total'.ljust(width)}  {si_units(it['approx']['total'], 3):>14}  {si_units(it['exact']['total'], 3):>14}")
    lines.append(f"  {'total / G forward'.ljust(width)}  {it['approx']['per_g_forward']:>14.2f}  "
                 f"{it['exact']['per_g_forward']:>14.2f}")
    lines += [
        "  penalty passes: approx = D forwards on the perturbed real/fake stacks (their backward is in 'D backward');",
        "  exact = input-gradient passes with create_graph, whose double backward is in 'D backward'.",
        "  Attention backward = 5 batched matmuls (fused kernels);",
        "  the exact D step uses the math backend (4), the only one with a double backward.",
    ]
    return "\n".join(lines)


def study_flops_report(path: Path, overrides: list[str], as_json: bool = False, **options: Any) -> str:
    """`flops_report` of every distinct model size of a study, at the study's own input shape and classes."""
    from orchestrator.plan import dataset_classes
    from orchestrator.study import load_study

    study = load_study(path, overrides, require_files=False)  # counts MACs: no weights or data needed
    seen, reports = set(), []
    for trial in study.trials:
        m, d = trial.config.model, trial.config.dataset
        name = f"w{m.width}-d{m.depth}-h{m.heads}-p{m.patch_size}"
        key = (name, m.family, d.model_resolution, d.model_channels, trial.config.train.levels)
        if key in seen:
            continue
        seen.add(key)
        reports.append(flops_report(name, d.model_resolution, d.model_channels, dataset_classes(d),
                                    trial.config.train.levels, as_json, family=m.family, **options))
    if as_json:
        return "[" + ",\n".join(reports) + "]"
    return f"study {study.config.name} ({path}): {len(reports)} model sizes\n\n" + "\n\n".join(reports)

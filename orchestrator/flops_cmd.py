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
from typing import Any

from pydantic import ValidationError

from gat_core.config import ModelConfig, VFMConfig
from gat_core.flops import (
    PASS_LABELS,
    discriminator_cost,
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
    if name.startswith("GAT-"):
        parse_preset(name)  # a plain ValueError naming the choices
        return ModelConfig(preset=name)
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


def flops_report(model: str, resolution: int = 32, channels: int = 4, num_classes: int = 1000, levels: int = 4,
                 as_json: bool = False, *, teacher: str | None = None, teacher_size: int = 224,
                 grad_checkpoint: bool = False) -> str:
    """Text (or JSON) report of params, per-image GFLOPs and per-iteration MACs of one model size."""
    r = flops_data(model, resolution, channels, num_classes, levels, teacher=teacher, teacher_size=teacher_size,
                   grad_checkpoint=grad_checkpoint)
    if as_json:
        return json.dumps(r, indent=2)
    g, d, it = r["g"], r["d"], r["iteration_macs_per_sample"]
    lines = [
        f"{model}: G {g['width']}x{g['depth']}/h{g['heads']}, D {d['width']}x{d['depth']}/h{d['heads']} "
        f"(class projection {d['cond_dim']}), patch {r['patch_size']}, {r['tokens']} tokens; "
        f"input {resolution}x{resolution}x{channels}, {num_classes} classes, K={levels} levels",
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

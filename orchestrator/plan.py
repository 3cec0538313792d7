"""Dry run: what each trial and the whole study will cost, without Ray and without training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gat_core.config import DATASET_CLASSES, DataConfig
from gat_core.flops import TrialCost, family_trial_cost, sampling_macs
from orchestrator.study import Study, Trial


def dataset_classes(cfg: DataConfig) -> int:
    """Class count without loading images (a folder dataset counts its subfolders)."""
    if cfg.name == "shapes":
        return cfg.num_classes or 10
    if cfg.name == "folder":
        root = Path(cfg.path or ".")
        return max(1, sum(1 for p in root.iterdir() if p.is_dir())) if root.is_dir() else 1
    return DATASET_CLASSES[cfg.name]


def plan_trial(trial: Trial) -> TrialCost:
    return family_trial_cost(trial.config, dataset_classes(trial.config.dataset))


def compute_columns(trial: Trial) -> dict[str, float]:
    """The compute params every child run carries: sizes, per-image GFLOPs, training MACs per sample-iteration,
    steps, and the sampling cost per image (GAT: one G forward; DiT: NFE x forward, x 2 with guidance)."""
    cost = plan_trial(trial)
    columns = {k: v for k, v in cost.as_dict().items() if k not in ("batch_size", "train_flops")}
    sample = cost.gflops_g
    if trial.config.model.family == "dit":
        d = trial.config.train.diffusion
        sample = sampling_macs(round(cost.gflops_g * 1e9), d.sample_steps, d.guidance) / 1e9
    return {**columns, "sample_gflops": sample}


def plan_rows(study: Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.trials:
        m, cost = t.config.model, plan_trial(t)
        rows.append({
            "trial_id": t.trial_id, "name": t.name, "swept": t.swept,
            "family": m.family, "g": f"{m.width}x{m.depth}/h{m.heads}",
            "d": f"{m.disc_width}x{m.disc_depth}/h{m.disc_heads}" if m.family == "gat" else "-",
            "patch": m.patch_size, "tokens": (t.config.dataset.model_resolution // m.patch_size) ** 2,
            **cost.as_dict(), "sample_gflops": compute_columns(t)["sample_gflops"],
        })
    return rows


def si_units(x: float, digits: int = 2) -> str:
    """1.23T, 45.60G, ...: a count with an SI prefix."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.{digits}f}{unit}"
    return f"{x:.0f}"


def format_plan(study: Study, rows: list[dict[str, Any]]) -> str:
    header = ["#", "trial_id", "name", "G", "D", "p", "tok", "params G", "params D", "GFLOPs G", "GFLOPs D",
              "steps", "batch", "train MACs"]
    table = [[str(i), r["trial_id"], r["name"], r["g"], r["d"], str(r["patch"]), str(r["tokens"]), si_units(r["params_g"]),
              si_units(r["params_d"]), f"{r['gflops_g']:.4f}", f"{r['gflops_d']:.4f}", str(r["steps"]), str(r["batch_size"]),
              si_units(r["train_flops"])] for i, r in enumerate(rows)]
    widths = [max(len(row[c]) for row in [header, *table]) for c in range(len(header))]
    lines = [f"study {study.config.name} ({study.source}): {len(rows)} trials",
             "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    res = study.config.resources
    per_trial = f"{res.cpus_per_trial:g} CPU" + (f", {res.gpus_per_trial:g} GPU" if res.gpus_per_trial else "")
    if res.workers > 1:
        lines.append(f"each trial: {res.workers} data-parallel workers of {per_trial}; batch = effective batch, "
                     f"{res.workers} x batch/{res.workers} per worker")
    else:
        lines.append(f"each trial: one worker of {per_trial}")
    total = sum(r["train_flops"] for r in rows)
    lines.append(f"total training compute: {si_units(total)} MACs ({si_units(2 * total)} FLOPs at 2 per MAC); "
                 "GFLOPs = forward MACs per image (DiT convention)")
    return "\n".join(lines)

"""Dry run: what each trial and the whole study will cost, without Ray and without training.

Compute is counted in MACs (DiT's convention: 1 multiply-accumulate = 1 "FLOP"; true FLOPs are 2 per MAC).  With
the study's MLflow store, each trial is marked new / finished / partial / extend / diverged and the compute still
to spend is given beside the total (`orchestrator.trial_state`).  With `--accelerator`, wall time, GPU-hours and
peak memory per trial (`orchestrator.costing`, `gat_core.memory`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gat_core.config import DATASET_CLASSES, DEFAULT_SHAPE_CLASSES, DataConfig
from gat_core.flops import TrialCost, family_trial_cost, sampling_macs
from orchestrator.study import Study, Trial

MIN_BUDGET_STEPS = 50  # a flops budget that leaves fewer steps trains too little to say anything
MIN_FIT_VALUES = 3     # distinct compute values a power-law fit needs to be checkable (2 points fit any line)
FIT_VALUE_TOLERANCE = 0.05  # compute values closer than this (relative) count as one (a budget's rounded steps)
GB = 1e9               # memory is reported in GB = 10^9 bytes, as accelerator datasheets count it

UNITS = {
    "train_flops": "MACs (the name is historical: 1 multiply-accumulate = 1 'FLOP', DiT convention; true FLOPs = "
                   "2 x MACs)",
    "total_train_flops": "MACs", "remaining_train_macs": "MACs", "total_remaining_train_macs": "MACs",
    "macs_per_sample_iter": "MACs per sample per iteration", "gflops_g": "GMACs per image (G forward)",
    "gflops_d": "GMACs per image (D forward)", "sample_gflops": "GMACs per generated image",
    "params_g": "parameters", "params_d": "parameters", "steps": "iterations", "steps_done": "iterations",
    "remaining_steps": "iterations", "batch_size": "samples",
    "cost.mfu": "fraction of the dense peak", "cost.peak_flop_per_s": "FLOP/s, dense, true FLOPs (2 per multiply-add)",
    "cost.flop_per_s": "FLOP/s, true FLOPs", "cost.gpus": "GPUs held", "cost.seconds": "seconds",
    "cost.hours": "hours", "cost.gpu_hours": "GPU-hours", "cost.remaining_*": "as the same name without remaining_",
    "memory.*_bytes": "bytes (per GPU: one worker)", "memory.parameters": "trainable parameters",
    "memory.batch_per_worker": "samples", "study_cost.gpus": "GPUs of the cluster",
    "study_cost.concurrent_trials": "trials", "study_cost.*wall_hours": "hours", "study_cost.*gpu_hours": "GPU-hours",
}


def dataset_classes(cfg: DataConfig) -> int:
    """Class count without loading images (a folder dataset counts its subfolders)."""
    if cfg.name == "shapes":
        return cfg.num_classes or DEFAULT_SHAPE_CLASSES
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


@dataclass(frozen=True)
class Costing:
    """What `--accelerator` asked for: the GPU, an MFU and a dtype (None: the defaults), the cluster's GPUs."""

    accelerator: Any  # orchestrator.accelerators.Accelerator
    mfu: float | None = None
    dtype: str | None = None
    gpus: int | None = None


def trial_dtype(trial: Trial, override: str | None) -> str:
    """The precision a trial trains in on a GPU: `--dtype`, else train.precision (auto = bf16 autocast on CUDA)."""
    if override:
        return override
    return "fp32" if trial.config.train.precision == "fp32" else "bf16"


def plan_rows(study: Study, states: dict[str, Any] | None = None, costing: Costing | None = None) -> list[dict[str, Any]]:
    """One record per trial: sizes and compute (MACs); with `states` (trial_id -> TrialState) its state and the
    compute still to spend; with `costing` its time, GPU-hours and memory on the accelerator."""
    from gat_core.memory import memory_estimate

    rows = []
    for t in study.trials:
        m, cost = t.config.model, plan_trial(t)
        state = states.get(t.trial_id) if states else None
        remaining = cost.steps if state is None else state.remaining_steps
        row = {
            "trial_id": t.trial_id, "name": t.name, "swept": t.swept,
            "family": m.family, "g": f"{m.width}x{m.depth}/h{m.heads}",
            "d": f"{m.disc_width}x{m.disc_depth}/h{m.disc_heads}" if m.family == "gat" else "-",
            "patch": m.patch_size, "tokens": (t.config.dataset.model_resolution // m.patch_size) ** 2,
            **cost.as_dict(), "sample_gflops": compute_columns(t)["sample_gflops"],
            "state": state.label if state else "new", "state_kind": state.kind if state else "new",
            "steps_done": state.step if state else 0, "remaining_steps": remaining,
            "remaining_train_macs": float(cost.macs_per_sample_iter) * cost.batch_size * remaining,
        }
        if costing is not None:
            from orchestrator.costing import memory_fit, trial_time

            res = study.config.resources
            dtype = trial_dtype(t, costing.dtype)
            time = trial_time(row["train_flops"], row["remaining_train_macs"], res, costing.accelerator, dtype,
                              costing.mfu)
            memory = memory_estimate(t.config, dataset_classes(t.config.dataset),
                                     "bf16" if dtype == "bf16" else "fp32", res.workers)
            row["cost"] = time.as_dict()
            row["memory"] = {**memory.as_dict(), **memory_fit(memory, res, costing.accelerator)}
        rows.append(row)
    return rows


def study_cost(study: Study, rows: list[dict[str, Any]], costing: Costing) -> dict[str, Any]:
    """The study's wall time at its concurrency on `costing.gpus` GPUs (default: enough for max_concurrent trials),
    in grid order as Tune starts trials, and its GPU-hours; all of it and what remains."""
    from orchestrator.costing import concurrent_trials, default_cluster_gpus, makespan

    res = study.config.resources
    gpus = default_cluster_gpus(res) if costing.gpus is None else costing.gpus
    slots = concurrent_trials(res, gpus)
    todo = [r["cost"]["remaining_seconds"] for r in rows if r["cost"]["remaining_seconds"] > 0]
    return {
        "gpus": gpus, "gpus_default": costing.gpus is None, "concurrent_trials": slots,
        "wall_hours": makespan([r["cost"]["seconds"] for r in rows], slots) / 3600,
        "remaining_wall_hours": makespan(todo, slots) / 3600,
        "gpu_hours": sum(r["cost"]["gpu_hours"] for r in rows),
        "remaining_gpu_hours": sum(r["cost"]["remaining_gpu_hours"] for r in rows),
    }


def plan_warnings(study: Study, rows: list[dict[str, Any]]) -> list[str]:
    """Studies that cannot say anything: no evaluation before the final one, a budget that leaves a handful of
    steps, too few distinct compute values for a fit."""
    warnings: list[str] = []
    short_eval = [(t, r) for t, r in zip(study.trials, rows) if t.config.eval.interval >= r["steps"]]
    if short_eval:
        t, r = short_eval[0]
        warnings.append(f"{len(short_eval)} of {len(rows)} trials evaluate only at step 0 and at the end: eval.interval "
                        f"{t.config.eval.interval} >= their {r['steps']} steps (e.g. {t.name}); no learning curve, "
                        "nothing to compare before the end; lower eval.interval")
    starved = [(t, r) for t, r in zip(study.trials, rows)
               if t.config.train.flops_budget is not None and r["steps"] < MIN_BUDGET_STEPS]
    for t, r in starved:
        over = " (less than one iteration: it still trains 1 step, over its budget)" if (
            r["macs_per_sample_iter"] * r["batch_size"] > t.config.train.flops_budget) else ""
        warnings.append(f"{t.name}: train.flops_budget {t.config.train.flops_budget:.3g} MACs leaves {r['steps']} steps "
                        f"(< {MIN_BUDGET_STEPS}){over}; its metric says little about its size: raise the budget or "
                        "shrink the model")
    beyond = [r for r in rows if r.get("steps_done", 0) > r["steps"]]
    if beyond:
        r = beyond[0]
        warnings.append(f"{len(beyond)} trials have trained past the steps the study now asks for (e.g. {r['name']}: "
                        f"{r['steps_done']} > {r['steps']}); `run` refuses to shorten a trial: set the length back "
                        "to at least what they trained, or run the shorter study under another name")
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_family[r["family"]].append(r)
    for family, members in by_family.items():
        distinct = {name: distinct_values([r[key] for r in members])
                    for name, key in (("training-compute", "train_flops"), ("model-size (GFLOPs)", "gflops_g"))}
        few = [f"{n} {name}" for name, n in distinct.items() if n < MIN_FIT_VALUES]
        if few:
            warnings.append(f"family {family}: only {' and '.join(few)} value{'s' if len(members) > 1 else ''} among "
                            f"{len(members)} trial{'s' if len(members) > 1 else ''}: a power-law fit against it needs "
                            f"at least {MIN_FIT_VALUES} distinct values; add sizes, steps or budgets")
    iso = study.config.isoflop
    if iso is not None and len(iso.budgets) < MIN_FIT_VALUES:  # (its sizes are validated to be at least 3)
        warnings.append(f"isoflop: {len(iso.budgets)} budgets x {len(iso.sizes)} sizes: each budget has its optimum, "
                        f"but the laws N_opt(C) and metric_opt(C) through them need at least {MIN_FIT_VALUES} "
                        "budgets; add budgets")
    return warnings


def distinct_values(values: list[float], rel: float = FIT_VALUE_TOLERANCE) -> int:
    """How many values are apart by more than `rel` of their size: the trials of one flops budget have
    slightly different compute (each one's steps are rounded down), but they are one point of a fit."""
    count, last = 0, None
    for v in sorted(values):
        if last is None or v > last * (1 + rel):
            count, last = count + 1, v
    return count


def si_units(x: float, digits: int = 2) -> str:
    """1.23T, 45.60G, ...: a count with an SI prefix."""
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.{digits}f}{unit}"
    return f"{x:.0f}"


def _table(header: list[str], table: list[list[str]]) -> list[str]:
    widths = [max(len(row[c]) for row in [header, *table]) for c in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *table]]


def _hours(h: float) -> str:
    """A duration given in hours, in the unit that reads best (s, min, h)."""
    return f"{h * 3600:.3g} s" if h < 1 / 60 else f"{h * 60:.3g} min" if h < 1 else f"{h:.3g} h"


def format_plan(study: Study, rows: list[dict[str, Any]], store: Any = None, costing: Costing | None = None,
                cluster: dict[str, Any] | None = None, warnings: list[str] | None = None) -> str:
    header = ["#", "trial_id", "name", "state", "G", "D", "p", "tok", "params G", "params D", "GFLOPs G", "GFLOPs D",
              "steps", "batch", "train MACs", "to do MACs"]
    table = [[str(i), r["trial_id"], r["name"], r.get("state", "new"), r["g"], r["d"], str(r["patch"]), str(r["tokens"]),
              si_units(r["params_g"]), si_units(r["params_d"]), f"{r['gflops_g']:.4f}", f"{r['gflops_d']:.4f}",
              str(r["steps"]), str(r["batch_size"]), si_units(r["train_flops"]),
              si_units(r.get("remaining_train_macs", r["train_flops"]))] for i, r in enumerate(rows)]
    lines = [f"study {study.config.name} ({study.source}): {len(rows)} trials", *_table(header, table)]
    res = study.config.resources
    per_trial = f"{res.cpus_per_trial:g} CPU" + (f", {res.gpus_per_trial:g} GPU" if res.gpus_per_trial else "")
    if res.workers > 1:
        lines.append(f"each trial: {res.workers} data-parallel workers of {per_trial}; batch = effective batch, "
                     f"{res.workers} x batch/{res.workers} per worker")
    else:
        lines.append(f"each trial: one worker of {per_trial}")
    if store is not None:
        lines.append(store.note)
    total = sum(r["train_flops"] for r in rows)
    remaining = sum(r.get("remaining_train_macs", r["train_flops"]) for r in rows)
    lines.append(f"total training compute: {si_units(total)} MACs ({si_units(2 * total)} FLOPs at 2 per MAC); still "
                 f"to spend: {si_units(remaining)} MACs ({si_units(2 * remaining)} FLOPs); "
                 "GFLOPs = forward MACs per image (DiT convention)")
    if costing is not None and cluster is not None:
        lines += _format_costs(study, rows, costing, cluster)
    else:
        lines.append("wall time, GPU-hours and memory on a GPU: --accelerator NAME (e.g. H100)")
    lines += [f"warning: {w}" for w in warnings or []]
    return "\n".join(lines)


def _format_costs(study: Study, rows: list[dict[str, Any]], costing: Costing, cluster: dict[str, Any]) -> list[str]:
    from orchestrator.accelerators import MFU_SOURCE
    from orchestrator.costing import FIT_FRACTION

    acc = costing.accelerator
    dtypes = sorted({r["cost"]["dtype"] for r in rows})
    peaks = ", ".join(f"{d} {acc.peak_flops(d) / 1e12:g} TFLOP/s" for d in dtypes)
    mfus = sorted({r["cost"]["mfu"] for r in rows})
    mfu_note = f"MFU {', '.join(f'{m:g}' for m in mfus)}" + ("" if costing.mfu is not None else
                                                             f" by default, {MFU_SOURCE}; --mfu sets yours")
    lines = [f"on {acc.name} ({acc.memory_gb:g} GB; dense {peaks}; {mfu_note}):",
             "  wall time = 2 FLOPs per MAC x training MACs / (peak FLOP/s x MFU x GPUs); training only, no evaluation"]
    header = ["#", "trial_id", "dtype", "GPUs", "time", "time to do", "GPU-h", "GPU-h to do", "params",
              "weights+grads+Adam+EMA GB", "activ. GB", "activ. ckpt GB", "peak GB", "fits"]
    table = []
    for i, r in enumerate(rows):
        c, m = r["cost"], r["memory"]
        fits = ("yes" if m["fits"] else "no") + (
            "" if m["fits"] or not m["fits_with_checkpointing"] else " (yes with train.grad_checkpoint)")
        table.append([str(i), r["trial_id"], c["dtype"], f"{c['gpus']:g}", _hours(c["hours"]), _hours(c["remaining_hours"]),
                      f"{c['gpu_hours']:.3g}", f"{c['remaining_gpu_hours']:.3g}", si_units(m["parameters"]),
                      f"{m['states_bytes'] / GB:.3g}",
                      f"{m['activations_bytes'] / GB:.3g}", f"{m['activations_checkpointed_bytes'] / GB:.3g}",
                      f"{m['trial_peak_bytes'] / GB:.3g}" + (" (ckpt)" if m["grad_checkpoint"] else ""), fits])
    lines += ["  " + line for line in _table(header, table)]
    default = " (default: enough for resources.max_concurrent trials at once; set --gpus)" if cluster["gpus_default"] else ""
    gpus, slots = cluster["gpus"], cluster["concurrent_trials"]
    lines.append(f"  study on {gpus} GPU{'s' if gpus != 1 else ''}{default}, {slots} trial{'s' if slots != 1 else ''} "
                 "at once: wall time "
                 f"{_hours(cluster['wall_hours'])} ({_hours(cluster['remaining_wall_hours'])} to do), "
                 f"{cluster['gpu_hours']:.3g} GPU-hours ({cluster['remaining_gpu_hours']:.3g} to do)")
    lines.append(f"  memory per GPU (GB = 10^9 bytes): fp32 weights, gradients, AdamW's 2 moments and the EMA copy; "
                 f"activations at the per-worker batch (estimate, gat_core.memory); fits = peak <= {FIT_FRACTION:g} x "
                 "memory (CUDA context and allocator slack not counted)")
    if not study.config.resources.gpus_per_trial:
        lines.append("  resources.gpus_per_trial is 0 (a CPU study): costed at one GPU per worker")
    return lines

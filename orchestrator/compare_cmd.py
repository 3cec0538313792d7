"""`gat-study compare`: GAT against DiT at equal training compute and per sampling cost, from MLflow.

The fits and tables come from `analysis.compare` (no torch).  The one thing measured here is
sampling speed: images/s at a batch size on this machine for every model size of the study, a
GAT generator at 1 NFE against the DiT denoiser at every NFE of its final evaluation.  torch is
imported only for that, so `--no-speed` stays as light as `gat-study analyze`.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from analysis.errors import AnalysisError
from orchestrator.analyze_cmd import add_fit_arguments, resolve_target

__all__ = ["AnalysisError", "add_compare_parser", "cmd_compare", "compare", "measure_sampling_speed",
           "run_comparison", "stored_configs", "trial_config"]

SECTIONS = ("dataset", "model", "train")
# Keys that do not shape the networks or the sampler, or that need files of the training machine.
SKIPPED_KEYS = ("train.steps", "train.flops_budget", "train.vfm", "train.device", "train.compile",
                "train.grad_checkpoint", "train.precision")


# --- a trial's config: as its study stored it, else from its child-run params ----------------------
def stored_configs(data: Any) -> dict[str, dict[str, Any]]:
    """trial_id -> the exact config of each trial as its study logged it (`study/trials.json` of the parent runs
    of `data`, an `analysis.load.StudyData`); {} for studies without that artifact."""
    from analysis.load import download_run_artifact

    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, run_id in enumerate(data.parents.values()):
            path = download_run_artifact(data, run_id, "study/trials.json", Path(tmp) / str(index))
            if path is not None:
                out.update({t["trial_id"]: t["config"] for t in json.loads(path.read_text())})
    return out


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _native(value: Any) -> Any:
    """numpy / pandas scalars as Python values (pydantic validates those)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    return value


def _known_fields(model_cls: Any, tree: dict[str, Any], prefix: str, dropped: list[str]) -> dict[str, Any]:
    """`tree` without the keys `model_cls` (a pydantic model) does not have, recursively."""
    from pydantic import BaseModel

    out = {}
    for key, value in tree.items():
        info = model_cls.model_fields.get(key)
        if info is None:
            dropped.append(prefix + key)
            continue
        sub = info.annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            value = _known_fields(sub, value, f"{prefix}{key}.", dropped)
        out[key] = value
    return out


def trial_config(row: pd.Series | dict[str, Any], stored: dict[str, dict[str, Any]] | None = None
                 ) -> tuple[Any, list[str]]:
    """(TrialConfig, dropped keys) of a trial (a row of `StudyData.trials`): the exact config its study stored
    (`stored`, from `stored_configs`, by the row's trial_id; nothing dropped), else rebuilt from its dotted run
    params (studies logged without `study/trials.json`).

    Rebuilt from params, only what shapes the networks and the sampler is kept: the dataset, model and train
    sections without the training length, VFM and device keys; keys this version's schema
    does not know are dropped (and returned).  Raises ValueError when the rest is invalid
    (e.g. latents whose meta.json is not on this machine).
    """
    from gat_core.config import TrialConfig

    exact = (stored or {}).get(row.get("trial_id"))
    if exact is not None:
        return TrialConfig.model_validate(exact), []
    tree: dict[str, Any] = {}
    items = row.items() if isinstance(row, dict) else row.to_dict().items()
    for key, value in items:
        if not isinstance(key, str) or key.split(".", 1)[0] not in SECTIONS or "." not in key:
            continue
        if any(key == s or key.startswith(s + ".") for s in SKIPPED_KEYS):
            continue
        if not isinstance(value, (list, dict)) and _missing(value):
            continue
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = _native(value)
    dropped: list[str] = []
    tree = _known_fields(TrialConfig, tree, "", dropped)
    tree.setdefault("train", {})["steps"] = 1
    return TrialConfig.model_validate(tree), dropped


# --- timing --------------------------------------------------------------------------------------
def _time_call(fn: Callable[[], Any], sync: Callable[[], None], repeats: int, min_time: float) -> float:
    """Median seconds of `fn` over at least `repeats` runs (more until `min_time` s, at most 50), after a warm-up."""
    fn()
    sync()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_time and len(times) < 50):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _size_groups(trials: pd.DataFrame) -> list[tuple[str, str, Any, pd.DataFrame]]:
    """(family, size, patch, trials) for every model size of each family, small to large."""
    rank = trials["size_rank"] if "size_rank" in trials else pd.Series(0, index=trials.index)
    family_rank = trials["family"].map({"gat": 0, "dit": 1}).fillna(2)
    order = trials.assign(_r=rank, _f=family_rank).sort_values(["_r", "patch", "_f"], kind="stable")
    groups = []
    for (family, size, patch), group in order.groupby(["family", "size", order["patch"].astype("string")],
                                                       sort=False, dropna=False):
        groups.append((family, size, group["patch"].iloc[0], group))
    return groups


def _nfe_values(group: pd.DataFrame) -> list[int]:
    values: set[int] = set()
    for _, row in group.iterrows():
        listed = row.get("train.diffusion.eval_nfe")
        if isinstance(listed, (list, tuple)) and listed:
            values |= {int(k) for k in listed}
        elif not _missing(row.get("train.diffusion.sample_steps")):
            values.add(int(row["train.diffusion.sample_steps"]))
    return sorted(values) or [1]


def measure_sampling_speed(trials: pd.DataFrame, batch: int = 64, *, device: str = "auto", timed_nfe: int = 1,
                           repeats: int = 3, min_time: float = 0.5, configs: dict[str, dict[str, Any]] | None = None
                           ) -> tuple[pd.DataFrame, str, list[str]]:
    """(table, caption, notes): images/s at `batch` on this machine for each (family, model size) of `trials`.

    `trials` needs `family` (gat/dit), `size`, `patch` and the dotted run params (the
    `Comparison.trials` frame); `configs` the exact trial configs (`stored_configs`; see `trial_config`).
    Samplers (`gat_core.families.sampler_from_config`) are built from the first trial of each size with
    random weights: speed does not depend on the weights.  GAT: one G forward (1 NFE).  DiT:
    the trial's sampler for `timed_nfe` steps, and NFE/timed_nfe times that for the other NFE
    values (the per-step cost is constant).  Network only (no VAE decode), fp32, no autocast.
    """
    import torch

    from gat_core.families import sampler_from_config
    from gat_core.trial import resolve_device
    from orchestrator.plan import dataset_classes

    dev = resolve_device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    rows, notes = [], []
    samplers = set()
    for family, size, patch, group in _size_groups(trials):
        first = group.iloc[0]
        try:
            cfg, dropped = trial_config(first, configs)
        except ValueError as exc:
            why = "; ".join(e["msg"] for e in exc.errors()) if hasattr(exc, "errors") else str(exc)
            notes.append(f"speed of {family} {size}: skipped, its config cannot be rebuilt here ({why})")
            continue
        if dropped:
            notes.append(f"speed of {family} {size}: ignored params unknown to this version: {', '.join(dropped)}")
        num_classes = dataset_classes(cfg.dataset)  # a folder dataset absent here: 1 (the class count barely matters)
        labels = torch.arange(batch, device=dev) % num_classes
        base = {"size": size, "patch": patch, "family": family, "width": cfg.model.width, "depth": cfg.model.depth,
                "batch": batch, "device": str(dev), "threads": torch.get_num_threads(), "trial": first["run_name"]}
        torch.manual_seed(0)
        with torch.inference_mode():
            sampler = sampler_from_config(cfg, num_classes, dev)
            if family == "gat":
                seconds = _time_call(lambda: sampler.generate(labels), sync, repeats, min_time)
                rows.append({**base, "nfe": 1, "sample_gflops": sampler.sample_gflops(),
                             "images_per_s": batch / seconds, "ms_per_image": 1e3 * seconds / batch,
                             "timing": "measured"})
                continue
            d = cfg.train.diffusion
            samplers.add(f"{d.objective}/{'euler' if d.objective == 'flow' else d.sampler}"
                         + (f", guidance {d.guidance:g}" if d.guidance > 1 else ""))
            seconds = _time_call(lambda: sampler.generate(labels, None, timed_nfe), sync, repeats, min_time)
            for k in _nfe_values(group):
                t = seconds * k / timed_nfe
                rows.append({**base, "nfe": k, "sample_gflops": sampler.sample_gflops(k),
                             "images_per_s": batch / t, "ms_per_image": 1e3 * t / batch,
                             "timing": "measured" if k == timed_nfe else f"{timed_nfe}-step time × {k}/{timed_nfe}"})
    columns = ["size", "patch", "family", "nfe", "sample_gflops", "images_per_s", "ms_per_image", "timing", "width",
               "depth", "batch", "device", "threads", "trial"]
    frame = pd.DataFrame(rows, columns=columns)
    if len(frame):
        frame["achieved_gmacs_per_s"] = frame["images_per_s"] * frame["sample_gflops"]
    cpu = platform.processor() or platform.machine()
    caption = (f"Sampling speed on this machine: images/s at batch {batch} ({dev}"
               + (f", {torch.get_num_threads()} torch threads, {cpu}" if dev.type == "cpu" else "")
               + ", fp32, median of at least 3 timed runs after a warm-up). Networks are built from each model "
               "size's trial config with random weights (speed does not depend on the weights); network only, no "
               "VAE decoding. GAT: one generator forward (1 NFE). DiT: the denoiser with the trial's sampler ("
               + (", ".join(sorted(samplers)) or "—")
               + f"), timed at {timed_nfe} NFE; the other NFE values are that time × NFE/{timed_nfe} (the per-step "
               "cost is constant), not timed. Sampling GFLOPs per image in the DiT convention (1 MAC = 1 FLOP).")
    return frame, caption, notes


# --- the command ---------------------------------------------------------------------------------
def run_comparison(study: str, tracking_uri: str, out_dir: Path, metric: str | None = None, *, speed: bool = True,
                   batch: int = 64, n_boot: int = 1000, seed: int = 0, budgets: list[float] | None = None,
                   targets: list[float] | None = None, include_failed: bool = False, keep_unhealthy: bool = False,
                   timed_nfe: int = 1, device: str = "auto", log_artifacts: bool = True,
                   trial_ids: set[str] | None = None):
    """Load the study, compare the families, measure speed (unless `speed` is False), write and log everything.

    Unhealthy trials (collapsed, diverged) are left out, with a note naming each, unless `keep_unhealthy`.

    Returns the `analysis.compare.Comparison` (its `files`, `notes`, `logged_to` filled in).
    """
    from analysis.compare import compare_families, write_comparison
    from analysis.load import load_studies

    data = load_studies(tracking_uri, study, extra_keys=[metric] if metric else [], trial_ids=trial_ids)
    comp = compare_families(data, metric, budgets=budgets, targets=targets, n_boot=n_boot, seed=seed,
                            include_failed=include_failed, keep_unhealthy=keep_unhealthy)
    if speed:
        comp.speed, comp.speed_caption, notes = measure_sampling_speed(comp.trials, batch, device=device,
                                                                       timed_nfe=timed_nfe,
                                                                       configs=stored_configs(data))
        comp.notes += notes
    write_comparison(comp, Path(out_dir), log_artifacts=log_artifacts)
    return comp


def compare(study: str, tracking_uri: str, out_dir: Path, metric: str | None, speed: bool = True,
            batch: int = 64, **kwargs: Any) -> Path:
    """Compare GAT with DiT in `study` and return the path of compare.md.

    Writes compare.md, compare.json, tables/ (Markdown, LaTeX, CSV) and plots/ (PNG, PDF) to
    `out_dir` and logs them on the study's parent run under `compare/`.  Raises AnalysisError
    (a ValueError) with a message for the user when a family is missing or has fewer than 2
    usable trials, the study is unknown or the metric was not logged.  Keyword arguments go
    to `run_comparison` (n_boot, seed, budgets, targets, include_failed, keep_unhealthy, timed_nfe, device).
    """
    return run_comparison(study, tracking_uri, out_dir, metric, speed=speed, batch=batch, **kwargs).path


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_compare_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `compare` subcommand, for orchestrator/cli.py's subparsers."""
    p = sub.add_parser("compare", help="GAT vs DiT: metric vs training and sampling compute, equal-compute and "
                                       "sampling-speed tables, from MLflow")
    p.add_argument("study", help="study name (MLflow experiment) or study YAML file")
    p.add_argument("--out", type=Path, help="output folder (default: <study output_dir>/compare)")
    p.add_argument("--metric", help="metric to compare (default: the trials' eval.metric)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's)")
    p.add_argument("--no-speed", dest="speed", action="store_false",
                   help="skip the sampling-speed measurement (no torch, no model building)")
    p.add_argument("--batch", type=int, default=64, help="batch size of the speed measurement (default 64)")
    p.add_argument("--timed-nfe", type=int, default=1,
                   help="DiT sampling steps actually timed; other NFE are scaled from it (default 1)")
    p.add_argument("--device", default="auto", help="device of the speed measurement (default: cuda if available)")
    p.add_argument("--budgets", type=_floats,
                   help="training budgets in MACs for the equal-compute table, e.g. 1e13,1e14")
    p.add_argument("--targets", type=_floats, help="target metric values for the needed-compute table, e.g. 50,20")
    add_fit_arguments(p)
    p.set_defaults(func=cmd_compare)
    return p


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the comparison; print the headline numbers and where the files are, or the error message."""
    name, uri, out, trial_ids = resolve_target(args.study, args.tracking_uri, args.out, args.overrides)
    if args.out is None:
        out = out.parent / "compare"  # next to the analysis folder
    try:
        comp = run_comparison(name, uri, out, args.metric, speed=args.speed, batch=args.batch, n_boot=args.bootstrap,
                              seed=args.seed, budgets=args.budgets, targets=args.targets,
                              include_failed=args.include_failed, keep_unhealthy=args.keep_unhealthy,
                              timed_nfe=args.timed_nfe, device=args.device, trial_ids=trial_ids)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print((comp.path.parent / "compare.json").read_text())
        return 0
    from analysis.compare import FAMILIES, FAMILY_NAMES

    counts = comp.counts()
    print(f"study {name}: {comp.metric}, GAT {counts['gat']} trials, DiT {counts['dit']} trials")
    for fam in FAMILIES:
        fit = comp.fit(fam)
        if fit is not None:
            lo, hi = fit.ci["b"]
            ci = f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else ""
            verdict = "" if fit.is_law else f" -> no scaling law at this scale ({fit.no_law})"
            print(f"  {FAMILY_NAMES[fam]:<4} {comp.metric} ~ train MACs^-b: b = {fit.params['b']:.3f}{ci}, "
                  f"n = {fit.n}{verdict}")
    for row in comp.equal_compute.to_dict(orient="records"):
        values = ", ".join(f"{FAMILY_NAMES[f]} {row[f + '_fit']:.4g}" if row[f"{f}_law"] else
                           f"{FAMILY_NAMES[f]} no scaling law" for f in FAMILIES)
        print(f"  at {row['budget_macs']:.3g} MACs: {values} -> {row['better']}")
    if comp.speed is not None and len(comp.speed):
        for row in comp.speed.to_dict(orient="records"):
            print(f"  speed {row['size']} {FAMILY_NAMES.get(row['family'], row['family'])} NFE {row['nfe']}: "
                  f"{row['images_per_s']:.4g} images/s")
    for note in comp.notes:
        print(f"  note: {note}")
    print(f"comparison: {comp.path}")
    if comp.logged_to:
        print(f"logged to MLflow run(s) {', '.join(comp.logged_to)} under compare/")
    return 0

"""Steps and samples to a target metric per batch size, and the critical batch size (issue 16, batch-size).

For one model trained at several batch sizes B, each trial's **steps to target** S is the first step at which
its metric reaches the target, interpolated between the two evaluations around the crossing (linear in step,
log in the metric); **samples to target** is S·B, the stochastic first-order oracle (SFO) complexity of the
2022 analysis of critical batch sizes for GANs trained with TTUR.  That analysis predicts S falls as B grows
while S·B, convex in B, has a minimum: the **critical batch size** B* = argmin_B S(B)·B.

* Only intermediate evaluations enter, all at the same sample count (a Fréchet distance depends on it).
* Per batch size the statistic is the median over its trials (seeds), a trial that never reached the target
  counting as infinitely slow (so a batch size reaches the target when more than half its seeds do).
* The target, unless given: the worst batch size's median best value, the loosest target that every batch
  size reaches in its median seed; a rule fixed before the steps are looked at.
* Intervals: 95 % percentiles of a bootstrap that resamples each batch size's trials; B*'s support is how
  often each batch size is the minimum across those replicates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from scipy.stats import spearmanr

from analysis.claims import evaluations
from analysis.fit import bootstrap_indices, json_safe, percentile_interval
from analysis.render import fmt_interval, fmt_num, fmt_value, image_link, markdown_table

BATCH_KEY = "train.batch_size"
MIN_BATCH_SIZES = 3
LEVEL = 0.95


def is_batch_study(trials: pd.DataFrame) -> bool:
    """A study of one model size at `MIN_BATCH_SIZES` or more batch sizes."""
    if BATCH_KEY not in trials or "gflops_g" not in trials:
        return False
    batch = pd.to_numeric(trials[BATCH_KEY], errors="coerce")
    return batch.nunique() >= MIN_BATCH_SIZES and pd.to_numeric(trials["gflops_g"], errors="coerce").nunique() == 1


def crossing_step(steps: np.ndarray, values: np.ndarray, target: float, lower_is_better: bool = True) -> float:
    """First step at which `values` (ordered by step) reach `target`, interpolated linearly in step and in log value
    between the evaluation before and the one at the crossing; NaN if never reached."""
    sign = 1.0 if lower_is_better else -1.0
    reached = np.flatnonzero(sign * values <= sign * target)
    if not len(reached):
        return math.nan
    i = int(reached[0])
    if i == 0:
        return float(steps[0])
    (s0, s1), (v0, v1) = steps[i - 1:i + 1], values[i - 1:i + 1]
    if v0 <= 0 or v1 <= 0 or v0 == v1:
        return float(s1)
    return float(s0 + (s1 - s0) * (math.log(v0) - math.log(target)) / (math.log(v0) - math.log(v1)))


def _median_inf(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Median with NaN (never reached) counted as +inf: finite only when more than half the values are."""
    return np.median(np.where(np.isnan(values), np.inf, values), axis=axis)


@dataclass
class BatchResult:
    """Steps and samples to `target` per batch size, and the critical batch size."""

    metric: str
    target: float
    target_rule: str
    samples: float                      # the sample count of the evaluations used
    per_trial: pd.DataFrame             # run_id, batch, seed, best, steps, samples_seen
    per_batch: pd.DataFrame             # batch, trials, reached, best, steps (+ci), sfo (+ci), critical_share
    critical: float                     # B* of the point estimate (NaN: no batch size reached the target)
    critical_ci: tuple[float, float]
    steps_rho: float                    # Spearman rho of batch size and median steps to target
    lower_is_better: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def reaches(self) -> str:
        """The target as a condition: `fd_classifier ≤ 12.3`."""
        return f"{self.metric} {'≤' if self.lower_is_better else '≥'} {fmt_num(self.target, 4)}"

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"metric": self.metric, "target": self.target, "target_rule": self.target_rule,
                          "eval_samples": self.samples, "critical_batch": self.critical,
                          "critical_batch_ci95": list(self.critical_ci), "steps_spearman_rho": self.steps_rho,
                          "per_batch": self.per_batch.to_dict(orient="records"), "notes": self.notes})

    def table(self) -> pd.DataFrame:
        rows = []
        for r in self.per_batch.itertuples():
            rows.append({"batch": fmt_value(r.batch), "trials reaching": f"{r.reached}/{r.trials}",
                         f"best {self.metric} (median)": fmt_num(r.best, 4),
                         "steps to target (median)": fmt_num(r.steps, 4),
                         "95 % CI": fmt_interval((r.steps_lo, r.steps_hi)),
                         "samples = steps × batch": fmt_num(r.sfo, 4),
                         "95 % CI ": fmt_interval((r.sfo_lo, r.sfo_hi)),
                         "share of replicates as B*": f"{r.critical_share:.2f}"})
        return pd.DataFrame(rows)


def batch_analysis(history: pd.DataFrame, usable: pd.DataFrame, metric: str, *, target: float | None = None,
                   lower_is_better: bool = True, n_boot: int = 1000, seed: int = 0) -> BatchResult | None:
    """Steps and samples to the target per batch size of `usable`'s trials; None if the study is no batch study."""
    if not is_batch_study(usable):
        return None
    evals, _ = evaluations(history, usable, metric)
    evals = evals[~evals["final"]]
    notes: list[str] = []
    if evals.empty:
        return None
    samples = float(evals["samples"].mode().iloc[0])
    if evals["samples"].nunique() > 1:
        notes.append(f"only the evaluations on {samples:g} samples are used (others had other sample counts)")
    evals = evals[evals["samples"] == samples]
    batch_of = pd.to_numeric(usable.set_index("run_id")[BATCH_KEY], errors="coerce")
    curves = {run: group.sort_values("step") for run, group in evals.groupby("run_id")}
    sign = 1.0 if lower_is_better else -1.0
    best = {run: float(sign * (sign * c["value"]).min()) for run, c in curves.items()}
    runs = sorted(curves, key=lambda r: (batch_of[r], r))
    batches = sorted({float(batch_of[r]) for r in runs})
    best_by_batch = {b: float(np.median([best[r] for r in runs if batch_of[r] == b])) for b in batches}
    if target is None:
        target = float(sign * max(sign * v for v in best_by_batch.values()))
        rule = ("the worst batch size's median best value: the loosest target every batch size reaches in its "
                "median seed")
    else:
        rule = "given"
    steps = {r: crossing_step(curves[r]["step"].to_numpy(float), curves[r]["value"].to_numpy(float), target,
                              lower_is_better) for r in runs}
    info = usable.set_index("run_id")
    per_trial = pd.DataFrame({"run_id": runs, "batch": [batch_of[r] for r in runs],
                              "seed": [fmt_value(info.at[r, "train.seed"]) if "train.seed" in info else "—"
                                       for r in runs],
                              "best": [best[r] for r in runs], "steps": [steps[r] for r in runs]})
    per_trial["samples_seen"] = per_trial["steps"] * per_trial["batch"]

    rng = np.random.default_rng(seed)
    point_steps, boot_steps = [], []
    for b in batches:
        values = per_trial.loc[per_trial["batch"] == b, "steps"].to_numpy(float)
        point_steps.append(float(_median_inf(values)))
        idx = bootstrap_indices(len(values), n_boot, rng)
        boot_steps.append(_median_inf(values[idx], axis=1) if n_boot else np.empty(0))
    b_arr = np.array(batches)
    point_sfo = np.array(point_steps) * b_arr
    boot_sfo = np.stack(boot_steps, axis=1) * b_arr if n_boot else np.empty((0, len(batches)))
    finite_rows = np.isfinite(boot_sfo).any(axis=1)
    argmins = np.full(len(boot_sfo), np.nan)
    argmins[finite_rows] = b_arr[np.argmin(boot_sfo[finite_rows], axis=1)]
    share = [float(np.mean(argmins == b)) if n_boot else math.nan for b in batches]
    rows = []
    for j, b in enumerate(batches):
        sub = per_trial[per_trial["batch"] == b]
        s_lo, s_hi = percentile_interval(boot_steps[j]) if n_boot else (math.nan, math.nan)
        rows.append({"batch": b, "trials": len(sub), "reached": int(sub["steps"].notna().sum()),
                     "best": best_by_batch[b], "steps": point_steps[j], "steps_lo": s_lo, "steps_hi": s_hi,
                     "sfo": point_sfo[j], "sfo_lo": s_lo * b, "sfo_hi": s_hi * b, "critical_share": share[j]})
    per_batch = pd.DataFrame(rows).replace([np.inf, -np.inf], np.nan)
    critical = float(b_arr[np.nanargmin(np.where(np.isfinite(point_sfo), point_sfo, np.nan))]) \
        if np.isfinite(point_sfo).any() else math.nan
    reached = np.isfinite(point_sfo)
    rho = float(spearmanr(b_arr[reached], np.array(point_steps)[reached]).statistic) if reached.sum() >= 3 else math.nan
    if math.isfinite(critical) and critical in (b_arr[reached].min(), b_arr[reached].max()):
        notes.append(f"B* = {fmt_value(critical)} is at the edge of the batch sizes that reached the target: the "
                     "minimum of samples to target may lie outside the range tried")
    if np.isfinite(argmins).sum() < len(argmins):
        notes.append(f"{len(argmins) - int(np.isfinite(argmins).sum())} of {len(argmins)} bootstrap replicates had no "
                     "batch size reaching the target")
    return BatchResult(metric=metric, target=target, target_rule=rule, samples=samples, per_trial=per_trial,
                       per_batch=per_batch, critical=critical,
                       critical_ci=percentile_interval(argmins) if n_boot else (math.nan, math.nan),
                       steps_rho=rho, lower_is_better=lower_is_better, notes=notes)


def plot_batch(result: BatchResult, stem: Path) -> list[Path]:
    """Steps to target (left) and samples to target (right) against batch size: trials as dots, the per-batch
    median with its 95 % CI, B* starred."""
    from analysis.plots import PAPER_RC, save

    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(5.6, 2.4), layout="constrained")
        axes = fig.subplots(1, 2)
        pb = result.per_batch
        for ax, col, trial_col, label in ((axes[0], "steps", "steps", "steps to target"),
                                          (axes[1], "sfo", "samples_seen", "samples to target (steps × batch)")):
            pts = result.per_trial.dropna(subset=[trial_col])
            ax.scatter(pts["batch"], pts[trial_col], s=10, color="0.6", zorder=2, label="trial")
            ok = pb.dropna(subset=[col])
            err = np.abs(np.stack([ok[col] - ok[f"{col}_lo"], ok[f"{col}_hi"] - ok[col]]).astype(float))
            ax.errorbar(ok["batch"], ok[col], yerr=np.nan_to_num(err), fmt="o-", color="tab:blue", ms=4, capsize=2,
                        zorder=3, label="median, 95 % CI")
            if col == "sfo" and math.isfinite(result.critical):
                at = ok[ok["batch"] == result.critical]
                ax.scatter(at["batch"], at[col], marker="*", s=120, color="tab:red", zorder=4,
                           label=f"B* = {fmt_value(result.critical)}")
            ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel=label)
            ax.set_xticks(pb["batch"].to_list(), [fmt_value(b) for b in pb["batch"]])
            ax.xaxis.set_minor_formatter(NullFormatter())  # only the tried values are labelled
            ax.legend(fontsize=5.5)
        fig.suptitle(f"target: {result.reaches}", fontsize=7)
        return save(fig, stem)


@dataclass
class BatchSection:
    """What the batch-size part of a report wrote: the result, its files and the markdown."""

    result: BatchResult
    files: list[Path]
    figure: list[Path]

    def markdown(self, out_dir: Path) -> str:
        r = self.result
        lines = ["## Batch size: steps and samples to a target\n",
                 f"Target: {r.reaches} ({r.target_rule}), on intermediate evaluations "
                 f"of {r.samples:g} samples. Steps to target: first crossing, interpolated between evaluations; per "
                 "batch size the median over its trials (a trial that never reached it counts as infinitely slow). "
                 "Samples to target = steps × batch (SFO complexity); the critical batch size B* minimises it. "
                 "Intervals: 95 % percentiles of a bootstrap resampling each batch size's trials.\n",
                 markdown_table(r.table()),
                 f"- **Critical batch size** B* = {fmt_value(r.critical)}; 95 % bootstrap interval "
                 f"{fmt_interval(r.critical_ci)} (the share of replicates per batch size is in the table)",
                 f"- **Steps fall as the batch grows**: Spearman ρ of batch size and median steps to target = "
                 f"{fmt_num(r.steps_rho, 3)} (−1: strictly fewer steps at every larger batch)",
                 *[f"- {n}" for n in r.notes], "",
                 image_link(self.figure, out_dir, "steps and samples to target vs batch size"),
                 "Table: [tables/batch_size.csv](tables/batch_size.csv) · per trial: "
                 "[tables/batch_size_trials.csv](tables/batch_size_trials.csv)\n"]
        return "\n".join(lines) + "\n"


def batch_section(history: pd.DataFrame, usable: pd.DataFrame, metric: str, tables: Path, plots: Path, *,
                  lower_is_better: bool = True, n_boot: int = 1000, seed: int = 0) -> BatchSection | None:
    """The batch-size analysis with its tables and figure, or None when the study is not a batch-size study."""
    result = batch_analysis(history, usable, metric, lower_is_better=lower_is_better, n_boot=n_boot, seed=seed)
    if result is None:
        return None
    files = [tables / "batch_size.csv", tables / "batch_size_trials.csv"]
    result.per_batch.to_csv(files[0], index=False)
    result.per_trial.to_csv(files[1], index=False)
    figure = plot_batch(result, plots / "batch_size")
    return BatchSection(result=result, files=files + figure, figure=figure)

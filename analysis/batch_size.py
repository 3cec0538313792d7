"""Steps and samples to a target metric per batch size, and the critical batch size (issue 16, batch-size).

For one model trained at several batch sizes B, each trial's **steps to target** S is the first step at which
its metric reaches the target, interpolated between the two evaluations around the crossing (linear in step,
log in the metric); **samples to target** is S·B, the stochastic first-order oracle (SFO) complexity of the
2022 analysis of critical batch sizes for GANs trained with TTUR.  That analysis predicts S falls as B grows
while S·B, convex in B, has a minimum: the **critical batch size** B* = argmin_B S(B)·B.

* Only intermediate evaluations enter, all at the same sample count (a Fréchet distance depends on it).
* Per batch size the statistic is the median over its trials (seeds), a trial that never reached the target
  counting as infinitely slow (so a batch size reaches the target when more than half its seeds do).
* The target, unless given: the loosest one that more than half the trials of every batch size reach (per
  batch size the best value its majority attains; the worst of those); a rule fixed before the steps are
  looked at.
* Intervals: 95 % order-statistic intervals of a bootstrap that resamples each batch size's trials, in which
  "not reached" is a value (an upper end of "not reached": more than 2.5 % of replicates never got there);
  B*'s support is how often each batch size is the minimum across those replicates.
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
from analysis.fit import bootstrap_indices, json_safe
from analysis.render import fmt_interval, fmt_num, fmt_value, image_link, markdown_table, write_csvs

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


def censored_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` interval of bootstrap `samples` in which +inf (not reached) is a value like any other:
    order statistics (no interpolation), so an upper end of +inf says the replicates reach "never" that often."""
    samples = np.asarray(samples, float)
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return (math.nan, math.nan)
    tail = 50 * (1 - level)
    return (float(np.percentile(samples, tail, method="lower")),
            float(np.percentile(samples, 100 - tail, method="higher")))


def loosest_shared_target(best: dict[float, list[float]], lower_is_better: bool) -> float:
    """The loosest target that more than half the trials of every batch size reach: per batch size the order
    statistic of its best values that a majority of its trials attain (the upper median for an even count), the
    worst of those over batch sizes."""
    sign = 1.0 if lower_is_better else -1.0
    majority = [sign * np.sort(sign * np.asarray(v, float))[len(v) // 2] for v in best.values()]
    return float(sign * max(sign * m for m in majority))


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
                         "steps to target (median)": _censored(r.steps),
                         "95 % CI": _censored_interval_text(r.steps_lo, r.steps_hi),
                         "samples = steps × batch": _censored(r.sfo),
                         "95 % CI ": _censored_interval_text(r.sfo_lo, r.sfo_hi),
                         "share of replicates as B*": fmt_num(r.critical_share, 2)})
        return pd.DataFrame(rows)


def _censored(value: float) -> str:
    return "not reached" if value == math.inf else fmt_num(value, 4)


def _censored_interval_text(lo: float, hi: float) -> str:
    return f"[{_censored(lo)}, {_censored(hi)}]" if not (math.isnan(lo) or math.isnan(hi)) else "—"


def batch_analysis(history: pd.DataFrame, usable: pd.DataFrame, metric: str, *, target: float | None = None,
                   lower_is_better: bool = True, n_boot: int = 1000, seed: int = 0) -> BatchResult | None:
    """Steps and samples to the target per batch size of `usable`'s trials; None if the study is no batch study."""
    if not is_batch_study(usable):
        return None
    notes: list[str] = []
    info = usable.set_index("run_id")
    batch_of = pd.to_numeric(info[BATCH_KEY], errors="coerce")
    if batch_of.isna().any():
        notes.append(f"{int(batch_of.isna().sum())} trials without a numeric {BATCH_KEY} are left out")
        batch_of = batch_of.dropna()
    if batch_of.nunique() < MIN_BATCH_SIZES:
        return None
    evals, _ = evaluations(history, usable[usable["run_id"].isin(batch_of.index)], metric)
    evals = evals[~evals["final"] & evals["samples"].notna()]
    if evals.empty:
        return None
    samples = float(evals["samples"].mode().iloc[0])
    if evals["samples"].nunique() > 1:
        notes.append(f"only the evaluations on {samples:g} samples are used (others had other sample counts)")
    evals = evals[evals["samples"] == samples]
    curves = {run: group.sort_values("step") for run, group in evals.groupby("run_id")}
    sign = 1.0 if lower_is_better else -1.0
    runs = sorted(batch_of.index, key=lambda r: (batch_of[r], r))  # every trial: one without evaluations never reached
    best = {r: float(sign * (sign * curves[r]["value"]).min()) if r in curves else math.nan for r in runs}
    missing = [r for r in runs if r not in curves]
    if missing:
        notes.append(f"{len(missing)} trials have no intermediate evaluation on {samples:g} samples: counted as never "
                     "reaching the target")
    batches = sorted({float(batch_of[r]) for r in runs})
    best_lists = {b: [best[r] for r in runs if batch_of[r] == b and math.isfinite(best[r])] for b in batches}
    if target is None:
        if not all(best_lists.values()):
            return None
        target = loosest_shared_target(best_lists, lower_is_better)
        rule = ("the loosest target more than half the trials of every batch size reach: the worst, over batch sizes, "
                "of the best value their majority attains (the worst batch size often reaches it only near its end)")
    else:
        rule = "given"
    steps = {r: crossing_step(curves[r]["step"].to_numpy(float), curves[r]["value"].to_numpy(float), target,
                              lower_is_better) if r in curves else math.nan for r in runs}
    per_trial = pd.DataFrame({"run_id": runs, "batch": [float(batch_of[r]) for r in runs],
                              "seed": [fmt_value(info.at[r, "train.seed"]) if "train.seed" in info else "—"
                                       for r in runs],
                              "best": [best[r] for r in runs], "steps": [steps[r] for r in runs]})
    per_trial["samples_seen"] = per_trial["steps"] * per_trial["batch"]

    rng = np.random.default_rng(seed)
    b_arr = np.array(batches)
    cells = [per_trial.loc[per_trial["batch"] == b, "steps"].to_numpy(float) for b in batches]
    point_steps = np.array([float(_median_inf(v)) for v in cells])
    resampled = all(len(v) >= 2 for v in cells) and n_boot > 0
    if not resampled:
        notes.append("a batch size with a single trial has no interval: no bootstrap (run more seeds)")
    elif max(len(v) for v in cells) <= 5:
        notes.append(f"{min(len(v) for v in cells)}-{max(len(v) for v in cells)} trials per batch size: the bootstrap "
                     "has few distinct resamples, a coarse interval")
    boot_steps = (np.stack([_median_inf(v[bootstrap_indices(len(v), n_boot, rng)], axis=1) for v in cells], axis=1)
                  if resampled else np.empty((0, len(batches))))
    point_sfo, boot_sfo = point_steps * b_arr, boot_steps * b_arr
    finite_rows = np.isfinite(boot_sfo).any(axis=1)
    argmins = np.full(len(boot_sfo), np.nan)
    argmins[finite_rows] = b_arr[np.argmin(boot_sfo[finite_rows], axis=1)]
    share = [float(np.mean(argmins == b)) if resampled else math.nan for b in batches]
    rows = []
    for j, b in enumerate(batches):
        sub = per_trial[per_trial["batch"] == b]
        s_lo, s_hi = censored_interval(boot_steps[:, j]) if resampled else (math.nan, math.nan)
        rows.append({"batch": b, "trials": len(sub), "reached": int(sub["steps"].notna().sum()),
                     "best": float(np.median(best_lists[b])) if best_lists[b] else math.nan,
                     "steps": point_steps[j], "steps_lo": s_lo, "steps_hi": s_hi,
                     "sfo": point_sfo[j], "sfo_lo": s_lo * b, "sfo_hi": s_hi * b, "critical_share": share[j]})
    per_batch = pd.DataFrame(rows)  # +inf: the median trial (or the interval's end) never reached the target
    reached = np.isfinite(point_sfo)
    critical = float(b_arr[reached][np.argmin(point_sfo[reached])]) if reached.any() else math.nan
    rho = float(spearmanr(b_arr[reached], point_steps[reached]).statistic) if reached.sum() >= 3 else math.nan
    if math.isfinite(critical) and critical in (b_arr[reached].min(), b_arr[reached].max()):
        notes.append(f"B* = {fmt_value(critical)} is at the edge of the batch sizes that reached the target: the "
                     "minimum of samples to target may lie outside the range tried")
    if resampled and not finite_rows.all():
        notes.append(f"{int((~finite_rows).sum())} of {len(argmins)} bootstrap replicates had no batch size reaching "
                     "the target (B* undefined there, left out of its interval)")
    critical_ci = censored_interval(argmins[finite_rows]) if resampled and finite_rows.any() else (math.nan, math.nan)
    return BatchResult(metric=metric, target=target, target_rule=rule, samples=samples, per_trial=per_trial,
                       per_batch=per_batch, critical=critical, critical_ci=critical_ci, steps_rho=rho,
                       lower_is_better=lower_is_better, notes=notes)


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
            ok = pb[np.isfinite(pb[col].to_numpy(float))]
            err = np.abs(np.stack([ok[col] - ok[f"{col}_lo"], ok[f"{col}_hi"] - ok[col]]).astype(float))
            ax.errorbar(ok["batch"], ok[col], yerr=np.nan_to_num(err, posinf=0.0), fmt="o-", color="tab:blue", ms=4,
                        capsize=2, zorder=3, label="median, 95 % CI (no bar up: an end not reached)")
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
                 "batch size the median over its trials (a trial that never reached it counts as infinitely slow, so "
                 "\"not reached\" when half or more did not). "
                 "Samples to target = steps × batch (SFO complexity); the critical batch size B* minimises it. "
                 "Intervals: 95 % order statistics of a bootstrap resampling each batch size's trials, \"not reached\" "
                 "included as a value.\n",
                 markdown_table(r.table()),
                 f"- **Critical batch size** B* = {fmt_value(r.critical)}; 95 % bootstrap interval "
                 f"{fmt_interval(r.critical_ci)} (the share of replicates per batch size is in the table)",
                 f"- **Steps fall as the batch grows**: Spearman ρ of batch size and median steps to target, over the "
                 f"batch sizes whose median trial reached it = {fmt_num(r.steps_rho, 3)} (−1: strictly fewer steps at "
                 "every larger batch)",
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
    files = write_csvs(tables, {"batch_size": result.per_batch, "batch_size_trials": result.per_trial})
    figure = plot_batch(result, plots / "batch_size")
    return BatchSection(result=result, files=files + figure, figure=figure)

"""GAT against DiT at equal compute: the numbers (`analysis.compare` presents them).

`compare_families(data)` splits a study's usable trials by `model.family` into a `Comparison`:

* a power law `metric = a * x^(-b)` per family against the final training MACs (`train_flops`)
  and the per-image forward GFLOPs (`gflops_g`), with trial-bootstrap CIs (`analysis.fit`);
* the equal-compute table: at budgets inside both families' ranges, each family's fitted
  metric (95 % band) and the best value its trials had reached within that budget (the
  compute-efficient frontier, `analysis.frontier`); a family is better only where the bands
  do not overlap ("not separable" otherwise);
* the needed-compute table: for target values, the training MACs each fit needs (CI from the
  bootstrap replicates) and the compute at which the frontier first got there;
* the sampling table: the metric against sampling GFLOPs per image, GAT at 1 NFE, DiT at every
  NFE of its final evaluation (`<metric>_nfe<k>`, `sample_gflops_nfe<k>`).

Unhealthy trials (collapsed, diverged) are left out unless asked for; a fit that is no scaling
law at this scale (`Fit.no_law`) predicts nothing.  Compute: 1 multiply-accumulate = 1 FLOP
(DiT), training MACs cumulative, sampling GFLOPs per image = NFE x forward (x 2 with guidance).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.fit import Fit, FitError, correlations, fit_power_law
from analysis.frontier import compute_frontier, eval_points
from analysis.load import StudyData
from analysis.select import diversity_metric, health_note, primary_metric, select_trials
from gat_core.models.registry import preset_family  # torch-free: the size table

FAMILIES = ("gat", "dit")
FAMILY_NAMES = {"gat": "GAT", "dit": "DiT"}
FIT_AXES = ("train_flops", "gflops_g")
NO_LAW = "no scaling law"  # a prediction cell of a family whose fit is no scaling law at this scale


@dataclass
class Comparison:
    """GAT against DiT on one study (or several read together); see the module docstring.

    Frames (raw numbers, what the CSV files hold):

    * `trials`: the usable trials with `family` and `metric_value` columns;
    * `equal_compute`: budget_macs, then per family f: f_law (its fit is a scaling law), f_fit, f_fit_lo,
      f_fit_hi, f_extrapolated, f_best, f_best_trial, f_best_macs; and dit_over_gat (ratio of the fitted
      values), better (GAT, DiT, "not separable" or "no scaling law (...)");
    * `needed`: target, then per family f: f_macs, f_macs_lo, f_macs_hi, f_extrapolated,
      f_observed_macs, f_observed_trial; and dit_over_gat (ratio of the fitted compute);
    * `sampling`: family, study, run_name, run_id, size, patch, nfe, sample_gflops, value, source;
    * `speed` (optional, attached by the caller): size, patch, family, nfe, sample_gflops,
      images_per_s, ms_per_image, timing.
    """

    studies: list[str]
    tracking_uri: str
    parents: dict[str, str]
    metric: str
    lower_is_better: bool
    trials: pd.DataFrame
    excluded: pd.DataFrame
    fits: dict[str, dict[str, Fit]]
    frontiers: dict[str, pd.DataFrame]
    equal_compute: pd.DataFrame
    needed: pd.DataFrame
    sampling: pd.DataFrame
    n_boot: int = 1000
    seed: int = 0
    diversity: str | None = None  # the diversity metric shown beside `metric`, when logged
    unhealthy: pd.DataFrame = field(default_factory=pd.DataFrame)  # `Selection.unhealthy`
    keep_unhealthy: bool = False
    health_note: str = ""  # `select.health_note`: every unhealthy trial by name, and whether it was used
    skipped_fits: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    speed: pd.DataFrame | None = None
    speed_caption: str = ""
    files: list[Path] = field(default_factory=list)
    logged_to: list[str] = field(default_factory=list)
    path: Path | None = None  # compare.md, once written

    def fit(self, family: str, x: str = "train_flops") -> Fit | None:
        return self.fits.get(family, {}).get(x)

    def law(self, family: str, x: str = "train_flops") -> Fit | None:
        """The family's fit when it is a scaling law (the only fits predictions come from), else None."""
        fit = self.fit(family, x)
        return fit if fit is not None and fit.is_law else None

    def counts(self) -> dict[str, int]:
        return {f: int((self.trials["family"] == f).sum()) for f in FAMILIES}


# --- families ----------------------------------------------------------------------------------
def family_of(trials: pd.DataFrame) -> pd.Series:
    """`model.family` of each trial (gat/dit), else `dit` for a `DiT-*` preset, else `gat` (GAN-only studies)."""
    fam = trials["model.family"] if "model.family" in trials else pd.Series(None, index=trials.index, dtype=object)
    preset = trials["model.preset"] if "model.preset" in trials else pd.Series(None, index=trials.index, dtype=object)
    out = []
    for f, p in zip(fam, preset):
        if isinstance(f, str) and f:
            out.append(f.lower())
        else:  # the preset's rule (GAN-only studies: no preset, gat)
            out.append(preset_family(p) if isinstance(p, str) else "gat")
    return pd.Series(out, index=trials.index, dtype=object)


def _check_families(data: StudyData, family: pd.Series) -> None:
    counts = family.value_counts()
    missing = [f for f in FAMILIES if f not in counts]
    if missing:
        present = ", ".join(f"{FAMILY_NAMES.get(f, f)} ({n} trials)" for f, n in counts.items()) or "none"
        names = " and ".join(FAMILY_NAMES[f] for f in missing)
        raise AnalysisError(f"{', '.join(data.studies)} has no {names} trials (child runs with model.family="
                            f"{'/'.join(missing)}); comparing needs both GAT and DiT trials. Families present: "
                            f"{present}. Add the other family to the study's grid, e.g. "
                            f"grid: {{model.family: [gat, dit]}}")


def _usable_by_family(data: StudyData, metric: str, include_failed: bool, keep_unhealthy: bool = False):
    try:
        sel = select_trials(data, metric, include_failed=include_failed, keep_unhealthy=keep_unhealthy)
    except AnalysisError as exc:
        raise AnalysisError(f"{exc}. Comparing GAT with DiT needs at least 2 usable trials of each family") from None
    usable = sel.usable.assign(family=family_of(sel.usable).to_numpy())
    rest = data.trials[~data.trials["run_id"].isin(sel.usable["run_id"])]  # the excluded rows, in their order
    excluded = sel.excluded.assign(family=family_of(rest).to_numpy())
    for fam in FAMILIES:
        n = int((usable["family"] == fam).sum())
        if n < 2:
            gone = excluded[excluded["family"] == fam]
            why = "; ".join(f"{r.run_name}: {r.reason}" for r in gone.itertuples())
            sick = (gone["health"].isin(["collapsed", "diverged"]) & (gone["status"] == "completed")).any()
            raise AnalysisError(
                f"{', '.join(data.studies)} has {n} usable {FAMILY_NAMES[fam]} trial{'s' if n != 1 else ''} for "
                f"{metric}; comparing needs at least 2 per family (a power law over training compute)"
                + (f". Excluded {FAMILY_NAMES[fam]} trials: {why}" if why else "")
                + (" (--keep-unhealthy keeps the unhealthy ones)" if sick else ""))
    return sel, usable, excluded


# --- fits --------------------------------------------------------------------------------------
def power_fit(x: Any, y: Any, *, n_boot: int = 1000, seed: int = 0, x_name: str = "x", y_name: str = "y",
              group: str = "all", lower_is_better: bool = True) -> Fit:
    """`fit_power_law`, and for exactly two trials at two compute values the exact law through them (no CI,
    so judged as a law by its sign alone)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    kwargs = {"seed": seed, "x_name": x_name, "y_name": y_name, "group": group, "lower_is_better": lower_is_better}
    if len(x) == 2 and x[0] != x[1]:
        fit = fit_power_law(np.tile(x, 2), np.tile(y, 2), n_boot=0, **kwargs)  # the same least-squares line
        return dataclasses.replace(fit, n=2, correlation=correlations(x, y))
    return fit_power_law(x, y, n_boot=n_boot, **kwargs)


def needed_compute(fit: Fit, target: float, lower_is_better: bool = True,
                   level: float = 0.95) -> tuple[float, float, float]:
    """(x, lo, hi): the x at which the power law `fit` reaches `target`, with its bootstrap interval.

    Inverts a * x^(-b) = target.  A law (or bootstrap replicate) that does not improve with x
    (b <= 0 for a lower-is-better metric) never reaches a better value: inf.
    """
    if fit.kind != "power":
        raise ValueError("needed_compute inverts the pure power law only")

    def invert(t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
        t0, t1 = np.asarray(t0, float), np.asarray(t1, float)
        ok = t1 > 0 if lower_is_better else t1 < 0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x = fit.x_ref * np.exp((t0 - math.log(target)) / np.where(ok, t1, 1.0))
        return np.where(ok, x, np.inf)

    point = float(invert(fit.theta[0], fit.theta[1]))
    if len(fit.boot) == 0:
        return point, float("nan"), float("nan")
    reps = invert(fit.boot[:, 0], fit.boot[:, 1])
    tail = (1 - level) / 2
    lo, hi = np.quantile(reps, [tail, 1 - tail], method="inverted_cdf")
    return point, float(lo), float(hi)


def _family_fits(usable: pd.DataFrame, metric: str, n_boot: int, seed: int, lower_is_better: bool = True
                 ) -> tuple[dict[str, dict[str, Fit]], list[dict[str, Any]], list[str]]:
    fits: dict[str, dict[str, Fit]] = {f: {} for f in FAMILIES}
    skipped, notes = [], []
    for fam in FAMILIES:
        ftrials = usable[usable["family"] == fam]
        for x in FIT_AXES:
            pts = ftrials[[x, "metric_value"]].astype(float)
            pts = pts[np.isfinite(pts).all(axis=1) & (pts > 0).all(axis=1)]
            if 0 < len(pts) < len(ftrials):
                notes.append(f"{FAMILY_NAMES[fam]}: {len(ftrials) - len(pts)} of {len(ftrials)} trials have no "
                             f"positive {x} and are left out of its fit")
            try:
                fit = power_fit(pts[x], pts["metric_value"], n_boot=n_boot, seed=seed, x_name=x, y_name=metric,
                                group=FAMILY_NAMES[fam], lower_is_better=lower_is_better)
            except FitError as exc:
                skipped.append({"family": fam, "x": x, "reason": str(exc)})
                continue
            if not fit.is_law:
                notes.append(f"{FAMILY_NAMES[fam]}: no scaling law at this scale against {x} ({fit.no_law}); "
                             + ("no fitted value, needed compute or 'better' comes from it" if x == "train_flops"
                                else "shown for completeness only"))
            if fit.n == 2:
                notes.append(f"{FAMILY_NAMES[fam]}: the power law against {x} goes exactly through 2 trials "
                             f"(no bootstrap interval); more sizes or budgets make it a fit")
            fits[fam][x] = fit
    for s in skipped:
        notes.append(f"no {FAMILY_NAMES[s['family']]} power law against {s['x']}: {s['reason']}")
    return fits, skipped, notes


# --- grids -------------------------------------------------------------------------------------
def _round_sig(value: float, mode: str = "nearest", digits: int = 2) -> float:
    if not (value > 0 and math.isfinite(value)):
        return value
    scale = 10 ** (math.floor(math.log10(value)) - digits + 1)
    op = {"nearest": round, "floor": math.floor, "ceil": math.ceil}[mode]
    return float(op(value / scale) * scale)


def nice_grid(lo: float, hi: float, n: int) -> list[float]:
    """`n` values spread geometrically over [lo, hi], rounded to 2 significant digits (staying inside)."""
    if not (0 < lo <= hi) or n < 1:
        return []
    if hi / lo < 1.0001 or n == 1:
        mid = math.sqrt(lo * hi)
        return [_round_sig(mid)] if lo <= _round_sig(mid) <= hi else [mid]
    first, last = _round_sig(lo, "ceil"), _round_sig(hi, "floor")
    if not first < last:
        return [float(v) for v in np.geomspace(lo, hi, n)]
    inner = [_round_sig(v) for v in np.geomspace(first, last, n)[1:-1]]
    return sorted(set([first, *(v for v in inner if first < v < last), last]))


def _overlap(ranges: list[tuple[float, float]]) -> tuple[float, float, bool]:
    """(lo, hi, overlapping) of the intersection of ranges, or of their union when they do not overlap."""
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if lo <= hi:
        return lo, hi, True
    return min(r[0] for r in ranges), max(r[1] for r in ranges), False


# --- frontier look-ups -------------------------------------------------------------------------
def _best_at(frontier: pd.DataFrame, budget: float) -> tuple[float, str, float]:
    """(best value, trial, its compute) on the frontier with at most `budget` training MACs; NaN before its start."""
    reached = frontier[frontier["train_flops"] <= budget] if len(frontier) else frontier  # sorted by compute
    if reached.empty:
        return float("nan"), "", float("nan")
    row = reached.iloc[-1]  # the frontier's last point within the budget: `frontier_at`, with its trial
    return float(row["value"]), str(row.get("run_name", "")), float(row["train_flops"])


def _first_reaching(frontier: pd.DataFrame, target: float, lower_is_better: bool) -> tuple[float, str]:
    """(training MACs, trial) at which the frontier first reaches `target`; NaN when no evaluation did."""
    if frontier.empty:
        return float("nan"), ""
    values = frontier["value"].to_numpy(float)
    hit = values <= target if lower_is_better else values >= target
    if not hit.any():
        return float("nan"), ""
    row = frontier.iloc[int(np.argmax(hit))]
    return float(row["train_flops"]), str(row.get("run_name", ""))


# --- the tables --------------------------------------------------------------------------------
def _budget_range(usable: pd.DataFrame, fits: dict[str, dict[str, Fit]]) -> list[tuple[float, float]]:
    ranges = []
    for fam in FAMILIES:
        fit = fits[fam].get("train_flops")
        if fit is not None:
            ranges.append(fit.x_range)
        else:
            x = usable.loc[usable["family"] == fam, "train_flops"].astype(float)
            x = x[np.isfinite(x) & (x > 0)]
            if len(x):
                ranges.append((float(x.min()), float(x.max())))
    return ranges


def _law(fits: dict[str, dict[str, Fit]], fam: str) -> Fit | None:
    """The family's fit over training MACs if it is a scaling law: predictions come from nothing else."""
    fit = fits.get(fam, {}).get("train_flops")
    return fit if fit is not None and fit.is_law else None


def _inside(fit: Fit, x: float) -> bool:
    return fit.x_range[0] * (1 - 1e-9) <= x <= fit.x_range[1] * (1 + 1e-9)


def better_family(row: dict[str, Any], lower_is_better: bool = True) -> str:
    """GAT or DiT where both families have a scaling law and their 95 % intervals at this compute do not
    overlap; "not separable" where they overlap (or one has no interval); "no scaling law (...)" otherwise."""
    lawless = [FAMILY_NAMES[f] for f in FAMILIES if not row[f"{f}_law"]]
    if lawless:
        return f"no scaling law ({', '.join(lawless)})"
    (g_lo, g_hi), (d_lo, d_hi) = ((row[f"{f}_fit_lo"], row[f"{f}_fit_hi"]) for f in FAMILIES)
    if not all(np.isfinite(v) for v in (g_lo, g_hi, d_lo, d_hi)) or not (g_hi < d_lo or d_hi < g_lo):
        return "not separable"
    gat_lower = g_hi < d_lo
    return "GAT" if gat_lower == lower_is_better else "DiT"


def equal_compute_table(usable: pd.DataFrame, fits: dict[str, dict[str, Fit]], frontiers: dict[str, pd.DataFrame],
                        budgets: Sequence[float], lower_is_better: bool = True) -> pd.DataFrame:
    """At each training budget (MACs): each family's fitted metric with its 95 % band (scaling laws only), its
    frontier's best, and the family that is better beyond the intervals (`better_family`)."""
    rows = []
    for budget in budgets:
        row: dict[str, Any] = {"budget_macs": float(budget)}
        for fam in FAMILIES:
            fit = _law(fits, fam)
            if fit is not None:
                value = float(fit.predict(budget))
                lo, hi = (float(v[0]) for v in fit.band(np.array([budget]))) if len(fit.boot) else (np.nan, np.nan)
                extrapolated = not _inside(fit, budget)
            else:
                value, lo, hi, extrapolated = np.nan, np.nan, np.nan, False
            best, trial, at = _best_at(frontiers.get(fam, pd.DataFrame()), budget)
            row.update({f"{fam}_law": fit is not None, f"{fam}_fit": value, f"{fam}_fit_lo": lo, f"{fam}_fit_hi": hi,
                        f"{fam}_extrapolated": extrapolated, f"{fam}_best": best, f"{fam}_best_trial": trial,
                        f"{fam}_best_macs": at})
        g, d = row["gat_fit"], row["dit_fit"]
        row["dit_over_gat"] = d / g if g and np.isfinite(g) and np.isfinite(d) else np.nan
        row["better"] = better_family(row, lower_is_better)
        rows.append(row)
    columns = ["budget_macs"] + [f"{f}_{c}" for f in FAMILIES for c in ("law", "fit", "fit_lo", "fit_hi",
                                                                           "extrapolated", "best", "best_trial",
                                                                           "best_macs")]
    return pd.DataFrame(rows, columns=[*columns, "dit_over_gat", "better"])


def needed_compute_table(fits: dict[str, dict[str, Fit]], frontiers: dict[str, pd.DataFrame],
                         targets: Sequence[float], lower_is_better: bool = True) -> pd.DataFrame:
    """Per target metric value: the training MACs each family's scaling law needs (95 % CI; none without a law),
    and its frontier's first hit."""
    rows = []
    for target in targets:
        row: dict[str, Any] = {"target": float(target)}
        for fam in FAMILIES:
            fit = _law(fits, fam)
            if fit is not None:
                macs, lo, hi = needed_compute(fit, float(target), lower_is_better)
                extrapolated = not _inside(fit, macs)
            else:
                macs, lo, hi, extrapolated = np.nan, np.nan, np.nan, False
            seen, trial = _first_reaching(frontiers.get(fam, pd.DataFrame()), float(target), lower_is_better)
            row.update({f"{fam}_law": fit is not None, f"{fam}_macs": macs, f"{fam}_macs_lo": lo,
                        f"{fam}_macs_hi": hi, f"{fam}_extrapolated": extrapolated, f"{fam}_observed_macs": seen,
                        f"{fam}_observed_trial": trial})
        g, d = row["gat_macs"], row["dit_macs"]
        row["dit_over_gat"] = d / g if np.isfinite(g) and np.isfinite(d) and g > 0 else np.nan
        rows.append(row)
    columns = ["target"] + [f"{f}_{c}" for f in FAMILIES for c in ("law", "macs", "macs_lo", "macs_hi",
                                                                      "extrapolated", "observed_macs",
                                                                      "observed_trial")]
    return pd.DataFrame(rows, columns=[*columns, "dit_over_gat"])


def as_float(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return v


def sampling_table(usable: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The metric against sampling GFLOPs per image: GAT at 1 NFE, DiT at every NFE of its final evaluation.

    DiT: `<metric>_nfe<k>` with `sample_gflops_nfe<k>` (else gflops_g x k, x 2 with guidance);
    a DiT trial without them gives its final metric at `train.diffusion.sample_steps`.
    GAT: the final metric at `sample_gflops` (else gflops_g).
    """
    pattern = re.compile(rf"^{re.escape(metric)}_nfe(\d+)$")
    nfe_cols = sorted(((int(m.group(1)), c) for c in usable.columns if (m := pattern.match(c))), key=lambda t: t[0])
    rows = []
    for _, trial in usable.iterrows():
        fam = trial["family"]
        base = {"family": fam, "study": trial.get("study"), "run_name": trial["run_name"], "run_id": trial["run_id"],
                "size": trial.get("size"), "patch": trial.get("patch"), "size_rank": trial.get("size_rank", 0)}
        per_image = as_float(trial.get("sample_gflops"))
        if not np.isfinite(per_image):
            per_image = as_float(trial.get("metric:sample_gflops"))
        forward = as_float(trial.get("gflops_g"))
        if fam != "dit":
            rows.append({**base, "nfe": 1, "sample_gflops": per_image if np.isfinite(per_image) else forward,
                         "value": float(trial["metric_value"]), "source": metric})
            continue
        guided = as_float(trial.get("train.diffusion.guidance")) > 1.0
        found = False
        for k, col in nfe_cols:
            value = as_float(trial.get(col))
            if not np.isfinite(value):
                continue
            cost = as_float(trial.get(f"sample_gflops_nfe{k}"))
            if not np.isfinite(cost):
                cost = forward * k * (2 if guided else 1)
            rows.append({**base, "nfe": k, "sample_gflops": cost, "value": value, "source": col})
            found = True
        if not found:
            steps = as_float(trial.get("train.diffusion.sample_steps"))
            if not np.isfinite(per_image) and np.isfinite(steps):
                per_image = forward * steps * (2 if guided else 1)
            rows.append({**base, "nfe": int(steps) if np.isfinite(steps) else pd.NA, "sample_gflops": per_image,
                         "value": float(trial["metric_value"]), "source": metric})
    frame = pd.DataFrame(rows, columns=["family", "study", "run_name", "run_id", "size", "patch", "size_rank", "nfe",
                                        "sample_gflops", "value", "source"])
    if len(frame):
        frame["_f"] = frame["family"].map({f: i for i, f in enumerate(FAMILIES)}).fillna(len(FAMILIES))
        frame = frame.sort_values(["_f", "size_rank", "run_name", "run_id", "nfe"], kind="stable").drop(columns="_f")
    return frame.reset_index(drop=True)


# --- the comparison ----------------------------------------------------------------------------
def compare_families(data: StudyData, metric: str | None = None, *, budgets: Sequence[float] | None = None,
                     targets: Sequence[float] | None = None, n_budgets: int = 5, n_targets: int = 4,
                     n_boot: int = 1000, seed: int = 0, include_failed: bool = False,
                     keep_unhealthy: bool = False) -> Comparison:
    """GAT against DiT on `data`: per-family fits, the equal-compute, needed-compute and sampling tables.

    Unhealthy trials (collapsed, diverged) are left out, with a note naming them, unless `keep_unhealthy`.

    `budgets` (training MACs) default to `n_budgets` values across the overlap of the families'
    training-compute ranges; `targets` (metric values) to `n_targets` values across the overlap of
    their final metric values (the union, with a note, when the ranges do not overlap).  Raises
    AnalysisError when a family is missing or has fewer than 2 usable trials.
    """
    metric = primary_metric(data, metric)
    family = family_of(data.trials)
    _check_families(data, family)
    sel, usable, excluded = _usable_by_family(data, metric, include_failed, keep_unhealthy)
    health = health_note(sel)
    notes: list[str] = list(data.notes) + ([health] if health else [])
    others = sorted(set(usable["family"]) - set(FAMILIES))
    if others:
        notes.append(f"trials of other families ({', '.join(others)}) are left out of the comparison")
    usable = usable[usable["family"].isin(FAMILIES)].reset_index(drop=True)

    fits, skipped, fit_notes = _family_fits(usable, metric, n_boot, seed, sel.lower_is_better)
    notes += fit_notes
    frontiers = {}
    for fam in FAMILIES:
        points = eval_points(data.history, usable[usable["family"] == fam], metric)
        frontiers[fam] = compute_frontier(points, lower_is_better=sel.lower_is_better)
        if frontiers[fam].empty:
            notes.append(f"{FAMILY_NAMES[fam]}: no per-step evaluations with training compute: no frontier")

    if budgets is None:
        ranges = _budget_range(usable, fits)
        budgets = []
        if len(ranges) == len(FAMILIES):
            lo, hi, overlap = _overlap(ranges)
            budgets = nice_grid(lo, hi, n_budgets)
            if not overlap:
                notes.append("the families' training-compute ranges do not overlap: the equal-compute table spans "
                             "both, and fitted values outside a family's range are extrapolations (marked *)")
    if targets is None:
        ranges = []
        for fam in FAMILIES:
            v = usable.loc[usable["family"] == fam, "metric_value"].astype(float)
            v = v[np.isfinite(v) & (v > 0)]
            if len(v):
                ranges.append((float(v.min()), float(v.max())))
        targets = []
        if len(ranges) == len(FAMILIES):
            lo, hi, overlap = _overlap(ranges)
            targets = nice_grid(lo, hi, n_targets)
            targets = sorted(targets, reverse=sel.lower_is_better)  # from the easiest to the hardest
            if not overlap:
                notes.append("the families' final metric values do not overlap: the targets span both, and needed "
                             "compute outside a family's range is an extrapolation (marked *)")
    equal = equal_compute_table(usable, fits, frontiers, budgets, sel.lower_is_better)
    needed = needed_compute_table(fits, frontiers, targets, sel.lower_is_better)
    sampling = sampling_table(usable, metric)
    dit_sources = sampling.loc[sampling["family"] == "dit", "source"]
    if not dit_sources.ne(metric).any():
        notes.append(f"no DiT trial logged {metric}_nfe<k>: the sampling table has DiT at its training-time NFE only")
    return Comparison(studies=list(data.studies), tracking_uri=data.tracking_uri, parents=dict(data.parents),
                      metric=metric, lower_is_better=sel.lower_is_better, trials=usable, excluded=excluded,
                      fits=fits, frontiers=frontiers, equal_compute=equal, needed=needed, sampling=sampling,
                      n_boot=n_boot, seed=seed, diversity=diversity_metric(data, metric), unhealthy=sel.unhealthy,
                      keep_unhealthy=keep_unhealthy, health_note=health, skipped_fits=skipped, notes=notes)


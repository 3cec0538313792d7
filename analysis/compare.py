"""GAT against DiT at equal compute: fits, equal-compute tables, quality vs sampling cost.

`compare_families(data)` splits the usable trials of a study by `model.family` and gives a
`Comparison`:

* a power law `metric = a * x^(-b)` per family, of the final metric against the final
  training MACs (`train_flops`) and against the per-image forward GFLOPs (`gflops_g`),
  with trial-bootstrap CIs (`analysis.fit`);
* the equal-compute table: at training budgets inside both families' ranges, each family's
  fitted metric (with its 95 % bootstrap band) and the best value any of its trials had
  reached with at most that much training compute (the compute-efficient frontier of the
  per-step evaluations, `analysis.frontier`); a family is named better only where the two
  bands do not overlap ("not separable" otherwise);
* the needed-compute table: for target metric values, the training MACs each family's fit
  needs (CI from the bootstrap replicates) and the compute at which its frontier first got
  there;
* the final values of every trial used, the diversity metric beside the quality metric.

Trials judged unhealthy (collapsed, diverged) are left out unless asked for, and a fit that is
no scaling law at this scale (`Fit.no_law`: exponent CI includes 0, or the wrong sign) is
reported as such and predicts nothing: no fitted values, no needed compute, no "better".
* the sampling table: the metric against sampling GFLOPs per image, GAT at 1 NFE (one G
  forward), DiT at every NFE of its final evaluation (`<metric>_nfe<k>`, `sample_gflops_nfe<k>`).

`write_comparison` writes Markdown, LaTeX (booktabs), CSV, PNG/PDF figures, compare.json and
compare.md, and logs them on the study's parent run under `compare/`.  A sampling-speed table
(measured with torch, so outside this package: `orchestrator.compare_cmd`) can be attached
as `Comparison.speed` before writing.

Compute is in the README's convention: 1 multiply-accumulate = 1 FLOP (DiT), training MACs
cumulative, sampling GFLOPs per image = NFE x forward (x 2 with guidance).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.ablation import _tex, fmt_value
from analysis.errors import AnalysisError
from analysis.fit import Fit, FitError, correlations, fit_power_law, json_safe
from analysis.frontier import compute_frontier, eval_points
from analysis.load import StudyData, open_client
from analysis.plots import axis_label
from analysis.report import final_values, law_label
from analysis.select import diversity_metric, health_note, primary_metric, select_trials

FAMILIES = ("gat", "dit")
FAMILY_NAMES = {"gat": "GAT", "dit": "DiT"}
FAMILY_COLORS = {"gat": "#1f5fa8", "dit": "#c8481c"}
FIT_AXES = ("train_flops", "gflops_g")
FLOP_CONVENTION = ("MAC (DiT): 1 multiply-accumulate = 1 FLOP; training MACs cumulative; sampling GFLOPs per image "
                   "= NFE x forward (x 2 with guidance), GAT = one G forward")
SAMPLING_LABEL = "sampling compute per image (GFLOPs, DiT convention: NFE × forward)"
NO_LAW = "no scaling law"  # a prediction cell of a family whose fit is no scaling law at this scale
ARTIFACT_DIR = "compare"


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
        elif isinstance(p, str) and p.lower().startswith("dit-"):
            out.append("dit")
        else:
            out.append("gat")
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
    if frontier.empty:
        return float("nan"), "", float("nan")
    xs = frontier["train_flops"].to_numpy(float)
    i = int(np.searchsorted(xs, budget, side="right")) - 1
    if i < 0:
        return float("nan"), "", float("nan")
    row = frontier.iloc[i]
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


def _number(value: Any) -> float:
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
        per_image = _number(trial.get("sample_gflops"))
        if not np.isfinite(per_image):
            per_image = _number(trial.get("metric:sample_gflops"))
        forward = _number(trial.get("gflops_g"))
        if fam != "dit":
            rows.append({**base, "nfe": 1, "sample_gflops": per_image if np.isfinite(per_image) else forward,
                         "value": float(trial["metric_value"]), "source": metric})
            continue
        guided = _number(trial.get("train.diffusion.guidance")) > 1.0
        found = False
        for k, col in nfe_cols:
            value = _number(trial.get(col))
            if not np.isfinite(value):
                continue
            cost = _number(trial.get(f"sample_gflops_nfe{k}"))
            if not np.isfinite(cost):
                cost = forward * k * (2 if guided else 1)
            rows.append({**base, "nfe": k, "sample_gflops": cost, "value": value, "source": col})
            found = True
        if not found:
            steps = _number(trial.get("train.diffusion.sample_steps"))
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


# --- display tables ----------------------------------------------------------------------------
def _num(value: Any, digits: int = 4) -> str:
    v = _number(value)
    if not np.isfinite(v):
        return "∞" if v == np.inf else "—"
    return f"{v:.{digits}g}"


def _ci(value: Any, lo: Any, hi: Any, digits: int = 4, star: bool = False) -> str:
    text = _num(value, digits) + ("*" if star and np.isfinite(_number(value)) else "")
    if np.isfinite(_number(lo)) or np.isfinite(_number(hi)):
        text += f" [{_num(lo, digits)}, {_num(hi, digits)}]"
    return text


def _with_trial(value: Any, trial: str, digits: int = 4) -> str:
    text = _num(value, digits)
    return f"{text} ({trial})" if trial and text != "—" else text


def fits_display(comp: Comparison) -> pd.DataFrame:
    rows = []
    for fam in FAMILIES:
        for x in FIT_AXES:
            fit = comp.fit(fam, x)
            if fit is None:
                continue
            rows.append({"family": FAMILY_NAMES[fam], "x": axis_label(x).split(" (")[0] + f" ({x})", "n": str(fit.n),
                         "a [95% CI]": _ci(fit.params["a"], *fit.ci["a"]),
                         "b [95% CI]": _ci(fit.params["b"], *fit.ci["b"]),
                         "R² (log)": _num(fit.r2_log, 3),
                         "x range": f"{_num(fit.x_range[0], 3)} – {_num(fit.x_range[1], 3)}",
                         "scaling law": law_label(fit)})
    return pd.DataFrame(rows, columns=["family", "x", "n", "a [95% CI]", "b [95% CI]", "R² (log)", "x range",
                                       "scaling law"])


def fits_frame(comp: Comparison) -> pd.DataFrame:
    """Raw per-family fit parameters (fits.csv)."""
    rows = []
    for fam in FAMILIES:
        for x in FIT_AXES:
            fit = comp.fit(fam, x)
            if fit is None:
                continue
            rows.append({"family": fam, "x": x, "y": comp.metric, "law": "a*x^-b", "n": fit.n,
                         "a": fit.params["a"], "a_lo": fit.ci["a"][0], "a_hi": fit.ci["a"][1],
                         "b": fit.params["b"], "b_lo": fit.ci["b"][0], "b_hi": fit.ci["b"][1], "r2_log": fit.r2_log,
                         "x_min": fit.x_range[0], "x_max": fit.x_range[1], "bootstrap": fit.n_boot_ok,
                         "scaling_law": fit.is_law, "no_law_reason": fit.no_law})
    return pd.DataFrame(rows, columns=["family", "x", "y", "law", "n", "a", "a_lo", "a_hi", "b", "b_lo", "b_hi",
                                       "r2_log", "x_min", "x_max", "bootstrap", "scaling_law", "no_law_reason"])


def equal_compute_display(comp: Comparison) -> pd.DataFrame:
    m = comp.metric
    rows = []
    for r in comp.equal_compute.to_dict(orient="records"):
        row = {"training MACs": _num(r["budget_macs"], 3)}
        for fam in FAMILIES:
            name = FAMILY_NAMES[fam]
            row[f"{name} {m}, fit [95% CI]"] = (_ci(r[f"{fam}_fit"], r[f"{fam}_fit_lo"], r[f"{fam}_fit_hi"],
                                                    star=bool(r[f"{fam}_extrapolated"])) if r[f"{fam}_law"]
                                                else NO_LAW)
            row[f"{name} best observed (trial)"] = _with_trial(r[f"{fam}_best"], r[f"{fam}_best_trial"])
        row["DiT / GAT (fit)"] = _num(r["dit_over_gat"], 3)
        row["better"] = r["better"] or "—"
        rows.append(row)
    cols = ["training MACs"] + [f"{FAMILY_NAMES[f]} {c}" for f in FAMILIES
                                for c in (f"{m}, fit [95% CI]", "best observed (trial)")]
    cols += ["DiT / GAT (fit)", "better"]
    return pd.DataFrame(rows, columns=cols)


def needed_display(comp: Comparison) -> pd.DataFrame:
    rows = []
    for r in comp.needed.to_dict(orient="records"):
        row = {f"target {comp.metric}": _num(r["target"])}
        for fam in FAMILIES:
            name = FAMILY_NAMES[fam]
            row[f"{name} MACs, fit [95% CI]"] = (_ci(r[f"{fam}_macs"], r[f"{fam}_macs_lo"], r[f"{fam}_macs_hi"], 3,
                                                     star=bool(r[f"{fam}_extrapolated"])) if r[f"{fam}_law"]
                                                 else NO_LAW)
            row[f"{name} first reached (trial)"] = _with_trial(r[f"{fam}_observed_macs"], r[f"{fam}_observed_trial"], 3)
        row["DiT / GAT (fit)"] = _num(r["dit_over_gat"], 3)
        rows.append(row)
    cols = [f"target {comp.metric}"] + [f"{FAMILY_NAMES[f]} {c}" for f in FAMILIES
                                        for c in ("MACs, fit [95% CI]", "first reached (trial)")] + ["DiT / GAT (fit)"]
    return pd.DataFrame(rows, columns=cols)


def sampling_display(comp: Comparison) -> pd.DataFrame:
    s = comp.sampling
    return pd.DataFrame({
        "family": s["family"].map(lambda f: FAMILY_NAMES.get(f, f)),
        "trial": s["run_name"].astype(str),
        "size": _size_key(s, _several_patches(comp.trials)),
        "NFE": s["nfe"].map(fmt_value),
        "sampling GFLOPs/image": s["sample_gflops"].map(lambda v: _num(v, 4)),
        comp.metric: s["value"].map(lambda v: _num(v, 4)),
    })


def trials_display(comp: Comparison) -> pd.DataFrame:
    """Every trial used: family, size, training MACs, health and the final metric with the diversity beside it."""
    t = comp.trials
    values = final_values(t, comp.metric, comp.diversity, [])
    out = pd.DataFrame({"family": t["family"].map(lambda f: FAMILY_NAMES.get(f, f)).to_numpy(),
                        "trial": t["run_name"].astype(str).to_numpy(),
                        "size": _size_key(t, _several_patches(t)).to_numpy(),
                        "training MACs": t["train_flops"].map(lambda v: _num(v, 3)).to_numpy()})
    if "health" in values:
        out["health"] = values["health"].map(fmt_value)
    for col in [comp.metric, *([comp.diversity] if comp.diversity else [])]:
        out[col] = values[col].map(lambda v: _num(v, 4))
    return out


def speed_display(speed: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "size": _size_key(speed, _several_patches(speed)),
        "family": speed["family"].map(lambda f: FAMILY_NAMES.get(f, f)),
        "NFE": speed["nfe"].map(fmt_value),
        "sampling GFLOPs/image": speed["sample_gflops"].map(lambda v: _num(v, 4)),
        "images/s": speed["images_per_s"].map(lambda v: _num(v, 4)),
        "ms/image": speed["ms_per_image"].map(lambda v: _num(v, 3)),
        "timing": speed["timing"].astype(str),
    })


# --- writers -----------------------------------------------------------------------------------
def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of already formatted cells."""
    if frame.empty:
        return "_none_\n"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(str(row[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


_SCI = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)e([+-])0*(\d+)")


def _tex_cell(text: Any) -> str:
    """Escaped cell; 1.2e+13 -> $1.2\\times10^{13}$, ∞ -> $\\infty$."""
    out = _tex(str(text))
    for char, tex in (("∞", r"$\infty$"), ("²", r"\textsuperscript{2}"), ("–", "--"), ("·", r"$\cdot$"),
                      ("×", r"$\times$"), ("≈", r"$\approx$")):
        out = out.replace(char, tex)
    return _SCI.sub(lambda m: f"${m.group(1)}\\times10^{{{'-' if m.group(2) == '-' else ''}{m.group(3)}}}$", out)


def latex_table(frame: pd.DataFrame, caption: str, label: str, align: str | None = None) -> str:
    """A booktabs table (\\toprule, \\midrule, \\bottomrule) of already formatted cells."""
    cols = list(frame.columns)
    align = align or "l" + "r" * (len(cols) - 1)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{_tex_cell(caption)}}}",
             f"\\label{{tab:{label}}}", f"\\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(_tex_cell(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex_cell(row[c]) for c in cols) + r" \\" for _, row in frame.iterrows()]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _captions(comp: Comparison) -> dict[str, str]:
    m = comp.metric
    boot = f"95 % percentile intervals from {comp.n_boot} bootstrap resamples of trials"
    return {
        "fits": f"Power laws {m} = a·x^-b per family, fitted to the final {m} of every usable trial against its "
                f"final training compute (MACs) and against the generator's forward GFLOPs per image; {boot}.",
        "equal_compute": f"{m} at equal training compute (MACs, 1 MAC = 1 FLOP). Fit: the family's power law in "
                         f"training MACs ({boot}; * = outside the family's range, extrapolated; '{NO_LAW}' = its "
                         f"exponent's CI includes 0 or has the wrong sign, so nothing is predicted from it). Best "
                         f"observed (measured): the best {m} any trial of the family had reached with at most that "
                         f"compute, over all its evaluations (the compute-efficient frontier; intermediate "
                         f"evaluations use fewer samples than final ones). Better: the family whose interval lies "
                         f"entirely on the better side of the other's; 'not separable' where the intervals overlap.",
        "needed": f"Training MACs each family needs to reach a target {m}: the inverse of its power law ({boot}; "
                  f"* = extrapolated beyond the family's trials; ∞ = replicates that do not improve with compute; "
                  f"'{NO_LAW}' = none is computed from a fit that is no law) and the compute at which its frontier "
                  f"first reached the target (— = never).",
        "trials": f"Final {m} of every trial used" + (f", with {comp.diversity} beside it (1 = as varied as the "
                                                      f"data, near 0 = mode collapse)" if comp.diversity else "")
                  + ".",
        "sampling": f"{m} against sampling compute per image (GFLOPs, 1 MAC = 1 FLOP): GAT = one generator "
                    f"forward (1 NFE); DiT = NFE × denoiser forward (× 2 with guidance), at every NFE of its final "
                    f"evaluation.",
    }


def _several_patches(trials: pd.DataFrame) -> bool:
    return "patch" in trials and trials["patch"].map(fmt_value).nunique() > 1


def _size_key(frame: pd.DataFrame, several_patches: bool) -> pd.Series:
    """Model size, with the patch size when the study has several."""
    if several_patches:
        return frame["size"].astype(str) + "/" + frame["patch"].map(fmt_value)
    return frame["size"].astype(str)


def _headline(comp: Comparison) -> list[str]:
    lines = []
    for fam in FAMILIES:
        fit = comp.fit(fam)
        if fit is not None:
            lo, hi = fit.ci["b"]
            ci = f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else ""
            law = f"{comp.metric} ≈ {fit.params['a']:.4g}·C^-{fit.params['b']:.3f}{ci}"
            if not fit.is_law:
                law = f"**no scaling law at this scale** ({fit.no_law}; fit b = {fit.params['b']:.3f}{ci})"
            lines.append(f"{FAMILY_NAMES[fam]}: {law} over training MACs C (n = {fit.n}, R² = {fit.r2_log:.3f})")
    return lines


def write_comparison(comp: Comparison, out_dir: Path, *, log_artifacts: bool = True) -> Path:
    """Tables (Markdown, LaTeX, CSV), figures (PNG, PDF), compare.json and compare.md in `out_dir`; logged on
    each study's parent run under `compare/` unless `log_artifacts` is False.  Returns compare.md."""
    out_dir = Path(out_dir)
    tables, plots = out_dir / "tables", out_dir / "plots"
    tables.mkdir(parents=True, exist_ok=True)
    plots.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    captions = _captions(comp)
    displays = {"fits": fits_display(comp), "equal_compute": equal_compute_display(comp),
                "needed": needed_display(comp), "sampling": sampling_display(comp), "trials": trials_display(comp)}
    raws = {"fits": fits_frame(comp), "equal_compute": comp.equal_compute, "needed": comp.needed,
            "sampling": comp.sampling.drop(columns=["size_rank"]),
            "trials": final_values(comp.trials, comp.metric, comp.diversity,
                                   ["family", "trial_id", "run_id", "size", "patch", "train_flops"])}
    if comp.speed is not None:
        displays["speed"] = speed_display(comp.speed)
        raws["speed"] = comp.speed
        captions["speed"] = comp.speed_caption or "Sampling speed (images/s)."
    names = {"fits": "fits", "equal_compute": "equal_compute", "needed": "needed_compute", "sampling": "sampling",
             "trials": "trials", "speed": "speed"}
    for key, display in displays.items():
        stem = tables / names[key]
        stem.with_suffix(".md").write_text(f"{captions[key]}\n\n{markdown_table(display)}")
        stem.with_suffix(".tex").write_text(latex_table(display, captions[key], f"compare-{names[key]}"))
        raws[key].to_csv(stem.with_suffix(".csv"), index=False)
        files += [stem.with_suffix(s) for s in (".md", ".tex", ".csv")]
    from analysis.compare_plots import plot_sampling_compute, plot_training_compute  # figures import this module

    figures = {"train": plot_training_compute(comp, plots / "compare_train_compute"),
               "sampling": plot_sampling_compute(comp, plots / "compare_sampling_compute")}
    files += [p for paths in figures.values() for p in paths]

    summary = {
        "studies": comp.studies, "tracking_uri": comp.tracking_uri, "metric": comp.metric,
        "lower_is_better": comp.lower_is_better, "flops_convention": FLOP_CONVENTION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "trials": comp.counts(),
        "bootstrap": {"resamples": comp.n_boot, "seed": comp.seed, "unit": "trial"},
        "fits": {fam: {x: f.to_dict() for x, f in comp.fits[fam].items()} for fam in FAMILIES},
        "skipped_fits": comp.skipped_fits,
        "equal_compute": _records(comp.equal_compute), "needed_compute": _records(comp.needed),
        "sampling": _records(comp.sampling.drop(columns=["size_rank"])),
        "speed": None if comp.speed is None else {"caption": comp.speed_caption, "rows": _records(comp.speed)},
        "trial_values": _records(raws["trials"]), "diversity_metric": comp.diversity,
        "keep_unhealthy": comp.keep_unhealthy, "unhealthy": _records(comp.unhealthy),
        "excluded": _records(comp.excluded), "notes": comp.notes,
    }
    (out_dir / "compare.json").write_text(json.dumps(json_safe(summary), indent=2, default=str))
    files.append(out_dir / "compare.json")
    path = out_dir / "compare.md"
    path.write_text(_markdown(comp, displays, captions, figures, out_dir))
    files.append(path)
    comp.files, comp.path = files, path
    if log_artifacts:
        log_comparison(comp, out_dir)
    return path


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of plain values (missing values as None)."""
    plain = frame.astype(object)
    return plain.where(plain.notna(), None).to_dict(orient="records")


def log_comparison(comp: Comparison, out_dir: Path) -> list[str]:
    """The files `write_comparison` wrote, on each study's parent run under compare/ (notes a study without one)."""
    client = open_client(comp.tracking_uri)
    for study in comp.studies:
        parent = comp.parents.get(study)
        if parent is None:
            comp.notes.append(f"study {study} has no parent run: the comparison is not logged to MLflow")
            continue
        for path in comp.files:
            folder = path.parent.relative_to(out_dir).as_posix()
            client.log_artifact(parent, str(path), artifact_path=ARTIFACT_DIR if folder == "." else
                                f"{ARTIFACT_DIR}/{folder}")
        comp.logged_to.append(parent)
    return comp.logged_to


def _img(paths: list[Path], out_dir: Path, alt: str) -> str:
    png, pdf = (p.relative_to(out_dir).as_posix() for p in paths)
    return f"![{alt}]({png})\n\n[PDF]({pdf})\n"


def _links(name: str) -> str:
    return (f"Files: [Markdown](tables/{name}.md) · [LaTeX](tables/{name}.tex) · [CSV](tables/{name}.csv)\n")


def _markdown(comp: Comparison, displays: dict[str, pd.DataFrame], captions: dict[str, str],
              figures: dict[str, list[Path]], out_dir: Path) -> str:
    counts = comp.counts()
    direction = "lower" if comp.lower_is_better else "higher"
    left_out = int((~comp.unhealthy["used"]).sum()) if len(comp.unhealthy) else 0
    md = [f"# GAT vs DiT: {', '.join(comp.studies)}\n",
          f"- metric: **{comp.metric}** ({direction} is better); final value = last evaluation of each trial"
          + (f"; diversity: **{comp.diversity}** (1 = as varied as the data, near 0 = mode collapse)"
             if comp.diversity else ""),
          f"- trials used: GAT {counts['gat']}, DiT {counts['dit']}"
          + (f"; {len(comp.excluded)} excluded" if len(comp.excluded) else "")
          + (f" ({left_out} as unhealthy: see Excluded trials)" if left_out else "")
          + ("; unhealthy trials kept (--keep-unhealthy)" if comp.keep_unhealthy and len(comp.unhealthy) else ""),
          f"- compute convention: {FLOP_CONVENTION}",
          f"- uncertainty: 95 % percentile intervals from {comp.n_boot} bootstrap resamples of trials "
          f"(seed {comp.seed})",
          f"- MLflow: `{comp.tracking_uri}`\n"]
    head = _headline(comp)
    if head:
        md += ["**Fitted laws**\n", *[f"- {h}" for h in head], ""]
    md += ["## Metric vs training compute\n", captions["fits"] + "\n", markdown_table(displays["fits"]),
           _links("fits"), _img(figures["train"], out_dir, f"{comp.metric} vs training compute, GAT and DiT")]
    md += ["## Trials (final values)\n", captions["trials"] + "\n", markdown_table(displays["trials"]),
           _links("trials")]
    md += ["## Equal training compute\n", captions["equal_compute"] + "\n", markdown_table(displays["equal_compute"]),
           _links("equal_compute")]
    md += ["## Training compute needed for a target\n", captions["needed"] + "\n", markdown_table(displays["needed"]),
           _links("needed_compute")]
    md += ["## Metric vs sampling compute per image\n", captions["sampling"] + "\n",
           _img(figures["sampling"], out_dir, f"{comp.metric} vs sampling compute per image"),
           markdown_table(displays["sampling"]), _links("sampling")]
    md.append("## Sampling speed\n")
    if "speed" in displays:
        md += [captions["speed"] + "\n", markdown_table(displays["speed"]), _links("speed")]
    else:
        md.append("_not measured (--no-speed)_\n")
    note = comp.health_note
    if len(comp.excluded):
        md += ["## Excluded trials\n", *([note + "\n"] if note else []), markdown_table(comp.excluded.map(fmt_value))]
    if comp.notes:
        md += ["## Notes\n", *[f"- {n}" for n in comp.notes], ""]
    return "\n".join(md) + "\n"

"""IsoFLOP analysis (Chinchilla's approach 2): the compute-optimal model size and metric per training budget.

Per budget C, log metric is fitted as a parabola in log model size N over that budget's trials; its
vertex is the compute-optimal size N_opt(C), the metric there metric_opt(C).  Across budgets,
N_opt = k * C^a and metric_opt = m * C^-b are fitted by least squares in log-log space.

Uncertainty comes from one joint bootstrap: every replicate resamples, within every budget, that
budget's trials (seeds included) with replacement, refits every parabola and then both laws, so the
exponents' percentile intervals carry the uncertainty of each vertex.  A replicate in which a budget has
fewer than 3 distinct sizes, or a parabola without an optimum (curvature of the wrong sign for the
metric's direction), has no vertex there; it is left out of the laws and counted.

A study is an isoFLOP study when its trials carry `train.flops_budget` with at least 2 budgets each
tried at 3 or more sizes (what `isoflop:` in a study file expands to; a grid over budgets and sizes is
one too).  N is `params_g` (the generator's parameters; DiT's denoiser's) by default.
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
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.fit import json_safe
from analysis.render import fmt_interval

BUDGET_KEY = "train.flops_budget"
SIZE_AXIS = "params_g"
MIN_SIZES = 3  # a parabola needs 3 distinct sizes
MIN_VALID = 0.5  # below this fraction of replicates with a vertex, percentile intervals under-cover: none is given
WARN_VALID = 0.8
LEVEL = 0.95


def budgets_of(trials: pd.DataFrame) -> pd.Series:
    """Each trial's budget (MACs) as floats; NaN where it has none."""
    if BUDGET_KEY not in trials:
        return pd.Series(np.nan, index=trials.index, dtype=float)
    return pd.to_numeric(trials[BUDGET_KEY], errors="coerce").astype(float)


def is_isoflop(trials: pd.DataFrame, size_axis: str = SIZE_AXIS) -> bool:
    """At least 2 budgets tried at MIN_SIZES or more distinct sizes each."""
    if size_axis not in trials or not len(trials):
        return False
    budgets = budgets_of(trials)
    sizes = trials[budgets.notna()].groupby(budgets[budgets.notna()])[size_axis].nunique()
    return int((sizes >= MIN_SIZES).sum()) >= 2


# --- the maths, vectorised over bootstrap replicates ------------------------------------------------------
def _parabolas(lx: np.ndarray, ly: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares parabolas ly = p0 + p1 lx + p2 lx^2 for each row of `weights` (counts, (B, n)):
    ((B, 3) coefficients, (B,) True where the row has MIN_SIZES distinct lx with weight)."""
    design = np.stack([np.ones_like(lx), lx, lx * lx], axis=1)
    _, which = np.unique(lx, return_inverse=True)
    onehot = np.zeros((len(lx), which.max() + 1))
    onehot[np.arange(len(lx)), which] = 1.0
    enough = ((weights @ onehot) > 0).sum(axis=1) >= MIN_SIZES
    coef = np.full((len(weights), 3), np.nan)
    if enough.any():
        w = weights[enough]
        lhs = np.einsum("bn,ni,nj->bij", w, design, design)
        rhs = np.einsum("bn,ni,n->bi", w, design, ly)
        coef[enough] = np.linalg.solve(lhs, rhs[:, :, None])[:, :, 0]
    return coef, enough


def _vertices(coef: np.ndarray, lower_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    """(x*, log metric at x*) of each parabola; NaN where it has no optimum (the wrong curvature)."""
    p0, p1, p2 = coef[:, 0], coef[:, 1], coef[:, 2]
    ok = np.isfinite(p2) & ((p2 > 0) if lower_is_better else (p2 < 0))
    safe = np.where(ok, p2, 1.0)
    x_star = np.where(ok, -p1 / (2 * safe), np.nan)
    return x_star, np.where(ok, p0 - p1 * p1 / (4 * safe), np.nan)


def _lines(lc: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Least-squares lines ly = c0 + c1 lc for each row of ly ((B, J) -> (B, 2)); lc is centred."""
    slope = (ly * lc).sum(axis=-1) / (lc * lc).sum()
    return np.stack([ly.mean(axis=-1), slope], axis=-1)


def _interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return (math.nan, math.nan)
    tail = 50 * (1 - level)
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


# --- results ---------------------------------------------------------------------------------------------
@dataclass
class Profile:
    """One budget's isoFLOP profile: its parabola and vertex (the compute-optimal size and metric)."""

    budget: float
    n_trials: int
    n_sizes: int
    size_range: tuple[float, float]
    centre: float                      # the parabola is in log(N) - centre
    coef: np.ndarray                   # p0, p1, p2 (NaN when too few sizes)
    n_opt: float                       # NaN when the parabola has no optimum
    metric_opt: float
    n_opt_ci: tuple[float, float]
    metric_opt_ci: tuple[float, float]
    log_n_boot: np.ndarray = field(repr=False)       # (B,) log N_opt per replicate, NaN where none
    log_metric_boot: np.ndarray = field(repr=False)  # (B,) log metric_opt per replicate
    note: str = ""

    @property
    def ok(self) -> bool:
        return math.isfinite(self.n_opt)

    @property
    def inside(self) -> bool:
        """The vertex lies within the sizes tried (else it is an extrapolation of the parabola)."""
        return self.ok and self.size_range[0] <= self.n_opt <= self.size_range[1]

    def curve(self, sizes: np.ndarray) -> np.ndarray:
        lx = np.log(np.asarray(sizes, float)) - self.centre
        return np.exp(self.coef[0] + self.coef[1] * lx + self.coef[2] * lx * lx)


@dataclass
class Law:
    """y = coef * C^exponent over the budgets, fitted to the vertices, with bootstrap intervals."""

    name: str                          # "n_opt" or "metric_opt"
    c_ref: float                       # geometric mean of the budgets used
    theta: np.ndarray                  # (log y at c_ref, exponent)
    boot: np.ndarray = field(repr=False)  # (B_ok, 2)
    budgets: list[float] = field(default_factory=list)
    residuals: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)  # log-space, per budget

    @property
    def exponent(self) -> float:
        return float(self.theta[1])

    @property
    def coef(self) -> float:
        return float(math.exp(self.theta[0] - self.theta[1] * math.log(self.c_ref)))

    @property
    def exponent_ci(self) -> tuple[float, float]:
        return _interval(self.boot[:, 1]) if len(self.boot) else (math.nan, math.nan)

    def predict(self, budgets: Any) -> np.ndarray:
        return np.exp(self.theta[0] + self.theta[1] * np.log(np.asarray(budgets, float) / self.c_ref))

    def boot_log(self, budgets: Any) -> np.ndarray:
        """(B_ok, m) log predictions of every replicate at `budgets`."""
        lc = np.log(np.asarray(budgets, float) / self.c_ref)
        return self.boot[:, :1] + self.boot[:, 1:2] * lc[None, :]

    def band(self, budgets: Any, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
        if not len(self.boot):
            y = self.predict(budgets)
            return y, y
        curves = np.exp(self.boot_log(budgets))
        tail = 50 * (1 - level)
        return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)


@dataclass
class IsoflopResult:
    """The isoFLOP analysis of one group of trials (one variant of the study's switches)."""

    group: str
    metric: str
    size_axis: str
    lower_is_better: bool
    profiles: list[Profile]
    n_opt_law: Law | None              # N_opt = k C^a
    metric_law: Law | None             # metric_opt = m C^-b (its exponent is -b)
    points: pd.DataFrame               # budget, size, metric_value, run_name of the trials used
    n_boot: int = 0
    n_boot_ok: int = 0
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def a(self) -> float:
        return self.n_opt_law.exponent if self.n_opt_law else math.nan

    @property
    def a_ci(self) -> tuple[float, float]:
        return self.n_opt_law.exponent_ci if self.n_opt_law else (math.nan, math.nan)

    @property
    def b(self) -> float:
        return -self.metric_law.exponent if self.metric_law else math.nan

    @property
    def b_ci(self) -> tuple[float, float]:
        if not self.metric_law:
            return (math.nan, math.nan)
        lo, hi = self.metric_law.exponent_ci
        return (-hi, -lo)

    def profiles_frame(self) -> pd.DataFrame:
        rows = [{"group": self.group, "budget_macs": p.budget, "trials": p.n_trials, "sizes": p.n_sizes,
                 "min_size": p.size_range[0], "max_size": p.size_range[1], "curvature": p.coef[2],
                 "n_opt": p.n_opt, "n_opt_ci95": fmt_interval(p.n_opt_ci), f"{self.metric}_opt": p.metric_opt,
                 f"{self.metric}_opt_ci95": fmt_interval(p.metric_opt_ci), "inside_sizes": p.inside if p.ok else None,
                 "note": p.note} for p in self.profiles]
        return pd.DataFrame(rows)

    def laws_frame(self) -> pd.DataFrame:
        rows = []
        for law, label, exp_name, value, ci in (
                (self.n_opt_law, f"N_opt = k·C^a ({self.size_axis})", "a", self.a, self.a_ci),
                (self.metric_law, f"{self.metric}_opt = m·C^-b", "b", self.b, self.b_ci)):
            if law is None:
                continue
            rows.append({"group": self.group, "law": label, "exponent": exp_name, "value": value,
                         "ci95": fmt_interval(ci), "coef": law.coef, "budgets": len(law.budgets),
                         "bootstrap_ok": f"{self.n_boot_ok}/{self.n_boot}"})
        return pd.DataFrame(rows, columns=["group", "law", "exponent", "value", "ci95", "coef", "budgets",
                                           "bootstrap_ok"])

    def to_dict(self) -> dict[str, Any]:
        def law(x: Law | None, name: str, value: float, ci: tuple[float, float]) -> dict[str, Any] | None:
            if x is None:
                return None
            return {"exponent": name, "value": value, "ci95": list(ci), "coef": x.coef, "budgets": x.budgets}

        return json_safe({
            "group": self.group, "metric": self.metric, "size_axis": self.size_axis,
            "lower_is_better": self.lower_is_better, "method": "Chinchilla approach 2: per budget, log metric = "
            "parabola in log size; vertex = compute-optimal size; laws by least squares in log-log space",
            "profiles": [{"budget_macs": p.budget, "trials": p.n_trials, "sizes": p.n_sizes,
                          "size_range": list(p.size_range), "parabola_log": list(p.coef), "log_size_centre": p.centre,
                          "n_opt": p.n_opt, "n_opt_ci95": list(p.n_opt_ci), "metric_opt": p.metric_opt,
                          "metric_opt_ci95": list(p.metric_opt_ci), "inside_sizes": p.inside, "note": p.note}
                         for p in self.profiles],
            "n_opt_law": law(self.n_opt_law, "a", self.a, self.a_ci),
            "metric_opt_law": law(self.metric_law, "b", self.b, self.b_ci),
            "bootstrap": {"resamples": self.n_boot, "valid": self.n_boot_ok, "seed": self.seed,
                          "unit": "trial, within each budget"},
            "notes": self.notes,
        })


def isoflop_fit(trials: pd.DataFrame, metric: str, *, size_axis: str = SIZE_AXIS, lower_is_better: bool = True,
                n_boot: int = 1000, seed: int = 0, group: str = "all", extrapolated: bool = False) -> IsoflopResult:
    """Profiles per budget and the two laws for `trials` (with `metric_value`, `size_axis` and the budget).

    A budget whose vertex lies outside the sizes it tried did not bracket its optimum: the parabola's
    extrapolation is no measurement, so it is left out of the laws (with a note) unless `extrapolated`."""
    budgets = budgets_of(trials)
    sizes = pd.to_numeric(trials[size_axis], errors="coerce").astype(float) if size_axis in trials \
        else pd.Series(np.nan, index=trials.index)
    values = pd.to_numeric(trials["metric_value"], errors="coerce").astype(float)
    good = budgets.notna() & np.isfinite(sizes) & (sizes > 0) & np.isfinite(values) & (values > 0)
    notes = []
    if (~good).any():
        notes.append(f"{int((~good).sum())} trials without a budget, a positive {size_axis} or a positive "
                     f"{metric} are left out of the isoFLOP analysis")
    points = pd.DataFrame({"budget": budgets[good], "size": sizes[good], "metric_value": values[good],
                           "run_name": trials.loc[good, "run_name"] if "run_name" in trials else ""})
    rng = np.random.default_rng(seed)
    profiles: list[Profile] = []
    for budget, rows in points.groupby("budget", sort=True):
        lx_raw, ly = np.log(rows["size"].to_numpy()), np.log(rows["metric_value"].to_numpy())
        centre = float(lx_raw.mean())
        lx = lx_raw - centre
        n = len(lx)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) if n_boot else np.empty((0, n))
        coef, _ = _parabolas(lx, ly, np.ones((1, n)))
        x_star, m_star = _vertices(coef, lower_is_better)
        boot_coef, _ = _parabolas(lx, ly, counts.astype(float)) if n_boot else (np.empty((0, 3)), None)
        bx, bm = _vertices(boot_coef, lower_is_better) if n_boot else (np.empty(0), np.empty(0))
        n_sizes = len(np.unique(lx))
        note = ""
        if n_boot and n <= MIN_SIZES:  # the parabola passes through the trials: no residual to resample
            bx, bm = np.full(n_boot, np.nan), np.full(n_boot, np.nan)
            note = f"{n} trials at {n_sizes} sizes: too few to resample (no interval); add sizes or seeds"
        elif n_boot and np.isfinite(bx).mean() < MIN_VALID:
            note = (f"only {int(np.isfinite(bx).sum())} of {n_boot} bootstrap replicates have an optimum (no "
                    "interval): a flat or noisy profile; add sizes or seeds")
            bx, bm = np.full(n_boot, np.nan), np.full(n_boot, np.nan)
        if n_sizes < MIN_SIZES:
            note = f"{n_sizes} sizes: a parabola needs {MIN_SIZES}"
            bx, bm = np.full(n_boot, np.nan), np.full(n_boot, np.nan)
        elif not np.isfinite(x_star[0]):
            shape = "a maximum" if lower_is_better else "a minimum"
            note = (f"the profile has {shape}, not an optimum (curvature {coef[0, 2]:.3g}): the best size is at an "
                    "end of the sizes tried, or the trials are too noisy")
        profile = Profile(budget=float(budget), n_trials=n, n_sizes=n_sizes,
                          size_range=(float(rows["size"].min()), float(rows["size"].max())), centre=centre,
                          coef=coef[0], n_opt=float(np.exp(centre + x_star[0])), metric_opt=float(np.exp(m_star[0])),
                          n_opt_ci=tuple(np.exp(np.array(_interval(centre + bx)))),
                          metric_opt_ci=tuple(np.exp(np.array(_interval(bm)))),
                          log_n_boot=centre + bx, log_metric_boot=bm, note=note)
        if profile.ok and not profile.inside:
            side = "smaller" if profile.n_opt < profile.size_range[0] else "larger"
            profile.note = "; ".join(filter(None, [note, (
                f"the optimum {profile.n_opt:.3g} lies outside the sizes tried [{profile.size_range[0]:.3g}, "
                f"{profile.size_range[1]:.3g}]: an extrapolation of the parabola; add {side} sizes")]))
        profiles.append(profile)
    result = IsoflopResult(group=group, metric=metric, size_axis=size_axis, lower_is_better=lower_is_better,
                           profiles=profiles, n_opt_law=None, metric_law=None, points=points, n_boot=n_boot,
                           seed=seed, notes=notes)
    used = [p for p in profiles if p.ok and (p.inside or extrapolated)]
    for p in profiles:
        if p.note and p not in used:
            notes.append(f"budget {p.budget:.3g}: no compute-optimal size ({p.note}); left out of the laws")
        elif p.note:
            notes.append(f"budget {p.budget:.3g}: {p.note}" + ("" if p.inside else "; used in the laws (extrapolated)"))
    if len(used) < 2:
        notes.append(f"{len(used)} budgets have a compute-optimal size: the laws N_opt ~ C^a and metric_opt ~ C^-b "
                     "need 2")
        return result
    c = np.array([p.budget for p in used])
    c_ref = float(np.exp(np.log(c).mean()))
    lc = np.log(c / c_ref)
    log_n = np.log([p.n_opt for p in used])
    log_m = np.log([p.metric_opt for p in used])
    boot_n = np.stack([p.log_n_boot for p in used], axis=1) if n_boot else np.empty((0, len(used)))
    boot_m = np.stack([p.log_metric_boot for p in used], axis=1) if n_boot else np.empty((0, len(used)))
    valid = np.isfinite(boot_n).all(axis=1) & np.isfinite(boot_m).all(axis=1)
    result.n_boot_ok = int(valid.sum())
    if n_boot and result.n_boot_ok < MIN_VALID * n_boot:
        notes.append(f"only {result.n_boot_ok} of {n_boot} bootstrap replicates had an optimum at every budget: "
                     "no interval is given for a and b (too few sizes or seeds per budget, or flat profiles)")
        valid[:] = False
    elif n_boot and result.n_boot_ok < WARN_VALID * n_boot:
        notes.append(f"only {result.n_boot_ok} of {n_boot} bootstrap replicates had an optimum at every budget: "
                     "the intervals of a and b are rough (add sizes or seeds per budget)")
    for name, full, boot in (("n_opt", log_n, boot_n), ("metric_opt", log_m, boot_m)):
        theta = _lines(lc, full[None, :])[0]
        law = Law(name=name, c_ref=c_ref, theta=theta, boot=_lines(lc, boot[valid]) if valid.any() else
                  np.empty((0, 2)), budgets=[float(v) for v in c], residuals=full - (theta[0] + theta[1] * lc))
        if name == "n_opt":
            result.n_opt_law = law
        else:
            result.metric_law = law
    return result


def isoflop_analysis(usable: pd.DataFrame, metric: str, switches: list[str] | tuple[str, ...] = (), *,
                     size_axis: str = SIZE_AXIS, lower_is_better: bool = True, n_boot: int = 1000,
                     seed: int = 0) -> list[IsoflopResult]:
    """One `IsoflopResult` per variant of the study's switches (never pooling trials of different laws)."""
    from analysis.scaling import variants

    return [isoflop_fit(trials, metric, size_axis=size_axis, lower_is_better=lower_is_better, n_boot=n_boot,
                        seed=seed, group=label)
            for label, trials in variants(usable, [s for s in switches if s != BUDGET_KEY])]


# --- figures ---------------------------------------------------------------------------------------------
def compact_log_axis(axis: Any) -> None:
    """Ticks at 1 and 3 x 10^k labelled 1e12, 3e12 (short enough not to collide), decades over wide ranges."""
    lo, hi = sorted(abs(v) for v in axis.get_view_interval())
    wide = lo <= 0 or np.log10(hi / lo) > 3
    axis.set_major_locator(LogLocator(base=10, numticks=10) if wide else LogLocator(base=10, subs=(1.0, 3.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e+0", "e").replace("e+", "e")
                                           .replace("e-0", "e-")))
    axis.set_minor_formatter(NullFormatter())


def plot_isoflop(result: IsoflopResult, stem: Path) -> list[Path]:
    """Left: the profiles (metric vs size per budget, parabolas, vertices with CIs). Right: N_opt and
    metric_opt against the budget with the fitted laws and their bootstrap bands."""
    from analysis.plots import PAPER_RC, _log_axis, save

    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(7.2, 2.6), layout="constrained")
        ax_p, ax_n, ax_m = fig.subplots(1, 3)
        cmap = matplotlib.colormaps["plasma"]
        shades = np.linspace(0.05, 0.8, max(1, len(result.profiles)))
        for shade, profile in zip(shades, result.profiles):
            color = cmap(shade)
            pts = result.points[result.points["budget"] == profile.budget]
            ax_p.scatter(pts["size"], pts["metric_value"], color=color, s=14, zorder=3, edgecolors="white",
                         linewidths=0.4, label=f"C = {profile.budget:.2g}")
            if np.isfinite(profile.coef).all():
                lo, hi = profile.size_range
                grid = np.geomspace(lo / 1.2, hi * 1.2, 100)
                ax_p.plot(grid, profile.curve(grid), color=color, lw=1)
            if profile.ok:
                lo, hi = profile.n_opt_ci
                ax_p.errorbar([profile.n_opt], [profile.metric_opt], xerr=[[max(0.0, profile.n_opt - lo)],
                              [max(0.0, hi - profile.n_opt)]] if math.isfinite(lo) else None, color=color,
                              marker="*", ms=8, capsize=2, zorder=4, mec="black", mew=0.4)
        ax_p.set(xscale="log", yscale="log", xlabel=f"model size ({result.size_axis})", ylabel=result.metric,
                 title="isoFLOP profiles (★ = optimum, 95 % CI)")
        ax_p.legend(fontsize=5.5)
        for ax, law, attr, label in ((ax_n, result.n_opt_law, "n_opt", f"N_opt ({result.size_axis})"),
                                     (ax_m, result.metric_law, "metric_opt", f"{result.metric} at N_opt")):
            ok = [p for p in result.profiles if p.ok]
            c = np.array([p.budget for p in ok])
            y = np.array([getattr(p, attr) for p in ok])
            ci = np.array([getattr(p, f"{attr}_ci") for p in ok]).reshape(-1, 2)
            if len(ok):
                err = np.abs(np.stack([y - ci[:, 0], ci[:, 1] - y])) if np.isfinite(ci).all() else None
                ax.errorbar(c, y, yerr=err, fmt="o", color="black", ms=4, capsize=2, zorder=3)
            if law is not None:
                grid = np.geomspace(c.min() / 1.5, c.max() * 1.5, 100)
                lo, hi = law.band(grid)
                ax.fill_between(grid, lo, hi, color="tab:blue", alpha=0.2, lw=0)
                name, value, ci = (("a", result.a, result.a_ci) if attr == "n_opt" else ("b", result.b, result.b_ci))
                interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if np.isfinite(ci).all() else "(no interval)"
                ax.plot(grid, law.predict(grid), color="tab:blue", label=f"{name} = {value:.3f} {interval}")
                ax.legend()
            ax.set(xscale="log", yscale="log", xlabel="training budget C (MACs)", ylabel=label)
        for ax in (ax_p, ax_n, ax_m):
            _log_axis(ax.yaxis)
            compact_log_axis(ax.xaxis)
        if result.group != "all":
            fig.suptitle(result.group)
        return save(fig, stem)


# --- the report's section ---------------------------------------------------------------------------------
@dataclass
class IsoflopSection:
    """What the isoFLOP part of a report wrote: results, files, the markdown and the JSON."""

    results: list[IsoflopResult]
    files: list[Path]
    figures: dict[str, list[Path]]

    def to_dict(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.results]

    def notes(self) -> list[str]:
        return [f"isoFLOP{'' if r.group == 'all' else ' ' + r.group}: {n}" for r in self.results for n in r.notes]

    def markdown(self, out_dir: Path, md_table: Any) -> str:
        md = ["## Compute-optimal design (isoFLOP)\n",
              "Chinchilla's approach 2: per training budget C, log metric is fitted as a parabola in log model size; "
              "its vertex is the compute-optimal size N_opt(C). Across budgets N_opt = k·C^a and metric_opt = "
              "m·C^-b are least-squares lines in log-log space. Intervals: 95 % percentiles of a bootstrap that "
              "resamples each budget's trials (seeds included) and refits every parabola and both laws.\n"]
        for r in self.results:
            if r.group != "all":
                md.append(f"### {r.group}\n")
            md += [md_table(r.laws_frame()), "", md_table(r.profiles_frame()), ""]
            paths = self.figures.get(r.group)
            if paths:
                png, pdf = (p.relative_to(out_dir).as_posix() for p in paths)
                md.append(f"![isoFLOP profiles and laws]({png})\n\n[PDF]({pdf})\n")
            md.append(f"Tables: [tables/isoflop_laws{_suffix(r.group, _slug)}.csv]"
                      f"(tables/isoflop_laws{_suffix(r.group, _slug)}.csv) · "
                      f"[tables/isoflop_profiles{_suffix(r.group, _slug)}.csv]"
                      f"(tables/isoflop_profiles{_suffix(r.group, _slug)}.csv)\n")
        return "\n".join(md) + "\n"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text).strip("_")


def _suffix(group: str, slug: Any = _slug) -> str:
    return "" if group == "all" else f"_{slug(group)}"


def isoflop_section(all_trials: pd.DataFrame, usable: pd.DataFrame, metric: str, switches: list[str],
                    tables: Path, plots: Path, *, lower_is_better: bool = True, n_boot: int = 1000,
                    seed: int = 0) -> IsoflopSection | None:
    """The isoFLOP analysis, its tables and figures, or None when the study is not an isoFLOP study."""
    if not is_isoflop(all_trials):
        return None
    results = isoflop_analysis(usable, metric, switches, lower_is_better=lower_is_better, n_boot=n_boot, seed=seed)
    files: list[Path] = []
    figures: dict[str, list[Path]] = {}
    for r in results:
        suffix = _suffix(r.group, _slug)
        for name, frame in (("isoflop_laws", r.laws_frame()), ("isoflop_profiles", r.profiles_frame())):
            path = tables / f"{name}{suffix}.csv"
            frame.to_csv(path, index=False)
            files.append(path)
        if len(r.points):
            figures[r.group] = plot_isoflop(r, plots / f"isoflop{suffix}")
            files += figures[r.group]
    return IsoflopSection(results=results, files=files, figures=figures)

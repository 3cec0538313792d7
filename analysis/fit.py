"""Power-law fits with bootstrap confidence intervals, goodness of fit and an extrapolation check.

Two laws, both in the compute convention of the study (x is GMACs per image, parameters
or training MACs):

* pure:       y = a * x^(-b), least squares on log y against log x;
* saturating: y = E + a * x^(-b), a Huber loss on log residuals minimised by scipy's robust
  least squares from a grid of starting points (Chinchilla's "approach 3"), E being the
  irreducible level the metric tends to.

Uncertainty comes from resampling trials with replacement (percentile intervals, seeded),
which is what makes a fitted exponent something a reader can trust or not: a fit whose
exponent's interval includes zero, or whose exponent has the wrong sign for the metric's
direction, is no scaling law at this scale (`Fit.no_law` says why) and predicts nothing.  x is divided
by its geometric mean inside the fits, so the optimiser never sees 1e15; the reported `a`
is in the original units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from analysis.saturating_solver import (MIN_POINTS, POLISHED_STARTS, _bounds, _huber_cost,  # noqa: F401 (tests)
                                        _least_squares, _one_blas_thread, _residuals, _saturating_boot,
                                        _saturating_minima, _start_grid)

Kind = Literal["power", "saturating"]


class FitError(ValueError):
    """Data a law cannot be fitted to (too few points, non-positive values); the message says which."""


@dataclass
class Fit:
    """One fitted law with its uncertainty; `to_dict()` is what fits.json holds."""

    kind: Kind
    x: str
    y: str
    group: str
    n: int
    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    r2_log: float
    r2: float
    rmse_log: float
    x_ref: float
    x_range: tuple[float, float]
    n_boot: int
    n_boot_ok: int
    seed: int
    correlation: dict[str, float]
    theta: np.ndarray = field(repr=False)
    boot: np.ndarray = field(repr=False)  # bootstrap thetas, (n_boot_ok, k)
    extrapolation: dict[str, Any] | None = None
    loss: str = ""
    no_law: str = ""  # why this is no scaling law at this scale ("" when it is one; see `judge_law`)

    @property
    def is_law(self) -> bool:
        """True when the fit may be reported as a scaling law and used for predictions."""
        return not self.no_law

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        return np.exp(_log_model(self.kind, self.theta, np.log(np.asarray(x, float) / self.x_ref)))

    def band(self, x: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap band of the fitted curve at `x`."""
        lx = np.log(np.asarray(x, float) / self.x_ref)
        if len(self.boot) == 0:
            y = self.predict(x)
            return y, y
        curves = np.exp(_log_model_batch(self.kind, self.boot, lx))
        tail = 50 * (1 - level)
        return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)

    def to_dict(self) -> dict[str, Any]:
        law = "y = a * x^(-b)" if self.kind == "power" else "y = E + a * x^(-b)"
        return {
            "kind": self.kind, "law": law, "x": self.x, "y": self.y, "group": self.group, "n": self.n,
            "params": json_safe(self.params), "ci95": {k: json_safe(list(v)) for k, v in self.ci.items()},
            "r2_log": json_safe(self.r2_log), "r2": json_safe(self.r2), "rmse_log": json_safe(self.rmse_log),
            "x_range": json_safe(list(self.x_range)), "bootstrap": {"resamples": self.n_boot, "valid": self.n_boot_ok,
                                                              "seed": self.seed, "unit": "trial"},
            "loss": self.loss, "correlation": json_safe(self.correlation), "extrapolation": json_safe(self.extrapolation),
            "scaling_law": self.is_law, "no_law_reason": self.no_law,
        }


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN and inf become None, numpy scalars become floats."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# --- the bootstrap every analysis shares: resampling units with replacement, percentile intervals ----------
def bootstrap_indices(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) indices of `n` units (trials, seeds) drawn with replacement: one row per bootstrap replicate."""
    return rng.integers(0, n, size=(n_boot, n))


def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) how often each of `n` units is drawn in each replicate (`bootstrap_indices` as multiplicities),
    for statistics that weight units rather than index them."""
    idx = bootstrap_indices(n, n_boot, rng)
    counts = np.zeros((n_boot, n), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1)
    return counts


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of the finite bootstrap `samples`; (nan, nan) with none."""
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return (math.nan, math.nan)
    tail = 50 * (1 - level)
    return float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))


# --- the two laws in log space, on normalised x (lx = log(x / x_ref)) ---------------------------
def _log_model(kind: Kind, theta: np.ndarray, lx: np.ndarray) -> np.ndarray:
    if kind == "power":
        return theta[0] - theta[1] * lx
    return np.logaddexp(theta[0], theta[1] - theta[2] * lx)


def _log_model_batch(kind: Kind, thetas: np.ndarray, lx: np.ndarray) -> np.ndarray:
    """(B, k) thetas at (m,) points -> (B, m)."""
    if kind == "power":
        return thetas[:, :1] - thetas[:, 1:2] * lx[None, :]
    return np.logaddexp(thetas[:, :1], thetas[:, 1:2] - thetas[:, 2:3] * lx[None, :])


def _report(kind: Kind, thetas: np.ndarray, x_ref: float) -> dict[str, np.ndarray]:
    """Internal thetas (B, k) -> the reported a, b (and E) in original units."""
    if kind == "power":
        log_a, b = thetas[:, 0], thetas[:, 1]
        return {"a": np.exp(log_a + b * math.log(x_ref)), "b": b}
    e, alpha, b = thetas[:, 0], thetas[:, 1], thetas[:, 2]
    return {"E": np.exp(e), "a": np.exp(alpha + b * math.log(x_ref)), "b": b}


def _prepare(x: Any, y: Any, kind: Kind) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise FitError("x and y must be 1-D arrays of the same length")
    bad = ~(np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0))
    if bad.any():
        raise FitError(f"{int(bad.sum())} points are not positive and finite; a power law is fitted in log space")
    need_n, need_distinct = MIN_POINTS[kind]
    if len(x) < need_n or len(np.unique(x)) < need_distinct:
        raise FitError(f"the {kind} law needs at least {need_n} trials at {need_distinct} different x values; "
                       f"got {len(x)} trials at {len(np.unique(x))}")
    return x, y


# --- pure power law: closed-form least squares, vectorised over resamples -------------------------
def _ols(lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Rows of (log a', b) for rows of points; NaN where x does not vary."""
    mx, my = lx.mean(axis=-1, keepdims=True), ly.mean(axis=-1, keepdims=True)
    sxx = ((lx - mx) ** 2).sum(axis=-1)
    sxy = ((lx - mx) * (ly - my)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(sxx > 1e-12, sxy / np.where(sxx > 1e-12, sxx, 1.0), np.nan)
    return np.stack([my[..., 0] - slope * mx[..., 0], -slope], axis=-1)


# --- goodness of fit and correlations -----------------------------------------------------------
def _r2(obs: np.ndarray, pred: np.ndarray) -> float:
    total = ((obs - obs.mean()) ** 2).sum()
    return float(1 - ((obs - pred) ** 2).sum() / total) if total > 0 else float("nan")


def correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson (on log-log and on raw values) and Spearman (rank, so scale-free) with p-values."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    out = {"n": float(len(x))}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {**out, "pearson_log_r": np.nan, "pearson_log_p": np.nan, "pearson_r": np.nan, "pearson_p": np.nan,
                "spearman_rho": np.nan, "spearman_p": np.nan}
    pl = stats.pearsonr(np.log(x), np.log(y))
    pr = stats.pearsonr(x, y)
    sp = stats.spearmanr(x, y)
    return {**out, "pearson_log_r": float(pl.statistic), "pearson_log_p": float(pl.pvalue),
            "pearson_r": float(pr.statistic), "pearson_p": float(pr.pvalue),
            "spearman_rho": float(sp.statistic), "spearman_p": float(sp.pvalue)}


# --- is it a law? ---------------------------------------------------------------------------------
def judge_law(b: float, ci: tuple[float, float], lower_is_better: bool = True) -> str:
    """Why an exponent b (y ~ x^-b) is no scaling law at this scale, or "" when it is one.

    A lower-is-better metric must fall with compute (b > 0), a higher-is-better one rise (b < 0);
    and the 95 % interval of b must exclude zero, else the data cannot tell the law from no
    dependence at all.  Without an interval (no bootstrap) only the sign is checked.
    """
    lo, hi = ci
    wanted = "fall" if lower_is_better else "rise"
    reasons = []
    if not math.isfinite(b) or (b <= 0 if lower_is_better else b >= 0):
        reasons.append(f"wrong sign: b = {b:.3g}, the metric does not {wanted} with compute")
    if math.isfinite(lo) and math.isfinite(hi) and lo <= 0 <= hi:
        reasons.append(f"95 % CI of b [{lo:.3g}, {hi:.3g}] includes 0")
    return "; ".join(reasons)


# --- public fits --------------------------------------------------------------------------------
def fit_law(kind: Kind, x: Any, y: Any, *, n_boot: int = 1000, seed: int = 0, x_name: str = "x", y_name: str = "y",
            group: str = "all", delta: float = 1e-3, level: float = 0.95, lower_is_better: bool = True) -> Fit:
    """Fit `kind` to (x, y) with `n_boot` trial-resampling bootstrap replicates (seeded), judged as a law for a
    metric that is `lower_is_better` (or not; `Fit.no_law`).

    Raises FitError when the data cannot carry the law (too few points, non-positive values).
    """
    x, y = _prepare(x, y, kind)
    x_ref = float(np.exp(np.log(x).mean()))
    lx, ly = np.log(x / x_ref), np.log(y)
    rng = np.random.default_rng(seed)
    idx = bootstrap_indices(len(x), n_boot, rng)
    if kind == "power":
        theta = _ols(lx, ly)
        boot = _ols(lx[idx], ly[idx]) if n_boot else np.empty((0, 2))
        loss = "least squares on log y"
    else:
        grid = _start_grid(ly)
        with _one_blas_thread():
            minima, basins = _saturating_minima(lx, ly, grid, delta)
            theta = minima[0]
            boot = _saturating_boot(minima, basins, grid, lx, ly, idx, delta) if n_boot else np.empty((0, 3))
        loss = (f"Huber (delta={delta:g}) on log residuals: scipy least_squares (trf) from the {POLISHED_STARTS} "
                f"best of {len(grid)} grid starting points after a batched Gauss-Newton descent; bootstrap "
                "replicates by the same batched Gauss-Newton from the full-data optimum and from their best "
                "other start")
    boot = boot[np.isfinite(boot).all(axis=1)]
    point = {k: float(v[0]) for k, v in _report(kind, theta[None, :], x_ref).items()}
    samples = _report(kind, boot, x_ref)
    ci = {k: percentile_interval(v, level) for k, v in samples.items()}
    pred_log = _log_model(kind, theta, lx)
    return Fit(kind=kind, x=x_name, y=y_name, group=group, n=len(x), params=point, ci=ci,
               r2_log=_r2(ly, pred_log), r2=_r2(y, np.exp(pred_log)),
               rmse_log=float(np.sqrt(((ly - pred_log) ** 2).mean())), x_ref=x_ref,
               x_range=(float(x.min()), float(x.max())), n_boot=n_boot, n_boot_ok=len(boot), seed=seed,
               correlation=correlations(x, y), theta=theta, boot=boot, loss=loss,
               no_law=judge_law(point["b"], ci["b"], lower_is_better))


def fit_power_law(x: Any, y: Any, **kwargs: Any) -> Fit:
    """y = a * x^(-b) by least squares in log-log space, with bootstrap CIs."""
    return fit_law("power", x, y, **kwargs)


def fit_saturating(x: Any, y: Any, **kwargs: Any) -> Fit:
    """y = E + a * x^(-b) by Huber on log residuals (scipy least_squares from a grid of starts), with bootstrap CIs."""
    return fit_law("saturating", x, y, **kwargs)


def extrapolation_check(kind: Kind, x: Any, y: Any, holdout: float = 0.2, **kwargs: Any) -> dict[str, Any]:
    """Fit without the largest-compute trials, predict them, and report the relative error.

    The held-out trials are those at the top `holdout` fraction of distinct x values (at
    least one value, all seeds at it).  Returns {"skipped": reason} when the rest cannot
    carry the law.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    levels = np.unique(x)
    k = max(1, int(round(holdout * len(levels))))
    threshold = levels[-k]
    fit_mask = x < threshold
    try:
        fit = fit_law(kind, x[fit_mask], y[fit_mask], **{**kwargs, "n_boot": 0})
    except FitError as exc:
        return {"skipped": f"not enough trials below the held-out compute: {exc}"}
    pred = fit.predict(x[~fit_mask])
    rel = (pred - y[~fit_mask]) / y[~fit_mask]
    return {
        "held_out_from_x": float(threshold), "n_fit": int(fit_mask.sum()), "n_held_out": int((~fit_mask).sum()),
        "fit_params": fit.params, "mean_abs_rel_error": float(np.abs(rel).mean()),
        "max_abs_rel_error": float(np.abs(rel).max()), "mean_rel_error": float(rel.mean()),
        "points": [{"x": float(a), "y": float(b), "predicted": float(c), "rel_error": float(d)}
                   for a, b, c, d in zip(x[~fit_mask], y[~fit_mask], pred, rel)],
    }

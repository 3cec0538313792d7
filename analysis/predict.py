"""Prediction of held-out larger trials: fit on all but the largest-compute trials, predict those, compare.

What a scaling law is for is predicting runs not yet made.  `analyze --holdout K` checks it where the
answer is known: per family (each variant of the study's switches, overall and per patch size) the K
largest values of training compute (every seed at them) are held out, the law is fitted on the rest and
predicts them.  A prediction interval combines the bootstrap of the fit (the law's uncertainty) with the
scatter of the fit's residuals (a single trial's deviation from the law, resampled, scaled up by
sqrt(n / (n - p)) for the p fitted parameters).

In an isoFLOP study the trials of one budget do not follow one power law in compute; there the K
largest budgets are held out instead, N_opt ~ C^a and metric_opt ~ C^-b are fitted on the other budgets
and predict the held-out budgets' compute-optimal size and metric, compared with what those budgets' own
parabolas give.  Its interval adds, to the laws' bootstrap, a measured vertex's scatter: the largest of the
vertices' bootstrap spread (RMS over the fitted budgets, and the held-out budget's own: how well its sizes
and seeds pin a vertex, not where) and the laws' residual scatter (with 3 or more budgets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.fit import Fit, FitError, _log_model, _log_model_batch, fit_law, json_safe
from analysis.isoflop import BUDGET_KEY, SIZE_AXIS, budgets_of, compact_log_axis, is_isoflop, isoflop_fit
from analysis.scaling import families, variants

LEVEL = 0.95
TRIAL_COLUMNS = ["group", "law", "x", "run_name", "x_value", "measured", "predicted", "pi95_lo", "pi95_hi",
                 "rel_error", "covered", "n_fit", "held_out_from"]
ISOFLOP_COLUMNS = ["group", "quantity", "budget_macs", "measured", "measured_ci95", "predicted", "pi95_lo",
                   "pi95_hi", "rel_error", "covered", "n_fit_budgets"]


@dataclass
class Prediction:
    """The held-out check of a report: one row per held-out trial (or budget), what could not be checked,
    and what the figures need."""

    kind: str                              # "trials" or "isoflop"
    holdout: int
    x: str
    rows: pd.DataFrame
    skipped: list[dict[str, Any]] = field(default_factory=list)
    panels: list[dict[str, Any]] = field(default_factory=list, repr=False)  # per family: fit data for plots

    def summary(self) -> dict[str, Any]:
        covered = self.rows["covered"].astype(bool) if len(self.rows) else pd.Series(dtype=bool)
        return {"held_out": int(len(self.rows)), "covered": int(covered.sum()),
                "mean_abs_rel_error": float(self.rows["rel_error"].abs().mean()) if len(self.rows) else None}

    def to_dict(self) -> dict[str, Any]:
        method = ("per family, the K largest training-compute values held out, law fitted on the rest"
                  if self.kind == "trials" else
                  "the K largest budgets held out, N_opt and metric_opt laws fitted on the other budgets")
        return json_safe({"kind": self.kind, "holdout": self.holdout, "x": self.x, "level": LEVEL,
                          "method": method, "summary": self.summary(),
                          "rows": self.rows.to_dict(orient="records"), "skipped": self.skipped})


def _interval(samples: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    tail = 50 * (1 - level)
    return np.percentile(samples, tail, axis=0), np.percentile(samples, 100 - tail, axis=0)


def prediction_samples(fit: Fit, x_new: np.ndarray, x_fit: np.ndarray, y_fit: np.ndarray,
                       rng: np.random.Generator, draws: int = 2000) -> np.ndarray:
    """(draws, m) samples of a new trial's value at `x_new`: a bootstrap replicate of the law plus a resampled,
    dof-scaled log residual of the fit."""
    lx_new = np.log(np.asarray(x_new, float) / fit.x_ref)
    thetas = fit.boot if len(fit.boot) else fit.theta[None, :]
    curves = _log_model_batch(fit.kind, thetas[rng.integers(0, len(thetas), draws)], lx_new)
    resid = np.log(y_fit) - _log_model(fit.kind, fit.theta, np.log(x_fit / fit.x_ref))
    p = len(fit.theta)
    resid = resid * math.sqrt(len(resid) / (len(resid) - p)) if len(resid) > p else resid
    return np.exp(curves + rng.choice(resid, size=curves.shape))


def trial_predictions(usable: pd.DataFrame, metric: str, switches: Iterable[str] = (), *, holdout: int = 1,
                      x: str = "train_flops", lower_is_better: bool = True, n_boot: int = 1000,
                      seed: int = 0) -> Prediction:
    """Per family (variant x {all, per patch size}) and law, the K largest `x` values held out and predicted."""
    rows, skipped, panels = [], [], []
    kinds = ("power", "saturating") if lower_is_better else ("power",)
    rng = np.random.default_rng(seed)
    for variant, vtrials in variants(usable, switches):
        for family, ftrials in families(vtrials):
            if family.startswith("size="):  # one model size: no compute axis to extrapolate along
                continue
            group = family if variant == "all" else (variant if family == "all" else f"{variant}; {family}")
            data = ftrials.assign(_x=pd.to_numeric(ftrials[x], errors="coerce"),
                                  _y=pd.to_numeric(ftrials["metric_value"], errors="coerce")).dropna(subset=["_x", "_y"])
            levels = np.unique(data["_x"])
            if len(levels) <= holdout:
                skipped.append({"group": group, "law": "any", "reason": f"{len(levels)} distinct {x} values: "
                                f"nothing is left to fit once the {holdout} largest are held out"})
                continue
            threshold = levels[-holdout]
            train, held = data[data["_x"] < threshold], data[data["_x"] >= threshold]
            for kind in kinds:
                law = "a·x^-b" if kind == "power" else "E+a·x^-b"
                try:
                    fit = fit_law(kind, train["_x"], train["_y"], n_boot=n_boot, seed=seed, x_name=x, y_name=metric,
                                  group=group, lower_is_better=lower_is_better)
                except FitError as exc:
                    skipped.append({"group": group, "law": law, "reason": f"the trials below the held-out compute "
                                    f"cannot carry the law: {exc}"})
                    continue
                if not fit.is_law:
                    skipped.append({"group": group, "law": law, "reason": f"no scaling law at this scale on the "
                                    f"trials below the held-out compute: {fit.no_law}"})
                    continue
                xf, yf = train["_x"].to_numpy(float), train["_y"].to_numpy(float)
                xh, yh = held["_x"].to_numpy(float), held["_y"].to_numpy(float)
                lo, hi = _interval(prediction_samples(fit, xh, xf, yf, rng))
                pred = fit.predict(xh)
                for i in range(len(xh)):
                    rows.append({"group": group, "law": law, "x": x, "run_name": held["run_name"].iloc[i]
                                 if "run_name" in held else "", "x_value": xh[i], "measured": yh[i],
                                 "predicted": pred[i], "pi95_lo": lo[i], "pi95_hi": hi[i],
                                 "rel_error": (pred[i] - yh[i]) / yh[i], "covered": bool(lo[i] <= yh[i] <= hi[i]),
                                 "n_fit": len(xf), "held_out_from": threshold})
                panels.append({"group": group, "law": law, "fit": fit, "x_fit": xf, "y_fit": yf, "x_held": xh,
                               "y_held": yh, "pred": pred, "lo": lo, "hi": hi})
    return Prediction(kind="trials", holdout=holdout, x=x, rows=pd.DataFrame(rows, columns=TRIAL_COLUMNS),
                      skipped=skipped, panels=panels)


def isoflop_predictions(usable: pd.DataFrame, metric: str, switches: Iterable[str] = (), *, holdout: int = 1,
                        size_axis: str = SIZE_AXIS, lower_is_better: bool = True, n_boot: int = 1000,
                        seed: int = 0, draws: int = 2000) -> Prediction:
    """The K largest budgets of each variant held out; their compute-optimal size and metric predicted."""
    rows, skipped, panels = [], [], []
    rng = np.random.default_rng(seed)
    for group, vtrials in variants(usable, [s for s in switches if s != BUDGET_KEY]):
        budgets = budgets_of(vtrials)
        levels = np.unique(budgets.dropna())
        if len(levels) < holdout + 2:
            skipped.append({"group": group, "law": "isoflop", "reason": f"{len(levels)} budgets: the laws need 2 "
                            f"once the {holdout} largest are held out"})
            continue
        held_budgets = levels[-holdout:]
        fit = isoflop_fit(vtrials[budgets < held_budgets[0]], metric, size_axis=size_axis,
                          lower_is_better=lower_is_better, n_boot=n_boot, seed=seed, group=group)
        full = isoflop_fit(vtrials, metric, size_axis=size_axis, lower_is_better=lower_is_better, n_boot=n_boot,
                           seed=seed, group=group)
        if fit.n_opt_law is None or fit.metric_law is None:
            skipped.append({"group": group, "law": "isoflop", "reason": "; ".join(fit.notes) or "no laws"})
            continue
        measured = {p.budget: p for p in full.profiles}
        fitted = [p for p in fit.profiles if p.budget in fit.n_opt_law.budgets]
        for quantity, law, attr, boot_attr in (("N_opt", fit.n_opt_law, "n_opt", "log_n_boot"),
                                               (f"{metric}_opt", fit.metric_law, "metric_opt", "log_metric_boot")):
            sigma = np.array([_noise(fitted, law, boot_attr, measured.get(float(c))) for c in held_budgets])
            boot = law.boot_log(held_budgets) if len(law.boot) else np.log(law.predict(held_budgets))[None, :]
            samples = np.exp(boot[rng.integers(0, len(boot), draws)]
                             + sigma[None, :] * rng.standard_normal((draws, len(held_budgets))))
            lo, hi = _interval(samples)
            pred = law.predict(held_budgets)
            meas = []
            for i, budget in enumerate(held_budgets):
                profile = measured.get(float(budget))
                value = getattr(profile, attr) if profile is not None else math.nan
                ci = getattr(profile, f"{attr}_ci") if profile is not None else (math.nan, math.nan)
                meas.append((value, ci))
                rows.append({"group": group, "quantity": quantity, "budget_macs": float(budget), "measured": value,
                             "measured_ci95": f"[{ci[0]:.4g}, {ci[1]:.4g}]" if math.isfinite(ci[0]) else "—",
                             "predicted": pred[i], "pi95_lo": lo[i], "pi95_hi": hi[i],
                             "rel_error": (pred[i] - value) / value if math.isfinite(value) else math.nan,
                             "covered": bool(lo[i] <= value <= hi[i]) if math.isfinite(value) else False,
                             "n_fit_budgets": len(law.budgets)})
            panels.append({"group": group, "law": quantity, "budgets_fit": np.array(law.budgets),
                           "y_fit": np.array([getattr(p, attr) for p in fitted]),
                           "ci_fit": np.array([getattr(p, f"{attr}_ci") for p in fitted]),
                           "budgets_held": held_budgets, "measured": meas, "pred": pred, "lo": lo, "hi": hi,
                           "curve": law})
    return Prediction(kind="isoflop", holdout=holdout, x="budget", rows=pd.DataFrame(rows, columns=ISOFLOP_COLUMNS),
                      skipped=skipped, panels=panels)


def _spread(profile: Any, boot_attr: str) -> float:
    values = getattr(profile, boot_attr)
    values = values[np.isfinite(values)]
    return float(values.std()) if len(values) > 1 else 0.0


def _noise(fitted: list[Any], law: Any, boot_attr: str, held: Any) -> float:
    """Log-space scatter of a measured vertex about the law: the largest of the fitted budgets' bootstrap
    spread (RMS), the held-out budget's own (its sizes and seeds may pin its vertex less well: how noisy
    its measurement is, not what it measured) and, with 3 or more budgets, the laws' residual scatter."""
    spreads = [_spread(p, boot_attr) for p in fitted]
    sigma = float(np.sqrt(np.mean(np.square(spreads)))) if spreads else 0.0
    if held is not None:
        sigma = max(sigma, _spread(held, boot_attr))
    j = len(law.residuals)
    if j >= 3:
        sigma = max(sigma, float(np.sqrt((law.residuals ** 2).sum() / (j - 2))))
    return sigma


def held_out_prediction(all_trials: pd.DataFrame, usable: pd.DataFrame, metric: str, switches: Iterable[str] = (),
                        *, holdout: int = 1, lower_is_better: bool = True, n_boot: int = 1000,
                        seed: int = 0) -> Prediction:
    """The check that fits the study: on the compute-optimal frontier in an isoFLOP study, on the trials else."""
    if holdout < 1:
        raise ValueError(f"--holdout: hold out at least 1 compute value, not {holdout}")
    if is_isoflop(all_trials):
        return isoflop_predictions(usable, metric, switches, holdout=holdout, lower_is_better=lower_is_better,
                                   n_boot=n_boot, seed=seed)
    return trial_predictions(usable, metric, switches, holdout=holdout, lower_is_better=lower_is_better,
                             n_boot=n_boot, seed=seed)


# --- figures and the report's section ------------------------------------------------------------------------
def plot_prediction(panels: list[dict[str, Any]], metric: str, x_label: str, stem: Path) -> list[Path]:
    """One panel per family and law: fitted points, the law with its band extended to the held-out compute,
    the held-out measurements and the predictions with their intervals."""
    from analysis.plots import PAPER_RC, _log_axis, save

    with matplotlib.rc_context(PAPER_RC):
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig = Figure(figsize=(2.6 * cols, 2.3 * rows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
        for ax, panel in zip(axes, panels):
            isoflop = "curve" in panel
            x_fit = panel["budgets_fit"] if isoflop else panel["x_fit"]
            x_held = panel["budgets_held"] if isoflop else panel["x_held"]
            y_held = np.array([m[0] for m in panel["measured"]]) if isoflop else panel["y_held"]
            grid = np.geomspace(min(x_fit.min(), x_held.min()) / 1.3, max(x_fit.max(), x_held.max()) * 1.3, 100)
            law = panel["curve"] if isoflop else panel["fit"]
            lo, hi = law.band(grid)
            ax.fill_between(grid, lo, hi, color="tab:blue", alpha=0.15, lw=0)
            ax.plot(grid, law.predict(grid), color="tab:blue", lw=1, label=f"fit ({panel['law']})" if not isoflop
                    else "fit on the other budgets")
            ax.scatter(x_fit, panel["y_fit"], color="0.35", s=12, zorder=3, label="fitted")
            err = np.abs(np.stack([panel["pred"] - panel["lo"], panel["hi"] - panel["pred"]]))
            ax.errorbar(x_held * 1.04, panel["pred"], yerr=err, fmt="D", color="tab:blue", ms=3.5, capsize=2,
                        zorder=4, label="predicted, 95 % PI")
            ax.scatter(x_held / 1.04, y_held, color="tab:red", marker="*", s=40, zorder=5, label="held out, measured")
            ax.set(xscale="log", yscale="log", xlabel=x_label, ylabel=metric if not isoflop else panel["law"],
                   title=panel["group"] if isoflop else f"{panel['group']}: {panel['law']}")
            _log_axis(ax.yaxis)
            compact_log_axis(ax.xaxis)
            ax.legend(fontsize=5)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        return save(fig, stem)


def prediction_section(prediction: Prediction, metric: str, tables: Path, plots: Path) -> tuple[list[Path], dict[str, list[Path]]]:
    """tables/prediction.csv and plots/prediction.{png,pdf}; (files, figures)."""
    path = tables / "prediction.csv"
    prediction.rows.to_csv(path, index=False)
    files, figures = [path], {}
    if prediction.panels:
        x_label = "training budget C (MACs)" if prediction.kind == "isoflop" else "training compute (MACs, DiT convention)"
        figures["prediction"] = plot_prediction(prediction.panels, metric, x_label, plots / "prediction")
        files += figures["prediction"]
    return files, figures


def prediction_markdown(prediction: Prediction, figures: dict[str, list[Path]], out_dir: Path, md_table: Any) -> str:
    s = prediction.summary()
    if prediction.kind == "isoflop":
        intro = (f"The {prediction.holdout} largest budget(s) held out: N_opt ~ C^a and metric_opt ~ C^-b fitted on the "
                 "other budgets predict the held-out budgets' compute-optimal size and metric; `measured` is what the "
                 "held-out budget's own parabola gives. The 95 % prediction interval adds a measured vertex's scatter "
                 "(the largest of the vertices' bootstrap spreads, the held-out budget's own included, and the "
                 "laws' residual scatter) to the laws' bootstrap.")
    else:
        intro = (f"Per family, the trials at the {prediction.holdout} largest training-compute value(s) (every seed) "
                 "held out; the law fitted on the rest predicts them. The 95 % prediction interval combines the "
                 "fit's bootstrap with its resampled residuals (a trial's scatter about the law).")
    md = ["## Prediction of held-out larger trials\n", intro + "\n",
          f"{s['covered']} of {s['held_out']} held-out values inside their 95 % prediction interval"
          + (f"; mean |relative error| {s['mean_abs_rel_error']:.3g}" if s["mean_abs_rel_error"] is not None else "")
          + ".\n", md_table(prediction.rows)]
    paths = figures.get("prediction")
    if paths:
        png, pdf = (p.relative_to(out_dir).as_posix() for p in paths)
        md.append(f"\n![held-out prediction]({png})\n\n[PDF]({pdf})\n")
    if prediction.skipped:
        md += ["", "Not checked:", "", md_table(pd.DataFrame(prediction.skipped))]
    return "\n".join(md) + "\n"

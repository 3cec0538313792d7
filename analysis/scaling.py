"""Which scaling fits a study gets: every compute axis, overall and per family, each law.

Trials that differ by an ablation switch follow different laws, so they are never pooled:
fits are made per variant (one combination of switch settings; "all" when the study has
no switch), then within it overall, per patch size and per model size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import pandas as pd

from analysis.ablation import fmt_value
from analysis.fit import Fit, FitError, extrapolation_check, fit_law

X_AXES = ("gflops_g", "params_g", "train_flops")


@dataclass
class ScalingFits:
    """The fits made, and the ones that could not be made with the reason."""

    fits: list[Fit] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def find(self, x: str, kind: str = "power", group: str = "all") -> Fit | None:
        for f in self.fits:
            if f.x == x and f.kind == kind and f.group == group:
                return f
        return None


def variants(trials: pd.DataFrame, switches: Iterable[str]) -> Iterator[tuple[str, pd.DataFrame]]:
    """(label, trials) per combination of switch settings; one ("all", trials) without switches."""
    switches = [s for s in switches if trials[s].map(fmt_value).nunique() > 1]
    if not switches:
        yield "all", trials
        return
    keys = trials[switches].apply(lambda col: col.map(fmt_value))
    for combo, group in trials.groupby([keys[s] for s in switches], sort=True):
        combo = combo if isinstance(combo, tuple) else (combo,)
        yield ", ".join(f"{s.rsplit('.', 1)[-1]}={v}" for s, v in zip(switches, combo)), group


def families(trials: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """("all", ...), then one per patch size and one per model size when there are several."""
    yield "all", trials
    if trials["patch"].nunique() > 1:
        for patch, group in trials.groupby("patch", sort=True):
            yield f"patch={fmt_value(patch)}", group
    if trials["size"].nunique() > 1:
        for _, group in trials.sort_values("size_rank", kind="stable").groupby("size_rank", sort=True):
            yield f"size={group['size'].iloc[0]}", group


def scaling_fits(usable: pd.DataFrame, metric: str, switches: Iterable[str] = (), *, lower_is_better: bool = True,
                 n_boot: int = 1000, seed: int = 0, holdout: float = 0.2,
                 x_axes: Iterable[str] = X_AXES) -> ScalingFits:
    """Power (and, for lower-is-better metrics, saturating) fits of `metric_value` on each x axis.

    A fit that is no scaling law at this scale (`Fit.no_law`) is kept, to be reported as such, but
    gets no extrapolation check: it predicts nothing.
    """
    out = ScalingFits()
    kinds = ("power", "saturating") if lower_is_better else ("power",)
    for variant, vtrials in variants(usable, switches):
        for family, ftrials in families(vtrials):
            group = family if variant == "all" else (variant if family == "all" else f"{variant}; {family}")
            for x in x_axes:
                data = ftrials[[x, "metric_value"]].astype(float).dropna()
                if len(data) < len(ftrials):
                    out.skipped.append({"x": x, "group": group, "kind": "any",
                                        "reason": f"{len(ftrials) - len(data)} trials have no {x}"})
                for kind in kinds:
                    try:
                        fit = fit_law(kind, data[x], data["metric_value"], n_boot=n_boot, seed=seed, x_name=x,
                                      y_name=metric, group=group, lower_is_better=lower_is_better)
                    except FitError as exc:
                        out.skipped.append({"x": x, "group": group, "kind": kind, "reason": str(exc)})
                        continue
                    fit.extrapolation = (extrapolation_check(kind, data[x], data["metric_value"], holdout=holdout)
                                         if fit.is_law else {"skipped": f"no scaling law at this scale: {fit.no_law}"})
                    out.fits.append(fit)
    return out

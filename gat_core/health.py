"""Is a trial's result science?  Early stops for runs that cannot recover, and a verdict on finished ones.

`DivergenceCheck` stops a trial as diverged: non-finite metrics always; optionally D winning outright
(loss_d below a floor for `patience` reports) or a collapsed generator (the diversity metric below a
floor at `patience` consecutive evaluations after step 0).

`HealthCheck` judges a trial that ran to its end: `collapsed` when its final diversity is below
`eval.health_min_diversity` (every z of a class gives nearly the same image) or when loss_d averaged
over the last tenth of training is below `eval.health_min_loss_d` (D separates real from fake
outright, so G's samples are far from the data whatever its metric says); `diverged` when the final
diversity is above `eval.health_max_diversity` (samples noisier than the data); `ok` otherwise.  The
verdict is tagged on the trial's MLflow run (`health`, `health_reason`) and the analysis leaves
unhealthy trials out of its fits unless asked to keep them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from gat_core.config import TrialConfig

Health = Literal["ok", "collapsed", "diverged"]
TAIL_FRACTION = 0.1  # the part of training whose mean loss_d the verdict looks at


@dataclass
class DivergenceCheck:
    """Reasons to stop a trial now (empty string: carry on)."""

    collapse_loss_d: float | None
    patience: int
    collapse_diversity: float | None = None
    diversity_metric: str | None = None
    strikes: int = 0
    diversity_strikes: int = 0

    @classmethod
    def of(cls, cfg: TrialConfig) -> "DivergenceCheck":
        t = cfg.train
        return cls(t.collapse_loss_d, t.collapse_patience, t.collapse_diversity, cfg.eval.diversity_metric)

    def check(self, step: int, metrics: dict[str, float]) -> str:
        """A progress report: non-finite values, or loss_d below its floor for `patience` reports."""
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            return f"non-finite {', '.join(bad)} at step {step}"
        if self.collapse_loss_d is not None and "loss_d" in metrics:
            self.strikes = self.strikes + 1 if metrics["loss_d"] < self.collapse_loss_d else 0
            if self.strikes >= self.patience:
                return (f"collapse at step {step}: loss_d below {self.collapse_loss_d} "
                        f"for {self.patience} consecutive reports")
        return ""

    def check_eval(self, step: int, metrics: dict[str, float]) -> str:
        """An evaluation after step 0: the diversity below its floor at `patience` consecutive evaluations."""
        name = self.diversity_metric
        if self.collapse_diversity is None or name is None or name not in metrics or step == 0:
            return ""
        value = metrics[name]
        self.diversity_strikes = self.diversity_strikes + 1 if not value >= self.collapse_diversity else 0
        if self.diversity_strikes >= self.patience:
            return (f"mode collapse at step {step}: {name} {value:.3f} below {self.collapse_diversity} "
                    f"at {self.patience} consecutive evaluations")
        return ""


@dataclass
class HealthCheck:
    """Collects what the verdict needs while training runs; `verdict()` at the end."""

    min_diversity: float | None
    min_loss_d: float | None
    max_diversity: float | None
    diversity_metric: str | None
    total_steps: int
    tail: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, cfg: TrialConfig, total_steps: int) -> "HealthCheck":
        e = cfg.eval
        return cls(e.health_min_diversity, e.health_min_loss_d, e.health_max_diversity, e.diversity_metric,
                   total_steps)

    def observe(self, step: int, metrics: dict[str, float]) -> None:
        """A progress report: keep loss_d from the last tenth of training."""
        if "loss_d" in metrics and step > self.total_steps * (1 - TAIL_FRACTION):
            self.tail.append(metrics["loss_d"])

    def verdict(self, final: dict[str, float]) -> tuple[Health, str]:
        """(`ok`, ""), or (`collapsed` | `diverged`, the reason in one line), from the final metrics and the loss_d tail."""
        name = self.diversity_metric
        if self.min_diversity is not None and name in final and not final[name] >= self.min_diversity:
            return "collapsed", f"mode collapse: final {name} {final[name]:.3f} < {self.min_diversity}"
        if self.max_diversity is not None and name in final and final[name] > self.max_diversity:
            return "diverged", (f"noise, not images: final {name} {final[name]:.3f} > {self.max_diversity} (the "
                                "samples vary more within a class than the data)")
        if self.min_loss_d is not None and self.tail:
            mean = sum(self.tail) / len(self.tail)
            if mean < self.min_loss_d:
                return "collapsed", (f"D wins outright: loss_d {mean:.4f} < {self.min_loss_d} averaged over the "
                                     f"last {TAIL_FRACTION:.0%} of training")
        return "ok", ""

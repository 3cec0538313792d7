"""Which metric to analyse, which way is better, and which trials a fit may use.

The quality metric is named by its feature extractor (`fd_classifier`, `fid`, `fd_dinov2`,
...).  Values from different extractors are on different scales, so a fit over trials
that were scored differently would be meaningless: it is refused with a message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from analysis.errors import AnalysisError
from analysis.load import QUALITY_PATTERN, StudyData

_HIGHER_IS_BETTER = re.compile(r"(accuracy|precision|recall|inception|^is$|^is_|psnr|ssim|density|coverage)", re.I)


def lower_is_better(metric: str) -> bool:
    """Distances and losses go down as models improve; accuracies and scores go up (the default is down)."""
    return not _HIGHER_IS_BETTER.search(metric)


def primary_metric(data: StudyData, metric: str | None = None) -> str:
    """The metric to analyse: `metric` if given and logged, else the trials' `eval.metric`.

    Raises AnalysisError when the metric was never logged, or when the trials name
    different quality metrics and none was picked.
    """
    logged = data.metric_keys
    if metric is not None:
        if metric not in logged:
            quality = [k for k in logged if QUALITY_PATTERN.search(k)]
            others = len(logged) - len(quality)
            listing = ", ".join(quality) if quality else "no quality metric"
            raise AnalysisError(f"no run of {', '.join(data.studies)} logged the metric {metric!r}; logged: "
                                f"{listing}" + (f" (and {others} training metrics such as loss_d)" if others else ""))
        return metric
    trials = data.trials
    declared = trials["eval.metric"].dropna() if "eval.metric" in trials else pd.Series(dtype=object)
    counts = declared.value_counts()
    if len(counts) > 1:
        listing = ", ".join(f"{name} ({n} trials)" for name, n in counts.items())
        raise AnalysisError(f"the trials were scored with different quality metrics: {listing}. Values from different "
                            f"feature extractors cannot be fitted together; pick one with --metric")
    if len(counts) == 1:
        name = str(counts.index[0])
        if name not in logged:
            raise AnalysisError(f"the study's metric {name!r} (eval.metric) was never logged; logged: "
                                f"{', '.join(logged) or 'nothing'}")
        return name
    quality = [k for k in logged if QUALITY_PATTERN.search(k)]
    if len(quality) == 1:
        return quality[0]
    raise AnalysisError(f"the trials have no eval.metric param and log {len(quality)} quality metrics "
                        f"({', '.join(quality) or 'none'}); pick one with --metric")


@dataclass(frozen=True)
class Selection:
    """Trials a fit may use, and every other trial with the reason it was left out."""

    metric: str
    lower_is_better: bool
    usable: pd.DataFrame
    excluded: pd.DataFrame  # run_name, trial_id, status, step, reason


def select_trials(data: StudyData, metric: str, include_failed: bool = False) -> Selection:
    """Completed trials with a finite metric (and diverged/failed ones too if `include_failed`).

    Raises AnalysisError when fewer than two trials remain, naming why the others went.
    """
    trials = data.trials
    column = metric if metric in trials else f"metric:{metric}"
    reasons = []
    for _, row in trials.iterrows():
        value = row.get(column)
        if row["status"] != "completed" and not include_failed:
            why = f"{row['status']}" + (f": {row['reason']}" if row["reason"] else "")
        elif value is None or pd.isna(value):
            why = f"did not log {metric}"
        else:
            why = ""
        reasons.append(why)
    keep = pd.Series([r == "" for r in reasons], index=trials.index)
    usable = trials[keep].copy()
    usable["metric_value"] = usable[column].astype(float)
    excluded = pd.DataFrame({
        "run_name": trials["run_name"], "trial_id": trials["trial_id"], "status": trials["status"],
        "step": trials["final_step"], "reason": reasons})[~keep].reset_index(drop=True)
    if len(usable) == 0:
        failed = trials["status"].isin(["diverged", "failed"]).sum()
        if failed == len(trials):
            listing = "; ".join(f"{r.run_name}: {r.reason}" for r in excluded.itertuples())
            hint = "" if include_failed else " (include_failed / --include-failed fits their last finite values)"
            raise AnalysisError(f"all {len(trials)} trials of {', '.join(data.studies)} diverged or failed, nothing "
                                f"to fit{hint}: {listing}")
        unfinished = trials["status"].isin(["pending", "running", "interrupted"]).sum()
        hint = (f" ({unfinished} trials have not finished: wait for the study, or run it again to resume)"
                if unfinished else "")
        raise AnalysisError(f"no trial of {', '.join(data.studies)} can be used for {metric}{hint}: "
                            + "; ".join(f"{r.run_name}: {r.reason}" for r in excluded.itertuples()))
    if len(usable) == 1:
        raise AnalysisError(f"{', '.join(data.studies)} has a single usable trial ({usable['run_name'].iloc[0]}); "
                            f"a scaling fit needs at least 3 trials at different compute, an ablation at least 2"
                            + (f" ({len(excluded)} other trials excluded)" if len(excluded) else ""))
    return Selection(metric=metric, lower_is_better=lower_is_better(metric), usable=usable.reset_index(drop=True),
                     excluded=excluded)

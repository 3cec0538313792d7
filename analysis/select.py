"""Which metric to analyse, which way is better, and which trials a fit may use.

The quality metric is named by its feature extractor (`fd_classifier`, `fid`, `fd_dinov2`,
...).  Values from different extractors are on different scales, so a fit over trials
that were scored differently would be meaningless: it is refused with a message.  Its
diversity companion (`diversity_pixels`) is read beside it, never fitted.

A trial the trainer judged unhealthy (tag `health` = `collapsed` or `diverged`) is not
science: its metric measures a broken GAN, not a model size, so it is left out of every fit
unless the caller keeps it on purpose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from analysis.claims import WARMUP_FRACTION, total_steps
from analysis.contract import lower_is_better
from analysis.errors import AnalysisError
from analysis.load import DIVERSITY_PREFIX, QUALITY_PATTERN, StudyData

_KIND_PREFIX = re.compile(r"^(fd_inf_|fd_|kid_|precision_|recall_|diversity_)")
HEALTHY = ("ok", "")  # "" = not judged (a run still pending, running or failed: its status decides)


D_WINS = "d_wins"  # the column: share of a trial's logged steps at which D won outright
LOSS_D_FLOOR = 0.01  # gat_core EvalConfig.health_min_loss_d's default, for runs that did not log theirs
EPISODE_FLAG = 0.1  # as long as the window the trainer's verdict looks at (its last 10 % of training)

DIVERSITY_METRIC = f"{DIVERSITY_PREFIX}pixels"  # what trials log beside the quality metric (gat_core EvalConfig)


def diversity_key(metric: str) -> str:
    """The diversity metric trials log beside `metric`: `diversity_pixels`, whatever the quality metric's
    extractor (learned features are made to ignore the pose a collapsed generator stops varying)."""
    return DIVERSITY_METRIC


def diversity_metric(data: StudyData, metric: str) -> str | None:
    """The diversity metric logged beside `metric`: `diversity_pixels`, else (stores written before it) the one in
    the quality metric's extractor's features; None when the store has neither (DiT-only or old studies)."""
    extractor = _KIND_PREFIX.sub("", metric)
    for key in (DIVERSITY_METRIC, f"{DIVERSITY_PREFIX}{'inception' if metric in ('fid', 'fid_inf') else extractor}"):
        if key in data.metric_keys:
            return key
    return None


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
    excluded: pd.DataFrame  # run_name, trial_id, status, health, step, reason
    unhealthy: pd.DataFrame = field(default_factory=pd.DataFrame)  # run_name, trial_id, status, health,
    #                                                                  health_reason, used (kept on purpose)
    keep_unhealthy: bool = False


def _unhealthy(row: pd.Series) -> bool:
    return row.get("health", "") not in HEALTHY


def _why_excluded(row: pd.Series, value: object, metric: str, include_failed: bool, keep_unhealthy: bool) -> str:
    """Why a trial cannot be fitted ("" if it can).  The status gate comes first (`include_failed` lets diverged
    and failed runs in, health and all); a completed trial judged unhealthy needs `keep_unhealthy`."""
    if row["status"] != "completed" and not include_failed:
        return f"{row['status']}" + (f": {row['reason']}" if row["reason"] else "")
    if row["status"] == "completed" and _unhealthy(row) and not keep_unhealthy:
        return f"{row['health']}: {row.get('health_reason') or 'no reason recorded'}"
    if value is None or pd.isna(value):
        return f"did not log {metric}"
    return ""


def select_trials(data: StudyData, metric: str, include_failed: bool = False,
                  keep_unhealthy: bool = False) -> Selection:
    """Completed, healthy trials with a finite metric (diverged/failed ones too if `include_failed`, collapsed
    ones too if `keep_unhealthy`).

    Raises AnalysisError when no trial remains, or one without any unhealthy trial beside it (a study
    whose other trials collapsed still gets its report, which names them), naming why the others went.
    """
    trials = data.trials
    column = metric if metric in trials else f"metric:{metric}"
    if "health" not in trials:  # a frame built by hand: every trial as its status says
        trials = trials.assign(health="", health_reason="")
    reasons = [_why_excluded(row, row.get(column), metric, include_failed, keep_unhealthy)
               for _, row in trials.iterrows()]
    keep = pd.Series([r == "" for r in reasons], index=trials.index)
    usable = trials[keep].copy()
    usable["metric_value"] = usable[column].astype(float)
    excluded = pd.DataFrame({
        "run_name": trials["run_name"], "trial_id": trials["trial_id"], "status": trials["status"],
        "health": trials["health"], "step": trials["final_step"], "reason": reasons})[~keep].reset_index(drop=True)
    sick = trials.apply(_unhealthy, axis=1).astype(bool) if len(trials) else pd.Series(dtype=bool)
    unhealthy = pd.DataFrame({
        "run_name": trials["run_name"], "trial_id": trials["trial_id"], "status": trials["status"],
        "health": trials["health"], "health_reason": trials["health_reason"], "used": keep})[sick]
    unhealthy = unhealthy.reset_index(drop=True)
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
                            + "; ".join(f"{r.run_name}: {r.reason}" for r in excluded.itertuples())
                            + _keep_hint(unhealthy))
    if len(usable) == 1 and unhealthy.empty:
        raise AnalysisError(f"{', '.join(data.studies)} has a single usable trial ({usable['run_name'].iloc[0]}); "
                            f"a scaling fit needs at least 3 trials at different compute, an ablation at least 2"
                            + (f" ({len(excluded)} other trials excluded)" if len(excluded) else ""))
    # one healthy trial beside unhealthy ones is a result (the others collapsed): the report says so
    return Selection(metric=metric, lower_is_better=lower_is_better(metric), usable=usable.reset_index(drop=True),
                     excluded=excluded, unhealthy=unhealthy, keep_unhealthy=keep_unhealthy)


def _keep_hint(unhealthy: pd.DataFrame) -> str:
    left_out = unhealthy[~unhealthy["used"] & (unhealthy["status"] == "completed")] if len(unhealthy) else unhealthy
    return (f". {len(left_out)} completed trials were left out as unhealthy; --keep-unhealthy keeps them"
            if len(left_out) else "")


def d_wins_share(history: pd.DataFrame, trials: pd.DataFrame) -> pd.Series:
    """Per trial (indexed like `trials`): the share of its logged loss_d values after the first 10 % of training
    below its floor (`eval.health_min_loss_d`, else 0.01), i.e. how long D won outright once past the start;
    NaN where no loss_d was logged (DiT).  The trainer's health verdict sees only the last 10 % of training, so
    a D-wins episode that ends before it leaves a trial tagged healthy: this number shows it."""
    if history.empty or "run_id" not in trials:
        return pd.Series(float("nan"), index=trials.index)
    total = pd.Series(total_steps(trials).to_numpy(float), index=trials["run_id"].to_numpy())
    rows = history[history["key"] == "loss_d"]
    rows = rows[rows["step"].to_numpy(float) > WARMUP_FRACTION * rows["run_id"].map(total).to_numpy(float)]
    logged = trials.get("eval.health_min_loss_d", pd.Series(float("nan"), index=trials.index))
    floors = pd.to_numeric(logged, errors="coerce").fillna(LOSS_D_FLOOR).set_axis(trials["run_id"])
    rows = rows[rows["run_id"].isin(floors.index)]
    below = rows["value"].astype(float).to_numpy() < rows["run_id"].map(floors).to_numpy(float)
    share = pd.Series(below, index=rows["run_id"].to_numpy()).groupby(level=0).mean()
    return trials["run_id"].map(share).astype(float)


def d_wins_note(usable: pd.DataFrame) -> str:
    """One line naming the trials used in fits that D won outright for at least `EPISODE_FLAG` of their steps."""
    if D_WINS not in usable:
        return ""
    hit = usable[usable[D_WINS].astype(float) >= EPISODE_FLAG]
    if hit.empty:
        return ""
    listing = "; ".join(f"{r.run_name} ({r.d_wins:.0%} of logged steps)" for r in hit.itertuples())
    return (f"{len(hit)} trial(s) used in the fits had D winning outright (loss_d below the health floor) for "
            f"{EPISODE_FLAG:.0%} or more of their logged steps after the first 10 %, though tagged healthy: {listing}. "
            "The trainer's verdict sees only the last 10 % of training; an earlier episode is shown here, not acted on.")


def health_note(sel: Selection) -> str:
    """One line naming every unhealthy trial (name, health, reason) and whether the fits use it; "" if none."""
    bad = sel.unhealthy
    if bad.empty:
        return ""

    def listing(rows: pd.DataFrame) -> str:
        return "; ".join(f"{r.run_name} ({r.health}: {r.health_reason or 'no reason recorded'})"
                         for r in rows.itertuples())

    out, gone, kept = [], bad[~bad["used"]], bad[bad["used"]]
    if len(gone):
        hints = []
        if (gone["status"] == "completed").any():
            hints.append("--keep-unhealthy keeps the completed ones")
        if (gone["status"] != "completed").any():
            hints.append("--include-failed the diverged ones, at their last finite values")
        out.append(f"{len(gone)} unhealthy trial{'s' if len(gone) != 1 else ''} left out of every fit, frontier and "
                   f"table: {listing(gone)} ({'; '.join(hints)})")
    if len(kept):
        out.append(f"{len(kept)} unhealthy trial{'s' if len(kept) != 1 else ''} kept in the fits as asked "
                   f"(--keep-unhealthy / --include-failed): {listing(kept)}")
    return ". ".join(out)

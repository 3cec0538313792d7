"""The compute-efficient frontier: the best metric reachable at each training compute.

Every evaluation of every trial is a point (training MACs spent so far, metric).  The
frontier is their lower envelope (upper for higher-is-better metrics): walking up in
compute, a point is on it when no point at equal or lower compute is better.  It says how
good a model one can have for a compute budget, and which configuration gets there.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

LABEL_COLUMNS = ("study", "run_name", "trial_id", "size", "patch")


def eval_points(history: pd.DataFrame, trials: pd.DataFrame, metric: str, labels: Sequence[str] = ()) -> pd.DataFrame:
    """One row per evaluation: run_id, step, train_flops (MACs at that step), value, and the trial
    labels (study, run name, size, patch, and the `labels` columns, e.g. the ablation switches).

    `train_flops` is read at the evaluation's step; steps where it was not logged are
    interpolated from the run's logged values, or computed from the per-iteration MACs
    of the contract (`macs_per_sample_iter` x `train.batch_size` x step) when the run
    logged none.
    """
    values = history[(history["key"] == metric) & np.isfinite(history["value"])][["run_id", "step", "value"]]
    flops = history[history["key"] == "train_flops"][["run_id", "step", "value"]]
    parts = []
    per_run = trials.set_index("run_id")
    flops_of = {run_id: group for run_id, group in flops.groupby("run_id", sort=False)}  # not a scan per run
    no_flops = flops.iloc[:0]
    for run_id, group in values.groupby("run_id", sort=False):
        if run_id not in per_run.index:
            continue
        logged = flops_of.get(run_id, no_flops).sort_values("step")
        steps = group["step"].to_numpy(float)
        if len(logged) >= 2:
            compute = np.interp(steps, logged["step"].to_numpy(float), logged["value"].to_numpy(float))
        elif len(logged) == 1 and logged["step"].iloc[0] > 0:
            compute = steps * logged["value"].iloc[0] / logged["step"].iloc[0]
        else:
            row = per_run.loc[run_id]
            compute = steps * float(row.get("macs_per_sample_iter", np.nan)) * float(row.get("train.batch_size", np.nan))
        parts.append(group.assign(train_flops=compute))
    columns = ["run_id", "step", "value", "train_flops", *LABEL_COLUMNS, *labels]
    if not parts:
        return pd.DataFrame(columns=columns)
    # the labels joined once, not set column by column on each run's part
    named = [col for col in dict.fromkeys((*LABEL_COLUMNS, *labels)) if col in per_run.columns]
    out = pd.concat(parts, ignore_index=True).join(per_run[named], on="run_id")
    for col in named:  # whole numbers as plain int64, as a value set on each part gave them
        if isinstance(out[col].dtype, pd.Int64Dtype) and out[col].notna().all():
            out[col] = out[col].astype("int64")
    return out


def compute_frontier(points: pd.DataFrame, lower_is_better: bool = True, positive_only: bool = True) -> pd.DataFrame:
    """The points on the frontier, in increasing compute, with the trial each comes from.

    `positive_only` drops step 0 (no compute spent), which a log axis cannot show and
    which no budget decision needs.
    """
    pts = points[np.isfinite(points["train_flops"]) & np.isfinite(points["value"])]
    if positive_only:
        pts = pts[pts["train_flops"] > 0]
    sign = 1.0 if lower_is_better else -1.0
    pts = pts.assign(_key=sign * pts["value"]).sort_values(["train_flops", "_key"], kind="stable")
    best = np.minimum.accumulate(pts["_key"].to_numpy()) if len(pts) else np.array([])
    previous = np.concatenate([[np.inf], best[:-1]])
    on = pts["_key"].to_numpy() < previous
    return pts[on].drop(columns="_key").reset_index(drop=True)


def frontier_at(frontier: pd.DataFrame, compute: float | np.ndarray) -> np.ndarray:
    """Best metric reachable with at most `compute` training MACs (NaN below the first point)."""
    c = np.atleast_1d(np.asarray(compute, float))
    xs = frontier["train_flops"].to_numpy(float)
    idx = np.searchsorted(xs, c, side="right") - 1
    out = np.full(c.shape, np.nan)
    ok = idx >= 0
    out[ok] = frontier["value"].to_numpy(float)[idx[ok]]
    return out


def frontier_segments(frontier: pd.DataFrame, labels: Sequence[str] = ()) -> pd.DataFrame:
    """Which configuration owns the frontier over which compute range (consecutive points merged)."""
    if frontier.empty:
        return pd.DataFrame(columns=["run_name", "size", "patch", *labels, "from_flops", "to_flops", "best_value",
                                     "points"])
    owner = frontier["run_id"]
    block = (owner != owner.shift()).cumsum()
    rows = []
    for _, seg in frontier.groupby(block, sort=True):
        first = seg.iloc[0]
        rows.append({"run_name": first.get("run_name"), "trial_id": first.get("trial_id"), "size": first.get("size"),
                     "patch": first.get("patch"), **{k: first.get(k) for k in labels},
                     "from_flops": float(seg["train_flops"].min()),
                     "to_flops": float(seg["train_flops"].max()), "best_value": float(seg["value"].iloc[-1]),
                     "points": len(seg)})
    return pd.DataFrame(rows)

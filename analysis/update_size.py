"""Relative output change per optimiser step against width: what the width-aware learning rate is meant to hold.

The trainer logs `out_change_g` = ||G(z) - G_before(z)|| / ||G_before(z)|| and `out_change_d` (the same for D's
logits on fixed reals) across one optimiser step, at every logging step (`gat_core.diagnostics`).  The
width-aware rule (lr = lr_base · base_width / width) is meant to make this update size independent of width;
under a constant learning rate it should grow with width (issue 16, lr-ablation).

* Per trial: the median of each key over its logged steps after the first 10 % of training (the warm-up of
  Adam's moments and of the EMA moves it most).
* Per group (the values of the study's switches other than width, e.g. `train.lr_rule`) and width: the
  geometric mean over trials (seeds), with a 95 % bootstrap interval resampling them.
* Per group: the slope of log update size on log width (0: the same update size at every width), with a 95 %
  bootstrap interval resampling the trials of each width.
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
from matplotlib.ticker import NullFormatter

from analysis.claims import WARMUP_FRACTION, total_steps
from analysis.fit import bootstrap_indices, json_safe, percentile_interval
from analysis.render import fmt_interval, fmt_num, fmt_value, image_link, markdown_table, write_csvs

KEYS = ("out_change_g", "out_change_d")
WIDTH_KEY = "model.width"
FIXED_KEYS = ("model.depth", "model.patch_size", "model.family")


def _slope(lw: np.ndarray, ly: np.ndarray) -> float:
    """Least-squares slope of ly on lw; NaN unless lw varies."""
    dx = lw - lw.mean()
    sxx = float((dx * dx).sum())
    return float((dx * (ly - ly.mean())).sum() / sxx) if sxx > 1e-12 else math.nan


@dataclass
class UpdateSize:
    """Per trial and per (group, width) update sizes, and per group the slope against width."""

    per_trial: pd.DataFrame   # run_id, group, width, seed, out_change_g, out_change_d
    per_width: pd.DataFrame   # group, width, key, trials, geomean, lo, hi
    slopes: pd.DataFrame      # group, key, widths, slope, lo, hi
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"per_width": self.per_width.to_dict(orient="records"),
                          "slopes": self.slopes.to_dict(orient="records"), "notes": self.notes})


def trial_medians(history: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Per trial (index run_id): the median of each `KEYS` over its logged steps after the first
    `WARMUP_FRACTION` of training; non-positive medians as NaN (no log)."""
    rows = history[history["key"].isin(KEYS) & history["run_id"].isin(trials["run_id"])]
    total = total_steps(trials).set_axis(trials["run_id"])
    rows = rows[rows["step"].to_numpy(float) > WARMUP_FRACTION * rows["run_id"].map(total).to_numpy(float)]
    rows = rows[np.isfinite(rows["value"].astype(float))]
    if rows.empty:
        return pd.DataFrame(columns=list(KEYS))
    per = rows.pivot_table(index="run_id", columns="key", values="value", aggfunc="median")
    return per.where(per > 0)


def update_size(history: pd.DataFrame, usable: pd.DataFrame, switches: list[str], *, n_boot: int = 1000,
                seed: int = 0) -> UpdateSize | None:
    """The update sizes of `usable`'s trials; None unless they logged `out_change_*` at 2 or more widths of one depth
    and patch size (where depth or patch varies too, width is not the only thing an update size would follow)."""
    if WIDTH_KEY not in usable or history.empty:
        return None
    per = trial_medians(history, usable)  # a trial whose median update is 0 has no log; left out (see the notes)
    if per.empty:
        return None
    usable = usable[usable["run_id"].isin(per.index)]  # the trials that log it (GAN trials; DiT ones do not)
    if any(k in usable and usable[k].map(fmt_value).nunique() > 1 for k in FIXED_KEYS):
        return None
    info = usable.set_index("run_id")
    by = [s for s in switches if s not in (WIDTH_KEY, "train.seed")]
    per["width"] = pd.to_numeric(info.loc[per.index, WIDTH_KEY], errors="coerce")
    per["group"] = (info.loc[per.index, by].apply(lambda r: ", ".join(f"{k}={fmt_value(v)}" for k, v in r.items()),
                                                  axis=1) if by else "all")
    per["seed"] = info.loc[per.index, "train.seed"].map(fmt_value) if "train.seed" in info else "—"
    per = per.reset_index()
    if per["width"].nunique() < 2:
        return None
    notes = [f"{int(per[k].isna().sum())} trials have no positive median {k}: left out"
             for k in KEYS if k in per and per[k].isna().any()]
    rng = np.random.default_rng(seed)
    widths_rows, slope_rows = [], []
    for group, g in per.groupby("group", sort=True):
        for key in [k for k in KEYS if k in g]:
            data = g.dropna(subset=[key])
            widths = sorted(data["width"].unique())
            cells = {w: np.log(data.loc[data["width"] == w, key].to_numpy(float)) for w in widths}
            resampled = n_boot > 0 and all(len(v) >= 2 for v in cells.values())  # every width: the slope's interval
            for w, v in cells.items():  # geometric means: the slope below is fitted on the same logs
                boot = (v[bootstrap_indices(len(v), n_boot, rng)].mean(axis=1) if n_boot > 0 and len(v) >= 2
                        else np.empty(0))  # one trial: no interval for this width
                lo, hi = percentile_interval(np.exp(boot))
                widths_rows.append({"group": group, "width": w, "key": key, "trials": len(v),
                                    "geomean": float(np.exp(v.mean())), "lo": lo, "hi": hi})
            lw = np.concatenate([np.full(len(v), math.log(w)) for w, v in cells.items()])
            boots = []
            for _ in range(n_boot if resampled else 0):  # resample each width's trials, keep every width
                picks = [v[rng.integers(0, len(v), len(v))] for v in cells.values()]
                boots.append(_slope(lw, np.concatenate(picks)))
            lo, hi = percentile_interval(np.array(boots))
            slope_rows.append({"group": group, "key": key, "widths": len(widths),
                               "slope": _slope(lw, np.concatenate(list(cells.values()))), "lo": lo, "hi": hi})
            if not resampled:
                notes.append(f"{group}, {key}: a width with a single trial, so no interval for it or for the slope "
                             "(run more seeds)")
    return UpdateSize(per_trial=per, per_width=pd.DataFrame(widths_rows), slopes=pd.DataFrame(slope_rows), notes=notes)


def plot_update_size(result: UpdateSize, stem: Path) -> list[Path]:
    """Update size of G (left) and D (right) against width, one line per group, trials as dots."""
    from analysis.plots import PAPER_RC, save

    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(5.6, 2.4), layout="constrained")
        axes = fig.subplots(1, 2)
        colors = matplotlib.colormaps["tab10"]
        for ax, key in zip(axes, KEYS):
            for i, (group, cells) in enumerate(result.per_width[result.per_width["key"] == key].groupby("group")):
                pts = result.per_trial[result.per_trial["group"] == group]
                ax.scatter(pts["width"], pts[key], s=8, color=colors(i), alpha=0.5)
                err = np.abs(np.stack([cells["geomean"] - cells["lo"], cells["hi"] - cells["geomean"]]).astype(float))
                slope = result.slopes[(result.slopes["group"] == group) & (result.slopes["key"] == key)]
                label = f"{group}: slope {fmt_num(float(slope['slope'].iloc[0]), 2)}" if len(slope) else group
                ax.errorbar(cells["width"], cells["geomean"], yerr=np.nan_to_num(err), fmt="o-", color=colors(i), ms=4,
                            capsize=2, label=label)
            ax.set(xscale="log", yscale="log", xlabel="width", ylabel=f"{key} per step")
            widths = sorted(result.per_trial["width"].unique())
            ax.set_xticks(widths, [fmt_value(w) for w in widths])
            ax.xaxis.set_minor_formatter(NullFormatter())  # only the tried values are labelled
            ax.legend(fontsize=5.5)
        return save(fig, stem)


def left_out_table(history: pd.DataFrame, left_out: pd.DataFrame) -> pd.DataFrame:
    """The update sizes of the trials left out of the fits (unhealthy ones), with their health, for comparison."""
    per = trial_medians(history, left_out)
    if per.empty:
        return pd.DataFrame()
    info = left_out.set_index("run_id").loc[per.index]
    return pd.DataFrame({"trial": info.get("run_name", pd.Series(per.index, index=per.index)),
                         "health": info.get("health", "—"),
                         **{k: per[k].map(lambda v: fmt_num(v, 3)) for k in KEYS if k in per}}).reset_index(drop=True)


def update_size_markdown(result: UpdateSize, figure: list[Path], out_dir: Path,
                         left_out: pd.DataFrame | None = None) -> str:
    width_rows = [{"group": r.group, "width": fmt_value(r.width), "quantity": r.key, "trials": str(r.trials),
                   "geometric mean": fmt_num(r.geomean, 3), "95 % CI": fmt_interval((r.lo, r.hi), 3)}
                  for r in result.per_width.itertuples()]
    slope_rows = [{"group": r.group, "quantity": r.key, "widths": str(r.widths), "slope vs log width":
                   fmt_num(r.slope, 3), "95 % CI": fmt_interval((r.lo, r.hi), 3),
                   "reading": ("CI includes 0: no width dependence resolved" if r.lo <= 0 <= r.hi else
                               "grows with width" if r.lo > 0 else "shrinks with width")
                   if math.isfinite(r.lo) else "no interval"}
                  for r in result.slopes.itertuples()]
    return "\n".join([
        "## Update size vs width (the width-aware learning rate)\n",
        "The relative change of G's output (`out_change_g`) and of D's logits (`out_change_d`) on fixed inputs across "
        "one optimiser step: what the width-aware rule lr = lr_base · base_width / width is meant to keep the same "
        f"at every width. Per trial the median over logged steps after the first {WARMUP_FRACTION:.0%} of training; "
        "per width the geometric mean over trials with a 95 % bootstrap interval over them; the slope is that of "
        "log update size on log width (trials of each width resampled; no interval where a width has one trial).\n",
        markdown_table(pd.DataFrame(slope_rows)), markdown_table(pd.DataFrame(width_rows)),
        *[f"- {n}" for n in result.notes], "",
        *(["The trials left out of the fits as unhealthy, measured the same way (for comparison, not in the "
           "numbers above):\n", markdown_table(left_out)] if left_out is not None and len(left_out) else []),
        image_link(figure, out_dir, "update size vs width"),
        "Tables: [tables/update_size.csv](tables/update_size.csv) · "
        "[tables/update_size_slopes.csv](tables/update_size_slopes.csv)\n"]) + "\n"


@dataclass
class UpdateSizeSection:
    """What the update-size part of a report wrote: the result, its files and the markdown."""

    result: UpdateSize
    files: list[Path]
    markdown: str


def update_size_section(history: pd.DataFrame, usable: pd.DataFrame, switches: list[str], tables: Path, plots: Path,
                        out_dir: Path, *, n_boot: int = 1000, seed: int = 0, left_out: pd.DataFrame | None = None
                        ) -> UpdateSizeSection | None:
    """The section, or None when the trials logged no update size at 2 or more widths; `left_out`: the trials the
    fits leave out as unhealthy, listed with their update sizes for comparison."""
    result = update_size(history, usable, switches, n_boot=n_boot, seed=seed)
    if result is None:
        return None
    files = write_csvs(tables, {"update_size": result.per_width, "update_size_slopes": result.slopes})
    figure = plot_update_size(result, plots / "update_size")
    others = left_out_table(history, left_out) if left_out is not None and len(left_out) else None
    return UpdateSizeSection(result, files + figure, update_size_markdown(result, figure, out_dir, others))

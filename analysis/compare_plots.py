"""Figures of the GAN-vs-diffusion comparison: metric vs training compute (with each family's fit) and
metric vs sampling compute per image.  One colour per family, one marker per model size."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.families import FAMILIES, FAMILY_NAMES, Comparison
from analysis.plots import MARKERS, PAPER_RC, _log_axis, _log_y_ok, axis_label, save
from analysis.render import fmt_value, several_patches, size_key

FAMILY_COLORS = {"gat": "#1f5fa8", "dit": "#c8481c"}
SAMPLING_LABEL = "sampling compute per image (GFLOPs, DiT convention: NFE × forward)"


def plot_training_compute(comp: Comparison, stem: Path) -> list[Path]:
    """The metric against training MACs: every trial's final value, each family's fit with its band and frontier."""
    markers = _size_markers(comp.trials)
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(3.8, 3.0), layout="constrained")
        ax = fig.add_subplot()
        handles = []
        for fam in FAMILIES:
            color = FAMILY_COLORS[fam]
            pts = comp.trials[comp.trials["family"] == fam]
            for key, group in pts.groupby(size_key(pts, several_patches(comp.trials)), sort=False):
                ax.scatter(group["train_flops"], group["metric_value"], color=color, marker=markers.get(key, "o"),
                           s=20, zorder=3, edgecolors="white", linewidths=0.4)
            front = comp.frontiers.get(fam, pd.DataFrame())
            if not front.empty:
                xs = list(front["train_flops"]) + [float(pts["train_flops"].max())]
                ys = list(front["value"]) + [front["value"].iloc[-1]]
                ax.step(xs, ys, where="post", color=color, linewidth=0.7, alpha=0.55, linestyle=":", zorder=2)
            fit = comp.fit(fam, "train_flops")
            label = FAMILY_NAMES[fam]
            if fit is not None:  # a fit that is no scaling law: thin and dashed over the trials' range, no band
                grid = np.geomspace(fit.x_range[0] / 1.5, fit.x_range[1] * 1.5, 200) if fit.is_law else \
                    np.geomspace(*fit.x_range, 50)
                ax.plot(grid, fit.predict(grid), color=color, linewidth=1.2 if fit.is_law else 0.7,
                        linestyle="-" if fit.is_law else "--", zorder=2)
                if len(fit.boot) and fit.is_law:
                    ax.fill_between(grid, *fit.band(grid), color=color, alpha=0.15, linewidth=0, zorder=1)
                label += f": b = {fit.params['b']:.3f}"
                if np.isfinite(fit.ci["b"][0]):
                    label += f" [{fit.ci['b'][0]:.3f}, {fit.ci['b'][1]:.3f}]"
                if not fit.is_law:
                    label += ", no scaling law"
            handles.append(Line2D([], [], color=color, marker="o", label=label))
        handles.append(Line2D([], [], color="0.4", linestyle=":", linewidth=0.8, label="frontier (all evaluations)"))
        ax.set_xscale("log")
        if _log_y_ok(comp.trials["metric_value"]):
            ax.set_yscale("log")
            _log_axis(ax.yaxis)
        ax.set_xlabel(axis_label("train_flops"))
        ax.set_ylabel(f"{comp.metric} ({'lower' if comp.lower_is_better else 'higher'} is better)")
        _legends(fig, handles, markers)
        return save(fig, stem)


def _legends(fig: Figure, handles: list[Line2D], markers: dict[str, str]) -> None:
    """Families (colour, with their fits) below the axes, model sizes (marker) on the right."""
    fig.legend(handles=handles, loc="outside lower center", ncol=1)
    sizes = [Line2D([], [], color="0.35", marker=mk, linestyle="", label=key) for key, mk in markers.items()]
    fig.legend(handles=sizes, loc="outside right upper", title="model size", title_fontsize=6.5)


def plot_sampling_compute(comp: Comparison, stem: Path) -> list[Path]:
    """The metric against sampling GFLOPs per image: GAT points at 1 NFE, a line over NFE per DiT trial."""
    markers = _size_markers(comp.trials)
    s = comp.sampling.dropna(subset=["sample_gflops", "value"])
    s = s[(s["sample_gflops"] > 0)]
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(3.8, 3.0), layout="constrained")
        ax = fig.add_subplot()
        keys = size_key(s, several_patches(comp.trials)) if len(s) else pd.Series(dtype=object)
        largest = s.loc[s["family"] == "dit", "size_rank"].max() if (s["family"] == "dit").any() else None
        labelled = False
        for run_id, run in s.groupby("run_id", sort=False):
            run = run.sort_values("sample_gflops")
            fam, key = run["family"].iloc[0], keys[run.index[0]]
            color = FAMILY_COLORS.get(fam, "0.5")
            if len(run) > 1:
                ax.plot(run["sample_gflops"], run["value"], color=color, linewidth=0.8, alpha=0.8, zorder=2)
            ax.scatter(run["sample_gflops"], run["value"], color=color, marker=markers.get(key, "o"), s=18, zorder=3,
                       edgecolors="white", linewidths=0.4)
            if fam == "dit" and not labelled and run["size_rank"].iloc[0] == largest and len(run) > 1:
                for x, y, k in zip(run["sample_gflops"], run["value"], run["nfe"]):
                    ax.annotate(f"{fmt_value(k)}", (x, y), textcoords="offset points", xytext=(2, 3), fontsize=5.5,
                                color=color)
                labelled = True
        ax.set_xscale("log")
        if _log_y_ok(s["value"]):
            ax.set_yscale("log")
            _log_axis(ax.yaxis)
        ax.set_xlabel(SAMPLING_LABEL)
        ax.set_ylabel(f"{comp.metric} ({'lower' if comp.lower_is_better else 'higher'} is better)")
        handles = [Line2D([], [], color=FAMILY_COLORS["gat"], marker="o", linestyle="", label="GAT (1 NFE)"),
                   Line2D([], [], color=FAMILY_COLORS["dit"], marker="o", label="DiT (line over NFE; numbers = NFE)")]
        _legends(fig, handles, markers)
        return save(fig, stem)


def _size_markers(trials: pd.DataFrame) -> dict[str, str]:
    order = trials.sort_values("size_rank", kind="stable") if "size_rank" in trials else trials
    keys = list(dict.fromkeys(size_key(order, several_patches(trials))))
    return {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(keys)}

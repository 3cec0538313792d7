"""Publication-style figures, each saved as PNG and PDF.

One colour per model size (ordered small to large along viridis) and one marker per patch
size, the same in every figure of a report.  Figures are built on `matplotlib.figure.Figure`
inside an `rc_context`, so nothing here touches pyplot's global state or the caller's rc.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from analysis.ablation import OFF_VALUES, AblationTable, fmt_value
from analysis.fit import Fit
from analysis.load import DIVERSITY_PREFIX

PAPER_RC: dict[str, Any] = {
    "font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "legend.fontsize": 6.5, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "grid.linewidth": 0.5, "lines.linewidth": 1.2, "lines.markersize": 4,
    "legend.frameon": False, "savefig.dpi": 200, "savefig.bbox": "tight", "pdf.fonttype": 42, "ps.fonttype": 42,
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h")
MAX_LEGEND_SIZES = 12
SETTING_SHADES = ("0.25", "0.55", "0.8", "0.4", "0.7", "0.15")
SETTING_HATCHES = ("", "//", "..", "xx", "\\\\", "--")
AXIS_LABELS = {
    "gflops_g": "inference compute of G (GFLOPs per image; 1 MAC = 1 FLOP, DiT convention)",
    "params_g": "parameters of G",
    "train_flops": "training compute (MACs, DiT convention)",
    "step": "training step",
}


@dataclass(frozen=True)
class Style:
    """Colours per model size and markers per patch size, fixed for a whole report."""

    size_colors: dict[str, tuple[float, ...]]
    patch_markers: dict[str, str]

    def color(self, size: Any) -> tuple[float, ...]:
        return self.size_colors.get(str(size), (0.5, 0.5, 0.5, 1.0))

    def marker(self, patch: Any) -> str:
        return self.patch_markers.get(fmt_value(patch), "o")

    def legend_handles(self, sizes: Sequence[Any] | None = None, patches: Sequence[Any] | None = None) -> list[Line2D]:
        """One entry per size (at most `MAX_LEGEND_SIZES`, spread evenly from the smallest to the largest, with
        a line saying how many there are: a study of 250 widths got a legend taller than the figure, which
        squeezed the axes to nothing and was most of the figure's drawing time) and one per patch size."""
        wanted_sizes = None if sizes is None else {str(s) for s in sizes}
        wanted_patches = None if patches is None else {fmt_value(p) for p in patches}
        sizes = [s for s in self.size_colors if wanted_sizes is None or s in wanted_sizes]
        patches = [p for p in self.patch_markers if wanted_patches is None or p in wanted_patches]
        shown = sizes
        if len(sizes) > MAX_LEGEND_SIZES:
            shown = [sizes[i] for i in np.unique(np.linspace(0, len(sizes) - 1, MAX_LEGEND_SIZES).round().astype(int))]
        handles = [Line2D([], [], color=self.color(s), marker="o", linestyle="-", label=s) for s in shown]
        if len(shown) < len(sizes):
            handles.append(Line2D([], [], linestyle="", label=f"({len(shown)} of {len(sizes)} sizes shown)"))
        if len(patches) > 1 or (patches and patches[0] != "—"):
            handles += [Line2D([], [], color="0.3", marker=self.marker(p), linestyle="", label=f"patch {p}")
                        for p in patches]
        return handles


def make_style(trials: pd.DataFrame) -> Style:
    """Sizes in order of parameter count get viridis shades; patch sizes get markers in order."""
    order = trials.sort_values("size_rank", kind="stable")["size"].astype(str) if "size_rank" in trials \
        else trials["size"].astype(str)
    sizes = list(dict.fromkeys(order))
    cmap = matplotlib.colormaps["viridis"]
    shades = np.linspace(0.0, 0.85, len(sizes)) if len(sizes) > 1 else [0.35]
    patches = sorted({fmt_value(p) for p in trials["patch"]}, key=lambda p: (len(p), p))
    return Style(size_colors={s: tuple(cmap(v)) for s, v in zip(sizes, shades)},
                 patch_markers={p: MARKERS[i % len(MARKERS)] for i, p in enumerate(patches)})


def axis_label(name: str) -> str:
    return AXIS_LABELS.get(name, name)


def save(fig: Figure, stem: Path) -> list[Path]:
    """`stem`.png and `stem`.pdf."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path)
    return paths


def _log_axis(axis: Any) -> None:
    """Log scale with plain tick labels (20, 50, 100 rather than 2x10^1): 1-2-5 steps over a few decades,
    decades over a wide range (where a 1-2-5 locator would place no tick at all)."""
    lo, hi = sorted(abs(v) for v in axis.get_view_interval())
    wide = lo <= 0 or np.log10(hi / lo) > 3.5
    axis.set_major_locator(LogLocator(base=10, numticks=10) if wide else LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_y_ok(values: pd.Series | np.ndarray) -> bool:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return len(v) > 0 and bool((v > 0).all())


def _scatter_by_marker(ax: Any, points: pd.DataFrame, x: str, y: str, style: Style, **kwargs: Any) -> None:
    """Each point in its size's colour with its patch size's marker: one scatter per marker rather than one
    per (size, patch) group, which cost a drawn collection each in every saved file."""
    for patch, group in points.groupby(points["patch"].map(fmt_value), sort=True):
        ax.scatter(group[x], group[y], c=[style.color(s) for s in group["size"].astype(str)],
                   marker=style.marker(patch), **kwargs)


def _curves(ax: Any, rows: pd.DataFrame, x: str, y: str, style: Style, **kwargs: Any) -> None:
    """One line per run (rows sorted along x) in its size's colour, drawn as one LineCollection: a thousand
    Line2D artists cost seconds to save; the collection draws the same lines in a fraction of it."""
    from matplotlib.collections import LineCollection

    segments, colors = [], []
    for _, run in rows.groupby("run_id", sort=False):
        segments.append(np.column_stack([run[x].to_numpy(float), run[y].to_numpy(float)]))
        colors.append(style.color(run["size"].iloc[0]))
    if segments:
        ax.add_collection(LineCollection(segments, colors=colors, **kwargs))
        ax.autoscale_view()


def plot_scaling(points: pd.DataFrame, x: str, metric: str, fits: Sequence[Fit], style: Style, stem: Path,
                 band_fits: Sequence[Fit] = (), title: str | None = None) -> list[Path]:
    """Metric against a compute axis, one point per trial, each fit as a line, CI bands for `band_fits`."""
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(3.6, 2.8), layout="constrained")
        ax = fig.add_subplot()
        _scatter_by_marker(ax, points, x, "metric_value", style, s=18, zorder=3, edgecolors="white", linewidths=0.4)
        dashes = ("-", "--", ":", "-.")
        for i, fit in enumerate(fits):
            grid = np.geomspace(fit.x_range[0] / 1.3, fit.x_range[1] * 1.3, 200)
            label = _fit_label(fit)
            ax.plot(grid, fit.predict(grid), color="black" if i == 0 else f"{0.15 + 0.12 * i:.2f}",
                    linestyle=dashes[i % len(dashes)], linewidth=1.0, label=label, zorder=2)
            if fit in band_fits:
                band = fit.band(grid)
                ax.fill_between(grid, *band, color="0.6", alpha=0.25, linewidth=0, zorder=1)
        ax.set_xscale("log")
        if _log_y_ok(points["metric_value"]):
            ax.set_yscale("log")
            values = points["metric_value"].to_numpy(float)
            low, high = ax.get_ylim()  # keep a wide CI band from flattening the points
            ax.set_ylim(max(low, np.nanmin(values) / 4), min(high, np.nanmax(values) * 4))
            _log_axis(ax.yaxis)
        ax.set_xlabel(axis_label(x))
        ax.set_ylabel(metric)
        if title:
            ax.set_title(title)
        ax.legend(handles=style.legend_handles(points["size"], points["patch"]), loc="lower left")
        fit_handles, _ = ax.get_legend_handles_labels()
        if fit_handles:
            fig.legend(handles=fit_handles, loc="outside lower center", ncol=1)
        return save(fig, stem)


def _fit_label(fit: Fit) -> str:
    b, (b_lo, b_hi) = fit.params["b"], fit.ci["b"]
    head = f"{fit.group}: " if fit.group != "all" else ""
    tail = "" if fit.is_law else " (no scaling law at this scale)"
    if fit.kind == "power":
        return f"{head}a·x^-b, b={b:.3f} [{b_lo:.3f}, {b_hi:.3f}], R²={fit.r2_log:.3f}{tail}"
    return f"{head}E+a·x^-b, E={fit.params['E']:.3g}, b={b:.3f} [{b_lo:.3f}, {b_hi:.3f}]{tail}"


def plot_compute_curves(points: pd.DataFrame, frontier: pd.DataFrame, metric: str, style: Style, stem: Path,
                        lower_is_better: bool = True) -> list[Path]:
    """Metric against training compute, one curve per trial, and the compute-efficient frontier."""
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(3.8, 2.9), layout="constrained")
        ax = fig.add_subplot()
        pts = points[points["train_flops"] > 0]
        ordered = pts.sort_values("train_flops", kind="stable")
        _curves(ax, ordered, "train_flops", "value", style, linewidth=0.8, alpha=0.8)
        _scatter_by_marker(ax, ordered.groupby("run_id", sort=False).tail(1), "train_flops", "value", style, s=14,
                           zorder=3)
        if not frontier.empty:
            xs = list(frontier["train_flops"]) + [pts["train_flops"].max()]
            ys = list(frontier["value"]) + [frontier["value"].iloc[-1]]
            ax.step(xs, ys, where="post", color="black", linewidth=1.4, label="compute-efficient frontier", zorder=4)
        ax.set_xscale("log")
        if _log_y_ok(pts["value"]):
            ax.set_yscale("log")
            _log_axis(ax.yaxis)
        ax.set_xlabel(axis_label("train_flops"))
        ax.set_ylabel(f"{metric} ({'lower' if lower_is_better else 'higher'} is better)")
        extra, _ = ax.get_legend_handles_labels()
        fig.legend(handles=style.legend_handles(pts["size"], pts["patch"]) + extra, loc="outside lower center",
                   ncol=4)
        return save(fig, stem)


def plot_ablation(table: AblationTable, style: Style, stem: Path) -> list[Path]:
    """Grouped bars (mean ± std) per context, one bar per setting; tick labels in the size colour."""
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(max(3.0, 0.9 * len(table.contexts) + 1.2), 2.6), layout="constrained")
        ax = fig.add_subplot()
        width = 0.8 / len(table.values)
        xs = np.arange(len(table.contexts))
        for i, value in enumerate(table.values):
            cells = [table.cell(value, c) for c in table.contexts]
            means = [c["mean"] if c is not None else np.nan for c in cells]
            stds = [c["std"] if c is not None and np.isfinite(c["std"]) else 0.0 for c in cells]
            label = f"{value} (baseline)" if value == table.baseline else value
            ax.bar(xs + (i - (len(table.values) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
                   color=SETTING_SHADES[i % len(SETTING_SHADES)], hatch=SETTING_HATCHES[i % len(SETTING_HATCHES)],
                   edgecolor="black", linewidth=0.5, error_kw={"linewidth": 0.7}, label=label)
        ax.set_xticks(xs, table.contexts, rotation=20 if len(table.contexts) > 4 else 0)
        for tick, ctx in zip(ax.get_xticklabels(), table.contexts):
            tick.set_color(style.color(table.context_sizes.get(ctx, "")))
        ax.set_ylabel(table.metric)
        ax.grid(axis="x", visible=False)
        fig.legend(title=table.switch, loc="outside right upper")
        return save(fig, stem)


def plot_training_curves(history: pd.DataFrame, trials: pd.DataFrame, keys: Sequence[str], style: Style,
                         stem: Path, group_by: Sequence[str] = (), final_apart: Collection[str] = ()
                         ) -> list[Path] | None:
    """One panel per metric key (against step), one line per trial; None if no key was logged.

    With `group_by` (the columns that tell configurations apart: size, patch, switches), the trials of one
    configuration (its seeds) are drawn as their mean with a min–max band instead, where there are several.
    The value of a `final_apart` key at a trial's `final_step` (the final evaluation, on `eval.final_samples`
    samples where the others use `eval.num_samples`) is drawn as an open marker of its own, not joined to the
    curve: a Fréchet distance depends on the sample count.
    A `diversity_*` panel gets the data's own level (1) as a dotted line: a curve falling away from
    it is a generator collapsing, whatever the quality metric beside it says."""
    keys = [k for k in keys if (history["key"] == k).any()]
    if not keys:
        return None
    labels = trials.set_index("run_id")
    group_by = [c for c in group_by if c in labels]
    groups = (labels[group_by].apply(lambda col: col.map(fmt_value)).agg(" ".join, axis=1) if group_by
              else pd.Series(labels.index, index=labels.index))
    banded = bool(group_by) and bool(groups.duplicated().any())
    final_step = pd.to_numeric(labels["final_step"], errors="coerce") if "final_step" in labels else None
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(2.5 * len(keys) + 0.4, 2.4), layout="constrained")
        axes = fig.subplots(1, len(keys), squeeze=False)[0]
        any_final = False
        for ax, key in zip(axes, keys):
            rows = history[(history["key"] == key) & history["run_id"].isin(labels.index)]
            rows = rows.join(labels[["size", "patch"]], on="run_id").sort_values("step", kind="stable")
            rows = rows.assign(group=rows["run_id"].map(groups if banded else pd.Series(labels.index, labels.index)))
            finals = rows.iloc[:0]
            if key in final_apart and final_step is not None:
                last = rows["step"].to_numpy() == rows["run_id"].map(final_step).to_numpy()
                finals, rows = rows[last], rows[~last]
            if banded:
                rows, finals = _band(ax, rows, style), _summarise(finals)
            _curves(ax, rows.rename(columns={"run_id": "_run", "group": "run_id"}), "step", "value", style,
                    linewidth=0.8, alpha=0.85)
            short = rows.groupby("group", sort=False)["step"].transform("size") <= 30
            _scatter_by_marker(ax, rows[short], "step", "value", style, s=2.5 ** 2, alpha=0.85, edgecolors="face",
                               linewidths=matplotlib.rcParams["lines.markeredgewidth"])  # as a line's markers
            for _, point in finals.iterrows():
                lo, hi = point.get("min", point["value"]), point.get("max", point["value"])
                ax.errorbar([point["step"]], [point["value"]], yerr=[[point["value"] - lo], [hi - point["value"]]],
                            fmt="o", mfc="none", ms=3.5, color=style.color(point["size"]), elinewidth=0.7, capsize=1.5)
                any_final = True
            values = pd.concat([rows["value"], finals["value"]])
            if key.startswith(("fd", "fid", "kid")) and _log_y_ok(values):
                ax.set_yscale("log")
                _log_axis(ax.yaxis)
            if key.startswith(DIVERSITY_PREFIX):
                ax.axhline(1.0, color="0.4", linestyle=":", linewidth=0.8)
                ax.set_ylim(bottom=0)
            ax.set_xlabel(axis_label("step"))
            ax.set_title(key)
        handles = style.legend_handles(trials["size"], trials["patch"])
        if banded:
            handles.append(Line2D([], [], color="0.3", label="seed mean, min–max band"))
        if any_final:
            handles.append(Line2D([], [], color="0.3", marker="o", mfc="none", linestyle="",
                                  label="final evaluation (own sample count)"))
        fig.legend(handles=handles, loc="outside right upper")
        return save(fig, stem)


def _band(ax: Any, rows: pd.DataFrame, style: Style) -> pd.DataFrame:
    """Draw each group's min–max band over its trials (where it has several); return its mean curve as rows."""
    out = []
    for group, part in rows.groupby("group", sort=False):
        table = part.pivot_table(index="step", columns="run_id", values="value")
        mean = table.mean(axis=1)
        size = part["size"].iloc[0]
        if table.shape[1] > 1:
            ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=style.color(size), alpha=0.18,
                            linewidth=0)
        out.append(pd.DataFrame({"group": group, "run_id": group, "step": mean.index, "value": mean.to_numpy(),
                                 "size": size, "patch": part["patch"].iloc[0]}))
    return pd.concat(out, ignore_index=True) if out else rows


def _summarise(finals: pd.DataFrame) -> pd.DataFrame:
    """Per group and step: the mean, min and max of the final evaluations."""
    if finals.empty:
        return finals
    agg = finals.groupby(["group", "step"], sort=False).agg(value=("value", "mean"), min=("value", "min"),
                                                            max=("value", "max"), size=("size", "first"))
    return agg.reset_index()


def block_util_keys(trials: pd.DataFrame) -> list[str]:
    keys = [k for k in trials.columns if k.startswith("block_util_") and k[11:].isdigit() and trials[k].notna().any()]
    return sorted(keys, key=lambda k: int(k[11:]))


def plot_block_util(trials: pd.DataFrame, style: Style, stem: Path, switch: str = "train.mng") -> list[Path] | None:
    """Final per-block utilisation of G per model size and setting of `switch` (mean ± std over seeds; the
    "off" setting dashed, each other setting its own line style); None if not logged."""
    keys = block_util_keys(trials)
    if not keys:
        return None
    cols = ["run_id", "size", "size_rank", *([switch] if switch in trials else [])]
    last = trials[cols + keys].melt(id_vars=cols, value_vars=keys, var_name="key").dropna(subset=["value"])
    last = last.assign(block=last["key"].str[11:].astype(int),
                       _setting=last[switch].map(fmt_value) if switch in last else "—")
    settings = sorted(last["_setting"].unique(), key=lambda v: (v in OFF_VALUES, v))
    on_styles = iter(["-", ":", "-.", (0, (5, 1, 1, 1))])
    dashes = {v: "--" if v in OFF_VALUES and v != "—" else next(on_styles, "-") for v in settings}
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(3.6, 2.6), layout="constrained")
        ax = fig.add_subplot()
        for (rank, setting), group in last.groupby(["size_rank", "_setting"], sort=True):
            curve = group.groupby("block")["value"].agg(["mean", "std"])
            ax.errorbar(curve.index, curve["mean"], yerr=curve["std"].fillna(0), color=style.color(group["size"].iloc[0]),
                        linestyle=dashes[setting], marker="o", markersize=3, capsize=2, linewidth=1.0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("block of G")
        ax.set_ylabel("block utilisation (relative output change)")
        handles = style.legend_handles(last["size"], [])
        if switch in trials:
            name = switch.rsplit(".", 1)[-1]
            handles += [Line2D([], [], color="0.3", linestyle=dashes[v], label=f"{name}={v}") for v in settings]
        fig.legend(handles=handles, loc="outside right upper")
        return save(fig, stem)


def sample_collage(entries: Sequence[tuple[str, str, Path]], style: Style, stem: Path, ncols: int | None = None) -> list[Path] | None:
    """Sample grids (label, size, png path) side by side in the given order; None without images."""
    from matplotlib import image as mpimg

    entries = [e for e in entries if Path(e[2]).exists()]
    if not entries:
        return None
    ncols = ncols or min(len(entries), 6)
    nrows = -(-len(entries) // ncols)
    with matplotlib.rc_context({**PAPER_RC, "axes.grid": False}):
        fig = Figure(figsize=(1.45 * ncols, 1.6 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, (label, size, path) in zip(axes, entries):
            ax.imshow(mpimg.imread(str(path)), interpolation="nearest")
            ax.set_title(label, fontsize=5.5, color=style.color(size))
        return save(fig, stem)

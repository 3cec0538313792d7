"""Turn a loaded study into the files of a scaling paper: fits.json, tables, figures, report.md.

Everything is written under one folder and then logged, unchanged, on the study's parent
run under `analysis/`, so the numbers in a paper can be traced back to the runs.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.ablation import AblationTable, ablation_table, baseline_value, block_util_table, detect_switches
from analysis.batch_size import BatchResult, batch_section
from analysis.claims import Claims, claims_markdown, scaling_claims
from analysis.contract import FLOP_CONVENTION as MAC_CONVENTION
from analysis.fit import Fit, json_safe
from analysis.frontier import compute_frontier, eval_points, frontier_segments
from analysis.isoflop import BUDGET_KEY, IsoflopSection, is_isoflop, isoflop_section
from analysis.load import StudyData, download_run_artifact, quiet_artifacts
from analysis.plots import (axis_label, block_util_keys, make_style, plot_ablation, plot_block_util,
                            plot_compute_curves, plot_scaling, plot_training_curves, sample_collage)
from analysis.predict import Prediction, held_out_prediction, prediction_markdown, prediction_section
from analysis.render import (fmt_num, fmt_value, image_link, latex_table, log_to_parents, markdown_table,
                             tex_csv_links, values_table, write_table_files)
from analysis.scaling import X_AXES, ScalingFits, scaling_fits
from analysis.select import (D_WINS, Selection, d_wins_note, d_wins_share, diversity_metric, health_note,
                             lower_is_better, primary_metric, select_trials)
from analysis.update_size import UpdateSize, update_size_section

FLOP_CONVENTION = f"{MAC_CONVENTION}; gflops_g per image forward, train_flops cumulative"
TRAINING_PANELS = ("loss_d", "loss_g")  # next to the metric in the training-curve figure


@dataclass
class Report:
    """What `write_report` produced; `path` is report.md."""

    path: Path
    metric: str
    selection: Selection
    scaling: ScalingFits
    ablations: dict[str, AblationTable]
    frontier: pd.DataFrame
    diversity: str | None = None  # the diversity metric shown beside `metric`, when logged
    diversity_ablations: dict[str, AblationTable] = field(default_factory=dict)
    block_util: AblationTable | None = None  # G's per-block utilisation by the MNG switch, when logged
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    logged_to: list[str] = field(default_factory=list)
    isoflop: IsoflopSection | None = None  # the compute-optimal design, in an isoFLOP study
    prediction: Prediction | None = None  # the held-out check (`analyze --holdout K`)
    claims: Claims | None = None  # the scaling claims (correlation, larger is better, plateau, prediction)
    batch: BatchResult | None = None  # steps and samples to a target per batch size, in a batch-size study
    update_size: UpdateSize | None = None  # relative output change per step vs width (out_change_g/d logged)
    d_wins: pd.Series = field(default_factory=pd.Series)  # per run_id: share of steps D won outright


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text).strip("_")


def law_label(fit: Fit) -> str:
    """`yes`, or `none: <why>`: whether a fit is reported as a scaling law (and used for predictions)."""
    return "yes" if fit.is_law else f"none: {fit.no_law}"


def fits_frame(fits: list[Fit]) -> pd.DataFrame:
    """One flat row per fit: the summary table of report.md and fits.csv."""
    rows = []
    for f in fits:
        ext = f.extrapolation or {}
        row = {"group": f.group, "x": f.x, "law": "a·x^-b" if f.kind == "power" else "E+a·x^-b",
               "scaling_law": law_label(f), "n": f.n}
        for name in ("E", "a", "b"):
            if name in f.params:
                lo, hi = f.ci[name]
                row[name] = f.params[name]
                row[f"{name}_ci95"] = f"[{fmt_num(lo)}, {fmt_num(hi)}]"
        row.update({"R2_log": f.r2_log, "pearson_log_r": f.correlation.get("pearson_log_r"),
                    "spearman_rho": f.correlation.get("spearman_rho"),
                    "extrap_abs_rel_err": ext.get("mean_abs_rel_error", np.nan)})
        rows.append(row)
    cols = ["group", "x", "law", "scaling_law", "n", "E", "E_ci95", "a", "a_ci95", "b", "b_ci95", "R2_log",
            "pearson_log_r", "spearman_rho", "extrap_abs_rel_err"]
    return pd.DataFrame(rows, columns=cols)


def final_values(trials: pd.DataFrame, metric: str, diversity: str | None, labels: list[str]) -> pd.DataFrame:
    """One row per trial: its name, `labels` columns, health, then the final `metric` with `diversity` beside it.

    The diversity is what tells a good score from a collapsed generator's, so it is shown wherever
    the final metric of a trial is.
    """
    def column(name: str) -> pd.Series:
        for col in (name, f"metric:{name}"):
            if col in trials:
                return pd.to_numeric(trials[col], errors="coerce")
        return pd.Series(np.nan, index=trials.index)

    out = trials[["run_name", *[c for c in labels if c in trials]]].copy()
    if "health" in trials:
        out["health"] = trials["health"].replace("", "—")
    out[metric] = trials["metric_value"] if "metric_value" in trials else column(metric)
    if diversity is not None:
        out[diversity] = column(diversity)
    if D_WINS in trials and trials[D_WINS].notna().any():
        out["D wins (share of steps)"] = trials[D_WINS].astype(float)
    return out.reset_index(drop=True)


def _trial_labels(trials: pd.DataFrame, switches: list[str]) -> list[str]:
    """The columns that tell the trials of a report apart: size, patch (if several), switches, seed (if several)."""
    several = [c for c in ("patch", "train.seed") if c in trials and trials[c].map(fmt_value).nunique() > 1]
    return ["size", *(["patch"] if "patch" in several else []), *switches,
            *(["train.seed"] if "train.seed" in several else [])]


def _sample_entries(data: StudyData, trials: pd.DataFrame, folder: Path, switches: list[str]) -> list[tuple[str, str, Path]]:
    """Download each trial's samples/final.png; (label, size, local path) in size order."""
    entries = []
    for _, row in trials.sort_values(["size_rank", "patch", *switches], kind="stable").iterrows():
        local = download_run_artifact(data, row["run_id"], "samples/final.png", folder / row["run_id"])
        if local is None:  # none logged, or an unreachable artifact store: the collage just lacks this trial
            continue
        parts = [str(row["size"])]
        if pd.notna(row.get("patch")):
            parts[0] += f"/{fmt_value(row['patch'])}"
        parts += [f"{s.rsplit('.', 1)[-1]}={fmt_value(row[s])}" for s in switches]
        if "train.seed" in row and trials["train.seed"].nunique() > 1:
            parts.append(f"seed {fmt_value(row['train.seed'])}")
        if row["status"] != "completed":
            parts.append(f"[{row['status']}]")
        elif row.get("health", "ok") not in ("ok", ""):
            parts.append(f"[{row['health']}]")
        entries.append((" ".join(parts), str(row["size"]), Path(local)))
    return entries


def write_report(data: StudyData, out_dir: Path, metric: str | None = None, *, include_failed: bool = False,
                 keep_unhealthy: bool = False, n_boot: int = 1000, seed: int = 0, holdout: float = 0.2,
                 log_artifacts: bool = True, predict_holdout: int | None = None) -> Report:
    """Fits, tables, plots and report.md for the studies in `data`, written to `out_dir`.

    Trials judged unhealthy (collapsed, diverged) are left out of everything unless `keep_unhealthy`,
    and a note names each one; fits that are no scaling law at this scale are reported as such.

    Raises AnalysisError (from metric choice and trial selection) for the cases where no
    analysis is possible; everything that can be skipped (a family too small to fit,
    block utilisation not logged, no sample grids) is skipped with a note instead.
    """
    out_dir = Path(out_dir)
    tables, plots = out_dir / "tables", out_dir / "plots"
    tables.mkdir(parents=True, exist_ok=True)
    plots.mkdir(parents=True, exist_ok=True)
    metric = primary_metric(data, metric)
    sel = select_trials(data, metric, include_failed=include_failed, keep_unhealthy=keep_unhealthy)
    d_wins = d_wins_share(data.history, data.trials).set_axis(data.trials["run_id"])  # once, for all trials
    sel.usable[D_WINS] = sel.usable["run_id"].map(d_wins)
    usable = sel.usable
    diversity = diversity_metric(data, metric)
    isoflop = is_isoflop(data.trials)
    switches = [s for s in detect_switches(usable) if not (isoflop and s == BUDGET_KEY)]  # the design's axis
    style = make_style(data.trials)
    notes: list[str] = list(data.notes) + [n for n in [health_note(sel), d_wins_note(usable)] if n]
    files: list[Path] = []

    scaling = scaling_fits(usable, metric, switches, lower_is_better=sel.lower_is_better, n_boot=n_boot, seed=seed,
                           holdout=holdout)
    if not scaling.fits:
        notes.append("no scaling fit was possible: a power law needs at least 3 trials at 2 different compute values")
    elif not any(f.is_law for f in scaling.fits):
        notes.append("no fit is a scaling law at this scale (every exponent's 95 % CI includes 0 or has the wrong "
                     "sign): nothing is extrapolated or predicted from them")

    points = eval_points(data.history, usable, metric, labels=switches)
    frontier = compute_frontier(points, lower_is_better=sel.lower_is_better)
    segments = frontier_segments(frontier, labels=switches)

    base = data.base_configs.get(data.studies[0], {}) if len(data.studies) == 1 else {}
    ablations, diversity_ablations = {}, {}
    for switch in switches:
        baseline = baseline_value(usable, switch, base)
        ablations[switch] = ablation_table(usable, switch, "metric_value", metric_name=metric,
                                           lower_is_better=sel.lower_is_better, baseline=baseline,
                                           other_switches=switches)
        if diversity is not None and diversity in usable and usable[diversity].notna().any():
            diversity_ablations[switch] = ablation_table(usable, switch, diversity, metric_name=diversity,
                                                         lower_is_better=lower_is_better(diversity),
                                                         baseline=baseline, other_switches=switches)

    # --- tables ---
    keep = [c for c in ["study", "run_name", "trial_id", "run_id", "status", "reason", "health", "health_reason",
                        "final_step", "size", "patch", *switches, "train.seed", "gflops_g", "params_g", "train_flops",
                        metric, diversity] if c is not None and c in data.trials]
    data.trials[keep].assign(used=data.trials["run_id"].isin(usable["run_id"])).to_csv(tables / "trials.csv",
                                                                                       index=False)
    sel.excluded.to_csv(tables / "excluded.csv", index=False)
    fits_frame(scaling.fits).to_csv(tables / "fits.csv", index=False)
    frontier.to_csv(tables / "frontier.csv", index=False)
    segments.to_csv(tables / "frontier_segments.csv", index=False)
    files += [tables / n for n in ("trials.csv", "excluded.csv", "fits.csv", "frontier.csv", "frontier_segments.csv")]
    for stem_name, table in [*((_slug(s), t) for s, t in ablations.items()),
                             *((f"{_slug(s)}_{diversity}", t) for s, t in diversity_ablations.items())]:
        files += write_table_files(tables / f"ablation_{stem_name}", table.to_markdown(), table.to_latex(),
                                   table.to_csv)

    # --- plots ---
    figures: dict[str, list[Path] | None] = {}
    for x in X_AXES:
        pts = usable.dropna(subset=[x])
        if pts.empty:
            notes.append(f"no trial has {x}: plot of {metric} against it skipped")
            continue
        main = [f for f in scaling.fits if f.x == x and "patch=" not in f.group and "size=" not in f.group]
        figures[f"scaling_{x}"] = plot_scaling(pts, x, metric, main, style, plots / f"scaling_{x}",
                                               band_fits=[f for f in main if f.kind == "power" and f.is_law])
        by_patch = [f for f in scaling.fits if f.x == x and f.kind == "power" and "patch=" in f.group]
        if by_patch:
            figures[f"scaling_{x}_by_patch"] = plot_scaling(pts, x, metric, by_patch, style,
                                                            plots / f"scaling_{x}_by_patch",
                                                            band_fits=[f for f in by_patch if f.is_law],
                                                            title="power law per patch size")
    if len(points):
        figures["compute_frontier"] = plot_compute_curves(points, frontier, metric, style, plots / "compute_frontier",
                                                          lower_is_better=sel.lower_is_better)
    for switch, table in ablations.items():
        figures[f"ablation_{_slug(switch)}"] = plot_ablation(table, style, plots / f"ablation_{_slug(switch)}")
    curves = [metric, *([diversity] if diversity else []), *TRAINING_PANELS]
    figures["training_curves"] = plot_training_curves(data.history, usable, curves, style, plots / "training_curves",
                                                      group_by=["size", "patch", *switches],
                                                      final_apart=[metric, *([diversity] if diversity else [])])
    mng_switch = "train.mng" if "train.mng" in usable else next((s for s in switches if "mng" in s), "train.mng")
    figures["block_util"] = plot_block_util(usable, style, plots / "block_util", switch=mng_switch)
    block_util = None
    if figures["block_util"] is not None and mng_switch in switches:
        block_util = block_util_table(usable, mng_switch, block_util_keys(usable),
                                      baseline=baseline_value(usable, mng_switch, base), other_switches=switches)
        files += write_table_files(tables / "block_util", block_util.to_markdown(), block_util.to_latex(),
                                   block_util.to_csv)
    if figures["block_util"] is None:
        notes.append("no run logged block_util_<i>: the per-block utilisation plot of G is skipped")
    with tempfile.TemporaryDirectory() as tmp, quiet_artifacts():
        entries = _sample_entries(data, data.trials, Path(tmp), switches)
        figures["samples"] = sample_collage(entries, style, plots / "samples")
    if figures["samples"] is None:
        notes.append("no run has a samples/final.png artifact: the sample collage is skipped")
    files += [p for paths in figures.values() if paths for p in paths]
    iso = isoflop_section(data.trials, usable, metric, switches, tables, plots, lower_is_better=sel.lower_is_better,
                          n_boot=n_boot, seed=seed) if isoflop else None
    prediction = held_out_prediction(data.trials, usable, metric, switches, holdout=predict_holdout,
                                     lower_is_better=sel.lower_is_better, n_boot=n_boot,
                                     seed=seed) if predict_holdout else None
    left_out = int((~sel.unhealthy["used"]).sum()) if len(sel.unhealthy) else 0
    claims = scaling_claims(data.history, usable, metric, switches, lower_is_better=sel.lower_is_better,
                            n_boot=n_boot, seed=seed, prediction=prediction, n_unhealthy_left_out=left_out)
    for group, table in claims.pairs.items():
        stem = tables / f"claims_pairs_{_slug(group)}"
        files += write_table_files(stem, markdown_table(table, _claims_cell),
                                   latex_table(table.map(_claims_cell), f"Larger is better at the same step: {group}",
                                               f"claims-pairs-{_slug(group)}"),
                                   lambda path, t=table: t.to_csv(path, index=False))
    sections = []
    if iso is not None:
        files += iso.files
        notes += iso.notes()
        sections.append(iso.markdown(out_dir, values_table))
    batch = batch_section(data.history, usable, metric, tables, plots, lower_is_better=sel.lower_is_better,
                          n_boot=n_boot, seed=seed)
    if batch is not None:
        files += batch.files
        sections.append(batch.markdown(out_dir))
    unhealthy = data.trials[data.trials["trial_id"].isin(sel.unhealthy["trial_id"]) & ~data.trials["run_id"].isin(
        usable["run_id"])] if len(sel.unhealthy) else None
    updates = update_size_section(data.history, usable, switches, tables, plots, out_dir, n_boot=n_boot, seed=seed,
                                  left_out=unhealthy)
    if updates is not None:
        files += updates.files
        sections.append(updates.markdown)
    if prediction is not None:
        more, prediction_figures = prediction_section(prediction, metric, tables, plots)
        files += more
        sections.append(prediction_markdown(prediction, prediction_figures, out_dir, values_table))
    sections.append(claims_markdown(claims, lambda frame: markdown_table(frame, _claims_cell),
                                    _img(figures, "training_curves", out_dir, f"{metric} vs step per size")))

    # --- fits.json and report.md ---
    summary = {
        "studies": data.studies, "tracking_uri": data.tracking_uri, "metric": metric,
        "lower_is_better": sel.lower_is_better, "flops_convention": FLOP_CONVENTION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "n_trials": len(data.trials), "n_used": len(usable),
        "include_failed": include_failed, "keep_unhealthy": keep_unhealthy, "diversity_metric": diversity,
        "bootstrap": {"resamples": n_boot, "seed": seed, "unit": "trial"},
        "extrapolation_holdout": holdout, "switches": switches,
        "excluded": json_safe(sel.excluded.to_dict(orient="records")),
        "unhealthy": json_safe(sel.unhealthy.to_dict(orient="records")),
        "fits": [f.to_dict() for f in scaling.fits], "skipped_fits": scaling.skipped,
        "frontier": json_safe(segments.to_dict(orient="records")),
        "ablations": {s: {"baseline": t.baseline, "cells": json_safe(t.cells.to_dict(orient="records")),
                          **({"diversity_cells": json_safe(diversity_ablations[s].cells.to_dict(orient="records"))}
                             if s in diversity_ablations else {})}
                      for s, t in ablations.items()},
        "isoflop": iso.to_dict() if iso is not None else None,
        "prediction": prediction.to_dict() if prediction is not None else None,
        "claims": claims.to_dict(),
        "batch_size": batch.result.to_dict() if batch is not None else None,
        "update_size": updates.result.to_dict() if updates is not None else None,
        "block_util": {"switch": block_util.switch, "baseline": block_util.baseline,
                       "cells": json_safe(block_util.cells.to_dict(orient="records"))} if block_util else None,
        "notes": notes,
    }
    (out_dir / "fits.json").write_text(json.dumps(json_safe(summary), indent=2, default=str))
    files.append(out_dir / "fits.json")
    report_path = out_dir / "report.md"
    report = Report(path=report_path, metric=metric, selection=sel, scaling=scaling, ablations=ablations,
                    frontier=frontier, diversity=diversity, diversity_ablations=diversity_ablations, files=files,
                    notes=notes, isoflop=iso, prediction=prediction, claims=claims,
                    batch=batch.result if batch is not None else None,
                    update_size=updates.result if updates is not None else None, d_wins=d_wins,
                    block_util=block_util)
    report_path.write_text(_markdown(data, report, segments, figures, switches, n_boot, seed, out_dir, sections))
    files.append(report_path)
    if log_artifacts:
        _log(data, out_dir, report)
    return report


def _log(data: StudyData, out_dir: Path, report: Report) -> None:
    """The files this report wrote (not older leftovers in `out_dir`) on each study's parent run, under analysis/."""
    logged, notes = log_to_parents(data.tracking_uri, data.studies, data.parents, report.files, out_dir, "analysis",
                                   "analysis")
    report.notes += notes
    report.logged_to += logged


def _claims_cell(value: object) -> str:
    """A cell of the claims tables: numbers to 3 significant digits, text as it is."""
    if isinstance(value, (float, np.floating)):
        return fmt_num(float(value), 3)
    return fmt_value(value).replace("|", "\\|")


def _img(figures: dict[str, list[Path] | None], name: str, out_dir: Path, alt: str) -> str:
    link = image_link(figures.get(name), out_dir, alt)
    return link + "\n" if link else ""


def _excluded_display(data: StudyData, report: Report, diversity: str | None) -> pd.DataFrame:
    """The excluded trials with their final metric and diversity: the evidence for leaving them out."""
    sel = report.selection
    rest = data.trials[~data.trials["run_id"].isin(sel.usable["run_id"])]  # the excluded rows, in their order
    rest = rest.assign(**{D_WINS: rest["run_id"].map(report.d_wins)})
    values = final_values(rest, report.metric, diversity, []).drop(columns=["run_name", "health"], errors="ignore")
    return pd.concat([sel.excluded, values], axis=1)


def _no_law_lines(fits: list[Fit]) -> list[str]:
    """Markdown bullets naming every fit that is no scaling law at this scale, with the reason."""
    return [f"- {f.group}, {f.y} vs {f.x} ({'a·x^-b' if f.kind == 'power' else 'E+a·x^-b'}): **no scaling law at "
            f"this scale**: {f.no_law}" for f in fits if not f.is_law]


def _markdown(data: StudyData, report: Report, segments: pd.DataFrame, figures: dict[str, list[Path] | None],
              switches: list[str], n_boot: int, seed: int, out_dir: Path, sections: list[str] | None = None) -> str:
    metric, sel, scaling, notes, diversity = report.metric, report.selection, report.scaling, report.notes, \
        report.diversity
    direction = "lower" if sel.lower_is_better else "higher"
    moves = "fall" if sel.lower_is_better else "rise"
    counts = data.trials["status"].value_counts()
    left_out = int((~sel.unhealthy["used"]).sum()) if len(sel.unhealthy) else 0
    md = [f"# Scaling analysis: {', '.join(data.studies)}\n",
          f"- metric: **{metric}** ({direction} is better); final value = last evaluation of each trial"
          + (f"; diversity: **{diversity}** (1 = as varied as the data, near 0 = mode collapse)" if diversity else ""),
          f"- trials: {len(data.trials)} ({', '.join(f'{n} {s}' for s, n in counts.items())}); "
          f"{len(sel.usable)} used in fits" + (f"; {left_out} left out as unhealthy" if left_out else "")
          + ("; unhealthy trials kept (--keep-unhealthy)" if sel.keep_unhealthy and len(sel.unhealthy) else ""),
          f"- compute convention: {FLOP_CONVENTION}",
          f"- uncertainty: 95 % percentile intervals from {n_boot} bootstrap resamples of trials (seed {seed})",
          f"- switches (ablations): {', '.join(switches) if switches else 'none'}",
          f"- MLflow: `{data.tracking_uri}`\n"]
    note = health_note(sel)
    if len(sel.excluded):
        md += ["## Excluded trials\n", *([note + "\n"] if note else []),
               values_table(_excluded_display(data, report, diversity))]
    elif note:
        md += ["## Unhealthy trials\n", note + "\n"]
    md += ["## Trials (final values)\n",
           f"Final {metric}" + (f" with {diversity} beside it" if diversity else "") + " of every trial used.\n",
           values_table(final_values(sel.usable, metric, diversity, _trial_labels(sel.usable, switches)))]
    md += ["## Scaling fits\n",
           "Pure law `y = a·x^-b` (least squares in log–log space) and saturating law `y = E + a·x^-b` "
           "(Huber loss on log residuals, L-BFGS from a grid of starts). R² is on log y; correlations are "
           "Pearson on log–log values and Spearman on ranks; `extrap_abs_rel_err` is the mean relative error "
           "on the largest-compute trials when the law is fitted without them. `scaling_law` is `none` where the "
           f"exponent's 95 % CI includes 0 or its sign says the metric does not {moves} with compute: such a fit "
           "is no scaling law at this scale and is used for no extrapolation or prediction.\n"]
    frame = fits_frame(scaling.fits)
    main = frame[~frame["group"].str.contains("patch=|size=", regex=True)] if len(frame) else frame
    md.append(values_table(main.drop(columns=[c for c in ("E", "E_ci95") if c in main and main[c].isna().all()])))
    if len(frame) > len(main):
        md.append(f"\nPer-family fits (patch size, model size): {len(frame) - len(main)} more in "
                  f"[tables/fits.csv](tables/fits.csv) and [fits.json](fits.json).\n")
    no_law = _no_law_lines(scaling.fits)
    if no_law:
        md += ["", *no_law, ""]
    md.append("")
    for x in X_AXES:
        md.append(_img(figures, f"scaling_{x}", out_dir, f"{metric} vs {axis_label(x)}"))
        md.append(_img(figures, f"scaling_{x}_by_patch", out_dir, f"{metric} vs {axis_label(x)}, per patch size"))
    md += sections or []  # the compute-optimal design and the held-out prediction, when there are
    md += ["## Compute-efficient frontier\n",
           "Best value reached at each training compute over all evaluations of all trials, and the "
           "configuration that reaches it.\n",
           _img(figures, "compute_frontier", out_dir, f"{metric} vs training compute"),
           values_table(segments.rename(columns={"from_flops": "from (MACs)", "to_flops": "to (MACs)"}))]
    if report.ablations:
        md.append("## Ablations\n")
        for switch, table in report.ablations.items():
            slug = _slug(switch)
            md += [f"### {switch}\n", table.to_markdown(), tex_csv_links(f"ablation_{slug}")]
            if switch in report.diversity_ablations:
                stem = f"ablation_{slug}_{diversity}"
                md += [report.diversity_ablations[switch].to_markdown(), tex_csv_links(stem)]
            md.append(_img(figures, f"ablation_{slug}", out_dir, f"ablation of {switch}"))
    md += ["## Training curves\n", _img(figures, "training_curves", out_dir, "training curves")]
    md += ["## Block utilisation of G\n",
           _img(figures, "block_util", out_dir, "per-block utilisation") or "_not logged by any run_\n\n"]
    if report.block_util is not None:
        md += [f"Final `block_util_<i>` of every trial used, by {report.block_util.switch} (block 0 is G's first).\n",
               report.block_util.to_markdown(), tex_csv_links("block_util")]
    md += ["## Samples (final, EMA generator)\n",
           _img(figures, "samples", out_dir, "final samples by model size") or "_no sample grids logged_\n\n"]
    if notes or scaling.skipped:
        md.append("## Notes\n")
        md += [f"- {n}" for n in notes]
        skipped = pd.DataFrame(scaling.skipped)
        if len(skipped):
            md += ["", f"{len(skipped)} fits were not made:", "", values_table(skipped)]
    return "\n".join(md) + "\n"

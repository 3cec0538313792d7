"""`gat-study analyze`: fits, tables, plots and report.md of a finished study, from MLflow alone.

Kept apart from the other commands so that analysing never imports torch or Ray: the
study YAML is only parsed (lazily) when one is given instead of a study name.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from analysis.errors import AnalysisError

__all__ = ["AnalysisError", "add_analyze_parser", "analyze", "cmd_analyze", "resolve_target"]


def resolve_target(study_or_yaml: str, tracking_uri: str | None = None, out_dir: Path | None = None,
                   overrides: list[str] | None = None) -> tuple[str, str, Path, set[str] | None]:
    """(study name, tracking URI, output folder, trial ids or None) for a study name or a study YAML file.

    A YAML file gives its name, its tracking URI, `<output_dir>/analysis` and the ids of its trials
    as the file now stands, with `overrides` (`--set`) applied as `run` applies them (runs of trials an edit
    removed are left out); a bare name uses
    `--tracking-uri`, else $MLFLOW_TRACKING_URI, else the default store `runs/<name>/mlflow.db`,
    writes to `runs/<name>/analysis` and takes every trial run of the study.
    """
    path = Path(study_or_yaml)
    if overrides and not (path.suffix in (".yaml", ".yml") and path.exists()):
        raise ValueError("--set: overrides apply to a study file, not to a study name")
    if path.suffix in (".yaml", ".yml") and path.exists():
        from orchestrator.study import load_study

        study = load_study(path, overrides, require_files=False)  # reads the store: no weights or data needed
        config = study.config
        return (config.name, tracking_uri or config.tracking_uri, out_dir or config.out / "analysis",
                {t.trial_id for t in study.trials})
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{(Path('runs') / study_or_yaml / 'mlflow.db').resolve()}"
    return study_or_yaml, uri, out_dir or (Path("runs") / study_or_yaml / "analysis").resolve(), None


def run_analysis(study: str, tracking_uri: str, out_dir: Path, metric: str | None = None,
                 include_failed: bool = False, *, keep_unhealthy: bool = False, n_boot: int = 1000, seed: int = 0,
                 log_artifacts: bool = True, trial_ids: set[str] | None = None, holdout: int | None = None):
    """Load the study from MLflow (only `trial_ids`, if given) and write the report; returns the
    `analysis.report.Report`.  Unhealthy trials are left out unless `keep_unhealthy`; `holdout` K adds the
    prediction of the K largest-compute trials (budgets, in an isoFLOP study) from a fit on the rest."""
    from analysis.load import load_studies
    from analysis.report import write_report

    data = load_studies(tracking_uri, study, extra_keys=[metric] if metric else [], trial_ids=trial_ids)
    return write_report(data, Path(out_dir), metric, include_failed=include_failed, keep_unhealthy=keep_unhealthy,
                        n_boot=n_boot, seed=seed, log_artifacts=log_artifacts, predict_holdout=holdout)


def analyze(study: str, tracking_uri: str, out_dir: Path, metric: str | None, include_failed: bool = False, *,
            keep_unhealthy: bool = False, n_boot: int = 1000, seed: int = 0) -> Path:
    """Analyse `study` (the study/experiment name) and return the path of report.md.

    Writes fits.json, tables/, plots/ and report.md to `out_dir` and logs them on the
    study's parent run under `analysis/`.  Raises AnalysisError with a message meant for
    the user for an unknown study, a single usable trial, all trials diverged, a metric no
    run logged, or trials scored with different quality metrics.  Trials tagged unhealthy
    (collapsed, diverged) are left out, with a note naming each, unless `keep_unhealthy`.
    """
    return run_analysis(study, tracking_uri, out_dir, metric, include_failed, keep_unhealthy=keep_unhealthy,
                        n_boot=n_boot, seed=seed).path


def add_analyze_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `analyze` subcommand, for orchestrator/cli.py's subparsers."""
    p = sub.add_parser("analyze", help="power-law fits, ablation tables, plots and report.md of a study, from MLflow")
    p.add_argument("study", help="study name (MLflow experiment) or study YAML file")
    p.add_argument("--out", type=Path, help="output folder (default: <study output_dir>/analysis)")
    p.add_argument("--metric", help="metric on the y-axis (default: the trials' eval.metric)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's)")
    p.add_argument("--holdout", type=_positive_int, metavar="K",
                   help="predict held-out larger trials: per family, fit on all but the trials at the K largest "
                        "training-compute values (the K largest budgets in an isoFLOP study) and report predicted "
                        "vs measured with 95 %% prediction intervals (the report's `prediction` section)")
    p.add_argument("--no-log", dest="log", action="store_false",
                   help="write the report to --out only, logging nothing to the study's parent run (for a store "
                        "that must stay as it is)")
    add_fit_arguments(p)
    p.set_defaults(func=cmd_analyze)
    return p


def _positive_int(text: str) -> int:
    """argparse type of --holdout: a usage error for anything but an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 of compute values to hold out, got {text!r}")
    return value


def add_fit_arguments(p: argparse.ArgumentParser) -> None:
    """Options every fitting command shares (analyze, compare)."""
    p.add_argument("--include-failed", action="store_true",
                   help="use diverged/failed trials too, at their last finite value")
    p.add_argument("--keep-unhealthy", action="store_true",
                   help="keep completed trials tagged health=collapsed/diverged in fits, frontiers and tables "
                        "(default: left out, with a note naming each)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per fit (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--json", action="store_true", help="print the summary JSON the command writes (fits.json, "
                                                       "compare.json) instead of the text summary")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the study file, as given to `run` (e.g. --set train.seed=1)")


def claims_line(group: dict, metric: str) -> str:
    """One line of a family's scaling claims (report.md's "Scaling claims" section) for the text summary."""
    def ci(values: list) -> str:
        lo, hi = values
        return f"[{lo:.2f}, {hi:.2f}]" if lo == lo and hi == hi else "(no interval)"

    parts = [f"r(log {c['x']}, log {metric}) = {c['r']:.2f} {ci(c['ci95'])}" for c in group["correlation"]
             if c["r"] == c["r"]]
    mid = group["larger_better"]["intermediate"]
    if mid["n"]:
        parts.append(f"larger better in {mid['larger_better']} of {mid['n']} same-step comparisons "
                     f"({mid['fraction']:.2f} {ci(mid['ci95'])})")
    parts.append(f"smallest model {group['plateau']['verdict']}")
    return "; ".join(parts)


def cmd_analyze(args: argparse.Namespace) -> int:
    """Run the analysis; print where the report is and the headline fits, or the error message."""
    name, uri, out, trial_ids = resolve_target(args.study, args.tracking_uri, args.out, args.overrides)
    try:
        report = run_analysis(name, uri, out, args.metric, args.include_failed, keep_unhealthy=args.keep_unhealthy,
                              n_boot=args.bootstrap, seed=args.seed, trial_ids=trial_ids,
                              holdout=getattr(args, "holdout", None), log_artifacts=getattr(args, "log", True))
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print((report.path.parent / "fits.json").read_text())
        return 0
    print(f"study {name}: {report.metric}, {len(report.selection.usable)} trials used, "
          f"{len(report.selection.excluded)} excluded")
    for fit in report.scaling.fits:
        if fit.kind == "power" and "patch=" not in fit.group and "size=" not in fit.group:
            lo, hi = fit.ci["b"]
            verdict = "" if fit.is_law else f" -> no scaling law at this scale ({fit.no_law})"
            print(f"  {fit.group:<24} {fit.y} ~ {fit.x}^-b: b = {fit.params['b']:.3f} [{lo:.3f}, {hi:.3f}], "
                  f"R² = {fit.r2_log:.3f}, n = {fit.n}{verdict}")
    for result in report.isoflop.results if report.isoflop else []:
        for name, value, (lo, hi) in (("a (N_opt ~ C^a)", result.a, result.a_ci),
                                      ("b (metric_opt ~ C^-b)", result.b, result.b_ci)):
            interval = f"[{lo:.3f}, {hi:.3f}]" if lo == lo and hi == hi else "(no interval)"
            print(f"  isoFLOP {result.group:<16} {name}: {value:.3f} {interval}")
    for group in report.claims.groups if report.claims is not None else []:
        print(f"  claims {group['group']:<17} " + claims_line(group, report.metric))
    if report.prediction is not None:
        s = report.prediction.summary()
        print(f"  prediction (--holdout {report.prediction.holdout}): {s['covered']} of {s['held_out']} held-out "
              "values inside their 95 % prediction interval")
        for skipped in report.prediction.skipped if not s["held_out"] else []:
            print(f"    not checked ({skipped['group']}, {skipped['law']}): {skipped['reason']}")
    for note in report.notes:
        print(f"  note: {note}")
    print(f"report: {report.path}")
    if report.logged_to:
        print(f"logged to MLflow run(s) {', '.join(report.logged_to)} under analysis/")
    return 0

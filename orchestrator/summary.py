"""Human-readable summaries of a study: the end-of-run table and `gat-study status`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from gat_core.metrics.names import parse_metric
from orchestrator.plan import si_units

from orchestrator.study import Study, load_study


def _ranked(outcomes: list, higher_is_better: bool) -> list:
    """Trials with a metric first, best first; then the others in grid order."""
    scored = [o for o in outcomes if o.metric is not None and math.isfinite(o.metric)]
    rest = [o for o in outcomes if o not in scored]
    return sorted(scored, key=lambda o: -o.metric if higher_is_better else o.metric) + rest


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)


def format_outcomes(study: Study, outcomes: list, uri: str) -> str:
    """One line per trial, best metric first: status, step, the metric with the diversity beside it, the
    compute (GFLOPs per image, training MACs so far) and the health verdict."""
    metric, diversity = study.config.eval.metric, study.config.eval.diversity_metric or "diversity"
    mw, dw = max(14, len(metric)), max(20, len(diversity))  # columns as wide as their headings
    lines = [f"study {study.config.name}: {sum(o.status == 'completed' for o in outcomes)}/{len(outcomes)} completed"
             f" (sorted by {metric}, best first)",
             f"{'trial_id':<11} {'name':<40} {'status':<10} {'step':>7} {metric:>{mw}} {diversity:>{dw}} "
             f"{'GFLOPs':>8} {'train MACs':>10} {'health':<9}  run_id"]
    notes: list[str] = []
    failures: list[str] = []
    for o in _ranked(outcomes, parse_metric(metric).higher_is_better):
        lines.append(f"{o.trial_id:<11} {o.name[:40]:<40} {o.status:<10} {o.step:>7} {_num(o.metric, '.4f'):>{mw}} "
                     f"{_num(o.diversity, '.3f'):>{dw}} {_num(o.gflops, '.4f'):>8} "
                     f"{'-' if o.train_flops is None else si_units(o.train_flops):>10} {o.health or '-':<9}  {o.run_id}")
        if o.health in ("collapsed", "diverged"):
            notes.append(f"  {o.name}: {o.health}: {o.health_reason or 'no reason recorded'}")
        if o.status == "failed":
            failures.append(f"  {o.name}: failed: {o.reason or 'no reason recorded'}")
    if notes:
        lines += ["unhealthy trials (left out of analyze/compare fits by default):", *notes]
    if failures:
        lines += ["failed trials (fix the cause and run the same command again; finished trials are kept):", *failures]
    flag = "" if uri == study.config.tracking_uri else f" --tracking-uri {uri}"
    lines.append(f"MLflow: {uri}  (experiment {study.config.experiment}; open it with `gat-study ui {study.source}{flag}`)")
    lines.append(f"checkpoints and samples: {study.config.out / 'trials'}/<trial_id>/")
    return "\n".join(lines)


def _not_started(study: Study, uri: str, why: str, as_json: bool) -> str:
    if as_json:
        return json.dumps({"study": study.config.name, "status": "not started", "tracking_uri": uri, "trials": []})
    cwd, home = Path.cwd().resolve(), Path(study.source).resolve().parent
    hint = ("" if cwd == home else f"; relative paths and the default store are found from the folder gat-study runs in, "
            f"here {cwd}: if the study ran from {home}, run this there")
    return f"study {study.config.name}: not started ({why}{hint})"


def study_status(path: Path, overrides: list[str], tracking_uri: str | None, as_json: bool = False) -> str:
    """Where a study stands, from MLflow (text, or JSON with one record per trial); creates nothing."""
    from orchestrator.runner import collect_outcomes
    from orchestrator.tracking import StudyTracker

    study = load_study(path, overrides, require_files=False)  # reads the store: no weights or data needed
    uri = tracking_uri or study.config.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():  # read-only: create no store
        return _not_started(study, uri, f"no MLflow store at {uri}", as_json)
    tracker = StudyTracker(uri, study.config.experiment, read_only=True)
    parent = tracker.parent_run(study.config.name)
    if parent is None:
        return _not_started(study, uri, f"no runs in {uri}", as_json)
    parent_status = tracker.client.get_run(parent).data.tags.get("status", "unknown")
    counts: dict[str, int] = {}
    outcomes = collect_outcomes(study, tracker)
    if as_json:
        trials = [{**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(o).items()},
                   "metric_name": study.config.eval.metric} for o in outcomes]
        return json.dumps({"study": study.config.name, "status": parent_status, "tracking_uri": uri,
                           "trials": trials}, indent=2, default=str)
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    head = f"study {study.config.name} [{parent_status}]: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return head + "\n" + format_outcomes(study, outcomes, uri)

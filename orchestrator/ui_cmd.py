"""`gat-study ui STUDY`: the MLflow UI on a study's store, opened where a training study belongs.

MLflow 3's UI starts in its GenAI mode (traces) whatever an experiment holds; its runs table needs the
"Model training" mode, which the URL can ask for.  This command serves the study's store with
`mlflow server` on 127.0.0.1 (or, for a study that logs to a tracking server, uses that server) and
prints the addresses of the study's runs table and of its charts in that mode.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

DEFAULT_PORT = 5000


def runs_url(base: str, experiment_id: str, study_name: str, charts: bool = False) -> str:
    """The runs table (or, with `charts`, the chart view) of an experiment in the UI's model-training mode,
    opened on the study's saved view: the workflow mode and the table/chart mode are URL parameters only."""
    from orchestrator.tracking import study_view_id

    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={study_view_id(study_name)}" + ("&compareRunsMode=CHART" if charts else ""))


def print_urls(base: str, experiment_id: str, study_name: str, prefix: str = "") -> None:
    print(f"{prefix}{runs_url(base, experiment_id, study_name)}")
    print(f"charts: {runs_url(base, experiment_id, study_name, charts=True)}", flush=True)


def cmd_ui(args: argparse.Namespace) -> int:
    from orchestrator.study import load_study
    from orchestrator.tracking import StudyTracker

    study = load_study(args.study, args.overrides, require_files=False)  # serves the store: no data needed
    uri = args.tracking_uri or study.config.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ValueError(f"study {study.config.name} has no MLflow store at {uri} yet; run it first")
    tracker = StudyTracker(uri, study.config.experiment, read_only=True)
    if tracker.experiment_id is None:
        raise ValueError(f"study {study.config.name}: no experiment {study.config.experiment!r} in {uri}; run it first")
    if uri.startswith(("http://", "https://")):  # already served
        print_urls(uri, tracker.experiment_id, study.config.name)
        return 0
    base = f"http://{args.host}:{args.port}"
    print_urls(base, tracker.experiment_id, study.config.name, prefix=f"MLflow UI for study {study.config.name}: ")
    if args.print_url:
        return 0
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


def add_parser(sub, tracking_uri: Callable[[str], str]) -> None:
    """The `ui` subcommand; `tracking_uri` is the CLI's --tracking-uri argument type (passed in: no import circle)."""
    p = sub.add_parser("ui", help="serve the MLflow UI of a study's store and print the addresses of its runs table and charts")
    p.add_argument("study", type=Path, help="study YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--tracking-uri", type=tracking_uri, help="MLflow tracking URI (default: the study's)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--print-url", action="store_true", help="print the address only; start nothing")
    p.set_defaults(func=cmd_ui)

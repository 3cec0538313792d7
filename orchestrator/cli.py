"""`gat-study`: plan, run and inspect scaling studies of transformer GANs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from orchestrator.study import StudyConfig, StudyError, load_study


def _add_study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", type=Path, help="study YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study key, e.g. --set train.steps=200 or --set grid.model.width=[32,64]")


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(StudyConfig.model_json_schema(), indent=2))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from orchestrator.plan import format_plan, plan_rows

    study = load_study(args.study, args.overrides)
    rows = plan_rows(study)
    if args.json:
        total = sum(r["train_flops"] for r in rows)
        print(json.dumps({"study": study.config.name, "trials": rows, "total_train_flops": total,
                          "flops_convention": "MAC"}, indent=2, default=str))
    else:
        print(format_plan(study, rows))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.runner import run_study
    from orchestrator.summary import format_outcomes

    study = load_study(args.study, args.overrides)
    outcomes = run_study(study, address=args.address, tracking_uri=args.tracking_uri, dashboard=args.dashboard,
                         num_cpus=args.num_cpus)
    print(format_outcomes(study, outcomes, args.tracking_uri or study.config.tracking_uri))
    return 0 if all(o.status in ("completed", "diverged") for o in outcomes) else 1


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.summary import study_status

    print(study_status(args.study, args.overrides, args.tracking_uri))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gat-study", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("schema", help="print the JSON Schema of study files")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("plan", help="dry run: trials, parameters, GFLOPs and training compute (no Ray)")
    _add_study_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="run (or resume) a study on Ray Tune, logging to MLflow")
    _add_study_args(p)
    p.add_argument("--address", help="existing Ray cluster (auto, host:port, ray://...); default: embedded local Ray")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under the study's output folder)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (on 127.0.0.1)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="where a study stands, from MLflow")
    _add_study_args(p)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's)")
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except StudyError as exc:
        print("error: the study is invalid:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

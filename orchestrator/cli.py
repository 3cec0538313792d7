"""`gat-study`: plan, run and inspect scaling studies of transformer GANs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from gat_core.config import DATASET_NAMES
from orchestrator.study import StudyConfig, StudyError, check_tracking_uri, load_study


def _add_study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", type=Path, help="study YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study key, e.g. --set train.steps=200 or --set grid.model.width=[32,64]")


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(StudyConfig.model_json_schema(), indent=2))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from orchestrator.plan import UNITS, Costing, format_plan, plan_rows, plan_warnings, study_cost
    from orchestrator.trial_state import read_states

    study = load_study(args.study, args.overrides, require_files=False)
    if study.missing_files and not args.without_files:  # what `run` would refuse is refused here too
        raise StudyError([*study.missing_files, "(a study whose files are on another machine, e.g. a cluster's: "
                          "plan it with --without-files; `run` needs them here)"])
    costing = None
    if args.accelerator:
        from orchestrator.accelerators import lookup

        costing = Costing(lookup(args.accelerator), mfu=args.mfu, dtype=args.dtype, gpus=args.gpus)
    elif args.mfu is not None or args.dtype or args.gpus:
        raise ValueError("--mfu, --dtype and --gpus cost the study on a GPU: give --accelerator NAME too")
    steps = {t.trial_id: row["steps"] for t, row in zip(study.trials, plan_rows(study))}
    store = read_states(study, steps, args.tracking_uri or study.config.tracking_uri)
    rows = plan_rows(study, store.states, costing)
    cluster = study_cost(study, rows, costing) if costing else None
    warnings = plan_warnings(study, rows)
    if args.json:
        total = sum(r["train_flops"] for r in rows)
        remaining = sum(r["remaining_train_macs"] for r in rows)
        acc = costing.accelerator if costing else None
        print(json.dumps({
            "study": study.config.name, "trials": rows, "total_train_flops": total,
            "total_remaining_train_macs": remaining, "flops_convention": "MAC",
            "store": {"tracking_uri": store.uri, "found": store.found, "note": store.note},
            "accelerator": None if acc is None else {
                "name": acc.name, "memory_gb": acc.memory_gb, "bf16_tflops": acc.bf16_tflops,
                "tf32_tflops": acc.tf32_tflops, "fp32_tflops": acc.fp32_tflops, "source": acc.source,
                "wall_time_convention": "2 FLOPs per MAC; peaks are dense true FLOP/s"},
            "study_cost": cluster, "warnings": warnings, "missing_files": study.missing_files,
            "units": UNITS}, indent=2, default=str))
    else:
        print(format_plan(study, rows, store, costing, cluster, warnings))
        if study.missing_files:
            print(f"not on this machine: `gat-study run` refuses until these exist "
                  f"({len(study.missing_files)}):")
            print("\n".join(f"  {line}" for line in study.missing_files))
    return 0


def mfu_value(text: str) -> float:
    """argparse type of --mfu: a fraction in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: MFU is a fraction of the peak, in (0, 1]")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.runner import run_study
    from orchestrator.summary import format_outcomes

    study = load_study(args.study, args.overrides)
    outcomes = run_study(study, address=args.address, tracking_uri=args.tracking_uri, storage=args.storage,
                         dashboard=args.dashboard, num_cpus=args.num_cpus)
    print(format_outcomes(study, outcomes, args.tracking_uri or study.config.tracking_uri))
    if any(o.status == "interrupted" for o in outcomes):
        return 130
    return 0 if all(o.status in ("completed", "diverged") for o in outcomes) else 1


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.summary import study_status

    print(study_status(args.study, args.overrides, args.tracking_uri, as_json=args.json))
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    import warnings

    from gat_core.config import DataConfig
    from gat_core.data import load_dataset
    from gat_core.latents import encode_dataset, folder_source, load_vae, memory_source

    vae = load_vae(args.vae, "--vae")  # the VAE is loaded (not only found) before any image is built
    data_cfg = DataConfig(name=args.dataset, resolution=args.resolution, path=args.path,
                          **({"size": args.size} if args.size else {}))
    if data_cfg.name == "folder" and not data_cfg.path.is_dir():
        raise ValueError(f"--path: folder {data_cfg.path} does not exist or is not a directory")
    if data_cfg.name == "folder":  # read file by file: the folder need not fit in memory
        source = folder_source(data_cfg.path, data_cfg.resolution)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            source = memory_source(load_dataset(data_cfg))
        for w in caught:
            print(f"skipped: {w.message}", file=sys.stderr)
    meta = encode_dataset(source, args.vae, args.out, batch_size=args.batch_size, keep_images=not args.no_images,
                          config=data_cfg.model_dump(mode="json"), vae=vae)
    for note in meta["skipped"][:10]:
        print(f"skipped unreadable file: {note}", file=sys.stderr)
    if len(meta["skipped"]) > 10:
        print(f"skipped {len(meta['skipped']) - 10} more unreadable files (all listed in {args.out}/meta.json)",
              file=sys.stderr)
    print(f"encoded {meta['num_images']} images of {args.dataset} into {args.out}: "
          f"latents {meta['latent_channels']}x{meta['latent_resolution']}x{meta['latent_resolution']}, "
          f"scaling factor {meta['scaling_factor']}; train on them with dataset.latents: {args.out}")
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from orchestrator.flops_cmd import flops_report, study_flops_report

    options = dict(teacher=args.teacher, teacher_size=args.teacher_size, grad_checkpoint=args.checkpoint)
    if args.model.endswith((".yaml", ".yml")):  # a study file: its own sizes, input shape and classes
        print(study_flops_report(Path(args.model), args.overrides, as_json=args.json, **options))
        return 0
    print(flops_report(args.model, resolution=args.resolution, channels=args.channels, num_classes=args.num_classes,
                       levels=args.levels, as_json=args.json, **options))
    return 0


def tracking_uri(text: str) -> str:
    """argparse type of --tracking-uri: a usage error naming the accepted forms, not a traceback later."""
    try:
        return check_tracking_uri(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _version() -> str:
    from importlib import metadata

    return f"gat-study {metadata.version('gat-study')}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gat-study", description=__doc__)
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("schema", help="print the JSON Schema of study files")
    p.set_defaults(func=cmd_schema)

    from orchestrator.accelerators import ACCELERATORS, DTYPES, MFU_SOURCE

    p = sub.add_parser("plan", help="dry run: trials, their state in MLflow, compute to spend, and with --accelerator "
                                    "wall time, GPU-hours and memory (no Ray, no training)")
    _add_study_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output (the same numbers, units named)")
    p.add_argument("--tracking-uri", type=tracking_uri, help="MLflow store to read the trials' state from "
                   "(default: the study's; read only, a missing store means every trial is new)")
    p.add_argument("--accelerator", metavar="NAME", help=f"cost the study on this GPU: {', '.join(ACCELERATORS)} "
                   "(A100 = A100-80GB, H100 = H100-SXM); dense datasheet peaks, orchestrator/accelerators.py")
    p.add_argument("--mfu", type=mfu_value, help=f"model FLOPs utilisation to assume (default per dtype: {MFU_SOURCE})")
    p.add_argument("--dtype", choices=DTYPES, help="precision to cost (default: each trial's train.precision; auto = "
                   "bf16 on CUDA); fp32 = full FP32 (torch's default, TF32 off), tf32 = fp32 with TF32 matmuls enabled")
    p.add_argument("--gpus", type=int, metavar="N", help="GPUs of the cluster for the study's wall time (default: "
                   "enough for resources.max_concurrent trials at once)")
    p.add_argument("--without-files", action="store_true", help="plan a study whose weights or data are on another "
                   "machine (a cluster's): list them instead of refusing")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="run (or resume) a study on Ray Tune, logging to MLflow")
    _add_study_args(p)
    p.add_argument("--address", help="existing Ray cluster (auto, host:port, ray://...); default: embedded local Ray")
    p.add_argument("--tracking-uri", type=tracking_uri, help="MLflow tracking URI (default: sqlite under the study's output folder)")
    p.add_argument("--storage", help="where Ray Tune persists trial checkpoints (a shared path or URI on a cluster; "
                                     "default <output_dir>/ray)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (on 127.0.0.1)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("flops", help="parameters, GFLOPs per image and training MACs of a model size")
    p.add_argument("model", help="registry name (GAT-XL/2, DiT-B/4), free sizes like w64-d4-h4-p2, or a study "
                                 "file (every size of it, at the study's input shape and classes)")
    p.add_argument("--resolution", type=int, help="input side (latent cells or pixels); default 32")
    p.add_argument("--channels", type=int, help="input channels; default 4 (SD-VAE latents)")
    p.add_argument("--num-classes", type=int, help="classes; default 1000 (ImageNet)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the study file")
    p.add_argument("--levels", type=int, default=4, help="MNG levels K (1 = MNG off)")
    p.add_argument("--teacher", help="timm name of a VFM teacher to include (e.g. vit_base_patch14_dinov2)")
    p.add_argument("--teacher-size", type=int, default=224)
    p.add_argument("--checkpoint", action="store_true", help="count gradient-checkpoint recomputation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("encode", help="encode a dataset into VAE latents (diffusers AutoencoderKL), memory-mappable arrays")
    p.add_argument("dataset", choices=DATASET_NAMES)
    p.add_argument("--vae", type=Path, required=True, help="local AutoencoderKL folder (save_pretrained format)")
    p.add_argument("--out", type=Path, required=True, help="output folder for moments.npy, labels.npy, images.npy and meta.json")
    p.add_argument("--resolution", type=int, default=256, help="image resolution before encoding")
    p.add_argument("--path", type=Path, help="root of a folder dataset (one subfolder per class)")
    p.add_argument("--size", type=int, help="number of images (shapes)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-images", action="store_true", help="do not keep the source images (no pixel metrics, no VFM)")
    p.set_defaults(func=cmd_encode)

    from orchestrator.analyze_cmd import add_analyze_parser

    add_analyze_parser(sub)
    from orchestrator.compare_cmd import add_compare_parser

    add_compare_parser(sub)
    from orchestrator.eval_cmd import add_parsers as add_eval_parsers

    add_eval_parsers(sub)
    from orchestrator.ui_cmd import add_parser as add_ui_parser

    add_ui_parser(sub, tracking_uri)
    from orchestrator.results_cmd import add_results_parser

    add_results_parser(sub)

    p = sub.add_parser("status", help="where a study stands, from MLflow")
    _add_study_args(p)
    p.add_argument("--tracking-uri", type=tracking_uri, help="MLflow tracking URI (default: the study's)")
    p.add_argument("--json", action="store_true", help="machine-readable output: the study and one record per trial")
    p.set_defaults(func=cmd_status)
    for command in sub.choices.values():  # -v works after the subcommand too (SUPPRESS: no default to clobber)
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
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
    except (FileNotFoundError, ValueError, ConnectionError) as exc:  # missing weights, bad data, tracking down, ...
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

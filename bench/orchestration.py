"""Orchestration overhead of `gat-study run`: study wall time / ideal.

Ideal = sum of the trials' own time inside `gat_core.loop.train` (setup, training and evaluations,
logged as `trial_seconds`) / concurrency.  A study of 4 trials, 2 at a time, each about a
minute of training on one core.  The feature classifier is trained once beforehand, so the
ratio measures Ray, Tune, MLflow and process start-up, not a cache that is shared anyway.

The overhead is split into its parts: the embedded Ray's start (`init_ray`, timed apart before the study,
which then finds Ray running), the first trial's start-up (from the study's start, Ray excluded, to the
first trial's training: the driver's MLflow runs, Tune, a worker process and its imports, the trial's
logger), the hand-over between a trial's end and the next one's training in the freed slot, the tail
after the last trial, and what the two slots' unequal lengths leave idle.  A trial's training starts at
the timestamp of its logged `trial_seconds` minus its value.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import save


def study_spec(out: Path, steps: int) -> dict:
    return {
        "name": "bench-orchestration", "output_dir": str(out),
        "dataset": {"name": "shapes", "resolution": 16, "size": 4000},
        "model": {"width": 64, "depth": 4, "heads": 4, "patch_size": 2},
        "train": {"steps": steps, "batch_size": 32, "log_every": 10, "checkpoint_every": 50, "ema_warmup": True},
        "eval": {"interval": 50, "num_samples": 500, "final_samples": 500, "classifier_epochs": 4},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "grid": {"train.seed": [0, 1, 2, 3]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()

    import torch
    from mlflow.tracking import MlflowClient

    from gat_core.data import load_dataset
    from gat_core.metrics import load_or_train_classifier, reference_stats
    from orchestrator.cluster import init_ray
    from orchestrator.runner import run_study
    from orchestrator.study import load_study

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(study_spec(out, args.steps)))
        study = load_study(path)
        cfg = study.trials[0].config
        dataset = load_dataset(cfg.dataset)
        torch.set_num_threads(1)
        extractor, _ = load_or_train_classifier(dataset, out / "cache", cfg.eval.classifier_epochs, seed=0)
        reference_stats(extractor, dataset, out / "cache")

        start = time.time()
        init_ray(None, dashboard=False)
        ray_started = time.time()
        outcomes = run_study(study, quiet=True)
        end = time.time()
        client = MlflowClient(study.config.tracking_uri)
        assert all(o.status == "completed" for o in outcomes), outcomes
        spans = []  # (training start, end) of each trial, seconds since the epoch
        for o in outcomes:
            logged = client.get_metric_history(o.run_id, "trial_seconds")[-1]
            spans.append((logged.timestamp / 1000 - logged.value, logged.timestamp / 1000))
    own = [b - a for a, b in spans]
    wall, ideal = end - start, sum(own) / 2
    first_wave = sorted(spans)[:2]
    second_wave = sorted(spans)[2:]
    # each trial of the second wave takes the slot that freed first
    slots = [[span] for span in sorted(first_wave, key=lambda span: span[1])]
    for slot, span in zip(slots, second_wave):
        slot.append(span)
    handover = [slot[1][0] - slot[0][1] for slot in slots if len(slot) > 1]
    busy = [sum(b - a for a, b in slot) for slot in slots]
    save("orchestration", {
        "steps": args.steps, "trial_seconds": own, "wall_seconds": wall, "ideal_seconds": ideal,
        "ratio": wall / ideal, "target": 1.05, "overhead_seconds": wall - ideal,
        "ray_start_seconds": ray_started - start,
        "first_trial_startup_seconds": min(a for a, _ in spans) - ray_started,
        "handover_seconds": handover, "tail_seconds": end - max(b for _, b in spans),
        "slot_training_seconds": busy, "unequal_slots_seconds": (max(busy) - min(busy)) / 2,
    })


if __name__ == "__main__":
    main()

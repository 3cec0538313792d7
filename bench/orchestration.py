"""Orchestration overhead of `gat-study run`: study wall time / ideal.

Ideal = sum of the trials' own time inside `gat_core.loop.train` (setup, training and evaluations,
logged as `trial_seconds`) / concurrency.  A study of 4 trials, 2 at a time, each about a
minute of training on one core.  The feature classifier is trained once beforehand, so the
ratio measures Ray, Tune, MLflow and process start-up, not a cache that is shared anyway.
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

        start = time.perf_counter()
        outcomes = run_study(study, quiet=True)
        wall = time.perf_counter() - start
        client = MlflowClient(study.config.tracking_uri)
        own = [client.get_run(o.run_id).data.metrics["trial_seconds"] for o in outcomes]
        assert all(o.status == "completed" for o in outcomes), outcomes
    ideal = sum(own) / 2
    save("orchestration", {"steps": args.steps, "trial_seconds": own, "wall_seconds": wall,
                           "ideal_seconds": ideal, "ratio": wall / ideal, "target": 1.10})


if __name__ == "__main__":
    main()

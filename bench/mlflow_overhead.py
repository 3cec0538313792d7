"""MLflow logging overhead per training step: a trial logging every metric to a real sqlite
store through `TrialLogger` (batched) vs the same trial reporting to nobody.

Runs alternate (A B A B ...) so that drift of the machine hits both; the ratio of the
median step times is the result.  Target: logging adds <= 2 %.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from mlflow.tracking import MlflowClient

    from gat_core.config import TrialConfig
    from gat_core.gan_trainer import GANTrainer
    from orchestrator.tracking import TrialLogger

    torch.set_num_threads(1)
    cfg = TrialConfig.model_validate({
        "dataset": {"name": "shapes", "resolution": 16, "size": 2000},
        "model": {"width": 64, "depth": 4, "heads": 4, "patch_size": 2},
        "train": {"steps": args.steps, "batch_size": 32, "log_every": 1}})
    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        exp = client.create_experiment("bench", artifact_location=Path(tmp, "art").as_uri())

        def timed(with_logging: bool) -> float:
            trainer = GANTrainer(cfg, Path(tmp) / "w", cache_dir=Path(tmp) / "cache")
            logger = TrialLogger(client.tracking_uri, client.create_run(exp).info.run_id) if with_logging else None
            trainer.iteration()  # warm-up
            start = time.perf_counter()
            for _ in range(args.steps):
                logs = trainer.iteration()
                metrics = {k: float(v) for k, v in logs.items()}  # what the loop converts either way
                if logger is not None:
                    logger.log(trainer.step, metrics)
            if logger is not None:
                logger.flush()
            return (time.perf_counter() - start) / args.steps

        plain, logged = [], []
        for _ in range(args.repeats):
            plain.append(timed(False))
            logged.append(timed(True))
    ratio = statistics.median(logged) / statistics.median(plain)
    save("mlflow_overhead", {"steps": args.steps, "sec_per_step_plain": plain, "sec_per_step_logged": logged,
                             "overhead": ratio - 1, "target": 0.02})


if __name__ == "__main__":
    main()

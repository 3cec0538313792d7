"""Model FLOPs utilisation of a full GAT training iteration on this machine.

MFU = (FLOPs of one iteration, counted by FlopCounterMode with the CPU attention formulas,
2 per MAC) / (seconds per iteration) / (dense fp32 matmul FLOP/s measured in the same run).
Model: width 256, depth 8, 64 tokens (16x16 input, patch 2), batch 64, D the same size,
MNG K=4, approximated R1/R2 -- the whole D step + G step + EMA.  Also reports the speed-up
of bf16 autocast over fp32 for the same iteration.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import matmul_peak, save


def trial(precision: str, batch: int):
    from gat_core.config import TrialConfig

    return TrialConfig.model_validate({
        "dataset": {"name": "shapes", "resolution": 16, "size": 1024},
        "model": {"width": 256, "depth": 8, "heads": 4, "patch_size": 2},
        "train": {"steps": 10, "batch_size": batch, "precision": precision, "device": "cpu"}})


def seconds_per_iteration(trainer, iterations: int) -> list[float]:
    trainer.iteration()  # warm-up (allocator, kernels)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        trainer.iteration()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from gat_core.flop_counter import count_flops
    from gat_core.train import Trainer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for precision in ("fp32", "bf16"):
            trainer = Trainer(trial(precision, args.batch), Path(tmp) / precision)
            flops = count_flops(trainer.iteration)
            times = seconds_per_iteration(trainer, args.iterations)
            results[precision] = {"flops_per_iteration": flops, "sec_per_iteration": times,
                                  "analytic_flops": 2 * trainer.cost.macs_per_sample_iter * args.batch}
        peak_fp32 = matmul_peak("float32")
        peak_bf16 = matmul_peak("bfloat16")
    fp32, bf16 = results["fp32"], results["bf16"]
    achieved = fp32["flops_per_iteration"] / statistics.median(fp32["sec_per_iteration"])
    save("mfu", {
        "model": "G and D width 256, depth 8, 64 tokens, batch %d, K=4, approx R1/R2" % args.batch,
        "threads": args.threads, "matmul_peak_fp32": peak_fp32, "matmul_peak_bf16": peak_bf16,
        "achieved_flops_fp32": achieved, "mfu_fp32": achieved / peak_fp32, "target_mfu": 0.60,
        "bf16_speedup": statistics.median(fp32["sec_per_iteration"]) / statistics.median(bf16["sec_per_iteration"]),
        "mfu_bf16_vs_bf16_peak": bf16["flops_per_iteration"] / statistics.median(bf16["sec_per_iteration"]) / peak_bf16,
        **{f"{k}_{p}": v for p, r in results.items() for k, v in r.items()},
    })


if __name__ == "__main__":
    main()

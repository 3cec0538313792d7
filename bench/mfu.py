"""Model FLOPs utilisation of a full GAT training iteration on this machine.

MFU = (FLOPs of one iteration, counted by FlopCounterMode with the CPU attention formulas,
2 per MAC) / (seconds per iteration) / (dense matmul FLOP/s of the same dtype, 2048^3).
Model: width 256, depth 8, 64 tokens (16x16 input, patch 2), batch 64, D the same size,
MNG K=4, approximated R1/R2, the official DiffAugment policy (colour, translation, cutout, flip) --
the whole D step + G step + EMA (`GANTrainer.iteration`).

Variants: fp32 eager, fp32 without augmentation (what the augmentation costs), fp32 with every
transformer block compiled (`train.compile: true`; the
compilation happens in the warm-up iterations, with an empty Inductor cache, and their time is
reported apart), bf16 autocast, eager and with compiled blocks.  `--profile` adds the split of one
iteration of each by op class (matmul, attention, elementwise, augmentation, optimiser, EMA, Python).
The machine may be shared, so the reference is not measured once: every timed iteration is
bracketed by two short matmul-peak measurements, its MFU uses their mean, and the variants
take turns round by round, so a load change hits them alike.  Reported: the median over rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import matmul_peak, save

VARIANTS = {  # name: (train.precision, train.compile, train.augment on)
    "fp32": ("fp32", False, True),
    "fp32_noaug": ("fp32", False, False),
    "fp32_compile": ("fp32", True, True),
    "bf16": ("bf16", False, True),
    "bf16_compile": ("bf16", True, True),
}
PEAK_DTYPE = {"fp32": "float32", "bf16": "bfloat16"}


def trial(precision: str, batch: int, compile_blocks: bool = False, augment: bool = True):
    from gat_core.config import OFFICIAL_AUGMENT, TrialConfig

    return TrialConfig.model_validate({
        "dataset": {"name": "shapes", "resolution": 16, "size": 1024},
        "model": {"width": 256, "depth": 8, "heads": 4, "patch_size": 2},
        "train": {"steps": 10, "batch_size": batch, "precision": precision, "device": "cpu",
                  "compile": compile_blocks, "augment": list(OFFICIAL_AUGMENT) if augment else []}})


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5, help="timed rounds (one iteration per variant each)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (compilation happens here)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="length of each matmul-peak measurement")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    parser.add_argument("--profile", action="store_true", help="after the timed rounds, one profiled iteration per "
                        "variant: its time split by op class (bench/op_split.py)")
    args = parser.parse_args()
    names = args.variants.split(",")
    load_start = os.getloadavg()  # other jobs on the machine show up here (and in the spread of the rounds)

    import torch

    from gat_core.flop_counter import count_flops
    from gat_core.gan_trainer import GANTrainer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")  # cold compile: its full cost is reported
        trainers, results = {}, {}
        for name in names:
            precision, compile_blocks, augment = VARIANTS[name]
            trainer = GANTrainer(trial(precision, args.batch, compile_blocks, augment), Path(tmp) / name)
            warmup = [timed(trainer.iteration) for _ in range(args.warmup)]
            analytic = 2 * trainer.cost.macs_per_sample_iter * args.batch
            # a compiled variant runs the same model: it is counted in eager mode, on an eager twin
            counted = count_flops((GANTrainer(trial(precision, args.batch, augment=augment), Path(tmp) / f"{name}_eager")
                                   if compile_blocks else trainer).iteration)
            trainers[name] = trainer
            results[name] = {"flops_per_iteration": counted, "analytic_flops": analytic, "warmup_seconds": warmup,
                             "sec_per_iteration": [], "peak": [], "mfu": []}

        for _ in range(args.iterations):
            for name, trainer in trainers.items():
                r, dtype = results[name], PEAK_DTYPE[VARIANTS[name][0]]
                before = matmul_peak(dtype, seconds=args.peak_seconds)
                seconds = timed(trainer.iteration)
                peak = (before + matmul_peak(dtype, seconds=args.peak_seconds)) / 2
                r["sec_per_iteration"].append(seconds)
                r["peak"].append(peak)
                r["mfu"].append(r["flops_per_iteration"] / seconds / peak)
        if args.profile:
            from bench.op_split import format_split, profile_split

            for name, trainer in trainers.items():
                results[name]["op_split"] = profile_split(trainer.iteration)
                print(format_split(name, results[name]["op_split"]), flush=True)

    summary: dict[str, float] = {}
    for name, r in results.items():
        achieved = [r["flops_per_iteration"] / t for t in r["sec_per_iteration"]]
        summary.update({f"mfu_{name}": statistics.median(r["mfu"]), f"achieved_flops_{name}": statistics.median(achieved),
                        f"matmul_peak_{name}": statistics.median(r["peak"]),
                        f"sec_per_iteration_{name}": statistics.median(r["sec_per_iteration"])})
    # speed-ups paired by round: both iterations of a pair ran under the same load
    for name, key in (("bf16", "bf16_speedup"), ("fp32_compile", "compile_speedup"), ("fp32_noaug", "noaug_speedup"),
                      ("bf16_compile", "bf16_compile_speedup")):
        if {"fp32", name} <= set(results):
            summary[key] = statistics.median(a / b for a, b in zip(results["fp32"]["sec_per_iteration"],
                                                                   results[name]["sec_per_iteration"]))
    save("mfu", {
        "model": "G and D width 256, depth 8, 64 tokens, batch %d, K=4, approx R1/R2, DiffAugment on" % args.batch,
        "threads": args.threads, "target_mfu": 0.60, "load_average_start": load_start,
        "load_average_end": os.getloadavg(), **summary, "variants": results,
    })


if __name__ == "__main__":
    main()

"""Sampling throughput: a GAT generator (1 forward per image) vs a DiT of the same size at 50 steps.

Both networks have the same width, depth, heads and patch size and sample the same shape (a
4-channel 16x16 latent grid: both samplers are built by `gat_core.families.sampler_from_config`
from trial configs whose latent folder holds only the shape, no data), at the same batch, on the
same machine and threads, in fp32, under no_grad, with random weights:

- GAT: `GANSampler.generate`, one forward of the generator with K=4 MNG heads (what the trials'
  evaluations run);
- DiT: `DiTSampler.generate` with the DDIM sampler at 50 steps (no guidance; guidance would
  double the DiT's cost).

Rounds alternate GAT and DiT timings so that load from other processes hits both alike.  Every
GAT batch and every DiT sampling run is timed on its own; `ratio` compares the fastest of each
(the least disturbed by other processes on a shared machine), `ratio_median` the medians.
Target: GAT images/s / DiT images/s >= 40.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import save


def configs(width: int, depth: int, heads: int, patch: int, resolution: int, channels: int, folder: Path,
            steps: int, sampler: str):
    from gat_core.config import TrialConfig

    (folder / "meta.json").write_text(json.dumps({"latent_channels": channels, "latent_resolution": resolution}))
    model = {"width": width, "depth": depth, "heads": heads, "patch_size": patch}
    base = {"dataset": {"name": "shapes", "latents": str(folder)}, "train": {"steps": 1, "device": "cpu"}}
    return (TrialConfig.model_validate({**base, "model": {**model, "family": "gat"}}),
            TrialConfig.model_validate({**base, "model": {**model, "family": "dit"},
                                        "train": {**base["train"], "diffusion": {"objective": "ddpm", "sampler": sampler,
                                                                                  "sample_steps": steps}}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="DiT sampling steps (NFE)")
    parser.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm", "euler"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--gat-calls", type=int, default=10, help="GAT batches timed per round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from gat_core.families import sampler_from_config

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        gat_cfg, dit_cfg = configs(args.width, args.depth, args.heads, args.patch, args.resolution, args.channels,
                                   Path(tmp), args.steps, args.sampler)
        torch.manual_seed(0)
        gat, dit = sampler_from_config(gat_cfg, args.classes, cpu), sampler_from_config(dit_cfg, args.classes, cpu)
        levels = gat_cfg.train.levels
        gat_gmacs, dit_gmacs = gat.sample_gflops(), dit.sample_gflops(args.steps)  # the configs read meta.json

    labels = torch.arange(args.batch) % args.classes

    def gat_batch() -> torch.Tensor:
        return gat.generate(labels)

    def dit_batch() -> torch.Tensor:
        return dit.generate(labels, None, args.steps)

    with torch.no_grad():
        assert gat_batch().shape == dit_batch().shape == (args.batch, args.channels, args.resolution, args.resolution)
        gat_rates, dit_rates = [], []
        for _ in range(args.rounds):
            for _ in range(args.gat_calls):
                start = time.perf_counter()
                gat_batch()
                gat_rates.append(args.batch / (time.perf_counter() - start))
            start = time.perf_counter()
            dit_batch()
            dit_rates.append(args.batch / (time.perf_counter() - start))

    gat_ips, dit_ips = max(gat_rates), max(dit_rates)
    gat_median, dit_median = statistics.median(gat_rates), statistics.median(dit_rates)
    save("sampling_throughput", {
        "model": (f"width {args.width}, depth {args.depth}, heads {args.heads}, patch {args.patch}, "
                  f"{args.channels}x{args.resolution}x{args.resolution} input, {args.classes} classes"),
        "batch": args.batch, "threads": args.threads, "dit_steps": args.steps, "dit_sampler": args.sampler,
        "gat_levels": levels, "gat_images_per_sec": gat_ips, "dit_images_per_sec": dit_ips,
        "ratio": gat_ips / dit_ips, "target_ratio": 40.0, "meets_target": gat_ips / dit_ips >= 40.0,
        "gat_images_per_sec_median": gat_median, "dit_images_per_sec_median": dit_median,
        "ratio_median": gat_median / dit_median,
        "gat_gmacs_per_image": gat_gmacs, "dit_forward_gmacs": dit.forward_macs / 1e9,
        "dit_sampling_gmacs_per_image": dit_gmacs, "analytic_macs_ratio": dit_gmacs / gat_gmacs,
        "gat_images_per_sec_calls": [round(r, 2) for r in gat_rates],
        "dit_images_per_sec_calls": [round(r, 3) for r in dit_rates],
    })


if __name__ == "__main__":
    main()

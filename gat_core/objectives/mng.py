"""Multi-level noise-perturbed guidance (MNG).

Each generator level k is corrupted by linear interpolation toward noise,
x~_k = (1 - t_k) x_k + n_k with std(n_k) = t_k, where shallower levels get more
noise.  The noise is nested: the noisier level is a further-noised version of the
cleaner one, so for the (identical) real copies the levels form one forward
diffusion trajectory.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

FINAL_LEVEL_NOISE = 0.01


def noise_levels(schedule: Literal["exp", "linear", "off"], levels: int, min_info: float = 0.125) -> list[float]:
    """Noise level t_k per output, shallowest first.

    exp (the reference code): signal fraction alpha_k = min_info^(1 - k/(K-1)), halving per level for
    K=4; linear: alpha_k grows linearly from min_info to 1; off: one level, the final output.
    t_k = 1 - alpha_k + 0.01, so the final output always carries the small residual noise 0.01.
    """
    if schedule == "off":
        return [FINAL_LEVEL_NOISE]
    fractions = [k / (levels - 1) for k in range(levels)]
    if schedule == "exp":
        alphas = [min_info ** (1 - lam) for lam in fractions]
    elif schedule == "linear":
        alphas = [min_info + (1 - min_info) * lam for lam in fractions]
    else:
        raise ValueError(f"train.mng: unknown schedule {schedule!r}")
    return [1 - a + FINAL_LEVEL_NOISE for a in alphas]


def nested_noise(like: torch.Tensor, ts: list[float], generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """One noise tensor per level (std t_k each), nested from the cleanest level outward."""
    noises: list[torch.Tensor] = [torch.empty(0)] * len(ts)
    noise = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype) * ts[-1]
    noises[-1] = noise
    for k in range(len(ts) - 2, -1, -1):
        ratio = (1 - ts[k]) / (1 - ts[k + 1])
        fresh_std = math.sqrt(max(ts[k] ** 2 - (ts[k + 1] * ratio) ** 2, 0.0))
        noise = noise * ratio + fresh_std * torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        noises[k] = noise
    return noises


def corrupt(levels: list[torch.Tensor], ts: list[float], noises: list[torch.Tensor]) -> torch.Tensor:
    """Corrupt each level with its noise and stack them on the channel axis: [B, K*C, H, W].

    n + (1 - t) x is one fused add per level (alpha scales x inside the kernel).
    """
    return torch.cat([torch.add(n, x, alpha=1 - t) for x, t, n in zip(levels, ts, noises)], dim=1)

"""DiffAugment with explicit parameters, so several tensors can share one draw.

The parameters of one draw are sampled once per batch and applied to every MNG
level of that batch (and again to a penalty's perturbed copy), which keeps the
levels aligned with each other.  As in the official GAT code, a draw also fixes the
colour means: they are taken from the tensor the draw was made for (the real batch,
or G's final level for fakes), before the brightness shift, and every tensor the draw
is applied to is saturated and contrasted around those same means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentParams:
    """One draw of augmentation parameters for a batch (None = op not in the policy)."""

    color: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    color_means: tuple[torch.Tensor, torch.Tensor] | None = None  # per-pixel channel mean, per-sample mean
    shift: torch.Tensor | None = None
    cutout: torch.Tensor | None = None
    flip: torch.Tensor | None = None


class DiffAugment:
    """Differentiable colour / translation / cutout / flip, as in DiffAugment and the GAT code."""

    def __init__(self, policy: list[str]) -> None:
        self.policy = list(policy)

    def __bool__(self) -> bool:
        return bool(self.policy)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> AugmentParams:
        """One draw for a batch like `x`; the colour means are `x`'s own (before any shift)."""
        b, _, h, w = x.shape
        dev = x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, device=dev)

        params = AugmentParams()
        if "color" in self.policy:
            # brightness, saturation, contrast, and which half of the batch gets them
            params.color = (rand(b, 1, 1, 1) - 0.5, rand(b, 1, 1, 1) * 2, rand(b, 1, 1, 1) + 0.5, rand(b, 1, 1, 1) < 0.5)
            params.color_means = (x.mean(1, keepdim=True), x.mean((1, 2, 3), keepdim=True))
        if "translation" in self.policy:
            max_shift = torch.tensor(_max_shift(h, w), device=dev)
            params.shift = (rand(b, 2) * (2 * max_shift + 1)).floor().long() - max_shift
        if "cutout" in self.policy:  # centres 0 .. side - 1, or .. side for an even cutout (official range)
            (size_h, size_w), sides = _cutout_size(h, w), torch.tensor([h, w], device=dev)
            span = sides + 1 - torch.tensor([size_h % 2, size_w % 2], device=dev)
            params.cutout = (rand(b, 2) * span).floor().long()
        if "flip" in self.policy:
            params.flip = rand(b) < 0.4
        return params

    def apply(self, x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        if p.color is not None:
            bright, sat, contrast, on = p.color
            channel_mean, sample_mean = p.color_means
            y = (x + bright - channel_mean) * sat + channel_mean  # brightness, then saturation
            y = (y - sample_mean) * contrast + sample_mean
            x = torch.where(on, y, x)
        if p.shift is not None:
            x = _translate(x, p.shift)
        if p.cutout is not None:
            x = x * _cutout_mask(x, p.cutout)
        if p.flip is not None:
            x = torch.where(p.flip[:, None, None, None], x.flip(3), x)
        return x


def _max_shift(h: int, w: int) -> tuple[int, int]:
    """Largest translation: 1/8 of the side, rounded half up (official)."""
    return int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)


def _cutout_size(h: int, w: int) -> tuple[int, int]:
    """Side of the cut-out square: half the side, rounded half up (official)."""
    return int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)


def _translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Integer shift per sample with zero padding, as one gather."""
    b, c, h, w = x.shape
    pad_h, pad_w = _max_shift(h, w)
    padded = F.pad(x, [pad_w, pad_w, pad_h, pad_h])
    rows = (torch.arange(h, device=x.device)[None] + pad_h - shift[:, :1]).clamp(0, h + 2 * pad_h - 1)
    cols = (torch.arange(w, device=x.device)[None] + pad_w - shift[:, 1:]).clamp(0, w + 2 * pad_w - 1)
    idx_b = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def _cutout_mask(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Mask zeroing one square of half the side length per sample, centred at `centre` (clipped at borders)."""
    _, _, h, w = x.shape
    size_h, size_w = _cutout_size(h, w)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    top, left = centre[:, 0, None, None] - size_h // 2, centre[:, 1, None, None] - size_w // 2
    inside = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
    return (~inside).to(x.dtype)[:, None]

"""Procedural class-conditional coloured shapes: a dataset that needs no download.

Every class is one (shape, hue) pair, so a small classifier separates the
classes easily while a generator still has to get geometry, colour and
anti-aliased edges right.  Rendering is vectorised over whole chunks of
images: one boolean mask per shape family at 2-4x the target resolution,
average-pooled down for anti-aliasing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SHAPES = ("circle", "square", "triangle", "cross", "ring", "frame", "half_disc", "bar", "star", "crescent")
_SQRT3 = math.sqrt(3.0)
_MAX_CHUNK_PIXELS = 1 << 22  # supersampled pixels rendered at once; bounds memory to ~100 MB


def _shape_mask(shape: str, u: Tensor, v: Tensor) -> Tensor:
    """Inside-test of a unit-sized shape in its own (rotated, scaled) coordinates."""
    r2 = u * u + v * v
    au, av = u.abs(), v.abs()
    if shape == "circle":
        return r2 <= 1.0
    if shape == "square":
        return torch.maximum(au, av) <= 0.8
    if shape == "triangle":  # equilateral, inscribed in the unit circle, centroid at the origin
        return (v >= -0.5) & (v <= 1.0 - _SQRT3 * au)
    if shape == "cross":
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if shape == "frame":
        m = torch.maximum(au, av)
        return (m <= 0.85) & (m >= 0.5)
    if shape == "half_disc":  # shifted so its bounding box is centred
        vs = v + 0.4
        return (u * u + vs * vs <= 1.0) & (vs >= 0.0)
    if shape == "bar":
        return (au <= 1.0) & (av <= 0.3)
    if shape == "star":  # five lobes in polar form
        return r2.sqrt() <= 0.55 + 0.4 * torch.cos(5.0 * torch.atan2(v, u))
    if shape == "crescent":
        return (r2 <= 1.0) & ((u - 0.5) ** 2 + v * v >= 0.8**2)
    raise ValueError(f"unknown shape {shape!r}")


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """[N] hue/saturation/value in [0, 1] -> [N, 3] RGB in [0, 1]."""
    n = torch.tensor([5.0, 3.0, 1.0])
    k = (n[None, :] + h[:, None] * 6.0) % 6.0
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return v[:, None] - v[:, None] * s[:, None] * ramp


def class_design(num_classes: int) -> tuple[Tensor, Tensor, float]:
    """Shape index and base hue of every class, plus the hue jitter that keeps classes apart.

    Classes cycle through the shapes; classes sharing a shape sit in different
    hue families 1/F apart, and shapes within a family are spread across it.
    """
    k = torch.arange(num_classes)
    shape_ids = k % len(SHAPES)
    family = k // len(SHAPES)
    families = math.ceil(num_classes / len(SHAPES))
    hue = ((family + shape_ids / len(SHAPES)) / families) % 1.0
    jitter = min(0.025, 0.2 / (families * min(num_classes, len(SHAPES))))
    return shape_ids, hue, jitter


def class_names(num_classes: int) -> tuple[str, ...]:
    shape_ids, hue, _ = class_design(num_classes)
    return tuple(f"{SHAPES[s]}-h{round(360 * h):03d}" for s, h in zip(shape_ids.tolist(), hue.tolist()))


def _supersampling(resolution: int) -> int:
    return 4 if resolution <= 32 else 2 if resolution <= 256 else 1


def render_shapes(size: int, resolution: int, num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """`size` images [N, 3, R, R] in [-1, 1] and their labels, a pure function of the arguments."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(size, generator=g) % num_classes  # balanced classes in random order
    shape_of_class, hue_of_class, hue_jitter = class_design(num_classes)

    # Per-image parameters, drawn in a fixed order so the result depends on the seed only.
    radius = 0.45 + 0.35 * torch.rand(size, generator=g)
    centre = (torch.rand(size, 2, generator=g) * 2.0 - 1.0) * (1.0 - radius)[:, None]
    angle = torch.rand(size, generator=g) * (2.0 * math.pi)
    hue = (hue_of_class[labels] + hue_jitter * (2.0 * torch.rand(size, generator=g) - 1.0)) % 1.0
    sat = 0.65 + 0.35 * torch.rand(size, generator=g)
    val = 0.75 + 0.25 * torch.rand(size, generator=g)
    colour = _hsv_to_rgb(hue, sat, val)
    background = 0.02 + 0.12 * torch.rand(size, 1, generator=g) + 0.03 * (torch.rand(size, 3, generator=g) - 0.5)
    shapes = shape_of_class[labels]

    ss = _supersampling(resolution)
    side = resolution * ss
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2.0 - 1.0
    chunk = max(1, _MAX_CHUNK_PIXELS // (side * side))
    images = torch.empty(size, 3, resolution, resolution)
    for start in range(0, size, chunk):
        sl = slice(start, min(start + chunk, size))
        n = sl.stop - sl.start
        dx = coords[None, None, :] - centre[sl, 0, None, None]
        dy = coords[None, :, None] - centre[sl, 1, None, None]
        cos, sin = torch.cos(angle[sl])[:, None, None], torch.sin(angle[sl])[:, None, None]
        r = radius[sl, None, None]
        u, v = (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r
        mask = torch.zeros(n, side, side, dtype=torch.bool)
        chunk_shapes = shapes[sl]
        for s, name in enumerate(SHAPES):
            idx = (chunk_shapes == s).nonzero().squeeze(1)
            if idx.numel():
                mask[idx] = _shape_mask(name, u[idx], v[idx])
        alpha = F.avg_pool2d(mask[:, None].float(), ss) if ss > 1 else mask[:, None].float()
        noise = 0.03 * torch.randn(n, 3, resolution, resolution, generator=g)
        img = background[sl, :, None, None] * (1.0 - alpha) + colour[sl, :, None, None] * alpha + noise
        images[sl] = img.clamp(0.0, 1.0) * 2.0 - 1.0
    return images, labels

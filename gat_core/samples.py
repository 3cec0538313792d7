"""Sample grids as PNG files."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8, the quantisation every saved or scored image goes through."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def tile(images: torch.Tensor, nrow: int, padding: int = 1, pad_value: int = 255) -> torch.Tensor:
    """[N, C, H, W] -> [3, rows (H + padding) + padding, nrow (W + padding) + padding], row by row, the layout of
    torchvision's `make_grid` (grey images repeated to RGB), without importing torchvision (1.7 s per process)."""
    n, c, h, w = images.shape
    if c == 1:
        images = images.expand(n, 3, h, w)
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = images.new_full((3, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i, image in enumerate(images):
        y, x = divmod(i, cols)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = image
    return grid


def save_sample_grid(images: torch.Tensor, path: Path, nrow: int) -> Path:
    """Tile [N, C, H, W] images in [-1, 1] into one PNG (upscaled so small images stay visible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = tile(to_uint8(images), nrow)
    array = grid.permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    scale = max(1, 256 // images.shape[-1])
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(path)
    return path

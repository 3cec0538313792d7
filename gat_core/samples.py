"""Sample grids as PNG files."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8, the quantisation every saved or scored image goes through."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_sample_grid(images: torch.Tensor, path: Path, nrow: int) -> Path:
    """Tile [N, C, H, W] images in [-1, 1] into one PNG (upscaled so small images stay visible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(to_uint8(images), nrow=nrow, padding=1, pad_value=255)
    array = grid.permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    scale = max(1, 256 // images.shape[-1])
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(path)
    return path

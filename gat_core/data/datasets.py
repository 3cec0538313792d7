"""`load_dataset`: a `DataConfig` -> an in-memory `ImageDataset` at the configured resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gat_core.config import DEFAULT_SHAPE_CLASSES, DataConfig
from gat_core.data.dataset import DatasetError, ImageDataset
from gat_core.data.folder import load_folder
from gat_core.data.photos import PHOTO_CLASSES, photo_patches
from gat_core.data.shapes import class_names, render_shapes


def resize(images: Tensor, resolution: int) -> Tensor:
    """Bilinear resize of [N, C, H, W]; antialiased when shrinking so small targets do not alias."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    shrink = resolution < max(images.shape[-2:])
    out = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrink)
    return out.clamp(-1.0, 1.0)


def _digits(resolution: int) -> ImageDataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn; no download

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().reshape(-1, 1, 8, 8) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    labels = torch.from_numpy(bunch.target).long()
    return ImageDataset(resize(images, resolution).contiguous(), labels, 10, "digits", tuple(str(d) for d in range(10)))


def _shapes(cfg: DataConfig) -> ImageDataset:
    num_classes = cfg.num_classes or DEFAULT_SHAPE_CLASSES
    images, labels = render_shapes(cfg.size, cfg.resolution, num_classes, cfg.seed)
    return ImageDataset(images, labels, num_classes, "shapes", class_names(num_classes))


def _photos(cfg: DataConfig) -> ImageDataset:
    images, labels = photo_patches(cfg.size, cfg.resolution, cfg.seed)
    return ImageDataset(images, labels, len(PHOTO_CLASSES), "photos", PHOTO_CLASSES)


def _folder(cfg: DataConfig) -> ImageDataset:
    if cfg.path is None:  # DataConfig already enforces this; kept for direct callers
        raise DatasetError("dataset.path: required for the 'folder' dataset")
    images, labels, names = load_folder(cfg.path, cfg.resolution)
    return ImageDataset(images, labels, len(names), "folder", names)


def load_dataset(cfg: DataConfig) -> ImageDataset:
    """Build the dataset a trial trains on: float32 [N, C, R, R] in [-1, 1] plus int64 labels."""
    if cfg.name == "digits":
        return _digits(cfg.resolution)
    if cfg.name == "shapes":
        return _shapes(cfg)
    if cfg.name == "photos":
        return _photos(cfg)
    if cfg.name == "folder":
        return _folder(cfg)
    raise DatasetError(f"dataset.name: unknown dataset {cfg.name!r}")

"""Image-folder datasets: one subfolder per class, any format PIL reads."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from gat_core.data.dataset import DatasetError

_MAX_NAMED = 10  # skipped files listed by name in the warning


def adm_center_crop(im: Image.Image, resolution: int) -> np.ndarray:
    """The ADM/DiT preprocessing: halve with a box filter while the short side is at least twice the
    target, bicubic-resize the short side to the target, then crop the centre square."""
    while min(im.size) >= 2 * resolution:
        im = im.resize(tuple(x // 2 for x in im.size), resample=Image.Resampling.BOX)
    scale = resolution / min(im.size)
    im = im.resize(tuple(round(x * scale) for x in im.size), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.uint8)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return arr[top:top + resolution, left:left + resolution]


def _load_square(file: Path, resolution: int) -> np.ndarray:
    """One file -> uint8 [R, R, 3]: EXIF-rotated, RGB, ADM centre crop."""
    with Image.open(file) as im:
        im.load()  # decode now, so truncated files fail here rather than later
        im = ImageOps.exif_transpose(im).convert("RGB")
    return adm_center_crop(im, resolution)


def scan_folder(root: Path) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    """(file, label) of every file in the class subfolders, in a fixed order, and the class names."""
    if not root.is_dir():
        raise DatasetError(f"dataset.path: folder {root} does not exist or is not a directory")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise DatasetError(f"dataset.path: folder {root} has no class subfolders (expected one subfolder per class)")
    files = [(file, label) for label, name in enumerate(classes)
             for file in sorted(p for p in (root / name).iterdir() if p.is_file() and not p.name.startswith("."))]
    return files, classes


def load_files(files: list[tuple[Path, int]], resolution: int) -> tuple[Tensor, Tensor, list[str]]:
    """Images [n, 3, R, R] in [-1, 1] and labels of the readable files, and a note on each skipped one."""
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[str] = []
    for file, label in files:
        try:
            pixels.append(_load_square(file, resolution))
        except Exception as err:  # any decoder failure of one file: skip it, report it
            skipped.append(f"{file} ({type(err).__name__}: {err})")
            continue
        labels.append(label)
    if not pixels:
        return torch.empty(0, 3, resolution, resolution), torch.empty(0, dtype=torch.int64), skipped
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return images.contiguous(), torch.tensor(labels, dtype=torch.int64), skipped


def warn_skipped(root: Path, skipped: list[str]) -> None:
    """One warning naming the unreadable files (the first few of them)."""
    if skipped:
        named = "; ".join(skipped[:_MAX_NAMED])
        more = f"; and {len(skipped) - _MAX_NAMED} more" if len(skipped) > _MAX_NAMED else ""
        warnings.warn(f"dataset {root}: skipped {len(skipped)} unreadable file(s): {named}{more}", stacklevel=3)


def load_folder(root: Path, resolution: int) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Images [N, 3, R, R] in [-1, 1], labels, and class names (sorted subfolder names).

    Unreadable files are skipped and reported in one warning naming them, so a
    single corrupt download does not cost a whole study.
    """
    files, classes = scan_folder(root)
    images, labels, skipped = load_files(files, resolution)
    warn_skipped(root, skipped)
    if not len(labels):
        raise DatasetError(f"dataset.path: folder {root} has no readable images in its class subfolders {list(classes)}")
    empty = [name for i, name in enumerate(classes) if not (labels == i).any()]
    if empty:
        warnings.warn(f"dataset {root}: class subfolder(s) without readable images: {empty}", stacklevel=3)
    return images, labels, classes

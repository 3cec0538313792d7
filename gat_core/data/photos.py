"""`photos`: real photographs as a class-conditional dataset, from images that ship with installed packages.

Each class is one photograph (scikit-learn's `china.jpg` and `flower.jpg`, matplotlib's
`grace_hopper.jpg`); its images are random square crops of it, sides between 1/8 and 1/3 of the
photo's short side, resized with antialiasing to the target resolution.  Nothing is downloaded, the
crops are a pure function of (size, resolution, seed), and the content is real-photo texture and
structure, unlike the procedural shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PHOTO_CLASSES = ("china", "flower", "grace_hopper")
MIN_FRACTION, MAX_FRACTION = 1 / 8, 1 / 3  # crop side / the photo's short side


def _photo(name: str) -> np.ndarray:
    """uint8 [H, W, 3] of one bundled photograph."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import matplotlib
    from PIL import Image

    with Image.open(Path(matplotlib.get_data_path()) / "sample_data" / f"{name}.jpg") as im:
        return np.asarray(im.convert("RGB"))


def photo_patches(size: int, resolution: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """`size` crops (balanced over the photos), float32 [N, 3, R, R] in [-1, 1], and their int64 labels."""
    rng = np.random.default_rng(seed)
    labels = torch.arange(size) % len(PHOTO_CLASSES)
    images = torch.empty(size, 3, resolution, resolution)
    for label, name in enumerate(PHOTO_CLASSES):
        photo = torch.from_numpy(_photo(name).copy()).permute(2, 0, 1).float() / 127.5 - 1.0
        h, w = photo.shape[1:]
        rows = torch.nonzero(labels == label).flatten()
        sides = rng.integers(int(MIN_FRACTION * min(h, w)), int(MAX_FRACTION * min(h, w)) + 1, len(rows))
        for row, side in zip(rows.tolist(), sides.tolist()):
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = photo[None, :, top:top + side, left:left + side]
            images[row] = F.interpolate(crop, size=(resolution, resolution), mode="bilinear", align_corners=False,
                                        antialias=True)[0]
    return images.clamp(-1.0, 1.0), labels

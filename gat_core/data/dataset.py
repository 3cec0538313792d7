"""The in-memory image dataset every loader returns, and the error they raise."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import Tensor


class DatasetError(ValueError):
    """A dataset cannot be built from its config (missing folder, no images, ...)."""


def quantize_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 pixels, the way an image file would store them.

    Used wherever two image sets must be compared on equal terms (metrics,
    fingerprints): float noise below one grey level must not matter.
    """
    return ((images.detach() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


@dataclass(eq=False)
class ImageDataset:
    """The images of a dataset as one tensor, and their labels.

    The study datasets are tiny (thousands of images at 8-64 px) and live in memory as float32.
    The source images of an encoded (latent) dataset can be ImageNet-sized: they stay uint8 in a
    memory-mapped file and are converted per batch by `batch()`.  Read pixels through `batch()`
    whatever the storage.  Treat instances as immutable: the fingerprint is computed once and cached.
    """

    images: Tensor  # float32 [N, C, H, W] in [-1, 1], or uint8 [N, C, H, W] (0..255)
    labels: Tensor  # int64 [N]
    num_classes: int
    name: str
    class_names: tuple[str, ...] = ()
    content_id: str | None = None  # known identity of the content (a finished encode): spares hashing every pixel
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"images: expected float32 or uint8 [N, C, H, W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],) or self.labels.dtype != torch.int64:
            raise ValueError(f"labels: expected int64 [{self.images.shape[0]}], got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    def batch(self, index: Tensor | slice) -> Tensor:
        """Images at `index` (indices or a slice) as float32 in [-1, 1]."""
        images = self.images[index]
        return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images

    def _uint8_chunks(self, rows: int = 4096):
        for start in range(0, len(self), rows):
            chunk = self.images[start:start + rows]
            yield chunk if chunk.dtype == torch.uint8 else quantize_uint8(chunk)

    def fingerprint(self) -> str:
        """Short hash of the content, so derived assets (classifier, reference stats) are cached per dataset.

        Hashes the uint8-quantised pixels rather than the config: a change in
        a loader or in a folder's files invalidates the caches by itself.
        """
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=8)
            h.update(f"{self.name}|{self.num_classes}|{tuple(self.images.shape)}".encode())
            if self.content_id is not None:
                h.update(self.content_id.encode())
            else:
                for chunk in self._uint8_chunks():  # a chunk at a time: a memory-mapped dataset is never loaded whole
                    h.update(chunk.contiguous().numpy().tobytes())
                h.update(self.labels.contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

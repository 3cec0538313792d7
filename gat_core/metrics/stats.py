"""Streaming mean and covariance of features, so samples never have to be held in memory at once."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from torch import Tensor

from gat_core.atomic import write_atomic


def _as_float64(feats: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(feats, Tensor):
        feats = feats.detach().cpu().double().numpy()
    return np.asarray(feats, dtype=np.float64)


class RunningStats:
    """Mean and unbiased covariance over batches of features, in float64.

    Batches are merged with Chan et al.'s pairwise update (batch mean and
    centred scatter, then a correction for the mean shift) rather than raw
    sums of x x^T, which lose precision when the mean is large against the spread.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim: must be >= 1, got {dim}")
        self.dim = dim
        self.n = 0
        self._mean = np.zeros(dim)
        self._scatter = np.zeros((dim, dim))  # sum of outer products of centred features
        self._frozen_cov: np.ndarray | None = None  # stats loaded without a sample count

    def update(self, feats: Tensor | np.ndarray) -> None:
        """Add a batch of features [B, dim]."""
        x = _as_float64(feats)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features: expected [B, {self.dim}], got {list(x.shape)}")
        if self._frozen_cov is not None:
            raise ValueError("these stats were loaded without a sample count and cannot be updated")
        b = x.shape[0]
        if b == 0:
            return
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        batch_scatter = centred.T @ centred
        total = self.n + b
        delta = batch_mean - self._mean
        self._mean = self._mean + delta * (b / total)
        self._scatter = self._scatter + batch_scatter + np.outer(delta, delta) * (self.n * b / total)
        self.n = total

    @property
    def mean(self) -> np.ndarray:
        if self.n == 0 and self._frozen_cov is None:
            raise ValueError("no features seen yet")
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by n - 1, like `np.cov`)."""
        if self._frozen_cov is not None:
            return self._frozen_cov.copy()
        if self.n < 2:
            raise ValueError(f"covariance needs at least 2 samples, have {self.n}")
        return self._scatter / (self.n - 1)

    def save(self, path: Path) -> None:
        """Write `mu`, `sigma` (and `n`) to an .npz, atomically so concurrent readers never see a partial file."""
        write_atomic(path, lambda f: np.savez(f, mu=self.mean, sigma=self.cov, n=np.int64(self.n)))

    @classmethod
    def load(cls, path: Path) -> "RunningStats":
        """Read an .npz with `mu` and `sigma`; files with `n` (ours) can keep being updated."""
        with np.load(Path(path)) as data:
            mu = np.asarray(data["mu"], dtype=np.float64)
            sigma = np.asarray(data["sigma"], dtype=np.float64)
            n = int(data["n"]) if "n" in data.files else None
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{path}: expected mu [d] and sigma [d, d], got {list(mu.shape)} and {list(sigma.shape)}")
        stats = cls(mu.shape[0])
        stats._mean = mu
        if n is None or n < 2:
            stats._frozen_cov = sigma
            stats.n = n or 0
        else:
            stats.n = n
            stats._scatter = sigma * (n - 1)
        return stats


def file_digest(path: Path, length: int = 8) -> str:
    """Short content hash of a file (cached per path, size and modification time)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, length)
    if key not in _DIGESTS:
        h = hashlib.blake2b(digest_size=length)
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict[tuple, str] = {}


class ReferenceBatch:
    """Reference statistics from an .npz: `mu` and `sigma` (and our `n`), optionally reference images.

    Reads the project's own files and published ones alike, including the ADM evaluation suite's
    reference batches (e.g. `VIRTUAL_imagenet256_labeled.npz`: `mu`/`sigma` of Inception pool_3
    features, `mu_s`/`sigma_s` spatial features, and the reference images `arr_0` as uint8
    [N, H, W, 3]).  Images are streamed from the archive batch by batch, never loaded at once,
    for the metrics that need per-sample reference features (KID, precision/recall).
    """

    IMAGES = "arr_0"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"reference statistics: {self.path} not found")
        try:
            self.stats = RunningStats.load(self.path)
            with np.load(self.path) as data:
                files = set(data.files)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"reference statistics: {self.path} is not an .npz with `mu` and `sigma` ({exc})") from None
        self.image_shape: tuple[int, ...] | None = None
        if self.IMAGES in files:
            with zipfile.ZipFile(self.path) as zf, zf.open(f"{self.IMAGES}.npy") as f:
                shape, _, dtype = _npy_header(f)
            if len(shape) == 4 and shape[-1] in (1, 3) and dtype == np.uint8:
                self.image_shape = tuple(int(s) for s in shape)

    @property
    def dim(self) -> int:
        return self.stats.dim

    @property
    def num_images(self) -> int:
        return self.image_shape[0] if self.image_shape else 0

    def fingerprint(self) -> str:
        return file_digest(self.path)

    def image_batches(self, batch_size: int) -> Iterator[Tensor]:
        """The reference images as uint8 [B, C, H, W] tensors, read from the archive batch by batch."""
        import torch

        if self.image_shape is None:
            raise ValueError(f"reference statistics: {self.path} holds no uint8 reference images ({self.IMAGES})")
        n, h, w, c = self.image_shape
        per_image = h * w * c
        with zipfile.ZipFile(self.path) as zf, zf.open(f"{self.IMAGES}.npy") as f:
            _npy_header(f)
            for start in range(0, n, batch_size):
                count = min(batch_size, n - start)
                raw = f.read(count * per_image)
                arr = np.frombuffer(raw, dtype=np.uint8).reshape(count, h, w, c)
                yield torch.from_numpy(arr.copy()).permute(0, 3, 1, 2).contiguous()


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if fortran:
        raise ValueError("Fortran-ordered image arrays are not supported")
    return shape, fortran, dtype

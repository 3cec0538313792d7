"""Streaming mean and covariance of features, so samples never have to be held in memory at once."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from torch import Tensor


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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, mu=self.mean, sigma=self.cov, n=np.int64(self.n))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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

"""Fréchet distance between Gaussian fits of features, and cached reference statistics and features.

The feature extractor is a protocol: the same pipeline serves the download-free classifier
features, Inception (`fid`) and DINOv2 (`fd_dinov2`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.linalg
import torch
from filelock import FileLock
from torch import Tensor

from gat_core.atomic import write_atomic
from gat_core.data import ImageDataset
from gat_core.metrics.stats import RunningStats

log = logging.getLogger(__name__)


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps images in [-1, 1] to feature vectors.

    Implementations quantise images to uint8 first (`gat_core.data.quantize_uint8`)
    and rescale to their network's input range, so generated and real images
    are treated alike.  `key` names the exact weights (used in cache file
    names); `name` names the metric (`fd_<name>`).
    """

    name: str
    key: str
    dim: int

    def features(self, images: Tensor) -> Tensor: ...


def _eigvalsh(matrix: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric matrix (LAPACK syevd without vectors: the fastest route here)."""
    return scipy.linalg.eigh(matrix, eigvals_only=True, driver="evd", overwrite_a=True, check_finite=False)


def psd_factor(matrix: np.ndarray) -> np.ndarray:
    """F [d, r] with F F^T = matrix up to round-off, r its numerical rank (pivoted Cholesky, LAPACK pstrf).

    Pivoting stops at the first pivot below LAPACK's default tolerance (d * eps * max diagonal):
    directions a covariance does not have (fewer samples than dimensions) or only has as round-off,
    including slightly negative ones, are dropped instead of producing NaN or complex numbers.
    """
    if not matrix.any():
        return np.zeros((matrix.shape[0], 0))
    c, piv, rank, info = scipy.linalg.lapack.dpstrf(matrix, lower=1)
    if info < 0:
        raise ValueError(f"pstrf: illegal argument {-info}")
    factor = np.empty((matrix.shape[0], rank))
    factor[piv - 1] = np.tril(c)[:, :rank]  # matrix = P L L^T P^T
    return factor


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2: the sum of the square roots of the eigenvalues of S1 S2.

    S1 S2 is not symmetric, but with S1 = F F^T its non-zero eigenvalues are those of the
    symmetric PSD r x r matrix F^T S2 F, which a symmetric solver finds fast and accurately (its
    round-off negative eigenvalues are clipped to 0).  F is the pivoted Cholesky factor of the
    covariance of lower numerical rank (`psd_factor`), so singular covariances (e.g. fewer samples
    than dimensions) make the problem smaller instead of ill-posed.  This replaces
    `scipy.linalg.sqrtm(S1 @ S2)` (a Schur decomposition of a non-symmetric matrix, many times
    slower, complex-valued for singular products) by two pivoted Cholesky factorisations, two
    matrix products and one eigenvalue-only symmetric solve.
    """
    f1, f2 = psd_factor(sigma1), psd_factor(sigma2)
    factor, other = (f1, sigma2) if f1.shape[1] <= f2.shape[1] else (f2, sigma1)
    if factor.shape[1] == 0:
        return 0.0
    inner = factor.T @ other @ factor
    eig = _eigvalsh((inner + inner.T) / 2.0)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64, clamped at 0.

    The matrix square root enters only through its trace, computed from the (real, non-negative)
    spectrum of a symmetric matrix similar to S1 S2 (`trace_sqrt_product`): real by construction,
    finite for singular and ill-conditioned covariances, and equal to pytorch-fid's
    `calculate_frechet_distance` (scipy `sqrtm`, real part) to round-off where that one is accurate.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    s1, s2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {s1.shape}, {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise ValueError("frechet_distance: statistics contain NaN or infinity")
    s1, s2 = (s1 + s1.T) / 2.0, (s2 + s2.T) / 2.0
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(value, 0.0)


def _image_batches(source, batch_size: int) -> Iterator[Tensor]:
    """Batches of a reference source in [-1, 1]: an ImageDataset or a ReferenceBatch with images (uint8)."""
    if hasattr(source, "image_batches"):
        for batch in source.image_batches(batch_size):
            yield batch.float() / 127.5 - 1.0  # exactly back to the same uint8 under quantize_uint8
        return
    for start in range(0, len(source), batch_size):
        yield source.batch(slice(start, start + batch_size))


def reference(extractor: FeatureExtractor, source, cache_dir: Path, batch_size: int = 500, features: bool = False
              ) -> tuple[RunningStats, np.ndarray | None]:
    """Feature statistics (and, if `features`, all feature vectors) of real images, cached on disk.

    `source` is an `ImageDataset` or a `ReferenceBatch` holding images.  The cache is keyed by the
    source's content hash (`fingerprint()`: the uint8 pixels, their shape, i.e. the resolution, and
    the labels; or the reference file's bytes) and the extractor's `key` (which names its weights):
    `ref-<fingerprint>-<key>.npz` with `mu`, `sigma`, `n`, and `ref-<fingerprint>-<key>-features.npy`
    (float32).  Statistics and features are computed in one pass when both are missing; a file lock
    lets concurrent trials wait for the first one's pass instead of repeating it.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"ref-{source.fingerprint()}-{extractor.key}"
    stats_path, feats_path = cache_dir / f"{stem}.npz", cache_dir / f"{stem}-features.npy"
    with FileLock(f"{stats_path}.lock"):
        if stats_path.exists() and (not features or feats_path.exists()):
            return RunningStats.load(stats_path), (np.load(feats_path) if features else None)
        stats = RunningStats(extractor.dim)
        chunks: list[np.ndarray] = []
        with torch.no_grad():
            for batch in _image_batches(source, batch_size):
                feats = extractor.features(batch)
                stats.update(feats)
                if features:
                    chunks.append(feats.float().numpy())
        if stats.n < 2:
            raise ValueError(f"reference statistics need at least 2 real images, the source has {stats.n}")
        if not stats_path.exists():
            stats.save(stats_path)
        all_feats = None
        if features:
            all_feats = np.concatenate(chunks).astype(np.float32)
            write_atomic(feats_path, lambda f: np.save(f, all_feats))
        log.info("reference features of %s with %s: %d images", stem, extractor.name, stats.n)
        return RunningStats.load(stats_path), all_feats


def reference_stats(extractor: FeatureExtractor, dataset: ImageDataset, cache_dir: Path, batch_size: int = 500) -> RunningStats:
    """Feature statistics of all real images, cached per (dataset fingerprint, extractor key) as .npz."""
    return reference(extractor, dataset, cache_dir, batch_size)[0]

"""Fréchet distance between Gaussian fits of features, and the pipeline that computes it for a generator.

The feature extractor is a protocol so the same pipeline serves the
download-free classifier features now and Inception/DINOv2 features later.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.linalg
import torch
from filelock import FileLock
from torch import Tensor

from gat_core.data import ImageDataset, sample_labels
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


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; negative round-off eigenvalues are clipped to 0."""
    w, v = np.linalg.eigh(matrix)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _eigvalsh(matrix: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric matrix (LAPACK syevd without vectors: the fastest route here)."""
    return scipy.linalg.eigh(matrix, eigvals_only=True, driver="evd", overwrite_a=True, check_finite=False)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2: the sum of the square roots of the eigenvalues of S1 S2.

    S1 S2 is not symmetric, but with any factor S1 = L L^T it is similar to the symmetric PSD
    matrix L^T S2 L, whose eigenvalues a symmetric solver finds fast and accurately.  L is the
    Cholesky factor of S1 (or of S2, the roles being symmetric); when neither is numerically
    positive definite (singular covariances, e.g. fewer samples than dimensions) it is the
    eigen-decomposition square root with round-off negative eigenvalues clipped to 0.  This replaces
    `scipy.linalg.sqrtm(S1 @ S2)` (a Schur decomposition of a non-symmetric matrix, many times
    slower, complex-valued for singular products) by one Cholesky, two matrix products and one
    eigenvalue-only symmetric solve.
    """
    for a, b in ((sigma1, sigma2), (sigma2, sigma1)):
        try:
            factor = np.linalg.cholesky(a)
        except np.linalg.LinAlgError:
            continue
        if np.isfinite(factor).all():
            break
    else:
        factor, b = _sqrt_psd(sigma1), sigma2
    inner = factor.T @ b @ factor
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


def reference_stats(extractor: FeatureExtractor, dataset: ImageDataset, cache_dir: Path, batch_size: int = 500) -> RunningStats:
    """Feature statistics of all real images, cached per (dataset fingerprint, extractor key) as .npz."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"ref-{dataset.fingerprint()}-{extractor.key}.npz"
    with FileLock(f"{path}.lock"):
        if path.exists():
            return RunningStats.load(path)
        stats = RunningStats(extractor.dim)
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                stats.update(extractor.features(dataset.images[start:start + batch_size]))
        stats.save(path)
        return stats


def _generated_stats(
    generate: Callable[[Tensor], Tensor], num_samples: int, batch_size: int, num_classes: int,
    extractor: FeatureExtractor, seed: int,
) -> RunningStats | None:
    """Feature statistics of `num_samples` generated images; None if the generator produced non-finite pixels."""
    g = torch.Generator().manual_seed(seed)
    stats = RunningStats(extractor.dim)
    with torch.no_grad():
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            labels = sample_labels(num_classes, n, g)
            images = generate(labels)
            if images.ndim != 4 or images.shape[0] != n:
                raise ValueError(f"generate: expected {n} images [N, C, H, W] for {n} labels, got {list(images.shape)}")
            if not torch.isfinite(images).all():
                return None
            stats.update(extractor.features(images))
    return stats


def fd_of_generator(
    generate: Callable[[Tensor], Tensor], num_samples: int, batch_size: int, num_classes: int,
    extractor: FeatureExtractor, ref: RunningStats, seed: int,
) -> float:
    """Fréchet distance between `num_samples` generated images and the reference statistics.

    `generate` maps CPU int64 labels to images in [-1, 1] (moving labels to its
    own device); labels are uniform from a generator seeded with `seed`, so two
    evaluations of the same generator see the same labels.  Samples are
    generated and featurised batch by batch, never all held at once.
    Returns NaN (and logs a warning) if the generator outputs NaN/inf,
    which a diverged run does; the caller decides what that means.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples: need at least 2 samples for a covariance, got {num_samples}")
    stats = _generated_stats(generate, num_samples, batch_size, num_classes, extractor, seed)
    if stats is None:
        log.warning("fd_%s: generator produced non-finite images; returning NaN", extractor.name)
        return math.nan
    return frechet_distance(stats.mean, stats.cov, ref.mean, ref.cov)

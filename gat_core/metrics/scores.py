"""Metrics on per-sample features: KID, k-NN precision/recall, within-class spread, and FD∞ (FID∞).

All take features as [N, d] arrays or tensors (generated first, real second) and compute in float64.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from gat_core.metrics.stats import RunningStats


def _f64(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features: expected [N, d], got shape {list(x.shape)}")
    return x


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
                  ) -> float:
    """Unbiased MMD² of two equal-size samples with the kernel k(a, b) = (gamma a.b + coef0)^degree."""
    m = x.shape[0]
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (x @ x.T * gamma + coef0) ** degree
    k_yy = (y @ y.T * gamma + coef0) ** degree
    k_xy = (x @ y.T * gamma + coef0) ** degree
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(gen: Tensor | np.ndarray, real: Tensor | np.ndarray, subsets: int = 100, subset_size: int = 1000,
        degree: int = 3, gamma: float | None = None, coef0: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018) in any features: (mean, std) over subsets.

    Each subset draws min(subset_size, N_gen, N_real) generated and real samples without
    replacement and takes the unbiased MMD² with the cubic polynomial kernel (gamma = 1/d,
    coef0 = 1), as torch-fidelity and the KID paper do.  Unbiased: it can be slightly negative.
    """
    x, y = _f64(gen), _f64(real)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"kid: feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"kid: need at least 2 samples on each side, have {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    values = np.array([mmd2_unbiased(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)],
                                     degree, gamma, coef0) for _ in range(subsets)])
    return float(values.mean()), float(values.std())


def _sq_dists(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T), 0.0)


def _knn_radii(x: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Squared distance of every sample to its k-th nearest other sample."""
    x_sq = (x * x).sum(1)
    radii = np.empty(len(x))
    for start in range(0, len(x), chunk):
        d = _sq_dists(x[start:start + chunk], x, x_sq)
        d[np.arange(len(d)), np.arange(start, start + len(d))] = 0.0  # exactly zero to itself
        radii[start:start + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0 is the sample itself
    return radii


def _covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int) -> np.ndarray:
    """For each point: inside at least one ball (centre, radius)?"""
    c_sq = (centres * centres).sum(1)
    out = np.empty(len(points), dtype=bool)
    for start in range(0, len(points), chunk):
        out[start:start + chunk] = (_sq_dists(points[start:start + chunk], centres, c_sq) <= radii[None, :]).any(1)
    return out


def precision_recall(gen: Tensor | np.ndarray, real: Tensor | np.ndarray, k: int = 3, chunk: int = 1024
                     ) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): (precision, recall).

    Each set's manifold is the union of balls around its samples reaching their k-th nearest
    neighbour (k = 3 as in the paper and torch-fidelity); precision is the fraction of generated
    samples inside the real manifold, recall the fraction of real samples inside the generated one.
    Distances are exact Euclidean in float64, computed in chunks (memory O(chunk x N)).
    """
    x, y = _f64(gen), _f64(real)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"precision_recall: feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    if min(len(x), len(y)) <= k:
        raise ValueError(f"precision_recall: need more than k={k} samples on each side, have {len(x)} and {len(y)}")
    precision = _covered(x, y, _knn_radii(y, k, chunk), chunk).mean()
    recall = _covered(y, x, _knn_radii(x, k, chunk), chunk).mean()
    return float(precision), float(recall)


def fd_infinity(gen: Tensor | np.ndarray, ref: RunningStats, points: int = 15, min_fraction: float = 0.2,
                seed: int = 0) -> tuple[float, np.ndarray, np.ndarray]:
    """FD∞ (Chong & Forsyth 2020): FD_N on random subsets of N generated samples, for `points` values of
    N evenly spaced from `min_fraction` x N_total to N_total, fitted by FD_N = FD∞ + slope / N
    (least squares) and extrapolated to 1/N = 0.  Returns (FD∞, Ns, FD_Ns)."""
    from gat_core.metrics.frechet import frechet_distance

    x = _f64(gen)
    if x.shape[1] != ref.dim:
        raise ValueError(f"fd_infinity: features are {x.shape[1]}-d, the reference statistics {ref.dim}-d")
    n_total = len(x)
    ns = np.unique(np.linspace(max(2, math.ceil(min_fraction * n_total)), n_total, points).astype(int))
    if len(ns) < 2:
        raise ValueError(f"fd_infinity: {n_total} samples give fewer than 2 distinct subset sizes")
    rng = np.random.default_rng(seed)
    mu_ref, sigma_ref = ref.mean, ref.cov
    fds = []
    for n in ns:
        sub = x[rng.choice(n_total, n, replace=False)]
        fds.append(frechet_distance(sub.mean(0), np.cov(sub, rowvar=False), mu_ref, sigma_ref))
    fds_arr = np.array(fds)
    slope, intercept = np.polyfit(1.0 / ns, fds_arr, 1)
    return float(intercept), ns, fds_arr


def within_class_spread(features: Tensor | np.ndarray, labels: np.ndarray) -> float:
    """Mean squared distance of each feature vector to its class mean: sum_i ||f_i - mu_{y_i}||^2 / N.

    The numerator of `diversity_<x>`; a class-conditional generator whose samples of a class are all
    alike has a spread near 0 even when its classes differ from each other."""
    x = _f64(features)
    labels = np.asarray(labels)
    if labels.shape != (len(x),):
        raise ValueError(f"within_class_spread: {len(x)} features but labels of shape {list(labels.shape)}")
    classes, index = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(classes), x.shape[1]))
    np.add.at(sums, index, x)
    means = sums / np.bincount(index)[:, None]
    return float(((x - means[index]) ** 2).sum(1).mean())

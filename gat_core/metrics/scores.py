"""Metrics on per-sample features: KID, k-NN precision/recall (torch-fidelity's), within-class spread, FD∞ (FID∞).

All take features as [N, d] arrays or tensors (generated first, real second) and compute in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
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
    """Unbiased MMD² of two equal-size samples with torch-fidelity's kernel k(a, b) = (gamma a.b + coef0)^degree.

    The sums are ours, not torch-fidelity's `mmd2`: that one adds the same terms in another order, which
    moves a KID in its last digits, and the recorded results (tests/test_equivalence_pin.py) are exact."""
    from torch_fidelity.metric_kid import kernel_poly  # here: importing torch-fidelity takes seconds

    kernel = {"kid_kernel_poly_degree": degree, "kid_kernel_poly_gamma": gamma, "kid_kernel_poly_coef0": coef0}
    k_xx, k_yy, k_xy = (kernel_poly(a, b, **kernel) for a, b in ((x, x), (y, y), (x, y)))
    m = x.shape[0]
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


def precision_recall(gen: Tensor | np.ndarray, real: Tensor | np.ndarray, k: int = 3, chunk: int = 1024
                     ) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): (precision, recall), by torch-fidelity.

    Each set's manifold is the union of balls around its samples reaching their k-th nearest
    neighbour (k = 3 as in the paper and torch-fidelity); precision is the fraction of generated
    samples inside the real manifold, recall the fraction of real samples inside the generated one.
    Distances are Euclidean in float64, `chunk` rows at a time (memory O(chunk x N)).
    """
    x, y = _f64(gen), _f64(real)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"precision_recall: feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    if min(len(x), len(y)) <= k:
        raise ValueError(f"precision_recall: need more than k={k} samples on each side, have {len(x)} and {len(y)}")
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    precision, recall = calculate_precision_recall_part(torch.from_numpy(x), torch.from_numpy(y), k, chunk)
    # torch-fidelity averages the 0/1 hits in float32; the counts are exact, so the float64 fractions are these
    return round(precision * len(x)) / len(x), round(recall * len(y)) / len(y)


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

"""KID, precision/recall and FD∞ against straightforward implementations; FD's response to distortions."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from gat_core.config import DataConfig, EvalConfig
from gat_core.data import ImageDataset, load_dataset
from gat_core.metrics import RunningStats, fd_infinity, frechet_distance, kid, precision_recall
from gat_core.metrics.evaluator import build_evaluator
from tests.helpers import blur


# --- KID ----------------------------------------------------------------------------------------------

def naive_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a.b / d + 1)^3, pair by pair."""
    d, m = x.shape[1], len(x)

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_straightforward_and_torch_fidelity() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 6)), rng.normal(size=(30, 6)) * 1.3 + 0.4
    mean, std = kid(x, y, subsets=3, subset_size=30)  # whole sets: every subset is a permutation
    expected = naive_kid(x, y)
    assert mean == pytest.approx(expected, rel=1e-10) and std == pytest.approx(0.0, abs=1e-12)
    theirs = kid_features_to_metric(torch.from_numpy(x), torch.from_numpy(y), kid_subsets=2, kid_subset_size=30,
                                    verbose=False)
    assert theirs["kernel_inception_distance_mean"] == pytest.approx(expected, rel=1e-9)


def test_kid_subsets_and_behaviour() -> None:
    rng = np.random.default_rng(1)
    real = rng.normal(size=(600, 16))
    same = kid(rng.normal(size=(600, 16)), real, subsets=20, subset_size=100)
    shifted = kid(rng.normal(size=(600, 16)) + 0.5, real, subsets=20, subset_size=100)
    assert abs(same[0]) < 3 * same[1] + 1e-3  # unbiased: around 0 for one distribution
    assert shifted[0] > 10 * max(abs(same[0]), same[1])
    assert kid(real[:50], real, subsets=4, subset_size=1000, seed=3) == kid(real[:50], real, subsets=4,
                                                                              subset_size=1000, seed=3)
    with pytest.raises(ValueError, match="dimensions"):
        kid(real[:, :3], real)


# --- precision / recall -------------------------------------------------------------------------------

def naive_precision_recall(gen: np.ndarray, real: np.ndarray, k: int = 3) -> tuple[float, float]:
    def radii(points: np.ndarray) -> list[float]:
        out = []
        for i, p in enumerate(points):
            dists = sorted(math.dist(p, q) for j, q in enumerate(points) if j != i)
            out.append(dists[k - 1])
        return out

    def inside(points: np.ndarray, centres: np.ndarray, r: list[float]) -> float:
        return sum(any(math.dist(p, c) <= rc for c, rc in zip(centres, r)) for p in points) / len(points)

    return inside(gen, real, radii(real)), inside(real, gen, radii(gen))


def test_precision_recall_equal_straightforward_and_torch_fidelity() -> None:
    rng = np.random.default_rng(2)
    real = rng.normal(size=(70, 5))
    gen = np.concatenate([rng.normal(size=(40, 5)) * 0.5, rng.normal(size=(25, 5)) + 2.5])  # narrow + off-manifold
    ours = precision_recall(gen, real, k=3)
    assert ours == pytest.approx(naive_precision_recall(gen, real, 3), abs=1e-12)
    assert 0.3 < ours[0] < 0.95 and 0.1 < ours[1] < 0.95  # neither trivially 0 nor 1
    theirs = prc_features_to_metric(torch.from_numpy(gen), torch.from_numpy(real), prc_neighborhood=3,
                                    prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    assert (theirs["precision"], theirs["recall"]) == pytest.approx(ours, abs=1e-6)  # theirs: a float32 mean
    assert precision_recall(gen, real, k=3, chunk=7) == ours  # chunking changes nothing


def test_precision_recall_separate_fidelity_from_coverage() -> None:
    rng = np.random.default_rng(3)
    real = rng.normal(size=(300, 8))
    collapsed = real[:5][rng.integers(0, 5, 300)] + rng.normal(size=(300, 8)) * 0.01  # a few modes, faithful
    precision, recall = precision_recall(collapsed, real)
    assert precision > 0.95 and recall < 0.2
    precision, recall = precision_recall(rng.normal(size=(300, 8)) * 3, real)  # covers all, mostly off-manifold
    assert precision < 0.5 and recall > 0.9


# --- FD∞ ----------------------------------------------------------------------------------------------

def test_fd_infinity_removes_the_small_sample_bias() -> None:
    """Same distribution as the reference: the true FD is 0, FD_N ~ c / N; FD∞ extrapolates to about 0."""
    rng = np.random.default_rng(4)
    d = 24
    ref = RunningStats(d)
    ref.update(rng.normal(size=(200_000, d)))
    gen = rng.normal(size=(3000, d))
    value, ns, fds = fd_infinity(gen, ref, points=15, min_fraction=0.1)
    fd_full = frechet_distance(gen.mean(0), np.cov(gen, rowvar=False), ref.mean, ref.cov)
    assert len(ns) == 15 and ns[-1] == 3000 and fds[0] > 3 * fds[-1]  # biased upward, more so at small N
    assert abs(value) < 0.5 * fd_full  # (subsets of one pool: the extrapolation is noisy, the bias is gone)
    shifted, _, _ = fd_infinity(gen + 0.3, ref, points=15, min_fraction=0.1)
    assert shifted == pytest.approx(d * 0.09, rel=0.15)  # the |mu| term survives the extrapolation


# --- FD against distortions ---------------------------------------------------------------------------

def translate(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: F.pad(x, (k, 0, k, 0), mode="replicate")[:, :, : x.shape[2], : x.shape[3]]


def test_fd_small_between_halves_and_monotone_in_distortion(tmp_path: Path) -> None:
    data = load_dataset(DataConfig(name="shapes", resolution=16, size=1600, seed=0))
    half = len(data) // 2
    real_a = ImageDataset(data.images[:half], data.labels[:half], data.num_classes, "a")
    real_b = data.images[half:]
    metrics = ["fd_classifier", "kid_classifier", "precision_classifier", "recall_classifier"]
    evaluator, accuracy = build_evaluator(EvalConfig(metric="fd_classifier", extra_metrics=metrics[1:],
                                                     classifier_epochs=3), real_a, tmp_path)
    assert accuracy > 0.85
    evaluator.kid_subsets = 10

    def score(transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x, which: list[str] = metrics[:1]
              ) -> dict[str, float]:
        served = [0]

        def generate(labels: torch.Tensor) -> torch.Tensor:  # the other half, in order, as a "generator"
            x = real_b[served[0]:served[0] + len(labels)]
            served[0] += len(labels)
            return transform(x)
        return evaluator(generate, which, half, 200, data.num_classes)

    same = score(which=metrics)
    shifts = [score(translate(k)) for k in (1, 2, 3, 4)]
    blurs = [score(blur(s), metrics if s == 2.0 else metrics[:1]) for s in (0.5, 0.8, 1.2, 2.0)]
    fd = "fd_classifier"
    print("halves", same, "\nshift", [s[fd] for s in shifts], "\nblur", [b[fd] for b in blurs])
    assert same["eval_samples"] == half
    assert all(a[fd] < b[fd] for a, b in zip([same, *shifts], shifts))  # grows with every step of distortion
    assert all(a[fd] < b[fd] for a, b in zip([same, *blurs], blurs))
    assert shifts[-1][fd] > 10 * same[fd] and blurs[-1][fd] > 5 * same[fd]
    assert abs(same["kid_classifier"]) < blurs[-1]["kid_classifier"] / 10
    assert same["precision_classifier"] > 0.6 and same["recall_classifier"] > 0.6
    assert blurs[-1]["precision_classifier"] < same["precision_classifier"]

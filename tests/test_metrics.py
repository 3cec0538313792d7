"""RunningStats, the Fréchet distance and the classifier-feature pipeline, on real data and networks."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from gat_core.config import DataConfig
from gat_core.data import ImageDataset, load_dataset, quantize_uint8
from gat_core.metrics import (
    ClassifierExtractor, Evaluator, FeatureExtractor, RunningStats, frechet_distance, load_or_train_classifier,
    reference_stats, train_classifier,
)
from gat_core.metrics import classifier as classifier_module
from gat_core.metrics.evaluator import Reference
from tests.helpers import blur

EPOCHS = 3


# --- RunningStats -------------------------------------------------------------------------------

def test_running_stats_match_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(311, 6)) @ rng.normal(size=(6, 6)) + 1e3  # large offset: a naive sum of x x^T loses digits
    stats = RunningStats(6)
    for chunk in np.split(data, [1, 8, 108, 111, 250]):
        stats.update(torch.from_numpy(chunk) if len(chunk) == 7 else chunk)  # tensors and arrays alike
    assert stats.n == 311
    np.testing.assert_allclose(stats.mean, data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(data, rowvar=False), rtol=1e-8, atol=1e-10)

    stats.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as f:
        assert {"mu", "sigma"} <= set(f.files)
    loaded = RunningStats.load(tmp_path / "s.npz")
    np.testing.assert_allclose(loaded.cov, stats.cov)
    extra = rng.normal(size=(50, 6))
    loaded.update(extra)
    np.testing.assert_allclose(loaded.cov, np.cov(np.concatenate([data, extra]), rowvar=False), rtol=1e-8)


def test_running_stats_loads_foreign_npz_and_validates(tmp_path: Path) -> None:
    np.savez(tmp_path / "ext.npz", mu=np.zeros(3), sigma=np.eye(3))  # e.g. a published reference file
    ext = RunningStats.load(tmp_path / "ext.npz")
    assert np.array_equal(ext.cov, np.eye(3)) and np.array_equal(ext.mean, np.zeros(3))
    with pytest.raises(ValueError, match="cannot be updated"):
        ext.update(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        RunningStats(3).update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        _ = RunningStats(3).cov


# --- frechet_distance ---------------------------------------------------------------------------

def scipy_fd(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d)


@pytest.mark.parametrize("d", [1, 8, 64])
def test_frechet_matches_scipy(d: int) -> None:
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_fd(mu1, s1, mu2, s2), rel=1e-6)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_zero_for_identical_stats() -> None:
    rng = np.random.default_rng(1)
    mu, s = rng.normal(size=32), random_spd(rng, 32)
    assert 0.0 <= frechet_distance(mu, s, mu, s) < 1e-9 * np.trace(s)


def test_frechet_ill_conditioned_against_closed_form() -> None:
    """Covariances sharing eigenvectors: tr sqrt(S1 S2) = sum sqrt(a_i b_i) exactly."""
    rng = np.random.default_rng(2)
    d = 64
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = 10.0 ** rng.uniform(-12, 4, size=d)
    b = 10.0 ** rng.uniform(-12, 4, size=d)
    a[:10] = 0.0  # singular: rank-deficient like features from fewer samples than dimensions
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    exact = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    value = frechet_distance(mu1, s1, mu2, s2)
    assert math.isfinite(value) and value == pytest.approx(exact, rel=1e-6)
    same = frechet_distance(mu1, s1, mu1, s1)
    assert 0.0 <= same < 1e-6 * np.trace(s1)


def test_frechet_rank_deficient_sample_covariance() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 128)), rng.normal(size=(20, 128)) + 0.5  # 20 samples in 128 dims: singular covariances
    value = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert math.isfinite(value) and value > 0


def test_frechet_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))


# --- classifier features ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes_data() -> ImageDataset:
    return load_dataset(DataConfig(name="shapes", resolution=16, size=2400, seed=0))


@pytest.fixture(scope="module")
def trained(shapes_data: ImageDataset, tmp_path_factory: pytest.TempPathFactory) -> dict:
    cache = tmp_path_factory.mktemp("cache")
    rng_before = torch.random.get_rng_state()
    extractor, accuracy = load_or_train_classifier(shapes_data, cache, epochs=EPOCHS, seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    return {"extractor": extractor, "accuracy": accuracy, "cache": cache}


def test_classifier_accurate_on_shapes(trained: dict) -> None:
    assert trained["accuracy"] > 0.9
    extractor = trained["extractor"]
    assert isinstance(extractor, FeatureExtractor) and extractor.name == "classifier" and extractor.dim == 128


def test_classifier_cache_reused(shapes_data: ImageDataset, trained: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    cache: Path = trained["cache"]
    path = cache / f"classifier-{shapes_data.fingerprint()}-e{EPOCHS}-s0.pt"
    assert path.exists() and not list(cache.glob("*.tmp"))
    mtime = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier was trained again")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    again, accuracy = load_or_train_classifier(shapes_data, cache, epochs=EPOCHS, seed=0)
    assert path.stat().st_mtime_ns == mtime and accuracy == trained["accuracy"]
    blob = torch.load(path, weights_only=True)
    assert blob["accuracy"] == accuracy
    x = shapes_data.images[:50]
    assert torch.equal(again.features(x), trained["extractor"].features(x))
    assert again.key == path.stem


def test_classifier_features_quantised(shapes_data: ImageDataset, trained: dict) -> None:
    x = quantize_uint8(shapes_data.images[:20]).float() / 127.5 - 1.0  # exactly on the uint8 grid
    extractor: ClassifierExtractor = trained["extractor"]
    feats = extractor.features(x)
    assert feats.shape == (20, 128) and torch.isfinite(feats).all()
    assert torch.equal(feats, extractor.features(x + 0.003))  # less than half a grey level: same uint8 image
    assert not torch.equal(feats, extractor.features(x + 0.01))
    with pytest.raises(ValueError, match="expected images"):
        extractor.features(torch.zeros(2, 3, 32, 32))


def test_classifier_accurate_on_digits() -> None:
    digits = load_dataset(DataConfig(name="digits", resolution=16))
    _, accuracy = train_classifier(digits, epochs=5, seed=0)
    assert accuracy > 0.9


# --- FD on real data ----------------------------------------------------------------------------

def pool_generator(data: ImageDataset, transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A stand-in generator that returns random real images of the requested classes."""
    g = torch.Generator().manual_seed(0)
    by_class = [(data.labels == k).nonzero().squeeze(1) for k in range(data.num_classes)]
    counts = torch.tensor([len(i) for i in by_class])
    table = torch.stack([F.pad(i, (0, int(counts.max()) - len(i))) for i in by_class])

    def generate(labels: torch.Tensor) -> torch.Tensor:
        pick = (torch.rand(len(labels), generator=g) * counts[labels]).long()
        return transform(data.images[table[labels, pick]])
    return generate


def test_fd_separates_real_from_degraded(shapes_data: ImageDataset, trained: dict, tmp_path: Path) -> None:
    extractor = trained["extractor"]
    half = len(shapes_data) // 2
    real_a = ImageDataset(shapes_data.images[:half], shapes_data.labels[:half], 10, "shapes-a")
    real_b = ImageDataset(shapes_data.images[half:], shapes_data.labels[half:], 10, "shapes-b")
    ref = reference_stats(extractor, real_a, tmp_path)
    ref_file = tmp_path / f"ref-{real_a.fingerprint()}-{extractor.key}.npz"
    mtime = ref_file.stat().st_mtime_ns
    np.testing.assert_array_equal(reference_stats(extractor, real_a, tmp_path).cov, ref.cov)
    assert ref_file.stat().st_mtime_ns == mtime  # cached, not recomputed

    evaluator = Evaluator({"classifier": extractor}, {"classifier": Reference(ref)})

    def fd(transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> float:
        return evaluator(pool_generator(real_b, transform), ["fd_classifier"], num_samples=half, batch_size=250,
                         num_classes=10, seed=0)["fd_classifier"]

    fd_real = fd()
    fd_noise = fd(lambda x: torch.rand_like(x) * 2 - 1)
    fd_blur = [fd(blur(s)) for s in (0.7, 1.2, 2.0)]
    fd_shift = fd(lambda x: torch.roll(x, shifts=1, dims=1))  # colour channels rotated: hues move to other classes
    print(f"fd real {fd_real:.3f} noise {fd_noise:.3f} blur {fd_blur} colour shift {fd_shift:.3f}")
    assert fd_noise > 20 * fd_real
    assert fd_shift > 20 * fd_real
    assert fd_blur[0] > 3 * fd_real
    assert fd_blur[0] < fd_blur[1] < fd_blur[2]


def test_evaluator_fd_deterministic_and_nan(shapes_data: ImageDataset, trained: dict, tmp_path: Path) -> None:
    extractor = trained["extractor"]
    ref = reference_stats(extractor, ImageDataset(shapes_data.images[:500], shapes_data.labels[:500], 10, "sub"), tmp_path)
    evaluator = Evaluator({"classifier": extractor}, {"classifier": Reference(ref)})
    seen: list[int] = []

    def generate(labels: torch.Tensor) -> torch.Tensor:
        seen.append(len(labels))
        return shapes_data.images[: len(labels)] * 0.9
    a = evaluator(generate, ["fd_classifier"], 300, 128, 10, seed=0)
    b = evaluator(generate, ["fd_classifier"], 300, 128, 10, seed=0)
    assert a == b and seen == [128, 128, 44] * 2
    nan = evaluator(lambda lab: torch.full((len(lab), 3, 16, 16), math.nan), ["fd_classifier"], 10, 5, 10, seed=0)
    assert math.isnan(nan["fd_classifier"]) and nan["eval_samples"] == 10

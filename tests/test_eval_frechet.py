"""The Fréchet distance against pytorch-fid's `calculate_frechet_distance`, and reference statistics files.

pytorch-fid (scipy `sqrtm` of S1 S2, real part) is the reference implementation of the formula;
on identical (mu, Sigma) pairs the project's value must agree within 1e-6 relative, including
rank-deficient and ill-conditioned covariances.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from gat_core.config import DataConfig, EvalConfig
from gat_core.data import ImageDataset, load_dataset, quantize_uint8
from gat_core.metrics import RunningStats, frechet_distance
from gat_core.metrics.evaluator import build_evaluator
from gat_core.metrics.frechet import psd_factor, trace_sqrt_product
from gat_core.metrics.stats import ReferenceBatch


def pytorch_fid(mu1, s1, mu2, s2) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy deprecates sqrtm's disp argument that pytorch-fid passes
        return float(calculate_frechet_distance(mu1, s1, mu2, s2))


def features_like(rng: np.random.Generator, n: int, d: int, scale: float = 1.0) -> np.ndarray:
    """Non-negative, correlated features, like pooled ReLU activations."""
    mixing = np.abs(rng.normal(size=(d, d))) / d
    return np.abs(rng.normal(size=(n, d))) @ mixing * scale


def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), np.cov(x, rowvar=False)


def rotated(rng: np.random.Generator, eigenvalues: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues), len(eigenvalues))))
    return (q * eigenvalues) @ q.T


CASES = {
    "random SPD d=16": lambda rng: (rng.normal(size=16), rotated(rng, rng.uniform(0.1, 2, 16)),
                                    rng.normal(size=16), rotated(rng, rng.uniform(0.1, 2, 16))),
    "sample covariances d=512": lambda rng: (*stats(features_like(rng, 2000, 512)),
                                             *stats(features_like(rng, 2000, 512, 1.2))),
    "close distributions d=128": lambda rng: (*stats(features_like(rng, 3000, 128)), *stats(features_like(rng, 3000, 128))),
    "fewer samples than dims (singular) d=256": lambda rng: (*stats(features_like(rng, 100, 256)),
                                                             *stats(features_like(rng, 100, 256, 1.1))),
    "one singular, one full rank d=128": lambda rng: (*stats(features_like(rng, 50, 128)),
                                                      *stats(features_like(rng, 1000, 128))),
    "ill-conditioned PD, cond 1e13, d=64": lambda rng: (rng.normal(size=64), rotated(rng, 10.0 ** rng.uniform(-10, 3, 64)),
                                                        rng.normal(size=64), rotated(rng, 10.0 ** rng.uniform(-10, 3, 64))),
    "ill-conditioned, shared eigenbasis d=64": lambda rng: _shared_basis(rng),
    # values rounded to float32 (torch-fidelity's mu dtype), given as float64 to both: in float32 pytorch-fid's
    # own sqrtm is only accurate to ~1e-5, the project computes in float64 whatever it is given
    "float32-valued statistics d=64": lambda rng: tuple(
        a.astype(np.float32).astype(np.float64)
        for a in (*stats(features_like(rng, 400, 64)), *stats(features_like(rng, 400, 64, 1.3)))),
}


def _shared_basis(rng: np.random.Generator):
    q, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    a, b = 10.0 ** rng.uniform(-9, 3, 64), 10.0 ** rng.uniform(-9, 3, 64)
    return rng.normal(size=64), (q * a) @ q.T, rng.normal(size=64), (q * b) @ q.T


@pytest.mark.parametrize("case", sorted(CASES))
def test_frechet_equals_pytorch_fid(case: str) -> None:
    mu1, s1, mu2, s2 = CASES[case](np.random.default_rng(sorted(CASES).index(case)))
    ours, reference = frechet_distance(mu1, s1, mu2, s2), pytorch_fid(mu1, s1, mu2, s2)
    print(f"{case}: ours {ours:.12g} pytorch-fid {reference:.12g}")
    assert math.isfinite(ours) and ours > 0
    assert ours == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ours, rel=1e-9)  # symmetric


def test_trace_sqrt_product_closed_form_with_rank_deficiency() -> None:
    """Shared eigenvectors: tr sqrt(S1 S2) = sum sqrt(a_i b_i), with zero and round-off-negative eigenvalues."""
    rng = np.random.default_rng(7)
    d = 96
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.01, 3, d), rng.uniform(0.01, 3, d)
    a[:30], b[20:40] = 0.0, -1e-15  # singular, and slightly indefinite from round-off
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    exact = float(np.sqrt(a * np.clip(b, 0, None)).sum())
    assert trace_sqrt_product(s1, s2) == pytest.approx(exact, rel=1e-7)
    assert psd_factor(s1).shape[1] == d - 30  # the numerical rank
    zero = np.zeros((d, d))
    assert trace_sqrt_product(zero, s2) == 0.0
    assert frechet_distance(np.zeros(d), zero, np.ones(d), s2) == pytest.approx(d + np.trace(s2))


def test_frechet_of_streamed_2048_d_features_is_finite_and_small_for_same_distribution() -> None:
    """Inception-sized statistics from float64 streaming, fewer samples than dimensions on one side."""
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(64, 2048)) / 8
    a, b = RunningStats(2048), RunningStats(2048)
    for _ in range(6):
        a.update(rng.normal(size=(500, 64)) @ mixing + 3.0)
    b.update(torch.from_numpy(rng.normal(size=(300, 64)) @ mixing + 3.0).float())
    same = frechet_distance(a.mean, a.cov, b.mean, b.cov)
    shifted = frechet_distance(a.mean, a.cov, b.mean + 0.5, b.cov)
    assert 0 < same < shifted and shifted - same == pytest.approx(0.25 * 2048, rel=0.05)


# --- reference statistics files ---------------------------------------------------------------------

def test_adm_reference_batch_format(tmp_path: Path) -> None:
    """ADM's `VIRTUAL_imagenet256_labeled.npz` layout: arr_0 uint8 NHWC images, mu/sigma and mu_s/sigma_s."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 12, 12, 3), dtype=np.uint8)
    mu, sigma = rng.normal(size=2048), np.diag(rng.uniform(0.1, 1, 2048))
    path = tmp_path / "VIRTUAL_ref.npz"
    np.savez(path, arr_0=images, mu=mu, sigma=sigma, mu_s=rng.normal(size=7), sigma_s=np.eye(7))
    ref = ReferenceBatch(path)
    assert ref.dim == 2048 and ref.num_images == 10 and ref.stats.n == 0
    np.testing.assert_array_equal(ref.stats.mean, mu)
    np.testing.assert_array_equal(ref.stats.cov, sigma)
    streamed = torch.cat(list(ref.image_batches(4)))
    assert streamed.dtype == torch.uint8 and streamed.shape == (10, 3, 12, 12)
    assert torch.equal(streamed, torch.from_numpy(images).permute(0, 3, 1, 2))
    loaded = RunningStats.load(path)  # the plain loader reads the same file
    np.testing.assert_array_equal(loaded.cov, sigma)
    bad = tmp_path / "bad.npz"
    np.savez(bad, mean=mu)
    with pytest.raises(ValueError, match="mu"):
        ReferenceBatch(bad)


def test_reference_stats_file_replaces_dataset_statistics(tmp_path: Path) -> None:
    """eval.reference_stats: the file's mu/sigma are the primary metric's reference; its images give KID's reals."""
    data = load_dataset(DataConfig(name="shapes", resolution=16, size=400, seed=0))
    half = ImageDataset(data.images[:200], data.labels[:200], data.num_classes, "half")
    cfg = EvalConfig(metric="fd_classifier", extra_metrics=["kid_classifier"], classifier_epochs=2)
    plain, _ = build_evaluator(cfg, half, tmp_path / "cache")
    # an ADM-layout file holding the *other* half's images and its statistics
    other = data.images[200:]
    feats = plain.extractors["classifier"].features(other).double().numpy()
    path = tmp_path / "ref.npz"
    np.savez(path, arr_0=quantize_uint8(other).permute(0, 2, 3, 1).numpy(), mu=feats.mean(0),
             sigma=np.cov(feats, rowvar=False))
    with_file, _ = build_evaluator(cfg.model_copy(update={"reference_stats": path}), half, tmp_path / "cache")
    ref = with_file.references["classifier"]
    assert ref.source == str(path)
    np.testing.assert_allclose(ref.stats.mean, feats.mean(0))
    np.testing.assert_allclose(ref.features, feats, rtol=1e-6, atol=1e-6)  # features of the file's images
    assert not np.allclose(plain.references["classifier"].stats.mean, ref.stats.mean)

    def generate(labels: torch.Tensor) -> torch.Tensor:
        return data.images[: len(labels)]

    a = with_file(generate, ["fd_classifier"], 100, 50, data.num_classes)["fd_classifier"]
    s = RunningStats(128)
    s.update(plain.extractors["classifier"].features(data.images[:50]))
    s.update(plain.extractors["classifier"].features(data.images[:50]))
    assert a == pytest.approx(frechet_distance(s.mean, s.cov, feats.mean(0), np.cov(feats, rowvar=False)), rel=1e-9)

    np.savez(tmp_path / "wrong.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="2048-d statistics"):
        build_evaluator(cfg.model_copy(update={"reference_stats": tmp_path / "wrong.npz"}), half, tmp_path / "cache")

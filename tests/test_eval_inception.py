"""`fid` equals torch-fidelity's FID on identical inputs, with the same Inception weights file.

The real weights cannot be downloaded here, so the test writes a randomly initialised network in
the exact format of `weights-inception-2015-12-05-6726825d.pth` and loads it through the same
code path as the real file (torch-fidelity's `FeatureExtractorInceptionV3`).  Torch's default
initialisation gives pool_3 features near 1e-8 and a FID of 0, which would make the comparison
vacuous: the convolutions are re-drawn until the features vary across images, and that is asserted.
Inception runs at 299 px, heavy on a CPU: 16 + 16 images, small batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from bench.common import write_random_inception_weights
from gat_core.config import DataConfig
from gat_core.data import load_dataset, quantize_uint8
from gat_core.metrics import RunningStats, frechet_distance
from gat_core.metrics.extractors import InceptionExtractor
from gat_core.metrics.stats import file_digest
from gat_core.weights import INCEPTION_ENV, INCEPTION_FILE, WeightsNotFound

N = 16


class Uint8Images(Dataset):
    """What torch-fidelity reads: uint8 [3, H, W] tensors."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Inception in the real file's format, re-initialised until its features vary across images."""
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILE
    probe = quantize_uint8(load_dataset(DataConfig(name="shapes", resolution=16, size=64, seed=3)).images[:4])
    for seed in range(5):
        write_random_inception_weights(path, seed=seed)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        with torch.no_grad():
            feats = net(probe)[0]
        if feats.std(0).mean() > 1e-3 * feats.abs().mean() and feats.abs().mean() > 1e-3:
            return path
    pytest.fail("could not draw an Inception whose features vary across images")


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two different sets in [-1, 1]: shapes, and other shapes with their colour channels rotated."""
    data = load_dataset(DataConfig(name="shapes", resolution=32, size=64, seed=0))
    return data.images[:N], data.images[32:32 + N].roll(1, dims=1)


@pytest.fixture(scope="module")
def ours(weights: Path, images) -> dict:
    extractor = InceptionExtractor(weights, chunk=8)
    stats, feats = [], []
    for x in images:
        s = RunningStats(extractor.dim)
        f = torch.cat([extractor.features(part) for part in x.split(8)])  # streamed in batches
        for part in f.split(8):
            s.update(part)
        stats.append(s)
        feats.append(f)
    fid = frechet_distance(stats[0].mean, stats[0].cov, stats[1].mean, stats[1].cov)
    return {"extractor": extractor, "stats": stats, "features": feats, "fid": fid}


def test_features_vary_across_images(ours: dict) -> None:
    for f in ours["features"]:
        assert f.shape == (N, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all()
        assert f.abs().mean() > 1e-3                      # not the ~1e-8 of the default initialisation
        assert f.std(0).mean() > 1e-3 * f.abs().mean()    # different images, different features
        assert (f.std(0) > 0).float().mean() > 0.5


def test_fid_equals_torch_fidelity(weights: Path, images, ours: dict) -> None:
    a, b = (quantize_uint8(x) for x in images)
    reference = torch_fidelity.calculate_metrics(
        input1=Uint8Images(a), input2=Uint8Images(b), fid=True, cuda=False, batch_size=8, cache=False,
        verbose=False, save_cpu_ram=True, feature_extractor_weights_path=str(weights))["frechet_inception_distance"]
    fid = ours["fid"]
    print(f"fid {fid:.8g} torch-fidelity {reference:.8g}")
    assert fid == pytest.approx(reference, rel=1e-3)
    same = frechet_distance(ours["stats"][0].mean, ours["stats"][0].cov, ours["stats"][0].mean, ours["stats"][0].cov)
    assert fid > 1e-2 and fid > 1e4 * same  # clearly non-zero: the comparison is not 0 == 0


def test_features_equal_torch_fidelity_network(weights: Path, images, ours: dict) -> None:
    """Same network, same TF1 resize, same uint8 input: features agree to float32 round-off."""
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    with torch.no_grad():
        theirs = net(quantize_uint8(images[0][:4]))[0]
    np.testing.assert_allclose(ours["features"][0][:4].numpy(), theirs.numpy(), rtol=1e-4, atol=1e-6)
    # a float input 0.3 grey levels off lands on the same uint8 image: identical features
    nudged = quantize_uint8(images[0][:2]).float() / 127.5 - 1.0 + 0.3 / 127.5
    assert torch.equal(ours["extractor"].features(nudged), ours["extractor"].features(images[0][:2]))


def test_grey_images_are_repeated_to_rgb(ours: dict) -> None:
    digits = load_dataset(DataConfig(name="digits", resolution=16)).images[:2]
    extractor = ours["extractor"]
    assert digits.shape[1] == 1
    torch.testing.assert_close(extractor.features(digits), extractor.features(digits.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match="1 or 3"):
        extractor.features(torch.zeros(2, 4, 16, 16))


def test_key_names_the_weights(weights: Path, ours: dict) -> None:
    """Reference statistics are cached per extractor key: the key must change with the weights' content."""
    assert ours["extractor"].key == f"inception-{file_digest(weights)}" and ours["extractor"].name == "inception"


def test_missing_weights_file_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(WeightsNotFound) as err:
        InceptionExtractor(None)
    message = str(err.value)
    assert "eval.inception_weights" in message and INCEPTION_FILE in message and "torch-fidelity" in message
    assert INCEPTION_ENV in message
    with pytest.raises(WeightsNotFound, match=str(tmp_path / "nope.pth")):
        InceptionExtractor(tmp_path / "nope.pth")


def test_env_variable_and_wrong_file(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INCEPTION_ENV, str(weights))
    assert InceptionExtractor(None).weights == weights
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="not torch-fidelity's Inception weights"):
        InceptionExtractor(bad)

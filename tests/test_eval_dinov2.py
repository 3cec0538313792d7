"""`fd_dinov2`: an official-format DINOv2 checkpoint (written by the test) through the real loading code.

torch-fidelity's own DINOv2 extractor only loads through torch.hub (a download), so the
equivalence checked here is of the preprocessing: torch-fidelity's forward (TF1-bilinear resize to
224 px, ImageNet normalisation on 0..255 values, the network's CLS output) run on the very network
the project loaded must give the project's features.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2

from gat_core.config import DataConfig, EvalConfig
from gat_core.data import load_dataset, quantize_uint8
from gat_core.metrics.evaluator import build_evaluator
from gat_core.metrics.extractors import DINOv2Extractor
from gat_core.weights import DINOV2_ENV, WeightsNotFound


@pytest.fixture(scope="module")
def official_vits14(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ViT-S/14 in the layout of dinov2_vits14_pretrain.pth: 518 px position grid, a mask token.

    timm initialises the layer scales to 1e-5, which makes every image's CLS feature the same; they are
    set to 1 so the features depend on the image (asserted in the tests).
    """
    import timm

    torch.manual_seed(0)
    net = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    state = {"mask_token": torch.zeros(1, 384), **net.state_dict()}
    for key in state:
        if key.endswith((".ls1.gamma", ".ls2.gamma")):
            state[key] = torch.ones_like(state[key])
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return path


def test_dinov2_features_match_torch_fidelity_preprocessing(official_vits14: Path) -> None:
    extractor = DINOv2Extractor(official_vits14)
    assert extractor.dim == 384 and extractor.model_name == "vit_small_patch14_dinov2"
    assert extractor.key.startswith("dinov2-small_patch14-")
    images = load_dataset(DataConfig(name="shapes", resolution=16, size=64, seed=0)).images[:4]
    ours = extractor.features(images)
    assert ours.shape == (4, 384) and torch.isfinite(ours).all() and ours.std(0).mean() > 1e-2 * ours.abs().mean()

    theirs_fe = FeatureExtractorDinoV2.__new__(FeatureExtractorDinoV2)  # their forward, our loaded network
    FeatureExtractorBase.__init__(theirs_fe, "dinov2-vit-s-14", ["dinov2"])
    theirs_fe.feature_extractor_internal_dtype = torch.float32
    theirs_fe.model = extractor.net
    with torch.no_grad():
        theirs = theirs_fe(quantize_uint8(images))[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    digits = load_dataset(DataConfig(name="digits", resolution=16)).images[:2]
    torch.testing.assert_close(extractor.features(digits), extractor.features(digits.expand(-1, 3, -1, -1)))


def test_fd_dinov2_through_the_evaluator(official_vits14: Path, tmp_path: Path) -> None:
    data = load_dataset(DataConfig(name="shapes", resolution=16, size=16, seed=0))
    data = type(data)(data.images[:8], data.labels[:8], data.num_classes, "shapes-8")
    evaluator, accuracy = build_evaluator(EvalConfig(metric="fd_dinov2", dinov2_weights=official_vits14), data,
                                          tmp_path)
    assert accuracy != accuracy  # NaN: no classifier metric, no classifier trained
    assert list(tmp_path.glob("ref-*-dinov2-small_patch14-*.npz"))

    def dataset_in_order(noise: float):
        served = [0]

        def generate(labels: torch.Tensor) -> torch.Tensor:
            x = data.images[served[0]:served[0] + len(labels)]
            served[0] += len(labels)
            return (x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
        return generate

    real = evaluator(dataset_in_order(0.0), ["fd_dinov2"], 8, 8, data.num_classes)
    worse = evaluator(dataset_in_order(0.5), ["fd_dinov2"], 8, 8, data.num_classes)
    scale = float(evaluator.references["dinov2"].stats.cov.trace())
    assert real["fd_dinov2"] < 1e-6 * scale < 1e-2 * scale < worse["fd_dinov2"] and worse["eval_samples"] == 8


def test_missing_or_wrong_dinov2_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DINOV2_ENV, raising=False)
    with pytest.raises(WeightsNotFound) as err:
        DINOv2Extractor(None)
    assert "eval.dinov2_weights" in str(err.value) and DINOV2_ENV in str(err.value)
    assert "dinov2_vitl14_pretrain.pth" in str(err.value)
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not an official DINOv2"):
        DINOv2Extractor(bad)

"""Pretrained feature extractors of the metrics, from local weights files only.

- `InceptionExtractor` (`fid`, `kid_inception`, ...): torch-fidelity's `FeatureExtractorInceptionV3`
  ("inception-v3-compat", pool_3 "2048" features), the PyTorch port of the TF "inception-2015-12-05"
  graph that FID papers use, with its TF1-exact bilinear resize to 299 px inside the network.
  Identical network, weights and preprocessing as torch-fidelity, so the same images give the same
  features.
- `DINOv2Extractor` (`fd_dinov2`, ...): an official DINOv2 ViT-*/14 checkpoint (S/B/L/g, with or
  without registers; the size is read from the file) in timm, preprocessed like torch-fidelity's
  DINOv2 extractor: TF1-bilinear resize to 224 px, ImageNet normalisation; the feature is the
  final-norm CLS token.  (torch-fidelity itself can only load DINOv2 through torch.hub, i.e. a download.)

Both take images in [-1, 1] (quantised to uint8 first, as an image file would store them) or uint8
directly, [N, 1 or 3, H, W]; grey images are repeated to RGB.  A missing weights file raises
`gat_core.weights.WeightsNotFound` naming the file and where it comes from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from gat_core.data import quantize_uint8
from gat_core.metrics.stats import file_digest
from gat_core.vfm import IMAGENET_MEAN, IMAGENET_STD, load_dinov2
from gat_core.weights import eval_dinov2_weights, inception_weights

log = logging.getLogger(__name__)
PIXEL_SIDE = 32  # pixel features are area-pooled to at most this side


class PixelExtractor:
    """The images themselves as features: uint8-quantised, area-pooled to at most 32 x 32, flattened.

    What `diversity_pixels` measures in.  The learned extractors are built to ignore exactly the
    variation a collapsed generator lacks: a classifier trained on the study data maps every pose,
    position and size of a class to nearly the same features (a generator drawing one pose per class
    keeps fd_classifier, recall_classifier and a classifier-feature spread near the data's), and
    Inception or DINOv2 features are semantic too.  In pixels, two samples that differ in where or
    how the object is drawn are never alike."""

    name = "pixels"

    def __init__(self, channels: int, resolution: int) -> None:
        self.side = min(resolution, PIXEL_SIDE)
        self.dim = channels * self.side * self.side
        self.key = f"pixels{self.side}"

    def features(self, images: Tensor) -> Tensor:
        x = quantize_uint8(images).float() / 127.5 - 1.0
        if x.shape[-1] != self.side:
            x = torch.nn.functional.adaptive_avg_pool2d(x, self.side)
        return x.flatten(1)


def uint8_rgb(images: Tensor) -> Tensor:
    """[N, 1|3, H, W] in [-1, 1] (or uint8) -> uint8 [N, 3, H, W]."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"features: expected images [N, 1 or 3, H, W], got {list(images.shape)}")
    x = images if images.dtype == torch.uint8 else quantize_uint8(images)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class InceptionExtractor:
    """`FeatureExtractor` over torch-fidelity's TF-Inception port: 2048-d pool_3 features."""

    name = "inception"
    dim = 2048

    def __init__(self, weights: Path | str | None = None, device: str | torch.device = "cpu", chunk: int = 50,
                 channels_last: bool = True) -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = inception_weights(weights)
        try:
            # torch-fidelity unpickles the file with weights_only=False: check first that it holds tensors only
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        except Exception as exc:  # unpickling, key or shape mismatches
            raise ValueError(f"eval.inception_weights: {path} is not torch-fidelity's Inception weights file "
                             f"({type(exc).__name__}: {str(exc)[:300]})") from None
        self.device = torch.device(device)
        self.net = net.to(self.device)
        if channels_last:  # faster oneDNN convolutions; same network, round-off-level differences only
            self.net = self.net.to(memory_format=torch.channels_last)
        self.chunk = chunk
        self.weights = path
        self.key = f"inception-{file_digest(path)}"

    @torch.inference_mode()
    def features(self, images: Tensor) -> Tensor:
        """Images [N, 1|3, H, W] in [-1, 1] or uint8 -> float32 [N, 2048] on the CPU."""
        x = uint8_rgb(images)
        out = [self.net(part.to(self.device))[0].float().cpu() for part in x.split(self.chunk)]
        return torch.cat(out) if out else torch.zeros(0, self.dim)


class DINOv2Extractor:
    """`FeatureExtractor` over an official DINOv2 ViT-*/14 checkpoint: the CLS token at 224 px."""

    name = "dinov2"
    image_size = 224

    def __init__(self, weights: Path | str | None = None, device: str | torch.device = "cpu", chunk: int = 64) -> None:
        path = eval_dinov2_weights(weights)
        net = load_dinov2(path, "eval.dinov2_weights", image_size=self.image_size)
        self.model_name = net.pretrained_cfg["architecture"]  # the timm name, read from the file
        self.device = torch.device(device)
        self.net = net.to(self.device)
        self.dim = int(self.net.num_features)
        self.chunk = chunk
        self.weights = path
        self.key = f"dinov2-{self.model_name.removeprefix('vit_').removesuffix('_dinov2')}-{file_digest(path)}"
        self.mean = torch.tensor([255 * m for m in IMAGENET_MEAN], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor([255 * s for s in IMAGENET_STD], device=self.device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def features(self, images: Tensor) -> Tensor:
        """Images [N, 1|3, H, W] in [-1, 1] or uint8 -> float32 [N, dim] on the CPU."""
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        out = []
        for part in uint8_rgb(images).split(self.chunk):
            x = part.to(self.device).float()
            x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(self.image_size, self.image_size),
                                                          align_corners=False)
            out.append(self.net((x - self.mean) / self.std).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def build_extractor(name: str, eval_cfg, dataset, cache_dir: Path, device: str | torch.device = "cpu"
                    ) -> tuple[object, float | None]:
    """The extractor `name` of an EvalConfig, and the classifier's held-out accuracy (None for the others)."""
    if name == "classifier":
        from gat_core.metrics.classifier import load_or_train_classifier

        # trained and run on the CPU whatever the trial's device: the same cached network, bit-identical features
        return load_or_train_classifier(dataset, cache_dir, eval_cfg.classifier_epochs, seed=0)
    if name == "inception":
        return InceptionExtractor(eval_cfg.inception_weights, device), None
    if name == "dinov2":
        return DINOv2Extractor(eval_cfg.dinov2_weights, device), None
    if name == "pixels":
        return PixelExtractor(dataset.channels, dataset.resolution), None
    raise ValueError(f"unknown feature extractor {name!r}")

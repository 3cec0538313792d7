"""A small CNN trained on the study's own dataset, whose penultimate features define `fd_classifier`.

Inception features need a download and were made for 299 px photos; a
classifier trained in seconds on the actual data gives a metric that works
offline, at any resolution, and that is sensitive to what matters for these
datasets (class identity, colour, shape).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import Tensor, nn

from gat_core.checkpoint import save_atomic
from gat_core.data import ImageDataset, quantize_uint8

log = logging.getLogger(__name__)

FEATURE_DIM = 128
_VAL_FRACTION = 0.1


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """conv -> stride-2 convs down to ~4 px -> global average pool -> 128-d features -> linear head."""

    def __init__(self, in_channels: int, num_classes: int, resolution: int, width: int = 32) -> None:
        super().__init__()
        self.arch = {"in_channels": in_channels, "num_classes": num_classes, "resolution": resolution, "width": width}
        layers = [_conv(in_channels, width, 1)]
        channels, size = width, resolution
        while size > 4:
            out = min(2 * channels, FEATURE_DIM)
            layers.append(_conv(channels, out, 2))
            channels, size = out, math.ceil(size / 2)
        self.body = nn.Sequential(*layers)
        self.feature = nn.Linear(channels, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate (pre-activation) features: continuous, so their Gaussian fit is meaningful."""
        return self.feature(self.body(x).mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.features(x)))


class ClassifierExtractor:
    """`FeatureExtractor` over a trained `SmallCNN`."""

    name = "classifier"

    def __init__(self, model: SmallCNN, key: str, device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.key = key
        self.dim = FEATURE_DIM
        self.device = torch.device(device)
        self._shape = (model.arch["in_channels"], model.arch["resolution"], model.arch["resolution"])

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """[N, C, H, W] in [-1, 1] -> float32 [N, 128] on the CPU, after uint8 quantisation."""
        if images.ndim != 4 or tuple(images.shape[1:]) != self._shape:
            raise ValueError(f"classifier features: expected images [N, {', '.join(map(str, self._shape))}], got {list(images.shape)}")
        x = quantize_uint8(images).to(self.device).float() / 127.5 - 1.0
        return self.model.features(x).float().cpu()


def _dequantized(images: Tensor) -> Tensor:
    """Train on exactly what `features` sees."""
    return quantize_uint8(images).float() / 127.5 - 1.0


def _translate(x: Tensor, max_shift: int, g: torch.Generator) -> Tensor:
    """Random integer translation per image (edge-replicated), a light augmentation against overfitting."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    oy = torch.randint(0, 2 * max_shift + 1, (b, 1), generator=g)
    ox = torch.randint(0, 2 * max_shift + 1, (b, 1), generator=g)
    rows = (oy + torch.arange(h)).to(x.device)[:, :, None]  # [B, H, 1]
    cols = (ox + torch.arange(w)).to(x.device)[:, None, :]  # [B, 1, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


@torch.no_grad()
def _accuracy(model: SmallCNN, images: Tensor, labels: Tensor, device: torch.device, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == labels[start:start + batch_size]).sum())
    return correct / max(1, len(images))


def train_classifier(
    dataset: ImageDataset, epochs: int, seed: int, device: str | torch.device = "cpu", batch_size: int = 128, lr: float = 4e-3,
) -> tuple[SmallCNN, float]:
    """Train on 90 % of the data; return the model (eval mode) and its accuracy on the held-out 10 %.

    Seeds only local generators (and the init under `fork_rng`), so the
    caller's global RNG state is left untouched.
    """
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    n = len(dataset)
    order = torch.randperm(n, generator=g)
    n_val = max(1, round(_VAL_FRACTION * n)) if n >= 2 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    x = _dequantized(dataset.batch(slice(None)))  # the classifier's datasets are small: all in memory
    y = dataset.labels

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(dataset.channels, dataset.num_classes, dataset.resolution)
    model = model.to(device, memory_format=torch.channels_last)  # ~30 % faster convolutions on CPU
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    # OneCycle needs a few steps per phase; tiny datasets stop early in the cycle instead of dividing by zero
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(8, epochs * steps_per_epoch), pct_start=0.25)
    max_shift = max(1, dataset.resolution // 16)

    start_time = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = train_idx[torch.randperm(len(train_idx), generator=g)]
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            xb = _translate(x[idx], max_shift, g).to(device).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    eval_idx = val_idx if n_val else train_idx
    accuracy = _accuracy(model, x[eval_idx], y[eval_idx], device)
    log.info("classifier on %s: %d epochs in %.1fs, held-out accuracy %.4f",
             dataset.name, epochs, time.perf_counter() - start_time, accuracy)
    # Back to the default layout: a freshly trained and a reloaded model must compute bit-identical features.
    return model.to(memory_format=torch.contiguous_format).eval(), accuracy


def _load(path: Path, dataset: ImageDataset) -> tuple[SmallCNN, float]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = SmallCNN(**blob["arch"])
    if (model.arch["in_channels"], model.arch["num_classes"]) != (dataset.channels, dataset.num_classes):
        raise ValueError(f"{path}: classifier architecture {model.arch} does not fit dataset {dataset.name}")
    model.load_state_dict(blob["state_dict"])
    return model.eval(), float(blob["accuracy"])


def load_or_train_classifier(
    dataset: ImageDataset, cache_dir: Path, epochs: int, seed: int, device: str | torch.device = "cpu",
) -> tuple[ClassifierExtractor, float]:
    """The feature classifier of `dataset`, trained once and shared through `cache_dir`.

    A file lock makes concurrent trials wait for the first one's training
    instead of all training the same network; the weights file is written
    atomically, so readers never see a partial file.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"classifier-{dataset.fingerprint()}-e{epochs}-s{seed}.pt"
    with FileLock(f"{path}.lock"):
        model: SmallCNN | None = None
        if path.exists():
            try:
                model, accuracy = _load(path, dataset)
            except Exception as err:  # corrupt or foreign file: retrain and overwrite rather than fail the trial
                warnings.warn(f"could not load cached classifier {path} ({err}); retraining", stacklevel=2)
        if model is None:
            model, accuracy = train_classifier(dataset, epochs, seed, device=device)
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            save_atomic({"arch": model.arch, "state_dict": state, "accuracy": accuracy,
                          "dataset": dataset.fingerprint(), "epochs": epochs, "seed": seed}, path)
    return ClassifierExtractor(model, path.stem, device), accuracy

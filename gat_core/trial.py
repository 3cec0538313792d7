"""The trainer protocol: what every kind of trial shares (device and precision, data in pixels or
latents, the quality metric, sample grids, checkpoints, compute bookkeeping) and the methods each
family overrides (`iteration`, its sampler, its evaluation extras, its state).

`gat_core.gan_trainer.GANTrainer` (the GAN) and `gat_core.diffusion_trainer.DiffusionTrainer`
(the DiT baseline) implement it, so both families see the same data, the same metric and the
same compute accounting; `gat_core.loop` runs any of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gat_core import checkpoint as ckpt
from gat_core.config import TrialConfig
from gat_core.data import BatchSampler, load_dataset
from gat_core.distributed import DataParallel
from gat_core.latents import LatentData, LatentSampler, load_latents
from gat_core.metrics.evaluator import build_evaluator
from gat_core.sampler import Sampler, latent_decoder
from gat_core.samples import save_sample_grid

KEEP_CHECKPOINTS = 2
MODEL_FILE = "final_model.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def width_scaled_lr(cfg: TrialConfig, width: int) -> float:
    """The learning rate of a network of `width`: `train.lr`, or with the width rule lr * lr_base_width / width."""
    t = cfg.train
    return t.lr if t.lr_rule == "constant" else t.lr * t.lr_base_width / width


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Parameters move toward the model by (1 - decay); buffers are copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    for ema_buf, buf in zip(ema.buffers(), model.buffers()):
        ema_buf.copy_(buf)


def score_samples(trial: "TrialBase", num_samples: int, metrics: list[str],
                  generate: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """`metrics` of `num_samples` decoded samples of `generate` (default: the trial's sampler), one generation
    pass, labels from a fixed seed; includes `eval_samples`.

    Needs `trial.prepare_eval()` first (it builds `trial.evaluator` for eval.metric and eval.extra_metrics).
    """
    e = trial.cfg.eval
    sample = generate or trial.generate

    def images(labels: torch.Tensor) -> torch.Tensor:
        with trial.autocast():
            return trial.decode(sample(labels.to(trial.device)).float()).clamp(-1, 1)

    return trial.evaluator(images, metrics, num_samples, e.batch_size, trial.dataset.num_classes, seed=1234)


class TrialBase(ABC):
    """State and services shared by the trainers; subclasses add the networks, `iteration()` and
    `model_sampler` (the `gat_core.sampler.Sampler` of their EMA network, which evaluations,
    sample grids and the model file go through)."""

    total_steps: int
    step: int = 0
    model_sampler: Sampler

    def __init__(self, cfg: TrialConfig, workdir: Path, cache_dir: Path | None = None) -> None:
        self.cfg, self.workdir = cfg, Path(workdir)
        self.cache_dir = Path(cache_dir) if cache_dir else self.workdir / "cache"
        t = cfg.train
        self.device = resolve_device(t.device)
        bf16 = t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda")
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
        self.dp = DataParallel.current()  # one worker unless a launcher set up a process group
        self.dp.local_batch(t.batch_size)  # fails early, naming the field, when the batch does not split
        torch.manual_seed(t.seed)  # the same on every worker: identical initial weights
        self._setup_data()

    def _setup_data(self) -> None:
        """Pixel space: images are what G makes.  Latent space: G makes latents, the VAE decodes them."""
        t, data_cfg = self.cfg.train, self.cfg.dataset
        self.latent: LatentData | None = None
        self.decode: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
        if data_cfg.latents is None:
            self.dataset = load_dataset(data_cfg)
            self.sampler = BatchSampler(self.dataset, t.batch_size, seed=t.seed, device=self.device, shard=self.dp.shard)
            return
        self.latent = load_latents(data_cfg.latents)
        if self.latent.pixels is None:
            raise ValueError(f"dataset.latents: {data_cfg.latents} was encoded without its images, which the "
                             "metrics need; encode it again with --keep-images")
        self.dataset = self.latent.pixels
        self.sampler = LatentSampler(self.latent, t.batch_size, seed=t.seed, device=self.device, shard=self.dp.shard)
        self.decode = latent_decoder(self.latent, self.cfg.eval.vae, self.device, self.dataset.channels)

    def probe_reals(self, n: int) -> torch.Tensor:
        """The first n training inputs (posterior means in latent space), for diagnostics."""
        if self.latent is None:
            return self.dataset.batch(slice(0, n)).to(self.device)
        mean = self.latent.moments.images[:n].chunk(2, dim=1)[0]
        return (mean * self.latent.scaling_factor).to(self.device)

    def real_pixels(self, real: torch.Tensor) -> torch.Tensor:
        """The source images of the current batch (what a pixel-space teacher sees)."""
        return real if self.latent is None else self.sampler.last_pixels

    # --- training helpers ---------------------------------------------------------------------
    def optimise(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """Backward, gradients averaged over data-parallel workers, one norm clip over every parameter
        the optimiser steps (D's includes the REPA head, which is part of D), step."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in opt.param_groups for p in group["params"]]
        self.dp.average_gradients(params)
        if self.cfg.train.grad_clip:
            nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
        opt.step()

    def ema_decay(self) -> float:
        """train.ema, or with warm-up min(ema, (1 + step) / (10 + step))."""
        decay = self.cfg.train.ema
        return min(decay, (1 + self.step) / (10 + self.step)) if self.cfg.train.ema_warmup else decay

    def probe_before(self) -> Any:
        """Diagnostics state before a logged step (none by default)."""
        return None

    def probe_after(self, before: Any) -> dict[str, float]:
        return {}

    def learning_rates(self) -> dict[str, float]:
        return {}

    # --- evaluation ---------------------------------------------------------------------------
    def prepare_eval(self) -> float:
        """Extractors and reference statistics of the eval metrics (primary and extra); returns the classifier's
        held-out accuracy (NaN when no metric uses the classifier).

        The classifier is trained once per dataset and cached; reference statistics are cached per (dataset
        content, extractor weights); missing Inception/DINOv2 weights raise WeightsNotFound naming the file.
        Whatever of that happens here leaves the trial's random streams untouched: the trial that finds the
        cache cold (and trains the classifier) draws the same noise as the ones that find it warm.
        """
        e = self.cfg.eval
        if e.truncation and not self.model_sampler.truncates:
            raise ValueError("eval.truncation: truncation applies to GAN generators (G_ema); this trial has none")
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            self.evaluator, accuracy = build_evaluator(e, self.dataset, self.cache_dir, device=self.device)
        return accuracy

    @property
    def is_final(self) -> bool:
        """Whether an evaluation now is the final one (the trial's last step): it scores the extra metrics too."""
        return self.step >= self.total_steps

    def generate(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Samples of the evaluated model in the training space (pixels or latents)."""
        return self.model_sampler.generate(labels, generator)

    def eval_noise(self) -> torch.Generator | None:
        """The noise generator of an evaluation (None: the global stream)."""
        return None

    def eval_extras(self) -> dict[str, float]:
        """What an evaluation reports beside its scores (the sampler's settings, e.g. a GAN's truncation psi)."""
        return self.model_sampler.eval_settings()

    @torch.no_grad()
    def quality(self, num_samples: int, generate: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
        """The primary metric (`eval.metric`; default: FD in the classifier's features) of decoded samples,
        labels from a fixed seed."""
        metric = self.cfg.eval.metric
        return score_samples(self, num_samples, [metric], generate)[metric]

    @torch.no_grad()
    def evaluate(self, num_samples: int) -> dict[str, float]:
        """`{eval.metric: value, eval.diversity_metric: value, "eval_samples": n}`, plus `eval.extra_metrics` at the
        final evaluation (`is_final`), scored on the same samples, plus `eval_extras()` (GAN trials: their truncation
        psi `eval_truncation`; DiT trials: the sampling cost)."""
        e, noise = self.cfg.eval, self.eval_noise()
        out = score_samples(self, num_samples, e.final_metrics if self.is_final else e.interval_metrics,
                            lambda labels: self.generate(labels, noise))
        return {**out, **self.eval_extras()}

    def final_evaluate(self, num_samples: int) -> dict[str, float]:
        return self.evaluate(num_samples)

    @torch.no_grad()
    def sample_grid(self, path: Path) -> Path:
        """A grid of samples, one class per row, the same noise every time."""
        n = self.cfg.eval.grid_size
        labels = (torch.arange(n * n) // n) % self.dataset.num_classes
        with self.autocast():
            images = self.decode(self.generate(labels.to(self.device), torch.Generator().manual_seed(99)).float())
        return save_sample_grid(images.cpu(), path, nrow=n)

    # --- state --------------------------------------------------------------------------------
    @abstractmethod
    def state_dict(self) -> dict:
        """Everything a checkpoint holds (start from `progress_state()`)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint (finish with `load_progress_state()`)."""

    def progress_state(self) -> dict:
        """Where training stands, whatever the model: step, config, batch order and random state."""
        return {"step": self.step, ckpt.FORMAT_KEY: ckpt.WEIGHTS_FORMAT, "config": self.cfg.model_dump_json(),
                "sampler": self.sampler.state_dict(),
                "rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {})}

    def load_progress_state(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.step = int(state["step"])

    def save_checkpoint(self) -> Path:
        folder = self.workdir / "checkpoints"
        path = ckpt.save_atomic(self.state_dict(), ckpt.step_path(folder, self.step))
        ckpt.prune(folder, KEEP_CHECKPOINTS)
        return path

    @abstractmethod
    def networks(self) -> list[nn.Module]:
        """The trained networks (what data-parallel workers must keep identical)."""

    def save_model(self) -> Path:
        """The trial's model file: what its sampler needs (`Sampler.model_file`)."""
        return ckpt.save_atomic(self.model_sampler.model_file(self.step), self.workdir / MODEL_FILE)

    def train_flops(self) -> float:
        """Cumulative training compute so far, MACs."""
        return float(self.cost.macs_per_sample_iter) * self.cfg.train.batch_size * self.step

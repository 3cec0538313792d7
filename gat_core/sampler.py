"""A trained model as a sampler: labels (and a noise generator) -> samples, decoded images, sampling compute.

`Sampler` is what every user of a trained model goes through: the trainers' evaluations and sample
grids, `gat-study eval` (a model file), `gat-study compare` and the sampling benchmark (random
weights at a config's sizes).  Each family implements it next to its trainer (`GANSampler` in
`gat_core.gan_trainer`, `DiTSampler` in `gat_core.diffusion_trainer`); `gat_core.families` builds
one from a config or a model file.

The sampler owns the model-file format (`final_model.pt`): `model_file()` writes it and
`read_model_file()` reads it back; the trial config (JSON), the class count, the step, the weights
under the family's `WEIGHTS_KEY` and whatever else the family needs to sample (DiT: its diffusion
settings).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from gat_core import checkpoint as ckpt
from gat_core.config import TrialConfig
from gat_core.latents import LatentData, LatentDecoder

Decode = Callable[[torch.Tensor], torch.Tensor]


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def latent_decoder(latent: LatentData, vae: Path | str | None, device: torch.device,
                   out_channels: int) -> LatentDecoder:
    """The VAE decoder of a latent-space trial: `eval.vae`, else the encoder's VAE, at the latents' scaling factor."""
    return LatentDecoder(vae or latent.meta["vae"], latent.scaling_factor, device, out_channels=out_channels)


class Sampler(ABC):
    """A family's sampling of one network (the EMA model of a trial), on `device`.

    `generate` gives samples in the training space (pixels, or latents for a latent-space trial);
    `images` decodes them to pixels in [-1, 1].  `generator` is the noise's torch.Generator (None:
    the global stream); `nfe` the number of network evaluations (DiT; a GAN always takes one).
    """

    family: ClassVar[str]
    WEIGHTS_KEY: ClassVar[str]  # where the network's weights live in checkpoints and model files
    truncates: ClassVar[bool] = False  # whether `eval.truncation` (psi) applies

    def __init__(self, cfg: TrialConfig, net: nn.Module, num_classes: int, device: torch.device,
                 decode: Decode = identity) -> None:
        self.cfg, self.net, self.num_classes, self.device, self.decode = cfg, net, num_classes, device, decode

    @staticmethod
    @abstractmethod
    def build(cfg: TrialConfig, num_classes: int) -> nn.Module:
        """The family's sampling network at the config's sizes, random weights (on the CPU)."""

    @classmethod
    def from_config(cls, cfg: TrialConfig, num_classes: int, device: torch.device, state: dict | None = None,
                    decode: Decode = identity, **options: Any) -> "Sampler":
        """A sampler of a fresh network (random weights), or of the weights in `state` (a model file or a
        checkpoint), in eval mode without gradients."""
        net = cls.build(cfg, num_classes)
        if state is not None:
            net.load_state_dict(state[cls.WEIGHTS_KEY])
        return cls(cfg, net.to(device).eval().requires_grad_(False), num_classes, device, decode,
                   **{**cls.options_of(cfg, state or {}), **options})

    @classmethod
    def options_of(cls, cfg: TrialConfig, state: dict) -> dict[str, Any]:
        """Sampling options a model file carries besides the config (none by default)."""
        return {}

    @abstractmethod
    def generate(self, labels: torch.Tensor, generator: torch.Generator | None = None,
                 nfe: int | None = None) -> torch.Tensor:
        """Samples in the training space, one per label."""

    def images(self, labels: torch.Tensor, generator: torch.Generator | None = None,
               nfe: int | None = None) -> torch.Tensor:
        """Decoded samples, pixels clamped to [-1, 1]."""
        return self.decode(self.generate(labels.to(self.device), generator, nfe).float()).clamp(-1, 1)

    @abstractmethod
    def sample_gflops(self, nfe: int | None = None) -> float:
        """Sampling GMACs per image (network only, no decoding; the DiT convention 1 MAC = 1 FLOP)."""

    def eval_settings(self) -> dict[str, float]:
        """Sampling settings an evaluation reports beside its scores (GAN: `eval_truncation`)."""
        return {}

    def weights(self) -> dict[str, Any]:
        """The network's weights under the family's key (what checkpoints and model files hold)."""
        return {self.WEIGHTS_KEY: self.net.state_dict()}

    def model_extras(self) -> dict[str, Any]:
        """What a model file holds besides the config, class count, step and weights."""
        return {}

    def model_file(self, step: int) -> dict[str, Any]:
        """The content of the trial's model file (stamped with the weights format)."""
        return ckpt.stamp({"step": step, "config": self.cfg.model_dump_json(), "num_classes": self.num_classes,
                           **self.weights(), **self.model_extras()})


def read_model_file(path: Path) -> tuple[dict, TrialConfig]:
    """(state, trial config) of a model file (`final_model.pt`; a training checkpoint is accepted too).

    Raises ValueError naming the file when it is missing, not a gat-study model file, has no config
    inside or was written by a version whose weights mean something else.
    """
    path = Path(path)
    try:
        state = ckpt.read(path, what="model file")
    except ckpt.CheckpointError as exc:  # a plain ValueError: the CLI prints it as `error: ...`
        if not path.is_file():
            raise ValueError(str(exc)) from None
        raise ValueError(f"model file {path}: not a gat-study model file (expected a trial's final_model.pt, "
                         f"written by `gat-study run` under <output_dir>/trials/<trial_id>/; torch could not read "
                         f"it: {type(exc.__cause__).__name__ if exc.__cause__ else 'unreadable'})") from None
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"model file {path}: no trial config inside; expected a trial's final_model.pt")
    try:
        ckpt.check_format(state, path, what="model file")
    except ckpt.CheckpointError as exc:
        raise ValueError(str(exc)) from None
    return state, TrialConfig.model_validate_json(state["config"])

"""The model families, by `model.family`: each one's trainer and sampler (in the style of DiT's model table).

`make_trainer(cfg, ...)` builds the trainer of a trial; `sampler_from_config` and
`load_sampler` build the sampler of a config (random weights) or of a model file.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from gat_core.config import TrialConfig
from gat_core.sampler import Decode, Sampler, identity
from gat_core.trial import TrialBase

# family: (module, trainer class, sampler class).  A family's module is imported when a trial of it is built:
# the DiT family's pulls in diffusers, about 3.5 s of imports that every GAN trial's process would pay.
FAMILIES: dict[str, tuple[str, str, str]] = {
    "gat": ("gat_core.gan_trainer", "GANTrainer", "GANSampler"),
    "dit": ("gat_core.diffusion_trainer", "DiffusionTrainer", "DiTSampler"),
}


def family_classes(family: str) -> tuple[type[TrialBase], type[Sampler]]:
    """The trainer and sampler classes of `family` (a `model.family` value)."""
    module, trainer, sampler = FAMILIES[family]
    loaded = importlib.import_module(module)
    return getattr(loaded, trainer), getattr(loaded, sampler)


def make_trainer(cfg: TrialConfig, workdir: Path, cache_dir: Path | None = None) -> TrialBase:
    """The trainer of the trial's model family."""
    return family_classes(cfg.model.family)[0](cfg, workdir, cache_dir)


def sampler_from_config(cfg: TrialConfig, num_classes: int, device: torch.device, state: dict | None = None,
                        decode: Decode = identity, **options) -> Sampler:
    """The sampler of `cfg`'s family: random weights, or those of `state` (a model file or a checkpoint)."""
    family = family_classes(cfg.model.family)[1]
    if state is not None and family.WEIGHTS_KEY not in state:
        raise ValueError(f"model file: holds no {family.WEIGHTS_KEY} weights, which its config's family "
                         f"({cfg.model.family}) samples from; expected a trial's final_model.pt")
    return family.from_config(cfg, num_classes, device, state, decode, **options)

"""The diffusion-transformer baseline trial (`model.family: dit`): DiT/SiT at a GAT's sizes.

Same data (pixels or latents), metric, sample grids, checkpoints, EMA and compute columns as the
GAN trials (`gat_core.trial.TrialBase`); only the network, the objective and sampling differ.

Optimiser: AdamW without weight decay, lr from `train.lr` with the same `lr_rule` as GAT (the
width rule scales by lr_base_width / model.width), betas from `train.beta1`/`train.beta2`.  The
GAN defaults (beta1 = 0) are not DiT's: DiT and SiT use AdamW(lr 1e-4, betas (0.9, 0.999),
weight decay 0), so a DiT study should set `train.beta1: 0.9` (and `beta2: 0.999`).

Compute: `self.cost` is `gat_core.flops.dit_trial_cost` (forward + backward MACs per sample,
exactly the passes `iteration()` runs); sampling costs NFE x forward per image, x 2 with
classifier-free guidance (`sampling_macs`), reported as `sample_gflops*` by the evaluations.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from gat_core.config import DiffusionConfig, TrialConfig
from gat_core.flops import TrialCost, dit_forward_macs, dit_trial_cost, sampling_macs
from gat_core.models.dit import DiTDenoiser, drop_labels
from gat_core.objectives.diffusion import ddpm_scheduler, diffusion_loss, sample
from gat_core.sampler import Decode, Sampler, identity
from gat_core.trial import TrialBase, ema_update, width_scaled_lr

EVAL_NOISE_SEED = 4321  # every evaluation (and every NFE) starts from the same noise


def build_denoiser(cfg: TrialConfig, num_classes: int) -> DiTDenoiser:
    """The DiT of the trial: the model config's width, depth, heads and patch size, on the trial's data shape."""
    m, d = cfg.model, cfg.dataset
    return DiTDenoiser(channels=d.model_channels, resolution=d.model_resolution, patch_size=m.patch_size,
                       width=m.width, depth=m.depth, heads=m.heads, num_classes=num_classes)


class DiTSampler(Sampler):
    """The EMA denoiser under the configured sampler (`train.diffusion`, or the settings a model file carries):
    `nfe` steps (default `sample_steps`), x 2 network evaluations per step with classifier-free guidance.

    In pixel space (data in [-1, 1]) the ddim/ddpm samplers clip the predicted clean image, as
    ADM does for pixel models; in latent space nothing is clipped (DiT).
    """

    family, WEIGHTS_KEY = "dit", "ema"

    def __init__(self, cfg: TrialConfig, net: DiTDenoiser, num_classes: int, device: torch.device,
                 decode: Decode = identity, diffusion: DiffusionConfig | None = None,
                 truncation: float | None = None) -> None:
        if truncation:
            raise ValueError("truncation: applies to GAN generators; this is a diffusion model")
        super().__init__(cfg, net, num_classes, device, decode)
        self.diff = diffusion or cfg.train.diffusion
        self.clip_sample = cfg.dataset.latents is None
        d, m = cfg.dataset, cfg.model
        self.forward_macs = dit_forward_macs(d.model_channels, d.model_resolution, m.patch_size, m.width, m.depth)

    @staticmethod
    def build(cfg: TrialConfig, num_classes: int) -> DiTDenoiser:
        return build_denoiser(cfg, num_classes)

    @classmethod
    def options_of(cls, cfg: TrialConfig, state: dict) -> dict:
        return {"diffusion": cfg.train.diffusion.model_copy(update=state.get("diffusion", {}))}

    def generate(self, labels: torch.Tensor, generator: torch.Generator | None = None,
                 nfe: int | None = None) -> torch.Tensor:
        d = self.diff
        return sample(self.net, labels, nfe or d.sample_steps, d.objective, d.sampler, d.guidance, generator,
                      d.num_train_timesteps, clip_sample=self.clip_sample)

    def sample_gflops(self, nfe: int | None = None) -> float:
        return sampling_macs(self.forward_macs, nfe or self.diff.sample_steps, self.diff.guidance) / 1e9

    def model_extras(self) -> dict:
        return {"family": "dit", "diffusion": self.diff.model_dump()}


class DiffusionTrainer(TrialBase):
    """The DiT trial: denoiser, its EMA, AdamW; `iteration()` is one diffusion training step."""

    def __init__(self, cfg: TrialConfig, workdir: Path, cache_dir: Path | None = None) -> None:
        super().__init__(cfg, workdir, cache_dir)
        t, self.diff = cfg.train, cfg.train.diffusion
        num_classes = self.dataset.num_classes
        self.cost: TrialCost = dit_trial_cost(cfg, num_classes)
        self.total_steps = self.cost.steps

        self.model = build_denoiser(cfg, num_classes).to(self.device)
        if t.grad_checkpoint:
            self.model.enable_grad_checkpoint()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.model_sampler = DiTSampler(cfg, self.ema, num_classes, self.device, self.decode)
        if t.compile:
            for block in self.model.net.transformer_blocks:
                block.compile()
        self.lr = width_scaled_lr(cfg, cfg.model.width)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, betas=(t.beta1, t.beta2), eps=1e-8,
                                     weight_decay=0.0)
        self.scheduler = ddpm_scheduler(self.diff.num_train_timesteps)
        self.step = 0

    # --- the method -------------------------------------------------------------------------
    def iteration(self) -> dict[str, torch.Tensor]:
        """One forward + backward of the denoiser on a noised batch (labels dropped to null at class_dropout), then EMA."""
        x0, labels = self.sampler.next()
        labels = drop_labels(labels, self.diff.class_dropout, self.model.null_label)
        self.model.train()
        with self.autocast():
            loss = diffusion_loss(self.model, x0, labels, self.diff.objective, self.diff.num_train_timesteps,
                                  self.scheduler)
        self.optimise(self.opt, loss)
        ema_update(self.ema, self.model, self.ema_decay())
        self.step += 1
        return {"loss_diffusion": loss.detach()}

    def learning_rates(self) -> dict[str, float]:
        return {"lr": self.opt.param_groups[0]["lr"]}

    # --- sampling and evaluation ----------------------------------------------------------------
    def sample(self, labels: torch.Tensor, nfe: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """EMA-model samples in the training space after `nfe` steps of the configured sampler."""
        return self.model_sampler.generate(labels, generator, nfe)

    def eval_noise(self) -> torch.Generator:
        return torch.Generator().manual_seed(EVAL_NOISE_SEED)

    def eval_extras(self) -> dict[str, float]:
        """What sampling one image costs at `sample_steps` NFE."""
        nfe = self.diff.sample_steps
        return {"sample_gflops": self.model_sampler.sample_gflops(nfe), "sample_nfe": float(nfe)}

    def quality_at(self, num_samples: int, nfe: int) -> float:
        """The metric at `nfe` sampling steps; the same labels (metric seed) and noise at every NFE."""
        noise = self.eval_noise()
        return self.quality(num_samples, lambda labels: self.sample(labels, nfe, noise))

    @torch.no_grad()
    def final_evaluate(self, num_samples: int) -> dict[str, float]:
        """`evaluate` plus `{metric}_nfe{k}` and `sample_gflops_nfe{k}` for every k in `eval_nfe`."""
        metric, main = self.cfg.eval.metric, self.diff.sample_steps
        out = self.evaluate(num_samples)
        for k in self.diff.eval_nfe:
            out[f"{metric}_nfe{k}"] = out[metric] if k == main else self.quality_at(num_samples, k)
            out[f"sample_gflops_nfe{k}"] = self.model_sampler.sample_gflops(k)
        return out

    # --- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**self.progress_state(), "model": self.model.state_dict(), **self.model_sampler.weights(),
                "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state[DiTSampler.WEIGHTS_KEY])
        self.opt.load_state_dict(state["opt"])
        self.load_progress_state(state)

    def networks(self) -> list[torch.nn.Module]:
        return [self.model, self.ema]

"""Diffusion objectives and samplers of the DiT baseline, through diffusers' schedulers.

Objectives (`train.diffusion.objective`):
- `ddpm` (DiT): epsilon prediction, `DDPMScheduler` with DiT's linear betas 1e-4 .. 0.02 over
  `num_train_timesteps`, x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps, t ~ U{0..T-1},
  loss = ||eps_theta(x_t, t, y) - eps||^2 (no learned variance, no VLB term).
- `flow` (SiT): rectified-flow interpolation x_t = (1 - t) x + t eps with t ~ U(0, 1),
  velocity target eps - x, the network sees t x T.  That is exactly the convention of
  diffusers' `FlowMatchEulerDiscreteScheduler` (sigma = t, timestep = sigma x T,
  x_{next} = x + (sigma_next - sigma) v), which samples it.

Samplers (`sample`): ddpm-trained models with `DDIMScheduler` (eta = 0, deterministic),
`DDPMScheduler` (ancestral) or `EulerDiscreteScheduler` (Euler on the probability-flow ODE in
k-diffusion sigmas); flow-trained models with `FlowMatchEulerDiscreteScheduler` on a uniform
sigma grid 1, 1 - 1/n, ..., 1/n -> 0 (SiT's Euler ODE sampler).  DDPM-family schedules use
"trailing" timestep spacing, so even one step starts at t = T - 1 (pure noise) and ends on
the predicted clean sample.

NFE: `nfe` is the number of sampling steps = network evaluations per image.  With
classifier-free guidance (guidance > 1) every step evaluates the conditional and the
unconditional (null-label) prediction in one doubled batch, so sampling costs
2 x nfe forwards per image (`gat_core.flops.sampling_macs`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from gat_core.models.dit import DiTDenoiser

Objective = Literal["ddpm", "flow"]
Sampler = Literal["ddim", "ddpm", "euler"]
BETAS = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)  # DiT's (ADM's) linear schedule


def ddpm_scheduler(num_train_timesteps: int = 1000, clip_sample: bool = False) -> DDPMScheduler:
    """The forward process of the ddpm objective (and its ancestral sampler)."""
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, **BETAS, clip_sample=clip_sample,
                         prediction_type="epsilon", variance_type="fixed_small", timestep_spacing="trailing")


def diffusion_loss(model: DiTDenoiser, x0: torch.Tensor, labels: torch.Tensor, objective: Objective,
                   num_train_timesteps: int = 1000, scheduler: DDPMScheduler | None = None) -> torch.Tensor:
    """Mean squared error of one noised batch (epsilon for ddpm, velocity for flow); one forward of `model`.

    `labels` already carry the label dropout (null label).  Noise and times come from torch's global RNG.
    """
    noise = torch.randn_like(x0)
    n = x0.shape[0]
    if objective == "ddpm":
        scheduler = scheduler or ddpm_scheduler(num_train_timesteps)
        t = torch.randint(0, num_train_timesteps, (n,), device=x0.device)
        pred = model(scheduler.add_noise(x0, noise, t), t.float(), labels)
        target = noise
    elif objective == "flow":
        t = torch.rand(n, device=x0.device)
        tt = t.view(-1, *([1] * (x0.ndim - 1)))
        pred = model((1 - tt) * x0 + tt * noise, t * num_train_timesteps, labels)
        target = noise - x0
    else:
        raise ValueError(f"train.diffusion.objective: unknown objective {objective!r}")
    return F.mse_loss(pred.float(), target.float())


def make_sampler(objective: Objective, sampler: Sampler, nfe: int, num_train_timesteps: int = 1000,
                 device: torch.device | str | None = None, clip_sample: bool = False):
    """A diffusers scheduler with `nfe` steps set; flow models always get the Euler ODE sampler.

    `clip_sample`: the ddim and ddpm samplers clip their predicted clean sample to [-1, 1] (ADM's
    clip_denoised, right for pixel data in [-1, 1]; not for latents, where DiT does not clip).
    """
    if nfe < 1:
        raise ValueError(f"nfe: need at least one sampling step, got {nfe}")
    if objective == "flow":
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=1.0)
        sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, nfe + 1)[:-1].tolist(), device=device)
        return sched
    if objective != "ddpm":
        raise ValueError(f"train.diffusion.objective: unknown objective {objective!r}")
    if sampler == "ddim":
        sched = DDIMScheduler(num_train_timesteps=num_train_timesteps, **BETAS, clip_sample=clip_sample,
                              set_alpha_to_one=True, prediction_type="epsilon", timestep_spacing="trailing")
    elif sampler == "ddpm":
        sched = ddpm_scheduler(num_train_timesteps, clip_sample)
    elif sampler == "euler":
        sched = EulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, **BETAS, prediction_type="epsilon",
                                       timestep_spacing="trailing")
    else:
        raise ValueError(f"train.diffusion.sampler: unknown sampler {sampler!r}")
    sched.set_timesteps(nfe, device=device)
    return sched


@torch.no_grad()
def sample(model: DiTDenoiser, labels: torch.Tensor, nfe: int, objective: Objective = "ddpm",
           sampler: Sampler = "ddim", guidance: float = 1.0, generator: torch.Generator | None = None,
           num_train_timesteps: int = 1000, clip_sample: bool = False) -> torch.Tensor:
    """Samples (N, C, H, W) for `labels` after `nfe` sampling steps, float32 on the labels' device.

    The initial noise (and the DDPM sampler's step noise) come from `generator` (a CPU generator,
    or None for torch's global RNG).  guidance > 1: classifier-free guidance
    uncond + guidance x (cond - uncond) with the null label, on all channels, 2 forwards per step.
    `clip_sample`: see `make_sampler` (ddim/ddpm samplers only).
    """
    device = labels.device
    sched = make_sampler(objective, sampler, nfe, num_train_timesteps, device=device, clip_sample=clip_sample)
    shape = (labels.shape[0], *model.sample_shape)
    x = torch.randn(shape, generator=generator).to(device) * getattr(sched, "init_noise_sigma", 1.0)
    guided = guidance > 1.0
    if guided:
        both = torch.cat([labels, torch.full_like(labels, model.null_label)])
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        if guided:
            cond, uncond = model(torch.cat([inp, inp]), t, both).float().chunk(2)
            pred = uncond + guidance * (cond - uncond)
        else:
            pred = model(inp, t, labels).float()
        x = sched.step(pred, t, x, generator=generator, return_dict=False)[0]
    return x.float()

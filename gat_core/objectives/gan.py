"""RpGAN with R1/R2 on MNG stacks: the whole adversarial step.

Fakes are generated with the labels of the reals they are paired with; the
relativistic pair loss compares D(real_i) with D(fake_i).  R1 (reals) and R2
(fakes) are approximated by finite differences, ((D(x) - D(x + delta)) / sigma)^2,
with the augmentation and MNG noise of the unperturbed pass re-used, or computed
exactly with autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gat_core.augment import AugmentParams, DiffAugment
from gat_core.objectives.mng import corrupt, nested_noise


@dataclass
class Judge:
    """Turns generator levels into a discriminator logit: augment, MNG-corrupt, stack, score."""

    disc: nn.Module
    ts: list[float]
    augment: DiffAugment

    def draw(self, like: torch.Tensor) -> tuple[AugmentParams, list[torch.Tensor]]:
        """One draw of augmentation parameters and nested noise for a batch like `like`, whose colour
        means the draw keeps (the reals, or G's final level for a fake stack, as the official code)."""
        return self.augment.sample(like), nested_noise(like, self.ts)

    def __call__(self, levels: list[torch.Tensor], labels: torch.Tensor,
                 draw: tuple[AugmentParams, list[torch.Tensor]], return_tokens: bool = False):
        params, noises = draw
        if self.augment:
            levels = [self.augment.apply(x, params) for x in levels]
        return self.disc(corrupt(levels, self.ts, noises), labels, return_tokens=return_tokens)


Align = Callable[[torch.Tensor, AugmentParams], torch.Tensor]
"""VFM alignment loss of D's real-stack tokens, given the augmentation the reals got."""


def _penalty(judge: Judge, levels: list[torch.Tensor], labels: torch.Tensor, logits: torch.Tensor,
             draw: tuple[AugmentParams, list[torch.Tensor]], exact: bool, sigma: float,
             shared_delta: bool) -> torch.Tensor:
    """Per-sample squared input gradient of D, exact or by finite differences."""
    if exact:  # gradient w.r.t. each distinct input: the real copies are one tensor, the fake levels K tensors
        inputs = list({id(x): x for x in levels}.values())
        grads = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
        return sum(g.square().flatten(1).sum(1) for g in grads)
    if shared_delta:  # reals: one image copied K times gets one perturbation
        delta = torch.randn_like(levels[0]) * sigma
        perturbed = [x + delta for x in levels]
    else:  # fakes: every level gets its own perturbation
        perturbed = [x + torch.randn_like(x) * sigma for x in levels]
    return ((logits - judge(perturbed, labels, draw)) / sigma).square()


def discriminator_loss(judge: Judge, real: torch.Tensor, fake_levels: list[torch.Tensor], labels: torch.Tensor,
                       r1_gamma: float, r2_gamma: float, exact: bool = False, sigma: float = 0.01,
                       align: Align | None = None, align_weight: float = 1.0
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """D step: relativistic pair loss on (real_i, fake_i) plus gamma/2 * (R1 + R2) (+ VFM alignment on reals)."""
    if exact:  # the K real copies are one input: R1 is the gradient w.r.t. the real image itself
        real = real.detach().requires_grad_(True)
        fake_levels = [x.detach().requires_grad_(True) for x in fake_levels]
    real_levels = [real] * len(judge.ts)
    real_draw, fake_draw = judge.draw(real), judge.draw(fake_levels[-1])
    if align is not None:
        d_real, tokens = judge(real_levels, labels, real_draw, return_tokens=True)
    else:
        d_real = judge(real_levels, labels, real_draw)
    d_fake = judge(fake_levels, labels, fake_draw)
    adversarial = F.softplus(-(d_real - d_fake))
    r1 = _penalty(judge, real_levels, labels, d_real, real_draw, exact, sigma, shared_delta=True) if r1_gamma else torch.zeros_like(d_real)
    r2 = _penalty(judge, fake_levels, labels, d_fake, fake_draw, exact, sigma, shared_delta=False) if r2_gamma else torch.zeros_like(d_fake)
    loss = (adversarial + r1_gamma / 2 * r1 + r2_gamma / 2 * r2).mean()
    logs = {"loss_d": adversarial.mean(), "r1": r1.mean(), "r2": r2.mean(),
            "logit_real": d_real.mean(), "logit_fake": d_fake.mean()}
    if align is not None:
        alignment = align(tokens, real_draw[0])
        loss = loss + align_weight * alignment
        logs["vfm_align"] = alignment.detach()
    return loss, logs


def generator_loss(judge: Judge, real: torch.Tensor, fake_levels: list[torch.Tensor], labels: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """G step: the reversed pair loss; real logits without gradient, fresh augmentation and noise."""
    with torch.no_grad():
        d_real = judge([real] * len(judge.ts), labels, judge.draw(real))
    d_fake = judge(fake_levels, labels, judge.draw(fake_levels[-1]))
    loss = F.softplus(-(d_fake - d_real)).mean()
    return loss, {"loss_g": loss.detach()}

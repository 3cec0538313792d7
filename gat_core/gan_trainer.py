"""The GAN family (`model.family: gat`): G and D, the GAT training iteration and its two losses, EMA sampling.

`GANTrainer.iteration()` is one GAT training iteration: a D step (logistic loss over the MNG noise
levels, R1/R2 penalties, optional REPA alignment) then a G step on the same (z, labels), then the
EMA update of G (`gat_core.objectives.gan` holds the two losses).  `GANSampler` samples the EMA
generator in one forward pass (1 NFE), truncated by psi (`eval.truncation`).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from gat_core.augment import AugmentParams, DiffAugment
from gat_core.config import ModelConfig, TrialConfig
from gat_core.diagnostics import OutputProbe, block_utilisation
from gat_core.flops import TrialCost, generator_cost, trial_cost
from gat_core.models.discriminator import GATDiscriminator
from gat_core.models.generator import GATGenerator
from gat_core.objectives.gan import Align, Judge, discriminator_loss, generator_loss
from gat_core.objectives.mng import noise_levels
from gat_core.sampler import Decode, Sampler, identity
from gat_core.trial import TrialBase, ema_update, width_scaled_lr
from gat_core.vfm import REPAHead, VFMTeacher, alignment_loss


def learning_rates(cfg: TrialConfig) -> tuple[float, float]:
    """(lr_G, lr_D): the width-aware rule scales each network's lr by base_width / its own width."""
    return width_scaled_lr(cfg, cfg.model.width), width_scaled_lr(cfg, cfg.model.disc_width)


def build_networks(cfg: TrialConfig, num_classes: int) -> tuple[GATGenerator, GATDiscriminator]:
    d = cfg.dataset
    return build_gan(cfg.model, channels=d.model_channels, resolution=d.model_resolution, num_classes=num_classes,
                     levels=cfg.train.levels, grad_checkpoint=cfg.train.grad_checkpoint)


def build_gan(m: ModelConfig, channels: int, resolution: int, num_classes: int, levels: int,
              grad_checkpoint: bool = False) -> tuple[GATGenerator, GATDiscriminator]:
    """G and D of one model config on data of the given shape (no data set needed: FLOP tests build on meta)."""
    gen = GATGenerator(channels=channels, resolution=resolution, patch_size=m.patch_size, width=m.width,
                       depth=m.depth, heads=m.heads, num_classes=num_classes, levels=levels,
                       z_dim=m.z_dim, class_dim=m.class_dim, grad_checkpoint=grad_checkpoint)
    disc = GATDiscriminator(channels=channels, levels=levels, resolution=resolution, patch_size=m.patch_size,
                            width=m.disc_width, depth=m.disc_depth, heads=m.disc_heads, num_classes=num_classes,
                            cond_dim=m.disc_cond_dim, grad_checkpoint=grad_checkpoint)
    return gen, disc


class GANSampler(Sampler):
    """The EMA generator: one forward pass per image (1 NFE), z from `generator`, truncated by psi."""

    family, WEIGHTS_KEY, truncates = "gat", "G_ema", True

    def __init__(self, cfg: TrialConfig, net: GATGenerator, num_classes: int, device: torch.device,
                 decode: Decode = identity, truncation: float | None = None) -> None:
        super().__init__(cfg, net, num_classes, device, decode)
        self.truncation = cfg.eval.truncation if truncation is None else truncation

    @staticmethod
    def build(cfg: TrialConfig, num_classes: int) -> GATGenerator:
        gen, disc = build_networks(cfg, num_classes)  # D too: building it draws the same weights as a trial does
        del disc
        return gen

    def generate(self, labels: torch.Tensor, generator: torch.Generator | None = None,
                 nfe: int | None = None) -> torch.Tensor:
        z = torch.randn(labels.shape[0], self.net.z_dim, generator=generator).to(self.device)
        return self.net(z, labels, self.truncation)

    def sample_gflops(self, nfe: int | None = None) -> float:
        d = self.cfg.dataset
        return generator_cost(self.cfg.model, d.model_resolution, d.model_channels, self.cfg.train.levels).total / 1e9

    def eval_settings(self) -> dict[str, float]:
        return {"eval_truncation": float(self.truncation)}


class GANTrainer(TrialBase):
    """The GAN trial: G, D, EMA of G, optimisers; `iteration()` is one GAT training iteration."""

    def __init__(self, cfg: TrialConfig, workdir: Path, cache_dir: Path | None = None) -> None:
        super().__init__(cfg, workdir, cache_dir)
        t = cfg.train
        self.cost: TrialCost = trial_cost(cfg, self.dataset.num_classes)
        self.total_steps = self.cost.steps

        self.G, self.D = (net.to(self.device) for net in build_networks(cfg, self.dataset.num_classes))
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.model_sampler = GANSampler(cfg, self.G_ema, self.dataset.num_classes, self.device, self.decode)
        if t.compile:
            for block in [*self.G.blocks, *self.D.blocks]:
                block.compile()
        self.teacher, self.repa_head = self._build_vfm()
        self.lr_g, self.lr_d = learning_rates(cfg)
        adam = dict(betas=(t.beta1, t.beta2), eps=1e-8, weight_decay=0.0)
        d_params = [*self.D.parameters(), *(self.repa_head.parameters() if self.repa_head else [])]
        self.opt_g = torch.optim.AdamW(self.G.parameters(), lr=self.lr_g, **adam)
        self.opt_d = torch.optim.AdamW(d_params, lr=self.lr_d, **adam)
        self.judge = Judge(self.D, noise_levels(t.mng, t.mng_levels, t.mng_min_info), DiffAugment(t.augment))
        self.step = 0
        probe_gen = torch.Generator().manual_seed(7)
        n = min(8, len(self.dataset.labels))
        real, labels = self.probe_reals(n), self.dataset.labels[:n].to(self.device)
        self.probe = OutputProbe(z=torch.randn(n, self.G.z_dim, generator=probe_gen).to(self.device), labels=labels,
                                 real_stack=real.repeat(1, t.levels, 1, 1))

    def _build_vfm(self) -> tuple[VFMTeacher | None, REPAHead | None]:
        vfm = self.cfg.train.vfm
        if vfm is None:
            return None, None
        teacher = VFMTeacher(vfm.model, vfm.weights, vfm.image_size).to(self.device)
        head = REPAHead(self.cfg.model.disc_width, teacher.dim, vfm.hidden_dim).to(self.device)
        return teacher, head

    def _align(self, real: torch.Tensor) -> Align | None:
        """Alignment loss closure for this batch: the teacher sees the reals' flip and translation."""
        if self.teacher is None:
            return None
        grid = self.cfg.dataset.model_resolution // self.cfg.model.patch_size
        geometric = DiffAugment(["translation", "flip"])
        pixels = self.real_pixels(real)
        ratio = pixels.shape[-1] // real.shape[-1]

        def align(tokens: torch.Tensor, params: AugmentParams) -> torch.Tensor:
            shift = params.shift * ratio if params.shift is not None else None
            shown = geometric.apply(pixels, AugmentParams(shift=shift, flip=params.flip))
            teacher_cls, teacher_patches = self.teacher(shown, grid)
            return alignment_loss(self.repa_head(tokens), teacher_cls, teacher_patches)

        return align

    # --- the method -------------------------------------------------------------------------
    def iteration(self) -> dict[str, torch.Tensor]:
        """One D step then one G step on the same (z, labels), then the EMA update."""
        t = self.cfg.train
        real, labels = self.sampler.next()
        z = torch.randn(real.shape[0], self.G.z_dim, device=self.device)

        with torch.no_grad(), self.autocast():
            fake_levels = self.G.forward_levels(self.G.style(z, labels))
        self.D.requires_grad_(True)
        exact = t.penalty == "exact"
        # fused attention kernels have no double backward: exact penalties run the whole D step on the math backend
        with sdpa_kernel(SDPBackend.MATH) if exact else nullcontext():
            with self.autocast():
                loss_d, logs = discriminator_loss(self.judge, real, fake_levels, labels, t.r1_gamma, t.r2_gamma,
                                                  exact=exact, sigma=t.penalty_sigma, align=self._align(real),
                                                  align_weight=t.vfm.weight if t.vfm else 0.0)
            self.optimise(self.opt_d, loss_d)

        self.D.requires_grad_(False)
        with self.autocast():
            w = self.G.style(z, labels)
            loss_g, g_logs = generator_loss(self.judge, real, self.G.forward_levels(w), labels)
        self.optimise(self.opt_g, loss_g)
        self.G.update_w_avg(w, labels, t.w_avg_beta)
        ema_update(self.G_ema, self.G, self.ema_decay())
        self.step += 1
        return {**logs, **g_logs}

    def probe_before(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.probe.outputs(self.G, self.D)

    def probe_after(self, before: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        return self.probe.change(before, self.G, self.D)

    def learning_rates(self) -> dict[str, float]:
        return {"lr_g": self.opt_g.param_groups[0]["lr"], "lr_d": self.opt_d.param_groups[0]["lr"]}

    # --- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, num_samples: int) -> dict[str, float]:
        """Quality of EMA samples plus the per-block utilisation of the EMA generator."""
        with self.autocast():
            utilisation = block_utilisation(self.G_ema, self.probe.z, self.probe.labels)
        return {**super().evaluate(num_samples), **{f"block_util_{i}": u for i, u in enumerate(utilisation)}}

    # --- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            **self.progress_state(),
            "G": self.G.state_dict(), "D": self.D.state_dict(), **self.model_sampler.weights(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            **({"repa_head": self.repa_head.state_dict()} if self.repa_head else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state[GANSampler.WEIGHTS_KEY])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.repa_head is not None:
            self.repa_head.load_state_dict(state["repa_head"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.load_progress_state(state)

    def networks(self) -> list[torch.nn.Module]:
        return [self.G, self.D, self.G_ema, *([self.repa_head] if self.repa_head else [])]



"""One trial: data -> G/D -> D step + G step per iteration -> EMA -> evaluation -> checkpoints.

`train(config, workdir, report)` is all a caller needs.  It resumes from the
newest checkpoint in `workdir` (run it again after a crash and it continues),
reports progress through the `report` callback and never imports Ray or MLflow.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from gat_core import checkpoint as ckpt
from gat_core.augment import AugmentParams, DiffAugment
from gat_core.config import TrialConfig
from gat_core.data import BatchSampler, load_dataset
from gat_core.diagnostics import OutputProbe, block_utilisation
from gat_core.flops import TrialCost, trial_cost
from gat_core.latents import LatentData, LatentDecoder, LatentSampler, load_latents
from gat_core.metrics import fd_of_generator, load_or_train_classifier, reference_stats
from gat_core.models.discriminator import GATDiscriminator
from gat_core.models.generator import GATGenerator
from gat_core.objectives.gan import Align, Judge, discriminator_loss, generator_loss
from gat_core.objectives.mng import noise_levels
from gat_core.samples import save_sample_grid
from gat_core.vfm import REPAHead, VFMTeacher, alignment_loss

KEEP_CHECKPOINTS = 2
RESULT_FILE = "result.json"
MODEL_FILE = "final_model.pt"


@dataclass
class TrainEvent:
    """What the trainer tells its caller; `kind` says why it speaks now."""

    kind: Literal["start", "progress", "eval", "checkpoint", "final"]
    step: int
    total_steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint_dir: Path | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)


@dataclass
class TrainResult:
    status: Literal["completed", "diverged"]
    step: int
    metrics: dict[str, float]
    reason: str = ""
    model_path: Path | None = None


Report = Callable[[TrainEvent], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def learning_rates(cfg: TrialConfig) -> tuple[float, float]:
    """(lr_G, lr_D): the width-aware rule scales each network's lr by base_width / its own width."""
    t = cfg.train
    if t.lr_rule == "constant":
        return t.lr, t.lr
    return t.lr * t.lr_base_width / cfg.model.width, t.lr * t.lr_base_width / cfg.model.disc_width


def build_networks(cfg: TrialConfig, num_classes: int) -> tuple[GATGenerator, GATDiscriminator]:
    m, d, levels = cfg.model, cfg.dataset, cfg.train.levels
    ckpt_blocks = cfg.train.grad_checkpoint
    gen = GATGenerator(channels=d.model_channels, resolution=d.model_resolution, patch_size=m.patch_size, width=m.width,
                       depth=m.depth, heads=m.heads, num_classes=num_classes, levels=levels,
                       z_dim=m.z_dim, class_dim=m.class_dim, grad_checkpoint=ckpt_blocks)
    disc = GATDiscriminator(channels=d.model_channels, levels=levels, resolution=d.model_resolution, patch_size=m.patch_size,
                            width=m.disc_width, depth=m.disc_depth, heads=m.disc_heads, num_classes=num_classes,
                            cond_dim=m.disc_cond_dim, grad_checkpoint=ckpt_blocks)
    return gen, disc


class Trainer:
    """Holds the state of one trial; `iteration()` is one GAT training iteration."""

    def __init__(self, cfg: TrialConfig, workdir: Path, cache_dir: Path | None = None) -> None:
        self.cfg, self.workdir = cfg, Path(workdir)
        self.cache_dir = Path(cache_dir) if cache_dir else self.workdir / "cache"
        t = cfg.train
        self.device = resolve_device(t.device)
        bf16 = t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda")
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
        torch.manual_seed(t.seed)

        self._setup_data()
        self.cost: TrialCost = trial_cost(cfg, self.dataset.num_classes)
        self.total_steps = self.cost.steps

        self.G, self.D = (net.to(self.device) for net in build_networks(cfg, self.dataset.num_classes))
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
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

    def _setup_data(self) -> None:
        """Pixel space: images are what G makes.  Latent space: G makes latents, the VAE decodes them."""
        t, data_cfg = self.cfg.train, self.cfg.dataset
        self.latent: LatentData | None = None
        self.decode: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
        if data_cfg.latents is None:
            self.dataset = load_dataset(data_cfg)
            self.sampler = BatchSampler(self.dataset, t.batch_size, seed=t.seed, device=self.device)
            return
        self.latent = load_latents(data_cfg.latents)
        if self.latent.pixels is None:
            raise ValueError(f"dataset.latents: {data_cfg.latents} was encoded without its images, which the "
                             "metrics need; encode it again with --keep-images")
        self.dataset = self.latent.pixels
        self.sampler = LatentSampler(self.latent, t.batch_size, seed=t.seed, device=self.device)
        self.decode = LatentDecoder(self.cfg.eval.vae or self.latent.meta["vae"], self.latent.scaling_factor,
                                    self.device, out_channels=self.dataset.channels)

    def probe_reals(self, n: int) -> torch.Tensor:
        """The first n training inputs (posterior means in latent space), for diagnostics."""
        if self.latent is None:
            return self.dataset.images[:n].to(self.device)
        mean = self.latent.moments.images[:n].chunk(2, dim=1)[0]
        return (mean * self.latent.scaling_factor).to(self.device)

    def real_pixels(self, real: torch.Tensor) -> torch.Tensor:
        """The source images of the current batch (what a pixel-space teacher sees)."""
        return real if self.latent is None else self.sampler.last_pixels

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
            self._optimise(self.opt_d, self.D, loss_d)

        self.D.requires_grad_(False)
        with self.autocast():
            w = self.G.style(z, labels)
            loss_g, g_logs = generator_loss(self.judge, real, self.G.forward_levels(w), labels)
        self._optimise(self.opt_g, self.G, loss_g)
        self.G.update_w_avg(w, labels, t.w_avg_beta)
        self._update_ema()
        self.step += 1
        return {**logs, **g_logs}

    def _optimise(self, opt: torch.optim.Optimizer, net: nn.Module, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip:
            nn.utils.clip_grad_norm_(net.parameters(), self.cfg.train.grad_clip)
        opt.step()

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.cfg.train.ema
        if self.cfg.train.ema_warmup:
            decay = min(decay, (1 + self.step) / (10 + self.step))
        ema_params, params = list(self.G_ema.parameters()), list(self.G.parameters())
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buf, buf in zip(self.G_ema.buffers(), self.G.buffers()):
            ema_buf.copy_(buf)

    # --- evaluation ---------------------------------------------------------------------------
    def prepare_eval(self) -> float:
        """Train (or load) the feature classifier and the reference statistics; returns its accuracy."""
        e = self.cfg.eval
        self.extractor, accuracy = load_or_train_classifier(self.dataset, self.cache_dir, e.classifier_epochs, seed=0)
        self.ref_stats = reference_stats(self.extractor, self.dataset, self.cache_dir)
        return accuracy

    @torch.no_grad()
    def evaluate(self, num_samples: int) -> dict[str, float]:
        """FD in the classifier's features of EMA-generator samples (fixed seed, so steps are comparable)."""
        def generate(labels: torch.Tensor) -> torch.Tensor:
            labels = labels.to(self.device)
            z = torch.randn(labels.shape[0], self.G_ema.z_dim, device=self.device)
            with self.autocast():
                return self.decode(self.G_ema(z, labels).float()).clamp(-1, 1)

        fd = fd_of_generator(generate, num_samples, self.cfg.eval.batch_size, self.dataset.num_classes,
                             self.extractor, self.ref_stats, seed=1234)
        probe = self.probe
        with self.autocast():
            utilisation = block_utilisation(self.G_ema, probe.z, probe.labels)
        return {self.cfg.eval.metric: fd, "eval_samples": float(num_samples),
                **{f"block_util_{i}": u for i, u in enumerate(utilisation)}}

    @torch.no_grad()
    def sample_grid(self, path: Path) -> Path:
        """A grid of EMA samples, one class per row, same noise every time."""
        n = self.cfg.eval.grid_size
        gen = torch.Generator().manual_seed(99)
        labels = (torch.arange(n * n) // n) % self.dataset.num_classes
        z = torch.randn(n * n, self.G_ema.z_dim, generator=gen)
        with self.autocast():
            images = self.decode(self.G_ema(z.to(self.device), labels.to(self.device)).float()).cpu()
        return save_sample_grid(images, path, nrow=n)

    # --- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step, "config": self.cfg.model_dump_json(),
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "sampler": self.sampler.state_dict(), "rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
            **({"repa_head": self.repa_head.state_dict()} if self.repa_head else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.repa_head is not None:
            self.repa_head.load_state_dict(state["repa_head"])
        self.opt_d.load_state_dict(state["opt_d"])
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

    def save_model(self) -> Path:
        """The EMA generator alone with its config: what sampling and evaluation need."""
        state = {"step": self.step, "config": self.cfg.model_dump_json(), "G_ema": self.G_ema.state_dict(),
                 "num_classes": self.dataset.num_classes}
        return ckpt.save_atomic(state, self.workdir / MODEL_FILE)

    def train_flops(self) -> float:
        return float(self.cost.macs_per_sample_iter) * self.cfg.train.batch_size * self.step


def _mean_logs(sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
    return {k: float(v) / count for k, v in sums.items()}


def train(cfg: TrialConfig, workdir: Path, report: Report | None = None, cache_dir: Path | None = None,
          resume_from: Path | None = None) -> TrainResult:
    """Run (or continue) one trial in `workdir`; returns how it ended.

    A finished trial (its result file exists) returns at once; otherwise training continues from
    `resume_from` or the newest readable checkpoint in `workdir/checkpoints`.
    """
    workdir = Path(workdir)
    report = report or (lambda event: None)
    result_file = workdir / RESULT_FILE
    if result_file.exists():
        saved = json.loads(result_file.read_text())
        return TrainResult(status=saved["status"], step=saved["step"], metrics=saved["metrics"],
                           reason=saved.get("reason", ""), model_path=workdir / MODEL_FILE)

    began = time.perf_counter()
    trainer = Trainer(cfg, workdir, cache_dir)
    state = ckpt.load(resume_from) if resume_from else ckpt.load_latest(workdir / "checkpoints")
    if state is not None:
        trainer.load_state_dict(state)
    accuracy = trainer.prepare_eval()
    total, t, e = trainer.total_steps, cfg.train, cfg.eval
    start = {"classifier_accuracy": accuracy, **({"resumed_from_step": float(trainer.step)} if trainer.step else {})}
    report(TrainEvent("start", trainer.step, total, start))
    if trainer.step == 0:
        report(TrainEvent("eval", 0, total, {**trainer.evaluate(e.num_samples), "train_flops": 0.0}))

    sums: dict[str, torch.Tensor] = {}
    count, tic = 0, time.perf_counter()
    while trainer.step < total:
        logs_now = (trainer.step + 1) % t.log_every == 0 or trainer.step + 1 == total
        before = trainer.probe.outputs(trainer.G, trainer.D) if logs_now else None
        logs = trainer.iteration()
        for k, v in logs.items():
            sums[k] = sums.get(k, 0) + v.detach().float()
        count += 1
        step = trainer.step
        if logs_now:
            metrics = {**_mean_logs(sums, count), **trainer.probe.change(before, trainer.G, trainer.D)}
            elapsed = time.perf_counter() - tic
            metrics.update(train_flops=trainer.train_flops(), sec_per_step=elapsed / count,
                           lr_g=trainer.opt_g.param_groups[0]["lr"], lr_d=trainer.opt_d.param_groups[0]["lr"],
                           macs_per_sec=trainer.cost.macs_per_sample_iter * t.batch_size * count / elapsed)
            bad = [k for k, v in metrics.items() if not math.isfinite(v)]
            if bad:
                reason = f"non-finite {', '.join(bad)} at step {step}"
                return _finish(trainer, report, "diverged", metrics, reason)
            report(TrainEvent("progress", step, total, metrics))
            sums, count, tic = {}, 0, time.perf_counter()
        if step % e.interval == 0 and step < total:
            grid = trainer.sample_grid(workdir / "samples" / f"step-{step:09d}.png")
            report(TrainEvent("eval", step, total, {**trainer.evaluate(e.num_samples), "train_flops": trainer.train_flops()},
                              artifacts={"samples": grid}))
        if step % t.checkpoint_every == 0 and step < total:
            trainer.save_checkpoint()
            report(TrainEvent("checkpoint", step, total, checkpoint_dir=workdir / "checkpoints"))

    metrics = {**trainer.evaluate(e.final_samples), "train_flops": trainer.train_flops(),
               "trial_seconds": time.perf_counter() - began}  # this attempt, setup and evaluations included
    return _finish(trainer, report, "completed", metrics)


def _finish(trainer: Trainer, report: Report, status: Literal["completed", "diverged"],
            metrics: dict[str, float], reason: str = "") -> TrainResult:
    """Final checkpoint, model file, sample grid and result marker; then the final event."""
    workdir = trainer.workdir
    trainer.save_checkpoint()
    model_path = trainer.save_model()
    grid = trainer.sample_grid(workdir / "samples" / "final.png")
    report(TrainEvent("final", trainer.step, trainer.total_steps, metrics, checkpoint_dir=workdir / "checkpoints",
                      artifacts={"samples": grid, "model": model_path}))
    # written last: a crash before this point re-runs only the final evaluation and report
    (workdir / RESULT_FILE).write_text(json.dumps({"status": status, "step": trainer.step, "metrics": metrics,
                                                   "reason": reason}, indent=2))
    return TrainResult(status=status, step=trainer.step, metrics=metrics, reason=reason, model_path=model_path)

"""The DiT/SiT baseline (`model.family: dit`): model, objectives, samplers, FLOP accounting, trainer, train().

Forward MACs of registry sizes are measured on the meta device; whole training iterations of a
tiny model on CPU, where SDPA runs the CPU flash kernel `gat_core.flop_counter` counts.
Everything tiny runs on one thread (faster than two on a shared 2-core machine, and deterministic).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gat_core import checkpoint as ckpt
from gat_core.config import DataConfig, DiffusionConfig, ModelConfig, TrainConfig, TrialConfig
from gat_core.diffusion_trainer import DiffusionTrainer
from gat_core.flop_counter import count_macs
from gat_core.flops import (
    dit_cost,
    dit_forward_macs,
    dit_iteration_macs,
    dit_parameter_count,
    dit_trial_cost,
    family_trial_cost,
    sampling_macs,
    trial_cost,
)
from gat_core.models.dit import DiTDenoiser, drop_labels
from gat_core.objectives.diffusion import diffusion_loss, make_sampler, sample
from gat_core.loop import TrainEvent, train

TOLERANCE = 0.02  # required agreement with FlopCounterMode / 2; the counts currently agree exactly
NUM_CLASSES = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(measured: float, analytic: float) -> float:
    return abs(measured - analytic) / analytic


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_denoiser(seed: int = 0) -> DiTDenoiser:
    torch.manual_seed(seed)
    return DiTDenoiser(channels=3, resolution=8, patch_size=2, width=32, depth=2, heads=2, num_classes=NUM_CLASSES)


def tiny_config(steps: int = 100, batch_size: int = 16, **diffusion) -> TrialConfig:
    """8x8 shapes, width 32, depth 2; DiT's AdamW betas; a short EMA so that a few steps matter."""
    return TrialConfig(
        dataset=DataConfig(name="shapes", resolution=8, size=256, num_classes=NUM_CLASSES),
        model=ModelConfig(family="dit", width=32, depth=2, heads=2, patch_size=2),
        train=TrainConfig(steps=steps, batch_size=batch_size, lr=1e-3, lr_rule="constant", beta1=0.9, beta2=0.999,
                          ema=0.9, mng="off", device="cpu", precision="fp32", log_every=5,
                          diffusion=DiffusionConfig(**diffusion)),
    )


# --- the model -----------------------------------------------------------------------------------------------


def test_denoiser_shapes_null_label_and_params():
    model = tiny_denoiser()
    x, t, labels = torch.randn(5, 3, 8, 8), torch.tensor([0.0, 1.5, 10.0, 500.0, 999.0]), torch.arange(5) % 4
    assert model(x, t, labels).shape == x.shape
    assert model(x, 250.0, labels).shape == x.shape  # scalar timestep broadcasts
    null = torch.full_like(labels, model.null_label)
    assert torch.isfinite(model(x, t, null)).all()  # the null row exists in every label table
    for block in model.net.transformer_blocks:
        table = block.norm1.emb.class_embedder
        assert table.embedding_table.num_embeddings == NUM_CLASSES + 1 and table.dropout_prob == 0.0
    model.train()  # no hidden per-block label dropout in training mode: two calls agree
    assert torch.equal(model(x, t, labels), model(x, t, labels))
    assert n_params(model) == dit_parameter_count(3, 2, 32, 2, NUM_CLASSES)
    dropped = drop_labels(torch.zeros(10_000, dtype=torch.long), 0.1, 4, torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 4} and abs((dropped == 4).float().mean().item() - 0.1) < 0.02


@pytest.mark.parametrize("preset,resolution,channels,classes", [
    ("DiT-S/2", 32, 4, 1000), ("DiT-B/4", 32, 4, 1000), ("DiT-XL/2", 32, 4, 1000), ("DiT-S/8", 64, 3, 10)])
def test_forward_macs_and_params_of_registry_sizes_on_meta(preset, resolution, channels, classes):
    m = ModelConfig(preset=preset)
    assert m.family == "dit"
    with torch.device("meta"):
        model = DiTDenoiser(channels, resolution, m.patch_size, m.width, m.depth, m.heads, classes)
        x, t, y = torch.randn(1, channels, resolution, resolution), torch.full((1,), 500.0), torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        measured = count_macs(model, x, t, y)
    analytic = dit_forward_macs(channels, resolution, m.patch_size, m.width, m.depth)
    assert rel_err(measured, analytic) < TOLERANCE, (preset, measured, analytic)
    assert n_params(model) == dit_parameter_count(channels, m.patch_size, m.width, m.depth, classes)
    if preset == "DiT-S/2":  # backward too (math attention on meta): forward + backward of one loss
        measured = count_macs(lambda: model(x, t, y).square().mean().backward())
        analytic = dit_iteration_macs(dit_cost(channels, resolution, 2, m.width, m.depth), fused_attention=False)
        assert rel_err(measured, analytic) < TOLERANCE, (measured, analytic)


def test_forward_macs_on_cpu_tiny():
    model = tiny_denoiser()
    with torch.no_grad():
        measured = count_macs(model, torch.randn(3, 3, 8, 8), torch.full((3,), 7.0), torch.arange(3))
    assert rel_err(measured, 3 * dit_forward_macs(3, 8, 2, 32, 2)) < TOLERANCE


@pytest.mark.parametrize("objective,grad_checkpoint", [("ddpm", False), ("flow", True)])
def test_iteration_macs_match_flop_counter(tmp_path, objective, grad_checkpoint):
    cfg = tiny_config(steps=3, objective=objective)
    cfg.train.grad_checkpoint = grad_checkpoint
    trainer = DiffusionTrainer(cfg, tmp_path)
    measured = count_macs(trainer.iteration)
    analytic = trainer.cost.macs_per_sample_iter * cfg.train.batch_size
    assert rel_err(measured, analytic) < TOLERANCE, (measured, analytic)
    assert trainer.train_flops() == analytic


def test_trial_cost_of_dit_trials():
    cfg = tiny_config(steps=10)
    cost = dit_trial_cost(cfg, NUM_CLASSES)
    forward = dit_forward_macs(3, 8, 2, 32, 2)
    assert cost.gflops_g == forward / 1e9 and cost.params_d == 0 and cost.gflops_d == 0
    assert 2.5 * forward < cost.macs_per_sample_iter < 3.5 * forward  # about DiT's "x 3"
    assert family_trial_cost(cfg, NUM_CLASSES) == cost
    gat = cfg.model_copy(update={"model": ModelConfig(width=32, depth=4, heads=2)})
    assert family_trial_cost(gat, NUM_CLASSES) == trial_cost(gat, NUM_CLASSES)
    budget = cfg.model_copy(deep=True)
    budget.train = TrainConfig(flops_budget=cost.macs_per_sample_iter * 16 * 40, batch_size=16, mng="off")
    assert dit_trial_cost(budget, NUM_CLASSES).steps == 40
    assert sampling_macs(forward, 8) == 8 * forward and sampling_macs(forward, 8, guidance=1.5) == 16 * forward


# --- objectives and samplers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_losses_decrease(tmp_path, objective):
    trainer = DiffusionTrainer(tiny_config(steps=100, objective=objective), tmp_path)
    losses = [float(trainer.iteration()["loss_diffusion"]) for _ in range(100)]
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert last < 0.5 * first, (objective, first, last)


class PointOracle(nn.Module):
    """The exact denoiser of a one-point data set x0 = c, in DiTDenoiser's interface."""

    def __init__(self, objective: str, c: torch.Tensor) -> None:
        super().__init__()
        self.objective, self.c, self.null_label, self.sample_shape = objective, c, NUM_CLASSES, tuple(c.shape)
        self.alphas_cumprod = make_sampler("ddpm", "ddpm", 1).alphas_cumprod

    def forward(self, x, t, labels):
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1)  # one time per sample, or one for all
        if self.objective == "flow":  # v = eps - x0 = (x_t - x0) / sigma
            return (x - self.c) / (t / 1000).clamp_min(1e-6)
        abar = self.alphas_cumprod[t.round().long()]
        return (x - abar.sqrt() * self.c) / (1 - abar).sqrt()  # eps


@pytest.mark.parametrize("objective,sampler", [("ddpm", "ddim"), ("ddpm", "ddpm"), ("ddpm", "euler"), ("flow", "euler")])
def test_samplers_follow_the_training_conventions(objective, sampler):
    """With the exact denoiser of a one-point data set every sampler lands on that point, at any NFE."""
    c = torch.rand(3, 8, 8) * 2 - 1
    oracle = PointOracle(objective, c)
    for nfe in (1, 2, 4, 8, 16, 32):  # up to the NFE the shipped studies evaluate at
        x = sample(oracle, torch.arange(4) % 4, nfe, objective, sampler, generator=torch.Generator().manual_seed(nfe))
        assert torch.allclose(x, c.expand_as(x), atol=1e-3), (objective, sampler, nfe, (x - c).abs().max())
        if objective == "ddpm":  # as pixel-space trials sample: the predicted clean image clipped to [-1, 1]
            x = sample(oracle, torch.arange(4) % 4, nfe, objective, sampler, generator=torch.Generator().manual_seed(nfe),
                       clip_sample=True)
            assert torch.allclose(x, c.expand_as(x), atol=1e-3), (objective, sampler, nfe, "clipped")


@pytest.mark.parametrize("objective,sampler", [("ddpm", "ddim"), ("ddpm", "ddpm"), ("ddpm", "euler"), ("flow", "euler")])
def test_sampling_nfe_and_guidance_cost(objective, sampler):
    model = tiny_denoiser().eval()
    rows = []
    hook = model.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    labels, forward = torch.arange(4) % 4, dit_forward_macs(3, 8, 2, 32, 2)
    for nfe in (1, 2, 4):
        for guidance in (1.0, 3.0):
            rows.clear()
            run = lambda: sample(model, labels, nfe, objective, sampler, guidance, torch.Generator().manual_seed(0))
            macs = count_macs(run)
            x = run()
            assert x.shape == (4, 3, 8, 8) and torch.isfinite(x).all()
            per_image = sum(rows) / len(labels) / 2  # two runs: counted and plain
            assert per_image == nfe * (2 if guidance > 1 else 1)
            assert rel_err(macs, len(labels) * sampling_macs(forward, nfe, guidance)) < TOLERANCE
    hook.remove()


def test_ddpm_loss_uses_the_ddpm_forward_process():
    """The losses noise the data the way the samplers assume: the exact denoiser of a one-point data set has ~0 loss."""
    x0, labels = torch.rand(6, 3, 8, 8), torch.zeros(6, dtype=torch.long)
    oracle = PointOracle("ddpm", x0[0])
    torch.manual_seed(0)
    assert diffusion_loss(oracle, x0[:1].expand(6, -1, -1, -1), labels, "ddpm") < 1e-8
    assert diffusion_loss(PointOracle("flow", x0[0]), x0[:1].expand(6, -1, -1, -1), labels, "flow") < 1e-4


# --- trainer state and the whole trial -----------------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_samples_and_training(tmp_path):
    cfg = tiny_config(steps=20, objective="flow", guidance=2.0)
    a = DiffusionTrainer(cfg, tmp_path / "a")
    for _ in range(4):
        a.iteration()
    path = a.save_checkpoint()
    labels = torch.arange(6) % 4
    want = a.sample(labels, 3, torch.Generator().manual_seed(5))
    want_loss = float(a.iteration()["loss_diffusion"])

    b = DiffusionTrainer(cfg, tmp_path / "b")
    assert not torch.equal(b.sample(labels, 3, torch.Generator().manual_seed(5)), want)
    b.load_state_dict(ckpt.load(path))
    assert b.step == 4
    assert torch.equal(b.sample(labels, 3, torch.Generator().manual_seed(5)), want)
    assert float(b.iteration()["loss_diffusion"]) == want_loss
    assert b.learning_rates() == {"lr": 1e-3}
    saved = ckpt.load(b.save_model())
    assert {"ema", "diffusion", "num_classes", "step"} <= set(saved) and saved["diffusion"]["guidance"] == 2.0


def test_train_dit_trial_reports_quality_at_every_nfe(tmp_path):
    cfg = tiny_config(steps=6, batch_size=8, objective="ddpm", sampler="ddim", sample_steps=4, eval_nfe=[1, 2, 4])
    cfg.train.log_every, cfg.train.checkpoint_every = 2, 3
    cfg.eval = cfg.eval.model_copy(update=dict(interval=3, num_samples=32, final_samples=32, batch_size=32,
                                               classifier_epochs=1, grid_size=2))
    events: list[TrainEvent] = []
    result = train(cfg, tmp_path / "trial", events.append, cache_dir=tmp_path / "cache")
    assert result.status == "completed" and result.step == 6
    m, forward = result.metrics, dit_forward_macs(3, 8, 2, 32, 2)
    for k in (1, 2, 4):
        assert math.isfinite(m[f"fd_classifier_nfe{k}"]) and m[f"fd_classifier_nfe{k}"] >= 0
        assert m[f"sample_gflops_nfe{k}"] == k * forward / 1e9
    assert m["fd_classifier"] == m["fd_classifier_nfe4"] and m["sample_gflops"] == 4 * forward / 1e9
    assert m["train_flops"] == dit_trial_cost(cfg, NUM_CLASSES).train_flops
    progress = [e for e in events if e.kind == "progress"]
    assert progress and all("loss_diffusion" in e.metrics and "lr" in e.metrics for e in progress)
    assert [e.step for e in events if e.kind == "eval"] == [0, 3]
    assert (tmp_path / "trial" / "final_model.pt").exists() and (tmp_path / "trial" / "samples" / "final.png").exists()
    assert train(cfg, tmp_path / "trial").metrics == result.metrics  # finished trials return their result


def test_dit_trial_in_latent_space(tmp_path):
    """Same latents as GAT trials: a 4-channel 8x8 grid from a tiny random AutoencoderKL, decoded for the metric."""
    from diffusers import AutoencoderKL

    from gat_core.data import load_dataset
    from gat_core.latents import encode_dataset

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16))
    vae.save_pretrained(tmp_path / "vae")
    encode_dataset(load_dataset(DataConfig(name="shapes", resolution=16, size=64)), tmp_path / "vae",
                   tmp_path / "latents", batch_size=32, chunk_size=64)
    cfg = TrialConfig.model_validate({
        "dataset": {"name": "shapes", "resolution": 16, "size": 64, "latents": str(tmp_path / "latents")},
        "model": {"family": "dit", "width": 32, "depth": 2, "heads": 2, "patch_size": 2},
        "train": {"steps": 2, "batch_size": 4, "mng": "off", "device": "cpu", "precision": "fp32",
                  "diffusion": {"sample_steps": 2, "eval_nfe": [1, 2], "guidance": 1.5}},
        "eval": {"num_samples": 16, "final_samples": 16, "classifier_epochs": 1, "grid_size": 2}})
    trainer = DiffusionTrainer(cfg, tmp_path / "trial")
    assert trainer.model.sample_shape == (4, 8, 8)
    measured = count_macs(trainer.iteration)
    assert rel_err(measured, trainer.cost.macs_per_sample_iter * 4) < TOLERANCE
    trainer.prepare_eval()
    metrics = trainer.final_evaluate(16)
    forward = dit_forward_macs(4, 8, 2, 32, 2)
    assert metrics["fd_classifier_nfe1"] > 0 and metrics["fd_classifier_nfe2"] == metrics["fd_classifier"]
    assert metrics["sample_gflops_nfe1"] == 2 * forward / 1e9  # guidance doubles the sampling cost
    assert trainer.sample_grid(tmp_path / "grid.png").exists()

"""Analytic parameter/MAC counts (gat_core.flops) against the built modules and torch's FlopCounterMode.

Forward counts of every registry size are measured on the meta device (SDPA decomposes into
bmm there, which FlopCounterMode counts); a whole `GANTrainer.iteration()` of a tiny model is
measured on CPU, where SDPA runs the CPU flash kernel that `gat_core.flop_counter` adds formulas for.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gat_core.gan_trainer import GANTrainer, build_gan
from gat_core.config import ModelConfig, TrialConfig
from gat_core.flop_counter import count_macs
from gat_core.flops import (
    DINOV2_ARCH,
    PASS_LABELS,
    discriminator_cost,
    generator_cost,
    iteration_macs,
    iteration_passes,
    parameter_counts,
    teacher_macs,
    trial_cost,
    vfm_cost,
)
from gat_core.models.layers import Attention, Rope2D
from gat_core.models.registry import preset_names
from orchestrator.flops_cmd import flops_data, flops_report

TOLERANCE = 0.02  # required agreement; the counts currently agree exactly
LATENT = dict(resolution=32, channels=4, num_classes=1000, levels=4)  # the paper's ImageNet-256 latent setting


def build_on_meta(m: ModelConfig, resolution: int, channels: int, num_classes: int, levels: int):
    with torch.device("meta"):
        return build_gan(m, channels=channels, resolution=resolution, num_classes=num_classes, levels=levels)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def rel_err(measured: float, analytic: float) -> float:
    return abs(measured - analytic) / analytic


# --- forward counts and parameters of every registry size ------------------------------------------


@pytest.mark.parametrize("name", preset_names())
def test_registry_forward_macs_and_params(name):
    m = ModelConfig(preset=name)
    gen, disc = build_on_meta(m, **LATENT)
    with torch.device("meta"):
        z, labels = torch.randn(1, m.z_dim), torch.zeros(1, dtype=torch.long)
        stack = torch.randn(1, LATENT["channels"] * LATENT["levels"], 32, 32)
    with torch.no_grad():
        measured_g, measured_d = count_macs(gen, z, labels), count_macs(disc, stack, labels)
    g = generator_cost(m, 32, 4, 4)
    d = discriminator_cost(m, 32, 4, 4)
    assert rel_err(measured_g, g.total) < TOLERANCE, (name, measured_g, g.total)
    assert rel_err(measured_d, d.total) < TOLERANCE, (name, measured_d, d.total)
    assert parameter_counts(m, 4, 4, 1000) == (n_params(gen), n_params(disc))


FOUR_LEVELS = dict(resolution=16, channels=3, num_classes=10, levels=4)
ONE_LEVEL = dict(resolution=8, channels=1, num_classes=7, levels=1)  # MNG off


@pytest.mark.parametrize("sizes, data", [
    (dict(width=64, depth=4, heads=4, patch_size=2), FOUR_LEVELS),
    (dict(width=64, depth=4, heads=4, patch_size=2), ONE_LEVEL),
    (dict(width=96, depth=6, heads=3, patch_size=4, d_width=48, d_depth=3, d_heads=2), FOUR_LEVELS),
    (dict(width=32, depth=1, heads=1, patch_size=1, z_dim=16, class_dim=8, d_cond_dim=40), ONE_LEVEL),
    (dict(width=384, depth=5, heads=6, patch_size=2, d_width=256, d_heads=8), FOUR_LEVELS),
])
def test_free_sizes_params_and_forward(sizes, data):
    m = ModelConfig(**sizes)
    gen, disc = build_on_meta(m, **data)
    res, ch, levels = data["resolution"], data["channels"], data["levels"]
    assert parameter_counts(m, ch, levels, data["num_classes"]) == (n_params(gen), n_params(disc))
    with torch.device("meta"):
        z, labels = torch.randn(2, m.z_dim), torch.zeros(2, dtype=torch.long)
        stack = torch.randn(2, ch * levels, res, res)
    with torch.no_grad():
        measured_g, measured_d = count_macs(gen, z, labels) / 2, count_macs(disc, stack, labels) / 2
    assert rel_err(measured_g, generator_cost(m, res, ch, levels).total) < TOLERANCE
    assert rel_err(measured_d, discriminator_cost(m, res, ch, levels).total) < TOLERANCE


def test_cpu_attention_kernel_is_counted():
    """torch 2.14 counts the CPU flash kernel as zero; count_macs adds its forward (2 bmm) and backward (5 bmm)."""
    width, heads, tokens = 32, 2, 16
    attn = Attention(width, heads, Rope2D(width // heads, 4))
    x = torch.randn(3, tokens, width, requires_grad=True)
    linear = 3 * tokens * 4 * width * width
    scores = 3 * tokens * tokens * width  # one of the batched matmuls, all heads
    assert count_macs(attn, x) == linear + 2 * scores
    with FlopCounterMode(display=False) as plain:
        attn(x)
    assert plain.get_total_flops() // 2 == linear  # the gap count_macs closes
    assert count_macs(lambda: attn(x).sum().backward()) == 3 * linear + 7 * scores
    with sdpa_kernel([SDPBackend.MATH]):  # math backend: 4 bmm backward
        assert count_macs(lambda: attn(x).sum().backward()) == 3 * linear + 6 * scores
    q = torch.randn(1, heads, tokens, width // heads, device="meta")
    assert count_macs(F.scaled_dot_product_attention, q, q, q) == tokens * tokens * width * 2  # meta: counted too


# --- a real training iteration --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_giant_patch14_reg4_dinov2"])
def test_teacher_table_matches_timm(name):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        net = timm.create_model(name, pretrained=False, num_classes=0, img_size=56)
        images = torch.zeros(1, 3, 56, 56)
    with torch.no_grad():
        assert count_macs(net.forward_features, images) == teacher_macs(name, 56)
    assert net.num_features == DINOV2_ARCH[name][0]


@pytest.mark.parametrize("penalty, mng, depth, backend, r2_gamma, checkpoint, vfm", [
    ("approx", "exp", 4, "fused", 0.1, False, False),
    ("approx", "off", 2, "math", 0.0, True, True),
    ("exact", "exp", 4, "fused", 0.1, False, False),
    ("exact", "off", 2, "fused", 0.0, True, True),
])
def test_training_iteration_matches_flop_counter(tmp_path, request, penalty, mng, depth, backend,
                                                 r2_gamma, checkpoint, vfm):
    batch = 2
    train = {"steps": 1, "batch_size": batch, "penalty": penalty, "mng": mng, "r2_gamma": r2_gamma,
             "grad_checkpoint": checkpoint, "device": "cpu", "augment": ["color", "translation", "cutout", "flip"]}
    if vfm:
        train["vfm"] = {"weights": str(request.getfixturevalue("tiny_dinov2")), "model": "vit_small_patch14_dinov2",
                        "image_size": 28, "hidden_dim": 24}
    cfg = TrialConfig.model_validate({
        "dataset": {"name": "shapes", "resolution": 16, "size": 32},
        "model": {"width": 32, "depth": depth, "heads": 2, "patch_size": 2},
        "train": train,
    })
    trainer = GANTrainer(cfg, tmp_path)
    with sdpa_kernel([SDPBackend.MATH]) if backend == "math" else contextlib.nullcontext():
        measured = count_macs(trainer.iteration)
    g = generator_cost(cfg.model, 16, 3, cfg.train.levels)
    d = discriminator_cost(cfg.model, 16, 3, cfg.train.levels)
    vfm_macs = vfm_cost(cfg.train.vfm, cfg.model, 16) if vfm else None
    analytic = batch * iteration_macs(g, d, exact_penalty=penalty == "exact", r2=r2_gamma > 0,
                                      fused_attention=backend == "fused", grad_checkpoint=checkpoint, vfm=vfm_macs)
    assert rel_err(measured, analytic) < TOLERANCE, (measured, analytic)
    if backend == "fused":
        assert trial_cost(cfg, trainer.dataset.num_classes).macs_per_sample_iter * batch == analytic


# --- anchors and the CLI function -----------------------------------------------------------------


def test_gat_xl2_anchors():
    r = flops_data("GAT-XL/2")
    assert 118e9 < r["macs_g"] < 119e9                     # paper: 119 GFLOPs (DiT convention)
    assert abs(r["params_g"] - 602e6) / 602e6 < 1e-3       # paper: 602M
    approx = r["iteration_macs_per_sample"]["approx"]
    assert 18.5 < approx["per_g_forward"] < 20.5           # spec: measured ~19.5x one G forward
    assert rel_err(approx["total"], 4 * r["macs_g"] + 15 * r["macs_d"]) < 0.01  # spec: ~4 F_G + 15 F_D
    exact = r["iteration_macs_per_sample"]["exact"]
    assert exact["total"] > approx["total"]
    assert sum(approx["passes"].values()) == approx["total"]


def test_flops_report_registry_entry():
    text = flops_report("GAT-B/4")
    m = ModelConfig(preset="GAT-B/4")
    params_g, params_d = parameter_counts(m, 4, 4, 1000)
    g, d = generator_cost(m, 32, 4, 4), discriminator_cost(m, 32, 4, 4)
    assert f"{params_g:,}" in text and f"{params_d:,}" in text
    assert f"{g.total / 1e9:.4f}" in text and f"{d.total / 1e9:.4f}" in text
    assert "1 multiply-accumulate (MAC) = 1 FLOP" in text
    passes = iteration_passes(g, d)
    assert all((label in text) == bool(passes[key]) for key, label in PASS_LABELS.items())  # passes that run
    data = json.loads(flops_report("GAT-B/4", as_json=True))
    assert data["params_g"] == params_g and data["macs_d"] == d.total
    for penalty in ("approx", "exact"):
        passes = iteration_passes(g, d, exact_penalty=penalty == "exact")
        assert data["iteration_macs_per_sample"][penalty]["passes"] == passes
        assert data["iteration_macs_per_sample"][penalty]["total"] == iteration_macs(g, d, penalty == "exact")


def test_flops_report_with_teacher_and_checkpointing():
    data = flops_data("GAT-S/4", teacher="vit_base_patch14_dinov2", grad_checkpoint=True)
    m = ModelConfig(preset="GAT-S/4")
    g, d = generator_cost(m, 32, 4, 4), discriminator_cost(m, 32, 4, 4)
    from gat_core.config import VFMConfig

    vfm = vfm_cost(VFMConfig(model="vit_base_patch14_dinov2"), m, 32)
    assert data["iteration_macs_per_sample"]["approx"]["passes"] == iteration_passes(g, d, grad_checkpoint=True,
                                                                                      vfm=vfm)
    assert 22e9 < vfm.teacher < 24e9  # spec: DINOv2-B/14 at 224 px ~ 22 GMACs
    text = flops_report("GAT-S/4", teacher="vit_base_patch14_dinov2", grad_checkpoint=True)
    assert PASS_LABELS["d_step_vfm_teacher"] in text and PASS_LABELS["g_step_recompute"] in text
    assert PASS_LABELS["d_step_vfm_teacher"] not in flops_report("GAT-S/4")


def test_flops_report_free_size():
    data = json.loads(flops_report("w64-d4-h4-p2", resolution=16, channels=3, num_classes=10, as_json=True))
    m = ModelConfig(width=64, depth=4, heads=4, patch_size=2)
    assert data["tokens"] == 64 and data["g"] == {"width": 64, "depth": 4, "heads": 4}
    assert (data["params_g"], data["params_d"]) == parameter_counts(m, 3, 4, 10)
    assert data["macs_g"] == generator_cost(m, 16, 3, 4).total
    assert "w64-d4-h4-p2" in flops_report("w64-d4-h4-p2", resolution=16, channels=3, num_classes=10)


@pytest.mark.parametrize("model, message", [
    ("GAT-XL/3", "unknown preset"),
    ("w64-d4", "cannot parse"),
    ("W64-D4-H4-P2", "cannot parse"),
    ("w64-d4-h5-p2", "not divisible"),
    ("w64-d4-h4-p3", "does not divide resolution"),
    ("w64-d2-h4-p2", "output heads"),
])
def test_flops_report_rejects_bad_models(model, message):
    with pytest.raises(ValueError, match=message):
        flops_report(model)

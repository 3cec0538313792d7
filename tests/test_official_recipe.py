"""The GAN as the official GAT code trains it, checked against the official formulas, and the collapse
signals (diversity metric, health verdict) that keep failed trials out of the science."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gat_core import checkpoint as ckpt
from gat_core.augment import AugmentParams, DiffAugment
from gat_core.config import OFFICIAL_AUGMENT, EvalConfig, TrainConfig, TrialConfig
from gat_core.health import DivergenceCheck, HealthCheck
from gat_core.metrics.names import parse_metric
from gat_core.metrics.scores import within_class_spread
from gat_core.models.generator import GATGenerator
from gat_core.gan_trainer import GANTrainer
from gat_core.loop import train


def _cfg(**train) -> TrialConfig:
    return TrialConfig.model_validate({
        "dataset": {"name": "shapes", "resolution": 8, "size": 128, "num_classes": 4},
        "model": {"width": 32, "depth": 4, "heads": 2, "patch_size": 2},
        "train": {"steps": 4, "batch_size": 8, "device": "cpu", "precision": "fp32", "log_every": 2, **train},
        "eval": {"interval": 2, "num_samples": 32, "final_samples": 32, "batch_size": 32, "classifier_epochs": 1,
                 "grid_size": 2},
    })


# --------------------------------------------------------------------------------------------- defaults

def test_gan_trials_train_with_the_official_augmentation_by_default() -> None:
    assert TrainConfig(steps=1).augment == ["color", "translation", "cutout", "flip"] == list(OFFICIAL_AUGMENT)
    assert TrainConfig(steps=1, augment=[]).augment == []  # a study can still switch it off


# --------------------------------------------------------------------------------------------- DiffAugment

def _official_color(x: torch.Tensor, bright: torch.Tensor, sat: torch.Tensor, contrast: torch.Tensor,
                    ref: torch.Tensor) -> torch.Tensor:
    """The official rand_brightness_saturation_contrast, means taken from `ref` before the shift."""
    mean_sat, mean_con = ref.mean(dim=1, keepdim=True), ref.mean(dim=[1, 2, 3], keepdim=True)
    y = x + bright
    y = (y - mean_sat) * sat + mean_sat
    return (y - mean_con) * contrast + mean_con


def test_colour_augmentation_takes_its_means_before_the_shift_from_the_drawn_tensor() -> None:
    torch.manual_seed(0)
    final, other = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    aug = DiffAugment(["color"])
    draw = aug.sample(final)  # as for a fake stack: the draw is made for G's final level
    bright, sat, contrast, on = draw.color
    for x in (final, other):  # every level is augmented around the final level's means
        expected = torch.where(on, _official_color(x, bright, sat, contrast, final), x)
        torch.testing.assert_close(aug.apply(x, draw), expected)
    assert 0 < int(on.sum()) < 6  # half of the batch, on average


@pytest.mark.parametrize("side", [4, 8, 12, 16])
def test_translation_and_cutout_sizes_follow_the_official_rounding(side: int) -> None:
    aug = DiffAugment(["translation", "cutout"])
    x = torch.ones(512, 1, side, side)
    draw = aug.sample(x, torch.Generator().manual_seed(0))
    shift = int(side * 0.125 + 0.5)
    assert int(draw.shift.abs().max()) == shift and int(draw.shift.min()) == -shift
    cut = int(side * 0.5 + 0.5)
    out = aug.apply(x, AugmentParams(cutout=draw.cutout))  # the cutout alone
    centred = (draw.cutout >= cut // 2).all(1) & (draw.cutout - cut // 2 + cut <= side).all(1)
    assert (out[centred] == 0).flatten(1).sum(1).eq(cut * cut).all()  # whole squares where they fit
    assert int(draw.cutout.max()) == side - (cut % 2)  # official offsets: 0 .. side - 1 + (1 - cut % 2)


# --------------------------------------------------------------------------------------------- bf16

def test_bf16_autocast_keeps_the_generator_residual_stream_fp32() -> None:
    torch.manual_seed(0)
    gen = GATGenerator(channels=3, resolution=8, patch_size=2, width=32, depth=4, heads=2, num_classes=4)
    dtypes = []
    for block in gen.blocks:
        block.register_forward_hook(lambda module, args, out: dtypes.append((args[0].dtype, out.dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        levels = gen.forward_levels(gen.style(torch.randn(2, 64), torch.tensor([0, 1])))
    assert dtypes == [(torch.float32, torch.float32)] * 4  # every gated block update added in fp32
    assert all(torch.isfinite(x).all() for x in levels)


# --------------------------------------------------------------------------------------------- REPA head

def test_repa_head_is_initialised_and_clipped_as_part_of_d(tiny_dinov2: Path, tmp_path: Path) -> None:
    vfm = {"weights": str(tiny_dinov2), "model": "vit_small_patch14_dinov2", "image_size": 56, "hidden_dim": 32}
    trainer = GANTrainer(_cfg(vfm=vfm, grad_clip=1.0), tmp_path)
    head = trainer.repa_head
    for layer in (m for m in head.modules() if isinstance(m, nn.Linear)):
        bound = (6 / (layer.in_features + layer.out_features)) ** 0.5  # Xavier-uniform, zero bias
        assert layer.weight.abs().max() <= bound and torch.equal(layer.bias, torch.zeros_like(layer.bias))
    d_params = [*trainer.D.parameters(), *head.parameters()]
    assert {id(p) for g in trainer.opt_d.param_groups for p in g["params"]} == {id(p) for p in d_params}
    # a loss whose gradient is huge on the head alone: the one clip covers D and the head together
    loss = sum((p * 1e6).sum() for p in head.parameters()) + sum(p.sum() * 0 for p in trainer.D.parameters())
    clipped = []
    original = trainer.opt_d.step
    trainer.opt_d.step = lambda: clipped.append(torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in d_params if p.grad is not None])))
    trainer.optimise(trainer.opt_d, loss)
    trainer.opt_d.step = original
    assert float(clipped[0]) == pytest.approx(1.0, rel=1e-4)


# --------------------------------------------------------------------------------------------- checkpoints

def test_checkpoints_of_the_old_weight_format_are_refused_by_name(tmp_path: Path) -> None:
    trainer = GANTrainer(_cfg(), tmp_path / "trial")
    path = trainer.save_checkpoint()
    state = ckpt.load(path)
    assert state[ckpt.FORMAT_KEY] == ckpt.WEIGHTS_FORMAT
    old = {k: v for k, v in state.items() if k != ckpt.FORMAT_KEY}  # what the previous version wrote
    folder = tmp_path / "old" / "checkpoints"
    ckpt.save_atomic(old, ckpt.step_path(folder, 3))
    with pytest.raises(ckpt.IncompatibleCheckpoint, match=r"ckpt-000000003\.pt.*weights format 1"):
        ckpt.load_latest(folder)  # not skipped as corrupt: the older files are of the same version
    # a study rerun over an old trial folder stops with that message instead of loading wrong weights
    shutil.copytree(folder, tmp_path / "rerun" / "checkpoints")
    with pytest.raises(ckpt.IncompatibleCheckpoint, match="retrain the trial"):
        train(_cfg(), tmp_path / "rerun")


def test_model_files_of_the_old_weight_format_are_refused_by_eval(tmp_path: Path) -> None:
    from orchestrator.eval_cmd import evaluate_checkpoint

    trainer = GANTrainer(_cfg(), tmp_path / "trial")
    model = ckpt.read(trainer.save_model())
    old = tmp_path / "old_model.pt"
    torch.save({k: v for k, v in model.items() if k != ckpt.FORMAT_KEY}, old)
    with pytest.raises(ValueError, match=r"old_model\.pt.*another version of gat-study"):
        evaluate_checkpoint(old, ["fd_classifier"], num_samples=8, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------------------------- diversity

def test_diversity_metric_names_and_direction() -> None:
    spec = parse_metric("diversity_classifier")
    assert (spec.kind, spec.extractor, spec.higher_is_better, spec.per_sample) == ("diversity", "classifier", True, True)
    assert EvalConfig().diversity_metric == EvalConfig(metric="fid").diversity_metric == "diversity_pixels"
    assert EvalConfig().interval_metrics == ["fd_classifier", "diversity_pixels"]
    assert EvalConfig(diversity=False).interval_metrics == ["fd_classifier"]
    with pytest.raises(ValueError, match="diversity_pixels only"):
        parse_metric("fd_pixels")


def test_within_class_spread_is_zero_for_one_image_per_class() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(size=(4, 16)) * 10
    collapsed = centres[labels]
    varied = collapsed + rng.normal(size=collapsed.shape)
    assert within_class_spread(collapsed, labels) == pytest.approx(0.0, abs=1e-12)
    assert within_class_spread(varied, labels) == pytest.approx(16.0, rel=0.15)  # d * unit variance
    # the classes' own differences do not count: an unconditional spread would be ~100x larger
    assert within_class_spread(varied, labels) < 0.05 * ((varied - varied.mean(0)) ** 2).sum(1).mean()


def test_diversity_of_real_images_is_near_one_and_of_a_collapsed_generator_near_zero(tmp_path: Path) -> None:
    from gat_core.data import load_dataset
    from gat_core.metrics.evaluator import build_evaluator

    cfg = _cfg()
    data = load_dataset(cfg.dataset)
    evaluator, _ = build_evaluator(cfg.eval, data, tmp_path, metrics=["fd_classifier", "diversity_classifier"])
    by_class = {c: torch.nonzero(data.labels == c).flatten() for c in range(4)}
    draws = torch.Generator().manual_seed(5)

    def real(labels: torch.Tensor) -> torch.Tensor:  # a random real image of each requested class
        picks = [by_class[int(c)][torch.randint(len(by_class[int(c)]), (1,), generator=draws)] for c in labels]
        return data.batch(torch.cat(picks))

    def collapsed(labels: torch.Tensor) -> torch.Tensor:  # the same image for every z of a class
        return data.batch(torch.stack([by_class[int(c)][0] for c in labels]))

    assert evaluator(real, ["diversity_classifier"], 128, 64, 4)["diversity_classifier"] == pytest.approx(1.0, abs=0.25)
    assert evaluator(collapsed, ["diversity_classifier"], 128, 64, 4)["diversity_classifier"] == pytest.approx(0.0, abs=1e-6)
    pixels, _ = build_evaluator(cfg.eval, data, tmp_path, metrics=["diversity_pixels"])
    assert pixels(real, ["diversity_pixels"], 128, 64, 4)["diversity_pixels"] == pytest.approx(1.0, abs=0.25)
    assert pixels(collapsed, ["diversity_pixels"], 128, 64, 4)["diversity_pixels"] == pytest.approx(0.0, abs=1e-6)


def test_pixel_diversity_sees_one_pose_per_class_through_colour_jitter(tmp_path: Path) -> None:
    """One pose per class with its brightness jittered is still a collapse in pixels.  (Why pixels: on the
    quickstart's width-64 trial at seed 0, one shape per row, diversity_classifier was 0.94 and
    recall_classifier 0.72: a classifier trained on the data learns to ignore pose.)"""
    from gat_core.data import load_dataset
    from gat_core.metrics.evaluator import build_evaluator

    cfg = _cfg()
    data = load_dataset(cfg.dataset)
    evaluator, _ = build_evaluator(cfg.eval, data, tmp_path, metrics=["diversity_pixels"])
    first = {c: torch.nonzero(data.labels == c).flatten()[0] for c in range(4)}
    g = torch.Generator().manual_seed(0)

    def one_pose(labels: torch.Tensor) -> torch.Tensor:  # the first image of the class, brightness jittered
        images = data.batch(torch.stack([first[int(c)] for c in labels]))
        return (images * (1 + 0.3 * torch.rand(len(labels), 1, 1, 1, generator=g))).clamp(-1, 1)

    assert evaluator(one_pose, ["diversity_pixels"], 128, 64, 4)["diversity_pixels"] < 0.25


# --------------------------------------------------------------------------------------------- health

def test_health_verdict_names_mode_collapse_and_d_winning_outright() -> None:
    check = HealthCheck(min_diversity=0.2, min_loss_d=0.01, max_diversity=1.2, diversity_metric="diversity_classifier",
                        total_steps=100)
    assert check.verdict({"diversity_classifier": 0.6}) == ("ok", "")
    health, reason = check.verdict({"diversity_classifier": 0.05})
    assert health == "collapsed" and "diversity_classifier 0.050" in reason
    # noise: the quickstart's width-64 trial whose D won by step 140 ended at 1.309 with fd 1335
    health, reason = check.verdict({"diversity_classifier": 1.309})
    assert health == "diverged" and "noise, not images" in reason and "1.309" in reason
    assert check.verdict({"diversity_classifier": 1.2})[0] == "ok"
    for step in range(10, 101, 10):
        check.observe(step, {"loss_d": 0.0 if step > 90 else 0.7})  # only the last tenth counts
    health, reason = check.verdict({"diversity_classifier": 0.6})
    assert health == "collapsed" and "D wins outright" in reason
    assert HealthCheck(None, None, None, None, 100).verdict({"diversity_classifier": 0.0}) == ("ok", "")
    assert HealthCheck(None, None, None, None, 100).verdict({"diversity_classifier": 9.0}) == ("ok", "")


def test_divergence_detector_can_stop_on_the_diversity() -> None:
    check = DivergenceCheck(None, patience=2, collapse_diversity=0.1, diversity_metric="diversity_classifier")
    assert check.check_eval(0, {"diversity_classifier": 0.0}) == ""  # step 0 is an untrained G
    assert check.check_eval(100, {"diversity_classifier": 0.05}) == ""
    assert "mode collapse at step 200" in check.check_eval(200, {"diversity_classifier": 0.02})
    assert DivergenceCheck(None, 1).check_eval(100, {"diversity_classifier": 0.0}) == ""  # opt-in


def test_a_trial_logs_diversity_at_every_evaluation_and_records_its_health(tmp_path: Path) -> None:
    events = []
    result = train(_cfg(), tmp_path, events.append)
    evals = [e for e in events if e.kind == "eval"]
    assert [e.step for e in evals] == [0, 2]
    assert all({"fd_classifier", "diversity_pixels"} <= set(e.metrics) for e in evals)
    assert "diversity_pixels" in result.metrics and result.health in ("ok", "collapsed")
    saved = json.loads((tmp_path / "result.json").read_text())
    assert (saved["health"], saved["health_reason"]) == (result.health, result.health_reason)
    # a threshold no 4-step G can meet marks it collapsed, with the reason
    strict = _cfg().model_copy(update={"eval": _cfg().eval.model_copy(update={"health_min_diversity": 100.0})})
    result = train(strict, tmp_path / "strict")
    assert result.status == "completed" and result.health == "collapsed" and "mode collapse" in result.health_reason


def test_a_cold_metric_cache_does_not_change_the_training_noise(tmp_path: Path) -> None:
    """The trial that trains the feature classifier (cold cache) and one that loads it (warm cache) train
    identically: seeded results must not depend on which trial of a study came first."""
    cold = train(_cfg(), tmp_path / "cold", cache_dir=tmp_path / "cache")
    warm = train(_cfg(), tmp_path / "warm", cache_dir=tmp_path / "cache")
    def scores(result):  # everything but the wall time
        return {k: v for k, v in result.metrics.items() if k != "trial_seconds"}

    assert scores(cold) == scores(warm) and "fd_classifier" in scores(cold)

"""bench/op_split.py: the op-class split of a training iteration adds up, and each class is what it says."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.op_split import CLASSES, profile_split, split


@dataclass
class _Event:
    name: str
    self_cpu_time_total: float
    cpu_parent: "_Event | None" = None


def test_split_counts_each_ops_self_time_once_in_the_class_of_its_nearest_labelled_caller():
    step = _Event("Optimizer.step#AdamW.step", 5.0)
    clip = _Event("gat-study.optimiser", 1.0)
    augment = _Event("gat-study.augmentation", 0.5)
    events = [_Event("aten::mm", 40.0), _Event("aten::addmm", 10.0),
              _Event("aten::_scaled_dot_product_flash_attention_for_cpu", 8.0), _Event("aten::mul", 6.0),
              step, _Event("aten::mul", 3.0, step), _Event("aten::mm", 2.0, step), clip,
              _Event("aten::linalg_vector_norm", 2.0, clip), augment, _Event("aten::where", 4.0, augment),
              _Event("aten::_foreach_lerp_", 1.5, _Event("gat-study.ema", 0.0))]
    got = split(events, wall_us=100.0)
    assert set(got) == set(CLASSES)
    assert got["matmul"] == 50.0 and got["attention"] == 8.0 and got["elementwise"] == 6.0
    assert got["optimiser"] == 5.0 + 3.0 + 2.0 + 1.0 + 2.0  # a matmul inside the step is the optimiser's
    assert got["augmentation"] == 4.5 and got["ema"] == 1.5
    assert got["python"] == pytest.approx(100.0 - sum(v for k, v in got.items() if k != "python"))


@pytest.mark.parametrize("augment", [True, False])
def test_profile_split_of_a_real_iteration_adds_up_and_finds_the_augmentation(tmp_path: Path, augment: bool):
    import gat_core.augment
    import gat_core.gan_trainer
    from gat_core.config import OFFICIAL_AUGMENT, TrialConfig
    from gat_core.gan_trainer import GANTrainer

    originals = (gat_core.augment.DiffAugment.apply, gat_core.gan_trainer.ema_update)
    cfg = TrialConfig.model_validate({
        "dataset": {"name": "shapes", "resolution": 8, "size": 64},
        "model": {"width": 32, "depth": 4, "heads": 2, "patch_size": 2},
        "train": {"steps": 4, "batch_size": 8, "device": "cpu", "augment": list(OFFICIAL_AUGMENT) if augment else []}})
    trainer = GANTrainer(cfg, tmp_path / "trial")
    result = profile_split(trainer.iteration, iterations=2)
    fractions = result["fraction"]
    assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-6)
    assert fractions["matmul"] > 0 and fractions["elementwise"] > 0 and fractions["optimiser"] > 0
    assert fractions["ema"] > 0 and fractions["attention"] > 0
    assert (fractions["augmentation"] > 0) is augment
    assert (gat_core.augment.DiffAugment.apply, gat_core.gan_trainer.ema_update) == originals  # restored

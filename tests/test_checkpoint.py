"""Checkpoints and exact resume of the real GANTrainer on a tiny config (CPU), plus the learning-rate rule."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from gat_core import checkpoint as ckpt
from gat_core.config import DataConfig, ModelConfig, TrainConfig, TrialConfig
from gat_core.gan_trainer import GANTrainer, learning_rates


def tiny_config(**train) -> TrialConfig:
    return TrialConfig(
        dataset=DataConfig(name="shapes", resolution=8, size=64, num_classes=4),
        model=ModelConfig(width=32, depth=4, heads=2, patch_size=2, d_depth=2),
        train=TrainConfig(steps=20, batch_size=8, augment=["color", "translation", "cutout", "flip"],
                          device="cpu", precision="fp32", **train),
    )


def _fixed_samples(trainer: GANTrainer) -> tuple[torch.Tensor, torch.Tensor]:
    """EMA and raw generator outputs for a fixed z (own generator: does not touch the global RNG)."""
    gen = torch.Generator().manual_seed(42)
    z = torch.randn(6, trainer.G.z_dim, generator=gen)
    labels = torch.arange(6) % 4
    with torch.no_grad():
        return trainer.G_ema(z, labels), trainer.G.eval()(z, labels)


def _as_floats(logs: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in logs.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """3 iterations -> checkpoint -> 2 more iterations -> checkpoint, on one uninterrupted GANTrainer."""
    workdir = tmp_path_factory.mktemp("run")
    trainer = GANTrainer(tiny_config(), workdir)
    initial = _fixed_samples(trainer)
    first = [_as_floats(trainer.iteration()) for _ in range(3)]
    path3 = trainer.save_checkpoint()
    after3 = _fixed_samples(trainer)
    trainer.G.train()
    more = [_as_floats(trainer.iteration()) for _ in range(2)]
    path5 = trainer.save_checkpoint()
    return {"workdir": workdir, "initial": initial, "first": first, "after3": after3, "more": more,
            "path3": path3, "path5": path5, "trainer": trainer}


def test_trainer_iterations_give_finite_logs_and_change_the_generator(run: dict) -> None:
    for logs in run["first"] + run["more"]:
        assert set(logs) >= {"loss_d", "loss_g", "r1", "r2", "logit_real", "logit_fake"}
        assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert (run["after3"][0] - run["initial"][0]).abs().max() > 0  # EMA moved
    assert (run["after3"][1] - run["initial"][1]).abs().max() > 1e-5  # G trained
    assert run["trainer"].step == 5
    assert run["path3"].name == "ckpt-000000003.pt" and run["path5"].name == "ckpt-000000005.pt"


def test_resume_from_checkpoint_is_exact(run: dict, tmp_path: Path) -> None:
    fresh = GANTrainer(tiny_config(), tmp_path)
    before = _fixed_samples(fresh)
    assert (before[0] - run["after3"][0]).abs().max() > 0  # loading must matter
    state = ckpt.load(run["path3"])
    fresh.load_state_dict(state)
    assert fresh.step == 3
    ema, raw = _fixed_samples(fresh)
    torch.testing.assert_close(ema, run["after3"][0], atol=0, rtol=0)
    torch.testing.assert_close(raw, run["after3"][1], atol=0, rtol=0)
    fresh.G.train()
    resumed = [_as_floats(fresh.iteration()) for _ in range(2)]
    assert resumed == run["more"]  # sampler, RNG and optimiser state all restored
    assert fresh.step == 5
    reference = ckpt.load(run["path5"])
    for key in ("G", "D", "G_ema"):
        ours = getattr(fresh, key).state_dict()
        for name, tensor in reference[key].items():
            torch.testing.assert_close(ours[name], tensor, atol=0, rtol=0, msg=f"{key}.{name}")


def test_resume_without_optimiser_state_diverges_from_the_reference(run: dict, tmp_path: Path) -> None:
    """Control for the exact-resume test: dropping Adam's second moments is detectable in the losses."""
    fresh = GANTrainer(tiny_config(), tmp_path)
    state = ckpt.load(run["path3"])
    state["opt_g"] = fresh.opt_g.state_dict()
    state["opt_d"] = fresh.opt_d.state_dict()
    fresh.load_state_dict(state)
    resumed = [_as_floats(fresh.iteration()) for _ in range(2)]
    assert resumed[0]["loss_d"] == run["more"][0]["loss_d"]  # same batch, same weights: same first D loss
    assert resumed[1] != run["more"][1]


def test_checkpoint_holds_the_whole_training_state(run: dict) -> None:
    state = ckpt.load(run["path3"])
    assert state["step"] == 3
    assert {"G", "D", "G_ema", "opt_g", "opt_d", "sampler", "rng", "config"} <= set(state)
    assert "w_avg" in state["G"] and "w_avg" in state["G_ema"]
    assert TrialConfig.model_validate_json(state["config"]) == tiny_config()
    assert state["opt_g"]["state"]  # Adam moments are in there
    assert ckpt.list_checkpoints(run["workdir"] / "checkpoints") == [run["path3"], run["path5"]]


# --------------------------------------------------------------------------------------------- corrupt files

def _copy_checkpoints(run: dict, tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for p in (run["path3"], run["path5"]):
        shutil.copy(p, folder / p.name)
    return folder


def test_load_latest_picks_the_newest_checkpoint(run: dict, tmp_path: Path) -> None:
    folder = _copy_checkpoints(run, tmp_path)
    (folder / "notes.txt").write_text("not a checkpoint")  # ignored: wrong name
    state = ckpt.load_latest(folder)
    assert state is not None and state["step"] == 5


def test_truncated_newest_checkpoint_warns_and_falls_back(run: dict, tmp_path: Path) -> None:
    folder = _copy_checkpoints(run, tmp_path)
    newest = folder / run["path5"].name
    size = newest.stat().st_size
    with open(newest, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.warns(UserWarning, match="ckpt-000000005.pt") as record:
        state = ckpt.load_latest(folder)
    assert state is not None and state["step"] == 3
    assert any("falling back" in str(w.message) for w in record)
    with pytest.raises(ckpt.CheckpointError, match=str(newest)):
        ckpt.load(newest)


def test_load_latest_with_only_corrupt_files_returns_none(tmp_path: Path) -> None:
    bad = ckpt.step_path(tmp_path, 7)
    bad.write_bytes(os.urandom(1000))
    with pytest.warns(UserWarning, match=bad.name):
        assert ckpt.load_latest(tmp_path) is None
    assert ckpt.load_latest(tmp_path / "missing") is None


def test_random_file_gives_checkpoint_error_naming_the_path(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ckpt.CheckpointError, match=str(junk)):
        ckpt.load(junk)
    with pytest.raises(ckpt.CheckpointError, match="file not found"):
        ckpt.load(tmp_path / "absent.pt")
    not_training = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, not_training)
    with pytest.raises(ckpt.CheckpointError, match="no 'step' entry"):
        ckpt.load(not_training)


class _Payload:
    """Unpickling this runs os.makedirs(marker): proof that arbitrary code would execute."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def test_pickled_arbitrary_object_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    evil = ckpt.step_path(tmp_path / "ckpts", 9)
    evil.parent.mkdir()
    torch.save({"step": 9, "payload": _Payload(marker)}, evil)
    with pytest.raises(ckpt.CheckpointError, match=str(evil)):
        ckpt.load(evil)
    with pytest.warns(UserWarning, match=evil.name):
        assert ckpt.load_latest(evil.parent) is None
    assert not marker.exists()
    # control, without unpickling: the file really carries the code-running object
    with zipfile.ZipFile(evil) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"os\nmakedirs" in pickled and str(marker).encode() in pickled  # os.makedirs(marker) on load


def test_save_atomic_leaves_no_temporary_files_and_prune_keeps_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        ckpt.save_atomic(ckpt.stamp({"step": step, "x": torch.tensor([step])}), ckpt.step_path(tmp_path, step))
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.step_path(tmp_path, s).name for s in (1, 2, 3, 4)]
    ckpt.prune(tmp_path, 2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-000000003.pt", "ckpt-000000004.pt"]
    assert ckpt.load(ckpt.step_path(tmp_path, 4))["x"].item() == 4


# --------------------------------------------------------------------------------------------- learning rates

def test_width_rule_scales_g_and_d_by_their_own_widths() -> None:
    cfg = TrialConfig(model=ModelConfig(width=64, heads=4, d_width=128, d_heads=4),
                      train=TrainConfig(steps=1, lr=2e-4, lr_rule="width", lr_base_width=768))
    lr_g, lr_d = learning_rates(cfg)
    assert lr_g == pytest.approx(2e-4 * 768 / 64, rel=1e-12)
    assert lr_d == pytest.approx(2e-4 * 768 / 128, rel=1e-12)


@pytest.mark.parametrize("preset,expected", [("GAT-S/2", 4e-4), ("GAT-B/4", 2e-4), ("GAT-L/2", 1.5e-4),
                                             ("GAT-XL/8", 2e-4 * 768 / 1152)])
def test_width_rule_reproduces_the_paper_learning_rates(preset: str, expected: float) -> None:
    cfg = TrialConfig(dataset=DataConfig(resolution=32), model=ModelConfig(preset=preset), train=TrainConfig(steps=1))
    assert learning_rates(cfg) == pytest.approx((expected, expected), rel=1e-12)


def test_constant_rule_gives_the_base_lr_to_both() -> None:
    cfg = TrialConfig(model=ModelConfig(width=64, heads=4, d_width=128, d_heads=4),
                      train=TrainConfig(steps=1, lr=3e-4, lr_rule="constant"))
    assert learning_rates(cfg) == (3e-4, 3e-4)


def test_trainer_optimisers_use_the_rule_and_the_spec_adam_settings(run: dict) -> None:
    trainer: GANTrainer = run["trainer"]
    lr_g, lr_d = learning_rates(trainer.cfg)
    assert lr_g == pytest.approx(2e-4 * 768 / 32)
    for opt, lr in ((trainer.opt_g, lr_g), (trainer.opt_d, lr_d)):
        group = opt.param_groups[0]
        assert group["lr"] == lr and group["betas"] == (0.0, 0.99) and group["weight_decay"] == 0.0

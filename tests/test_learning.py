"""A tiny GAT really learns: seeded, a few hundred steps on CPU, fd_classifier falls by orders of magnitude."""

from __future__ import annotations

from gat_core.config import TrialConfig
from gat_core.health import DivergenceCheck
from gat_core.loop import train


def test_tiny_gat_learns_shapes(tmp_path):
    cfg = TrialConfig.model_validate({
        "dataset": {"name": "shapes", "resolution": 8, "size": 2000},
        "model": {"width": 32, "depth": 4, "heads": 2, "patch_size": 2},
        "train": {"steps": 200, "batch_size": 32, "ema_warmup": True, "seed": 0, "checkpoint_every": 100},
        "eval": {"interval": 100, "num_samples": 500, "final_samples": 500, "classifier_epochs": 3},
    })
    curve: dict[int, float] = {}
    accuracy = []

    def report(event):
        if "fd_classifier" in event.metrics:
            curve[event.step] = event.metrics["fd_classifier"]
        if "classifier_accuracy" in event.metrics:
            accuracy.append(event.metrics["classifier_accuracy"])

    result = train(cfg, tmp_path / "trial", report, cache_dir=tmp_path / "cache")
    assert result.status == "completed" and result.step == 200
    assert accuracy[0] > 0.9  # the feature classifier is meaningful
    assert sorted(curve) == [0, 100, 200]
    # measured: about 4300 at step 0 and under 10 after 200 steps; demand a 50x improvement
    assert curve[200] < curve[0] / 50, curve
    assert curve[100] < curve[0] / 20, curve


def test_divergence_check_flags_non_finite_metrics_and_collapse():
    check = DivergenceCheck(collapse_loss_d=0.01, patience=2)
    assert check.check(10, {"loss_d": 0.5, "loss_g": 1.0}) == ""
    assert check.check(20, {"loss_d": 0.5, "loss_g": float("nan")}) == "non-finite loss_g at step 20"
    assert check.check(30, {"loss_d": 0.001}) == ""  # one strike
    assert check.check(40, {"loss_d": 0.001}).startswith("collapse at step 40")
    assert DivergenceCheck(None, 1).check(1, {"loss_d": 0.0}) == ""  # the collapse detector is opt-in


def test_collapsed_trial_stops_as_diverged_with_step_and_reason(tmp_path):
    """End to end with a floor every loss_d is under: diverged after `patience` reports, not retrained."""
    cfg = TrialConfig.model_validate({
        "dataset": {"name": "shapes", "resolution": 8, "size": 256},
        "model": {"width": 32, "depth": 4, "heads": 2, "patch_size": 2},
        "train": {"steps": 40, "batch_size": 8, "log_every": 2, "collapse_loss_d": 10.0, "collapse_patience": 2},
        "eval": {"interval": 100, "num_samples": 32, "final_samples": 32, "classifier_epochs": 1},
    })
    result = train(cfg, tmp_path / "trial", cache_dir=tmp_path / "cache")
    assert (result.status, result.step) == ("diverged", 4)
    assert result.reason == "collapse at step 4: loss_d below 10.0 for 2 consecutive reports"
    again = train(cfg, tmp_path / "trial", cache_dir=tmp_path / "cache")  # a rerun does not train it again
    assert (again.status, again.step, again.reason) == (result.status, result.step, result.reason)

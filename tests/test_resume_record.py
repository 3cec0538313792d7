"""A trial restarted from its newest checkpoint skips the steps before it, so every metric up to a checkpoint
must be in MLflow before the checkpoint file exists; otherwise a crash between the two leaves a gap in the
trial's step axis (seen as steps 6 and 8 missing after a node was lost).  Real trainer, real sqlite store."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from gat_core import checkpoint as ckpt
from gat_core.config import TrialConfig
from gat_core.loop import train
from orchestrator.tracking import Reporter
from orchestrator.tracking import TrialLogger
from tests.helpers import tiny_study


def test_metrics_reach_mlflow_before_the_checkpoint_of_their_step_is_written(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    spec = tiny_study("resume", tmp_path, steps=8, log_every=2, checkpoint_every=4, device="cpu")
    cfg = TrialConfig.model_validate({k: spec[k] for k in ("dataset", "model", "train", "eval")})

    stored_at_save: dict[int, int] = {}  # checkpoint step -> highest step MLflow held when its file was written
    real_save = ckpt.save_atomic

    def save_atomic(state, path: Path):
        if path.parent.name == "checkpoints":
            logged = client.get_metric_history(run_id, "loss_d")
            stored_at_save[state["step"]] = max((m.step for m in logged), default=-1)
        return real_save(state, path)

    monkeypatch.setattr(ckpt, "save_atomic", save_atomic)
    published: list[tuple[str, int]] = []
    logger = TrialLogger(uri, run_id, flush_seconds=3600)  # no flush by the clock: only the reporter's
    train(cfg, tmp_path / "trial", Reporter(logger, lambda m, folder: published.append((m["kind"], m["step"]))),
          cache_dir=tmp_path / "cache")

    assert stored_at_save == {4: 4, 8: 8}
    assert ("persist", 4) not in published and ("checkpoint", 4) in published  # Ray sees no persist events
    assert mlflow.MlflowClient(uri).get_run(run_id).data.tags["logged_through_step"] == "8"


def test_a_flush_that_fails_halfway_leaves_a_tag_that_matches_the_stored_steps(tmp_path):
    """The tag saying how far a run is logged travels in each chunk's own log_batch, so a restart after a
    half-written flush neither logs a stored step twice nor skips an unstored one."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("chunks")).info.run_id
    logger = TrialLogger(uri, run_id, flush_seconds=3600)
    for step in range(1, 401):  # 3 keys x 400 steps = 1200 metrics: two chunks of at most 900
        logger.log(step, {"loss_d": step / 10, "loss_g": -step / 10, "lr_g": 1e-3})
    real = logger.client.log_batch
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("database is locked")
        return real(*args, **kwargs)

    logger.client.log_batch = fail_second
    assert not logger.flush()  # kept for retry
    stored = sorted(m.step for m in client.get_metric_history(run_id, "loss_d"))
    through = int(client.get_run(run_id).data.tags["logged_through_step"])
    assert stored == list(range(1, through + 1)) and 250 < through < 400

    restarted = TrialLogger(uri, run_id, flush_seconds=3600)  # the process died: a new attempt logs again
    for step in range(1, 401):
        restarted.log(step, {"loss_d": step / 10, "loss_g": -step / 10, "lr_g": 1e-3})
    assert restarted.flush()
    for key in ("loss_d", "loss_g", "lr_g"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, 401))
    assert client.get_run(run_id).data.tags["logged_through_step"] == "400"


def test_a_step_still_being_evaluated_when_the_trial_died_is_logged_in_full_after_the_restart(tmp_path):
    """Seen in a real study: a flush by the clock sent step 800's losses and marked 800 logged, the trial died
    during step 800's evaluation, and the restart (from the step-700 checkpoint) skipped step 800, fd and all."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("held")).info.run_id
    logger = TrialLogger(uri, run_id, flush_seconds=0)  # the clock flushes at every call
    logger.log(790, {"loss_d": 0.5})
    logger.log(800, {"loss_d": 0.4})  # ... and the process dies while step 800 is evaluated
    assert client.get_run(run_id).data.tags["logged_through_step"] == "799"  # 800 held back, not marked

    restarted = TrialLogger(uri, run_id, flush_seconds=0)  # resumed from the step-700 checkpoint
    for step in range(710, 800, 10):
        restarted.log(step, {"loss_d": 0.5})
    restarted.log(800, {"loss_d": 0.4})
    restarted.log(800, {"fd_classifier": 12.0})
    restarted.log(810, {"loss_d": 0.3})
    restarted.finish("completed", 810)
    assert [m.step for m in client.get_metric_history(run_id, "loss_d")] == [790, 800, 810]  # none twice
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "fd_classifier")] == [(800, 12.0)]
    assert client.get_run(run_id).data.tags["logged_through_step"] == "810"

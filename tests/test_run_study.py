"""End to end on a real local Ray and a real sqlite MLflow store."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.runner import run_study
from orchestrator.study import load_study
from orchestrator.tracking import StudyTracker
from tests.helpers import ONE_TRIAL_STEPS, children, cli, kill_and_finish, start_one_trial_study, steps_of, tiny_study, write_study


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("e2e")
    spec = tiny_study("e2e", tmp / "out")
    spec["grid"] = {"model.width": [32, 48]}
    study = load_study(write_study(tmp / "study.yaml", spec))
    outcomes = run_study(study, quiet=True)
    return study, outcomes


def test_every_trial_completes_with_the_metric(finished):
    study, outcomes = finished
    assert [o.status for o in outcomes] == ["completed", "completed"]
    assert all(o.step == 6 and o.metric is not None and o.metric > 0 for o in outcomes)
    assert all((o.workdir / "final_model.pt").exists() for o in outcomes)


def test_mlflow_contract(finished):
    study, outcomes = finished
    client = MlflowClient(study.config.tracking_uri)
    assert study.config.tracking_uri == f"sqlite:///{study.config.out / 'mlflow.db'}"
    tracker = StudyTracker(study.config.tracking_uri, "e2e")
    parent_id = tracker.parent_run("e2e")
    parent = client.get_run(parent_id)
    assert parent.data.tags["status"] == "completed" and parent.data.tags["git_commit"]
    study_files = {Path(a.path).name for a in client.list_artifacts(parent_id, "study")}
    assert {"study.yaml", "resolved_study.json", "trials.json", "environment.json"} <= study_files

    runs = children(client, "e2e")
    assert len(runs) == 2
    by_id = {r.data.tags["trial_id"]: r for r in runs}
    assert set(by_id) == {t.trial_id for t in study.trials}
    for trial in study.trials:
        run = by_id[trial.trial_id]
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED"
        params = run.data.params
        assert params["model.width"] == str(trial.config.model.width)
        assert params["train.mng"] == "exp"
        for key in ("gflops_g", "gflops_d", "params_g", "params_d"):
            assert float(params[key]) > 0
        metrics = run.data.metrics
        for key in ("loss_d", "loss_g", "r1", "r2", "lr_g", "lr_d", "train_flops", "fd_classifier", "classifier_accuracy"):
            assert key in metrics, key
        assert steps_of(client, run.info.run_id, "loss_d") == [2, 4, 6]
        assert steps_of(client, run.info.run_id, "fd_classifier") == [0, 3, 6]
        flops = [m.value for m in client.get_metric_history(run.info.run_id, "train_flops")]
        assert flops == sorted(flops) and flops[-1] == pytest.approx(float(params["macs_per_sample_iter"]) * 8 * 6)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
        assert any(p.endswith("final.png") for p in artifacts)
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/final_model.pt"]
    widths = sorted((float(by_id[t.trial_id].data.params["gflops_g"]), t.config.model.width) for t in study.trials)
    assert [w for _, w in widths] == [32, 48]


def test_rerun_of_a_finished_study_trains_nothing(finished):
    study, _ = finished
    client = MlflowClient(study.config.tracking_uri)
    before = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "loss_d")) for r in children(client, "e2e")}
    ckpts = sorted((study.config.out / "trials").glob("*/checkpoints/*.pt"))
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    outcomes = run_study(study, quiet=True)
    assert [o.status for o in outcomes] == ["completed", "completed"]
    after = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "loss_d")) for r in children(client, "e2e")}
    assert after == before
    assert [p.stat().st_mtime_ns for p in sorted((study.config.out / "trials").glob("*/checkpoints/*.pt"))] == stamps


def test_interrupted_study_resumes_in_the_same_runs(tmp_path):
    """SIGINT mid-trial, then the same command again: one child run per trial, continuous steps."""
    path, proc, trial_dir, env = start_one_trial_study(tmp_path, "resume")
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    study = load_study(path)
    client = MlflowClient(study.config.tracking_uri)
    (run,) = children(client, "resume")
    assert run.data.tags["status"] != "completed"
    interrupted_at = max(steps_of(client, run.info.run_id, "loss_d"))
    assert 8 <= interrupted_at < ONE_TRIAL_STEPS

    result = subprocess.run(cli("run", str(path)), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (run,) = children(client, "resume")
    assert run.data.tags["status"] == "completed"
    steps = steps_of(client, run.info.run_id, "loss_d")
    assert steps == list(range(2, ONE_TRIAL_STEPS + 1, 2))  # continuous, no step logged twice
    resumed = [m.value for m in client.get_metric_history(run.info.run_id, "resumed_from_step")]
    assert len(resumed) == 1 and 4 <= resumed[0] <= interrupted_at

    status = subprocess.run(cli("status", str(path)), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "1 completed" in status.stdout


def test_sigterm_to_the_driver_stops_the_study_as_ctrl_c_does(tmp_path):
    """A scheduler's SIGTERM (time limit, preemption, `kill`) to the driver alone: the study stops cleanly,
    says how to resume, exits 130 and marks its trial interrupted (Ray's own handler would abort it)."""
    path, proc, _, _ = start_one_trial_study(tmp_path, "sigterm")
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    text = out.decode()
    assert proc.returncode == 130, text[-3000:]
    assert "run the same command again to resume" in text and "SIGTERM received" not in text
    client = MlflowClient(load_study(path).config.tracking_uri)
    (run,) = children(client, "sigterm")
    assert run.data.tags["status"] == "interrupted"


def test_gan_and_dit_trials_in_one_study(tmp_path, ray_session):
    """Both families in one Ray study: the DiT trial is evaluated at several NFE, both carry compute columns."""
    spec = tiny_study("mixed", tmp_path / "out")
    spec["train"]["diffusion"] = {"sample_steps": 2, "eval_nfe": [1, 2, 4]}
    spec["grid"] = {"family": [{"model.family": "gat"}, {"model.family": "dit", "train.beta1": 0.9}]}
    study = load_study(write_study(tmp_path / "study.yaml", spec))
    outcomes = run_study(study, quiet=True)
    assert [o.status for o in outcomes] == ["completed", "completed"]
    client = MlflowClient(study.config.tracking_uri)
    runs = {r.data.params["model.family"]: r for r in children(client, "mixed")}
    gat, dit = runs["gat"], runs["dit"]
    for k in (1, 2, 4):
        assert f"fd_classifier_nfe{k}" in dit.data.metrics
        assert dit.data.metrics[f"sample_gflops_nfe{k}"] == pytest.approx(k * float(dit.data.params["gflops_g"]), rel=1e-6)
    assert float(dit.data.params["sample_gflops"]) == pytest.approx(2 * float(dit.data.params["gflops_g"]), rel=1e-6)
    assert float(gat.data.params["sample_gflops"]) == pytest.approx(float(gat.data.params["gflops_g"]))
    assert float(dit.data.params["gflops_d"]) == 0 and float(gat.data.params["gflops_d"]) > 0
    assert "loss_diffusion" in dit.data.metrics and "loss_d" in gat.data.metrics


def test_killed_trial_worker_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL of the process training a trial: Ray Tune restarts it from its checkpoint, in the same run."""
    kill_and_finish(tmp_path, "crash", "worker.pid")


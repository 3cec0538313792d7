"""Trials that cannot run end `failed` with their reason, are not retried, and leave the rest of the study
intact; relative paths in a study file work from the user's folder; every finished trial has a health tag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image

from orchestrator.cli import main
from orchestrator.plan import si_units
from orchestrator.tracking import HEALTH_TAG, ROLE_TAG
from tests.helpers import tiny_study, write_study


def _tune_record(experiment: Path) -> dict[str, tuple[str, int]]:
    """trial_id -> (Tune's final status, its failure count) of every trial of one `run`, from the experiment
    state Tune saved in its storage folder: a trial Tune retried has num_failures > 0 (ERROR once they exceed
    max_failures); TERMINATED with 0 failures is a trial that ran exactly one attempt."""
    from ray.tune import ExperimentAnalysis

    return {t.config["trial_id"]: (t.status, t.num_failures) for t in ExperimentAnalysis(str(experiment)).trials}


def test_config_and_data_errors_are_permanent_crashes_are_not():
    from gat_core.checkpoint import CheckpointError, IncompatibleCheckpoint

    from orchestrator.runner import is_permanent

    for exc in (ValueError("no class subfolders"), FileNotFoundError("x"), NotADirectoryError("x"),
                PermissionError("x"), IncompatibleCheckpoint("x")):
        assert is_permanent(exc), exc
    for exc in (RuntimeError("CUDA error"), CheckpointError("truncated ckpt"), OSError("connection reset"),
                MemoryError(), KeyError("x")):
        assert not is_permanent(exc), exc


def _photo_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(24):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_relative_folder_paths_run_and_a_broken_dataset_fails_once_with_its_reason(
        tmp_path, monkeypatch, capfd, ray_session):
    monkeypatch.chdir(tmp_path)
    _photo_folder(tmp_path / "photos")
    (tmp_path / "empty").mkdir()  # exists, so plan accepts it, but holds no class subfolders
    spec = tiny_study("paths", Path("out"))
    spec["dataset"] = {"name": "folder", "path": "photos", "resolution": 8}
    spec["resources"]["max_failures"] = 2  # a retry would be allowed: a config error must not use it
    spec["grid"] = {"dataset.path": ["photos", "empty"]}
    write_study(tmp_path / "study.yaml", spec)

    assert main(["run", "study.yaml"]) == 1  # a failed trial is a failure, not an interruption (130)
    out, err = capfd.readouterr()
    (first,) = (tmp_path / "out" / "ray").iterdir()  # Tune's folder of this `run`
    assert "Traceback" not in err  # not retried: no Ray task failure, no pydantic pickling warning
    assert "failed trials" in out and "has no class subfolders" in out

    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("paths")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs, not traces
    runs = {r.data.tags["mlflow.runName"]: r for r in
            client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial'")}
    good, bad = runs["path=photos"], runs["path=empty"]
    assert good.data.tags["status"] == "completed" and good.data.tags[HEALTH_TAG] in ("ok", "collapsed", "diverged")
    assert bad.data.tags["status"] == "failed" and "no class subfolders" in bad.data.tags["reason"]
    # one attempt each, as Tune recorded them: the broken trial was not retried although max_failures is 2
    # (retried, it would read ("ERROR", 3): three attempts, each a failure)
    assert _tune_record(first) == {good.data.tags["trial_id"]: ("TERMINATED", 0),
                                   bad.data.tags["trial_id"]: ("TERMINATED", 0)}
    history = client.get_metric_history(good.info.run_id, "diversity_pixels")
    assert sorted({m.step for m in history}) == [0, 3, 6]  # beside the metric at every evaluation

    assert main(["status", "study.yaml", "--json"]) == 0
    status = json.loads(capfd.readouterr().out)
    assert {t["name"]: (t["status"], t["health"]) for t in status["trials"]} == {
        "path=photos": ("completed", good.data.tags[HEALTH_TAG]), "path=empty": ("failed", "")}

    # the results table, at the end of `run` and in `status`: the scored trial first, with its metric, diversity,
    # GFLOPs per image and training MACs; the failed one after it with "-" where it has no value
    ids = {good.data.tags["trial_id"]: good, bad.data.tags["trial_id"]: bad}
    assert main(["status", "study.yaml"]) == 0
    for text in (out, capfd.readouterr().out):
        lines = text.splitlines()
        assert "(sorted by fd_classifier, best first)" in text
        header = next(line for line in lines if line.startswith("trial_id "))
        assert header.split()[:10] == ["trial_id", "name", "status", "step", "fd_classifier", "diversity_pixels",
                                       "GFLOPs", "train", "MACs", "health"]
        rows = [line.split() for line in lines if line.split()[:1] and line.split()[0] in ids]
        assert [r[1] for r in rows] == ["path=photos", "path=empty"]
        g, b = (ids[r[0]] for r in rows)
        assert rows[0][2:9] == ["completed", "6", f"{g.data.metrics['fd_classifier']:.4f}",
                                f"{g.data.metrics['diversity_pixels']:.3f}", f"{float(g.data.params['gflops_g']):.4f}",
                                si_units(g.data.metrics["train_flops"]), g.data.tags[HEALTH_TAG]]
        assert rows[1][2:6] == ["failed", "0", "-", "-"] and rows[1][7] == "-"  # nothing scored, nothing trained
        assert rows[1][6] == f"{float(b.data.params['gflops_g']):.4f}"  # its model's cost is known all the same

    # the same command again: the finished trial is kept, the failed one is tried again (and fails again)
    logged = len(client.get_metric_history(good.info.run_id, "loss_d"))
    assert main(["run", "study.yaml"]) == 1
    again = {r.data.tags["mlflow.runName"]: r for r in
             client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial'")}
    assert again["path=photos"].info.run_id == good.info.run_id
    assert len(client.get_metric_history(good.info.run_id, "loss_d")) == logged  # nothing retrained or re-logged
    (second,) = set((tmp_path / "out" / "ray").iterdir()) - {first}
    assert _tune_record(second) == {bad.data.tags["trial_id"]: ("TERMINATED", 0)}  # only it, once again

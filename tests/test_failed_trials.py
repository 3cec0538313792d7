"""Trials that cannot run end `failed` with their reason, are not retried, and leave the rest of the study
intact; relative paths in a study file work from the user's folder; every finished trial has a health tag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image

from orchestrator.cli import main
from orchestrator.tracking import HEALTH_TAG, ROLE_TAG
from tests.helpers import tiny_study, write_study


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
    history = client.get_metric_history(good.info.run_id, "diversity_pixels")
    assert sorted({m.step for m in history}) == [0, 3, 6]  # beside the metric at every evaluation

    assert main(["status", "study.yaml", "--json"]) == 0
    status = json.loads(capfd.readouterr().out)
    assert {t["name"]: (t["status"], t["health"]) for t in status["trials"]} == {
        "path=photos": ("completed", good.data.tags[HEALTH_TAG]), "path=empty": ("failed", "")}

    # the same command again: the finished trial is kept, the failed one is tried again (and fails again)
    logged = len(client.get_metric_history(good.info.run_id, "loss_d"))
    assert main(["run", "study.yaml"]) == 1
    again = {r.data.tags["mlflow.runName"]: r for r in
             client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial'")}
    assert again["path=photos"].info.run_id == good.info.run_id
    assert len(client.get_metric_history(good.info.run_id, "loss_d")) == logged  # nothing retrained or re-logged

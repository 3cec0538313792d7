"""The README's latent workflow as a new user runs it: from their own folder, with relative paths."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.tracking import ROLE_TAG
from tests.helpers import tiny_study, write_study


def test_readme_latent_workflow_with_relative_paths(tmp_path, monkeypatch, tiny_vae, tiny_dinov2, ray_session):
    """`gat-study encode shapes --vae ... --out latents/shapes64`, then a study with `latents: latents/shapes64`
    and `train.vfm.weights: dino.pth`, run from the folder holding it: every trial completes (the Ray workers,
    whose working directory is not the user's, get absolute paths)."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_dinov2, tmp_path / "dino.pth")
    assert main(["encode", "shapes", "--vae", str(tiny_vae), "--out", "latents/shapes64", "--resolution", "16",
                 "--size", "256"]) == 0
    spec = tiny_study("latent-readme", Path("runs/latent-readme"))
    spec["dataset"] = {"name": "shapes", "resolution": 16, "size": 256, "latents": "latents/shapes64"}
    spec["train"]["vfm"] = {"weights": "dino.pth", "model": "vit_small_patch14_dinov2", "image_size": 56,
                            "hidden_dim": 32}
    spec["grid"] = {"model.width": [32, 48]}
    write_study(tmp_path / "study.yaml", spec)
    assert main(["plan", "study.yaml"]) == 0
    assert main(["run", "study.yaml"]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'latent-readme' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("latent-readme")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial'")
    assert len(runs) == 2 and all(r.data.tags["status"] == "completed" for r in runs)
    assert all(r.data.params["dataset.latents"] == str(tmp_path / "latents" / "shapes64") for r in runs)

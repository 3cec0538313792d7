"""The README's workflows as a new user runs them: from their own folder, with relative paths."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.tracking import ROLE_TAG
from tests.helpers import tiny_study, write_study

README = Path(__file__).resolve().parents[1] / "README.md"
VFM = {"model": "vit_small_patch14_dinov2", "image_size": 56, "hidden_dim": 32}


def readme_latent_example() -> tuple[list[str], dict]:
    """The README's latent-space example: its `encode` command (as argv) and its `dataset:` section."""
    found = re.search(r"\*\*Latent space\*\*: `gat-study (encode [^`]+)`,\s*then\s*`(dataset: \{[^`]+\})`",
                      README.read_text())
    assert found, "the README's latent-space example moved: update this test with it"
    return found.group(1).split(), yaml.safe_load(found.group(2))["dataset"]


def trial_runs(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial'")


def test_readme_latent_workflow_with_relative_paths(tmp_path, monkeypatch, tiny_vae, tiny_dinov2, ray_session):
    """The README's `gat-study encode ...` and `dataset: {...}` as written, run from the user's folder with a
    relative `train.vfm.weights: dino.pth` and a relative sqlite store: every trial completes (the Ray
    workers, whose working directory is not the user's, get absolute paths).  Two changes to the README's
    command only: the VAE is the test's tiny one (a relative folder, where the README has the user's SD-VAE
    path), and `--size 256` keeps the encode short."""
    encode, dataset = readme_latent_example()
    vae_index = encode.index("--vae") + 1
    assert encode[1] == dataset["name"] and encode[encode.index("--out") + 1] == dataset["latents"]
    assert encode[encode.index("--resolution") + 1] == str(dataset["resolution"])
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_vae, tmp_path / "sd-vae")
    shutil.copy(tiny_dinov2, tmp_path / "dino.pth")
    encode[vae_index] = "sd-vae"
    assert main([*encode, "--size", "256"]) == 0
    spec = tiny_study("latent-readme", Path("runs/latent-readme"))
    spec["dataset"] = {**dataset, "size": 256}
    spec["train"]["vfm"] = {"weights": "dino.pth", **VFM}
    spec["tracking"] = {"uri": "sqlite:///latent.db"}
    spec["grid"] = {"model.width": [32, 48]}
    write_study(tmp_path / "study.yaml", spec)
    assert main(["plan", "study.yaml"]) == 0
    assert main(["run", "study.yaml"]) == 0
    runs = trial_runs(f"sqlite:///{tmp_path / 'latent.db'}", "latent-readme")
    assert len(runs) == 2 and all(r.data.tags["status"] == "completed" for r in runs)
    assert all(r.data.params["dataset.latents"] == str(tmp_path / dataset["latents"]) for r in runs)
    assert all(r.data.params["dataset.resolution"] == str(dataset["resolution"]) for r in runs)
    assert sorted(p.name for p in tmp_path.glob("**/*.db")) == ["latent.db"]  # one store, the user's


def test_relative_weights_in_the_environment_reach_the_workers(tmp_path, monkeypatch, tiny_dinov2, ray_session):
    """`GAT_STUDY_DINOV2_WEIGHTS=dino.pth` (relative) and `--tracking-uri sqlite:///runs.db`, run from the
    user's folder: the trial finds the teacher (a worker's working directory is not the user's)."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_dinov2, tmp_path / "dino.pth")
    monkeypatch.setenv("GAT_STUDY_DINOV2_WEIGHTS", "dino.pth")
    spec = tiny_study("env-weights", Path("out"))
    spec["train"]["vfm"] = dict(VFM)
    spec["grid"] = {"train.seed": [0]}
    write_study(tmp_path / "study.yaml", spec)
    assert main(["run", "study.yaml", "--tracking-uri", "sqlite:///runs.db"]) == 0
    runs = trial_runs(f"sqlite:///{tmp_path / 'runs.db'}", "env-weights")
    assert [r.data.tags["status"] for r in runs] == ["completed"], [r.data.tags.get("reason") for r in runs]
    assert "vfm_align" in runs[0].data.metrics  # the teacher was loaded and aligned to

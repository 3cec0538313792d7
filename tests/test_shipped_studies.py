"""Every study file in studies/ (found by glob: a study added later is tested too) goes through `gat-study plan`
and, when this machine has what it needs, a 2-step smoke `gat-study run` (in-process through
`orchestrator.cli.main`) on a real local Ray and a real sqlite MLflow store in tmp_path.

The smoke run keeps the study file as shipped and changes it only with `--set`: the output folder (so the
store is tmp_path's), 2 training steps, batch 8, tiny evaluations, a small dataset, and a reduced grid (each
grid key's first value; every value of a key that sweeps `model.family`, so both families run; an isoFLOP
study's two smallest budgets, shrunk to a few steps, and three smallest sizes).  Every trial must complete
and its child run hold the final metric.

A study whose weights or data are not on this machine (`load_study(require_files=False).missing_files`:
studies/imagenet256-gat.yaml, whose SD-VAE latents of ImageNet, DINOv2 teacher, Inception network and ADM
reference batch are not here) is planned only: the Inception FID against the ADM reference and the
ImageNet latents cannot be faked at a size a CPU test affords (the tiny VAE and DINOv2 fixtures of
conftest.py would still leave the torch-fidelity Inception and 32x32x4 latents of 1000 classes).  For it,
`plan --accelerator H100` must give GPU-hours without any of the files, and `run` must refuse before
anything starts with an error naming each missing file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.study import load_study
from orchestrator.tracking import ROLE_TAG

ROOT = Path(__file__).resolve().parent.parent
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
NEEDS_FILES = {p.name for p in STUDIES if load_study(p, require_files=False).missing_files}
SMOKE_STEPS = 2


def _flow(value) -> str:
    """A --set value: YAML flow text (JSON is YAML 1.2)."""
    return json.dumps(value)


def _smoke_grid_value(value):
    """A grid value for a 2-step trial: a linked mapping's own length, batch and interval made tiny."""
    if not isinstance(value, dict):
        return value
    value = dict(value)
    for key, small in (("train.steps", SMOKE_STEPS), ("train.batch_size", 8), ("eval.interval", SMOKE_STEPS)):
        if key in value:
            value[key] = small
    return value


def smoke_overrides(raw: dict, out: Path) -> list[str]:
    """The --set overrides that make the study file `raw` a quick smoke run writing under `out`."""
    sets = {"output_dir": str(out), "train.batch_size": 8, "train.log_every": 1, "train.checkpoint_every": 1,
            "train.diffusion.sample_steps": 2, "train.diffusion.eval_nfe": [1, 2],
            "eval.interval": SMOKE_STEPS, "eval.num_samples": 16, "eval.final_samples": 16, "eval.batch_size": 16,
            "eval.classifier_epochs": 1, "eval.grid_size": 2, "eval.extra_metrics": [],
            "resources.max_concurrent": 2, "resources.cpus_per_trial": 1, "resources.max_failures": 0,
            "resources.workers": 1, "resources.gpus_per_trial": 0}
    if (raw.get("dataset") or {}).get("name") in ("shapes", "photos", "digits", None):
        sets["dataset.size"] = 256
    if raw.get("isoflop"):  # budgets of a few steps each at batch 8 (steps come from the budget)
        sizes = raw["isoflop"]["sizes"]
        sets["isoflop.sizes"] = ({k: v[:3] for k, v in sizes.items()} if isinstance(sizes, dict) else sizes[:3])
        sets["isoflop.budgets"] = [2.0e9, 3.0e9]
    else:
        sets["train.steps"] = SMOKE_STEPS
    for key, values in (raw.get("grid") or {}).items():
        families = {v.get("model.family") for v in values if isinstance(v, dict)}
        keep = values if len(families - {None}) > 1 or key == "model.family" else values[:1]
        sets[f"grid.{key}"] = [_smoke_grid_value(v) for v in keep]
    return [f"{k}={_flow(v)}" for k, v in sets.items()]


def _set_args(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_plan(path, tmp_path, monkeypatch, capsys):
    """plan, in-process, with no MLflow store (every trial new) and in JSON with the same trials."""
    monkeypatch.chdir(tmp_path)  # relative paths and default stores resolve here, never in the checkout's runs/
    study = load_study(path, require_files=False)
    elsewhere = ["--without-files"] if path.name in NEEDS_FILES else []
    if elsewhere:  # refused without the flag, naming each missing file and the flag
        assert main(["plan", str(path)]) == 2
        err = capsys.readouterr().err
        assert all(line in err for line in study.missing_files) and "--without-files" in err
    assert main(["plan", str(path), *elsewhere]) == 0
    text = capsys.readouterr().out
    assert f"study {study.config.name} ({path}): {len(study.trials)} trials" in text
    assert ("not on this machine" in text) == (path.name in NEEDS_FILES)
    assert main(["plan", str(path), "--json", *elsewhere]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [t["trial_id"] for t in plan["trials"]] == [t.trial_id for t in study.trials]
    assert all(t["state"] == "new" and t["train_flops"] > 0 for t in plan["trials"])


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory) -> str:
    """One sqlite store for every smoke run (an experiment per study; its schema is created once)."""
    return f"sqlite:///{tmp_path_factory.mktemp('smoke-store') / 'mlflow.db'}"


@pytest.mark.parametrize("path", [p for p in STUDIES if p.name not in NEEDS_FILES],
                         ids=[p.stem for p in STUDIES if p.name not in NEEDS_FILES])
def test_smoke_run(path, tmp_path, monkeypatch, ray_session, smoke_store):
    """A 2-step run of the study file (reduced by --set): every trial completes, in a sqlite store in tmp_path."""
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(path.read_text())
    overrides = smoke_overrides(raw, tmp_path / "out")
    study = load_study(path, overrides)
    families = {t.config.model.family for t in study.trials}
    assert study.trials and len(study.trials) <= 6
    assert main(["run", str(path), "--num-cpus", "2", "--tracking-uri", smoke_store, *_set_args(overrides)]) == 0
    client = MlflowClient(smoke_store)
    exp = client.get_experiment_by_name(study.config.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial'")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t.trial_id for t in study.trials)
    metric = study.config.eval.metric
    for run in runs:
        assert run.data.tags["status"] == "completed", (run.info.run_name, run.data.tags.get("reason"))
        assert metric in run.data.metrics
        if not raw.get("isoflop"):
            assert run.data.tags["final_step"] == str(SMOKE_STEPS)
    assert {r.data.params["model.family"] for r in runs} == families


def test_every_gpu_study_is_priced_in_gpu_hours(tmp_path, monkeypatch, capsys):
    """The studies that cannot run here are the GPU ones, and plan prices each on an H100 without its files."""
    monkeypatch.chdir(tmp_path)
    assert "imagenet256-gat.yaml" in NEEDS_FILES
    for name in sorted(NEEDS_FILES):
        path = ROOT / "studies" / name
        assert main(["plan", str(path), "--accelerator", "H100", "--json", "--without-files"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert plan["accelerator"]["name"] == "H100-SXM"
        assert plan["study_cost"]["gpu_hours"] > 0
        assert plan["missing_files"]
        assert main(["plan", str(path), "--accelerator", "H100", "--without-files"]) == 0
        assert "GPU-hours" in capsys.readouterr().out


def test_imagenet_grid_is_the_papers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = load_study(ROOT / "studies" / "imagenet256-gat.yaml", require_files=False)
    sizes = sorted((t.config.model.width, t.config.model.depth, t.config.model.patch_size) for t in study.trials)
    assert sizes == sorted((w, d, p) for w, d in ((384, 12), (768, 12), (1024, 24), (1152, 28)) for p in (2, 4, 8))
    cfg = study.trials[0].config
    assert cfg.eval.metric == "fid" and cfg.eval.final_samples == 50_000 and cfg.train.vfm is not None
    assert (cfg.dataset.model_channels, cfg.dataset.model_resolution) == (4, 32)  # planned as SD-VAE latents


def test_missing_weights_error_names_each_file(tmp_path, monkeypatch, capsys):
    """run refuses the GPU study before anything starts, naming the latents folder; with latents there, naming
    the DINOv2 teacher, the Inception network and the ADM reference batch (paths as the study file gives them)."""
    monkeypatch.chdir(tmp_path)
    path = ROOT / "studies" / "imagenet256-gat.yaml"
    args = ["run", str(path), "--set", f"output_dir={tmp_path / 'out'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"dataset.latents: {tmp_path / 'data' / 'imagenet256-sdvae' / 'meta.json'} not found" in err
    latents = tmp_path / "data" / "imagenet256-sdvae"
    latents.mkdir(parents=True)
    (latents / "meta.json").write_text(json.dumps({"latent_channels": 4, "latent_resolution": 32}))
    assert main(args) == 2
    err = capsys.readouterr().err
    for key, file in (("train.vfm.weights", "weights/dinov2_vitb14_pretrain.pth"),
                      ("eval.inception_weights", "weights/weights-inception-2015-12-05-6726825d.pth"),
                      ("eval.reference_stats", "data/VIRTUAL_imagenet256_labeled.npz")):
        assert f"{key}: " in err and str(tmp_path / file) in err, (key, err)
    assert "Traceback" not in err and not (tmp_path / "out" / "mlflow.db").exists()

"""Study files: validation with clear messages, grid expansion, overrides, schema, plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.study import StudyError, expand_grid, load_study
from orchestrator.study_file import parse_override

BASE = {
    "name": "unit",
    "dataset": {"name": "shapes", "resolution": 16},
    "model": {"width": 32, "depth": 4, "heads": 2, "patch_size": 2},
    "train": {"steps": 10, "batch_size": 8},
}


def write(tmp_path: Path, data: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def problems(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(StudyError) as info:
        load_study(path, overrides)
    return info.value.problems


def test_grid_is_cartesian_product_in_file_order():
    points = expand_grid({"model.width": [32, 64], "train.seed": [0, 1, 2]})
    assert len(points) == 6
    assert points[0] == {"model.width": 32, "train.seed": 0}
    assert points[-1] == {"model.width": 64, "train.seed": 2}


def test_study_expands_to_validated_trials_with_stable_ids(tmp_path):
    path = write(tmp_path, {**BASE, "grid": {"model.width": [32, 64], "train.mng": ["exp", "off"]}})
    study = load_study(path)
    assert [t.swept for t in study.trials] == expand_grid(study.config.grid)
    assert {t.config.model.width for t in study.trials} == {32, 64}
    assert {t.config.train.levels for t in study.trials} == {4, 1}
    again = load_study(path)
    assert [t.trial_id for t in again.trials] == [t.trial_id for t in study.trials]
    assert len({t.trial_id for t in study.trials}) == 4
    params = study.trials[0].params()
    assert params["model.width"] == 32 and params["train.mng"] == "exp"


def test_trial_names_spell_list_values_including_the_empty_one(tmp_path):
    grid = {"train.augment": [[], ["color", "translation"]]}
    assert [t.name for t in load_study(write(tmp_path, {**BASE, "grid": grid})).trials] == [
        "augment=none", "augment=color+translation"]
    linked = {"variant": [{"train.augment": [], "train.mng": "off"}, {"train.augment": ["color"], "train.mng": "exp"}]}
    assert [t.name for t in load_study(write(tmp_path, {**BASE, "grid": linked})).trials] == [
        "variant=none", "variant=color"]


def test_grid_of_dicts_sweeps_keys_together(tmp_path):
    path = write(tmp_path, {**BASE, "grid": {"model": [{"width": 32, "heads": 2}, {"width": 96, "heads": 4}]}})
    study = load_study(path)
    assert [(t.config.model.width, t.config.model.heads) for t in study.trials] == [(32, 2), (96, 4)]


def test_preset_fills_sizes(tmp_path):
    path = write(tmp_path, {**BASE, "dataset": {"name": "shapes", "resolution": 32}, "model": {"preset": "GAT-B/4"}})
    model = load_study(path).trials[0].config.model
    assert (model.depth, model.width, model.heads, model.patch_size) == (12, 768, 12, 4)


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"model": {**BASE["model"], "widht": 64}}, "model.widht", "unknown key"),
        ({"train": {**BASE["train"], "batch_size": "big"}}, "train.batch_size", "integer"),
        ({"model": {**BASE["model"], "width": 36, "heads": 8}}, "model.heads", "not divisible"),
        ({"model": {**BASE["model"], "patch_size": 3}}, "model.patch_size", "does not divide dataset.resolution 16"),
        ({"model": {"preset": "GAT-M/2"}}, "model.preset", "unknown preset"),
        ({"train": {"batch_size": 8}}, "train.steps", "exactly one of"),
        ({"dataset": {"name": "folder"}}, "dataset.path", "required"),
        ({"train": {**BASE["train"], "mng": "cubic"}}, "train.mng", "'exp', 'linear' or 'off'"),
        ({"colour": 1}, "colour", "unknown key"),
    ],
)
def test_invalid_values_name_file_key_and_expectation(tmp_path, change, key, words):
    path = write(tmp_path, {**BASE, **change})
    lines = problems(path)
    assert any(line.startswith(f"{path}: {key}: ") and words in line for line in lines), lines


def test_invalid_grid_point_names_the_point(tmp_path):
    path = write(tmp_path, {**BASE, "grid": {"model.patch_size": [2, 3]}})
    lines = problems(path)
    assert len(lines) == 1
    assert "model.patch_size" in lines[0] and "grid point 1" in lines[0] and "patch_size=3" in lines[0]


def test_grid_outside_trial_sections_and_empty_lists_are_rejected(tmp_path):
    lines = problems(write(tmp_path, {**BASE, "grid": {"resources.cpus_per_trial": [1, 2]}}))
    assert any("grid.resources.cpus_per_trial: can only sweep" in line for line in lines), lines
    lines = problems(write(tmp_path, {**BASE, "grid": {"model.width": []}}))
    assert any("grid.model.width: empty list" in line for line in lines), lines


def test_duplicate_grid_points_are_rejected(tmp_path):
    lines = problems(write(tmp_path, {**BASE, "grid": {"model.width": [32, 32]}}))
    assert any("same trial" in line for line in lines)


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodel: {width: 32\n")
    (line,) = problems(path)
    assert line.startswith(f"{path}:3:") and "invalid YAML" in line


def test_non_mapping_and_missing_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    assert "must be a mapping" in problems(path)[0]
    assert "cannot read study file" in problems(tmp_path / "nope.yaml")[0]


def test_overrides_are_yaml_typed_and_validated(tmp_path):
    path = write(tmp_path, BASE)
    study = load_study(path, ["train.steps=42", "model.width=64", "grid.train.seed=[0, 1]", "train.augment=[flip]"])
    assert {t.config.train.steps for t in study.trials} == {42}
    assert [t.config.train.seed for t in study.trials] == [0, 1]
    assert study.trials[0].config.train.augment == ["flip"]
    lines = problems(path, ["train.steps=-3"])
    assert lines[0].startswith(f"{path} (with --set overrides): train.steps:")
    assert parse_override("eval.metric=fd_classifier") == ("eval.metric", "fd_classifier")
    with pytest.raises(StudyError, match="expected KEY=VALUE"):
        parse_override("train.steps")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    path = write(tmp_path, {**BASE, "model": {**BASE["model"], "heads": 5}})
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.heads" in err and "Traceback" not in err
    assert main(["plan", str(write(tmp_path, BASE, "ok.yaml")), "--set", "train.stepz=3"]) == 2
    assert "train.stepz: unknown key" in capsys.readouterr().err


def test_schema_is_json_schema_of_study(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "StudyConfig"
    assert {"name", "dataset", "model", "train", "eval", "resources", "tracking", "grid"} <= set(schema["properties"])


def test_plan_json_lists_costs_that_grow_with_width(tmp_path, capsys):
    path = write(tmp_path, {**BASE, "grid": {"model.width": [32, 64]}})
    assert main(["plan", str(path), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    small, large = plan["trials"]
    assert large["params_g"] > 3 * small["params_g"] and large["gflops_d"] > 3 * small["gflops_d"]
    assert plan["total_train_flops"] == pytest.approx(small["train_flops"] + large["train_flops"])
    assert small["train_flops"] == small["macs_per_sample_iter"] * 8 * 10


def test_plan_states_the_workers_of_each_trial(tmp_path, capsys):
    path = write(tmp_path, {**BASE, "resources": {"workers": 2, "cpus_per_trial": 2}})
    assert main(["plan", str(path)]) == 0
    assert "each trial: 2 data-parallel workers of 2 CPU" in capsys.readouterr().out


def test_flops_budget_sets_steps(tmp_path):
    path = write(tmp_path, {**BASE, "train": {"flops_budget": 1e12, "batch_size": 8}})
    from orchestrator.plan import plan_trial

    cost = plan_trial(load_study(path).trials[0])
    assert cost.train_flops <= 1e12 < cost.train_flops + cost.macs_per_sample_iter * 8 + 1
    assert cost.steps > 1


def test_shipped_studies_are_valid():
    root = Path(__file__).resolve().parent.parent / "studies"
    files = sorted(root.glob("*.yaml"))
    assert files
    for path in files:  # a GPU study's weights and data are not on this machine (tests/test_shipped_studies.py)
        assert load_study(path, require_files=False).trials


def test_linked_grid_values_change_together(tmp_path):
    families = [{"model.family": "gat", "train.beta1": 0.0}, {"model.family": "dit", "train.beta1": 0.9}]
    path = write(tmp_path, {**BASE, "grid": {"family": families, "model.width": [32, 64]}})
    trials = load_study(path).trials
    assert [(t.config.model.family, t.config.train.beta1, t.config.model.width) for t in trials] == [
        ("gat", 0.0, 32), ("gat", 0.0, 64), ("dit", 0.9, 32), ("dit", 0.9, 64)]
    lines = problems(write(tmp_path, {**BASE, "grid": {"family": [{"optim.beta1": 0.9}]}}, "bad.yaml"))
    assert any("grid.family: can only sweep" in line for line in lines), lines


# --------------------------------------------------------------------------------------------- rough edges

def test_readme_grid_example_with_off_loads(tmp_path, monkeypatch):
    """YAML 1.2 booleans: `off` in the README's grid is the MNG schedule named off, in the file and in --set."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    block = text[text.index("```yaml\nname: my-study"):]
    block = block[len("```yaml\n"):block.index("```", 8)]
    path = tmp_path / "my-study.yaml"
    path.write_text(block)
    monkeypatch.chdir(tmp_path)
    study = load_study(path)
    assert {t.config.train.mng for t in study.trials} == {"exp", "off"}
    assert load_study(write(tmp_path, BASE), ["train.mng=off"]).trials[0].config.train.mng == "off"
    assert load_study(write(tmp_path, {**BASE, "train": {**BASE["train"], "ema_warmup": "on"}})
                      ).trials[0].config.train.ema_warmup is True  # booleans still take on/off


def test_duplicate_keys_are_refused_with_their_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: dup\ntrain:\n  steps: 10\n  steps: 20\n")
    (line,) = problems(path)
    assert line.startswith(f"{path}:4:3") and "duplicate key 'steps'" in line


def test_relative_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, {**BASE, "dataset": {"name": "folder", "path": "photos", "resolution": 16}})
    (trial,) = load_study(path).trials
    assert trial.config.dataset.path == tmp_path / "photos"  # absolute: a Ray worker finds it from anywhere


def test_a_missing_folder_dataset_fails_plan(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, {**BASE, "dataset": {"name": "folder", "path": "nowhere", "resolution": 16}})
    assert any(f"dataset.path: folder {tmp_path / 'nowhere'} does not exist" in line for line in problems(path))
    assert main(["plan", str(path)]) == 2  # the plan is refused as `run` would be
    err = capsys.readouterr().err
    assert f"dataset.path: folder {tmp_path / 'nowhere'} does not exist" in err and "--without-files" in err
    assert main(["plan", str(path), "--without-files"]) == 0  # a study whose data is on another machine
    assert f"folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().out


def test_tracking_uris_relative_sqlite_made_absolute_and_the_filesystem_store_refused(tmp_path, monkeypatch, capsys):
    from orchestrator.study import check_tracking_uri

    assert check_tracking_uri("sqlite:///rel/mlflow.db", cwd=tmp_path) == f"sqlite:///{tmp_path / 'rel' / 'mlflow.db'}"
    assert check_tracking_uri("sqlite:////abs/mlflow.db", cwd=tmp_path) == "sqlite:////abs/mlflow.db"
    for uri in ("http://127.0.0.1:5000", "postgresql+psycopg2://u@h/db", "databricks"):
        assert check_tracking_uri(uri, cwd=tmp_path) == uri
    for uri in ("file:///tmp/mlruns", "mlruns", "./runs/mlruns"):
        with pytest.raises(ValueError, match="filesystem store"):
            check_tracking_uri(uri)
    monkeypatch.chdir(tmp_path)  # in a study file: the store is the user's, wherever a trial runs
    path = write(tmp_path, {**BASE, "tracking": {"uri": "sqlite:///mine.db"}})
    assert load_study(path).config.tracking_uri == f"sqlite:///{tmp_path / 'mine.db'}"
    assert main(["plan", str(write(tmp_path, {**BASE, "tracking": {"uri": "file:///tmp/x"}}, "fs.yaml"))]) == 2
    err = capsys.readouterr().err
    assert "tracking.uri" in err and "filesystem store" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as usage:  # on the command line: a usage error, before anything is read
        main(["status", str(path), "--tracking-uri", "mlruns"])
    assert usage.value.code == 2 and "filesystem store" in capsys.readouterr().err

"""CLI conventions a new user relies on: version, verbosity anywhere, read-only commands, early checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orchestrator.cli import main
from tests.helpers import tiny_study, write_study


def _study(tmp_path: Path, **extra) -> Path:
    return write_study(tmp_path / "study.yaml", {**tiny_study("edges", tmp_path / "out"), **extra})


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("gat-study ")


def test_verbose_works_after_the_subcommand(tmp_path, capsys):
    assert main(["plan", str(_study(tmp_path)), "-v"]) == 0
    assert main(["-v", "plan", str(_study(tmp_path))]) == 0


def test_status_of_a_study_that_never_ran_writes_nothing(tmp_path, capsys):
    path = _study(tmp_path)
    assert main(["status", str(path)]) == 0
    assert "not started" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # no MLflow database, no folder


@pytest.mark.parametrize("where", ["flag", "file"])
def test_unusable_tracking_uris_are_refused_up_front(tmp_path, capsys, where):
    if where == "flag":
        with pytest.raises(SystemExit) as info:
            main(["status", str(_study(tmp_path)), "--tracking-uri", "foo://bar"])
        assert info.value.code == 2
    else:
        assert main(["plan", str(_study(tmp_path, tracking={"uri": "foo://bar"}))]) == 2
    err = capsys.readouterr().err
    assert "foo://bar" in err and "sqlite:///" in err and "Traceback" not in err


def test_encode_checks_the_vae_before_building_the_dataset(tmp_path, capsys, monkeypatch):
    import gat_core.data

    monkeypatch.setattr(gat_core.data, "load_dataset", lambda cfg: pytest.fail("built the dataset first"))
    assert main(["encode", "shapes", "--vae", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "lat")]) == 2
    assert "--vae: weights folder" in capsys.readouterr().err


def test_eval_of_a_file_that_is_not_a_model_file_says_what_was_expected(tmp_path, capsys):
    bogus = tmp_path / "notes.pt"
    bogus.write_bytes(b"not a zip at all")
    assert main(["eval", str(bogus), "--metric", "fd_classifier"]) == 2
    err = capsys.readouterr().err
    assert "not a gat-study model file" in err and "final_model.pt" in err and "weights_only" not in err
    torch.save({"something": torch.zeros(1)}, bogus)
    assert main(["eval", str(bogus), "--metric", "fd_classifier"]) == 2
    assert "final_model.pt" in capsys.readouterr().err


class _Stream(__import__("io").StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class _Trial:
    def __init__(self, tid: str) -> None:
        self.config, self.status = {"trial_id": tid}, "RUNNING"


@pytest.mark.parametrize("tty", [True, False])
def test_live_table_redraws_in_place_on_a_terminal_and_appends_in_a_log(tty):
    from orchestrator.progress import ProgressTable

    stream = _Stream(tty)
    table = ProgressTable({"a": "width=32"}, "fd_classifier", "diversity_classifier", refresh=0, stream=stream)
    trials = [_Trial("a")]
    for step in (10, 20):
        table.on_trial_result(0, trials, trials[0], {"step": step, "total_steps": 40, "fd_classifier": 9.5,
                                                    "diversity_classifier": 0.8, "loss_d": 0.5})
    text = stream.getvalue()
    assert text.count("width=32") == 2 and "0.800" in text and "9.500" in text
    assert ("\x1b[2F\x1b[J" in text) is tty  # two lines (header + one trial) redrawn only on a terminal


def test_flops_takes_the_dit_presets_its_error_lists_and_says_which_defaults_it_used(capsys):
    assert main(["flops", "DiT-B/2"]) == 0
    out = capsys.readouterr().out
    assert "DiT denoiser 768x12/h12" in out and "23.01" in out  # DiT-B/2: 23.01 GFLOPs in the DiT paper
    assert "defaults: resolution 32, channels 4, 1000 classes" in out
    assert main(["flops", "GAT-S/2", "--resolution", "16", "--channels", "3", "--num-classes", "10"]) == 0
    assert "defaults" not in capsys.readouterr().out


def test_flops_of_a_study_file_uses_the_study_shapes(tmp_path, capsys):
    import json

    assert main(["flops", str(_study(tmp_path, grid={"model.width": [32, 48]})), "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [(r["g"]["width"], r["resolution"], r["channels"], r["num_classes"]) for r in reports] == [
        (32, 8, 3, 10), (48, 8, 3, 10)]  # as `plan` sees them, not ImageNet latents


def test_status_json_before_a_study_ran(tmp_path, capsys):
    import json

    assert main(["status", str(_study(tmp_path)), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) | {"tracking_uri": ""} == {
        "study": "edges", "status": "not started", "tracking_uri": "", "trials": []}


def test_analyze_and_compare_take_the_overrides_run_took(tmp_path, capsys, monkeypatch):
    from orchestrator.analyze_cmd import resolve_target

    path = _study(tmp_path, grid={"model.width": [32, 48]})
    _, _, _, plain = resolve_target(str(path))
    _, _, _, seeded = resolve_target(str(path), overrides=["train.seed=1"])
    assert len(plain) == len(seeded) == 2 and not plain & seeded  # the seed-1 trials, as `run --set` made them
    monkeypatch.chdir(tmp_path)
    for command in ("analyze", "compare"):
        assert main([command, "edges", "--set", "train.seed=1"]) == 2
        assert "--set: overrides apply to a study file" in capsys.readouterr().err

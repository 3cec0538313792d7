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


def test_status_from_another_folder_says_where_paths_are_resolved(tmp_path, capsys, monkeypatch):
    (tmp_path / "study").mkdir()
    path = write_study(tmp_path / "study" / "study.yaml", tiny_study("edges", Path("out")))
    monkeypatch.chdir(tmp_path / "study")
    assert main(["status", "study.yaml"]) == 0
    assert "relative paths" not in capsys.readouterr().out  # run where it lives: nothing to say
    monkeypatch.chdir(tmp_path)
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "not started" in out and f"here {tmp_path}" in out and f"ran from {tmp_path / 'study'}" in out


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


def _two_updates(tty: bool) -> str:
    """What the live table prints for one trial's two results."""
    from orchestrator.progress import ProgressTable

    stream = _Stream(tty)
    table = ProgressTable({"a": "width=32"}, "fd_classifier", "diversity_classifier", refresh=0, stream=stream)
    trials = [_Trial("a")]
    for step in (10, 20):
        table.on_trial_result(0, trials, trials[0], {"step": step, "total_steps": 40, "fd_classifier": 9.5,
                                                    "diversity_classifier": 0.8, "loss_d": 0.5})
    return stream.getvalue()


@pytest.mark.parametrize("tty", [True, False])
def test_live_table_redraws_in_place_on_a_terminal_and_appends_in_a_log(tty, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a terminal wide enough for whole rows
    text = _two_updates(tty)
    assert text.count("width=32") == 2 and "0.800" in text and "9.500" in text
    assert ("\x1b[2F\x1b[J" in text) is tty  # two lines (header + one trial) redrawn only on a terminal


@pytest.mark.parametrize("tty", [True, False])
def test_live_table_fits_a_narrow_terminal_and_logs_whole_lines(tty, monkeypatch):
    """On an 80-column terminal a 104-character row would wrap into two rows, and the redraw (which climbs
    one row per line) would leave half the old table on screen: rows are cut to the width; a log keeps them."""
    monkeypatch.setenv("COLUMNS", "80")
    rows = _two_updates(tty).replace("\x1b[2F\x1b[J", "").splitlines()
    assert len(rows) == 4 and rows[1].startswith("width=32")
    assert (max(map(len, rows)) < 80) is tty and (max(map(len, rows)) > 80) is not tty


def test_live_table_lists_trials_in_the_studys_order_whatever_order_they_started(monkeypatch):
    from orchestrator.progress import ProgressTable

    monkeypatch.setenv("COLUMNS", "200")
    stream = _Stream(False)
    table = ProgressTable({"a": "width=16", "b": "width=128"}, "fd_classifier", None, refresh=0, stream=stream)
    trials = [_Trial("b"), _Trial("a")]  # Tune's order: the longest first
    table.on_trial_result(0, trials, trials[0], {"step": 10, "total_steps": 40, "fd_classifier": 9.5, "loss_d": 0.5})
    rows = [line.split()[0] for line in stream.getvalue().splitlines()[1:]]
    assert rows == ["width=16", "width=128"]


def test_trials_start_with_the_most_training_left(tmp_path):
    """Tune starts trials in the order it is given: the quickstart's widest first, so with 2 slots for 4
    trials it trains beside the others instead of last; a trial resumed near its end, or one only to be
    re-scored, goes behind; equal trials keep the grid's order."""
    from orchestrator.plan import compute_columns
    from orchestrator.runner import TrialAction, start_order
    from orchestrator.study import load_study

    study = load_study(Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml",
                       [f"output_dir={tmp_path}", "grid.train.seed=[0,1]"])
    columns = {t.trial_id: compute_columns(t) for t in study.trials}
    new = {t.trial_id: TrialAction("new", 0, 400) for t in study.trials}
    order = [(t.config.model.width, t.config.train.seed) for t in start_order(study.trials, columns, new)]
    assert order == [(w, s) for w in (128, 64, 32, 16) for s in (0, 1)]
    widest = next(t for t in study.trials if t.config.model.width == 128 and t.config.train.seed == 0)
    narrowest = next(t for t in study.trials if t.config.model.width == 16 and t.config.train.seed == 0)
    actions = {**new, widest.trial_id: TrialAction("resume", 399, 400), narrowest.trial_id: TrialAction("rescore", 400, 400)}
    order = [t.trial_id for t in start_order(study.trials, columns, actions)]
    assert order[-2:] == [widest.trial_id, narrowest.trial_id]


def test_encode_loads_the_vae_before_building_the_dataset(tmp_path, capsys, monkeypatch):
    """A folder that exists but holds no AutoencoderKL is found out before thousands of images are drawn."""
    import gat_core.data

    monkeypatch.setattr(gat_core.data, "load_dataset", lambda cfg: pytest.fail("built the dataset first"))
    (tmp_path / "empty-vae").mkdir()
    assert main(["encode", "shapes", "--vae", str(tmp_path / "empty-vae"), "--out", str(tmp_path / "lat")]) == 2
    err = capsys.readouterr().err
    assert "--vae" in err and "not a loadable AutoencoderKL folder" in err and "Traceback" not in err
    assert not (tmp_path / "lat").exists()


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


def _outcome(i: int, status: str, metric: float | None, diversity: float | None, gflops: float | None,
             train_flops: float | None, health: str = "", step: int = 6, **extra):
    from orchestrator.runner import TrialOutcome

    return TrialOutcome(trial_id=f"t{i}", name=f"width={16 * (i + 1)}", status=status, step=step, metric=metric,
                        run_id=f"run{i}", workdir=Path("/nowhere"), diversity=diversity, health=health,
                        gflops=gflops, train_flops=train_flops, **extra)


# grid order; the fd_classifier (lower is better) order is t2, t0, t4, the precision (higher is better) order t4,
# t0, t2; trials without a finite metric follow in grid order either way
OUTCOMES = [
    _outcome(0, "completed", 5.0, 0.81, 0.0123, 1.5e12, "ok"),
    _outcome(1, "failed", None, None, 0.02, None, step=0, reason="ValueError: dataset.path has no class subfolders"),
    _outcome(2, "completed", 2.0, 0.5, 0.05, 4.2e12, "collapsed", health_reason="diversity 0.02 < 0.1"),
    _outcome(3, "diverged", float("nan"), 0.01, 0.1, 3e11, "diverged", step=4, health_reason="non-finite loss_d"),
    _outcome(4, "completed", 9.0, 0.9, 0.2, 9e12, "ok"),
    _outcome(5, "pending", None, None, None, None, step=0),
]
ROWS = {  # what each trial's line says, column by column (after its trial_id)
    "t0": ["width=16", "completed", "6", "5.0000", "0.810", "0.0123", "1.50T", "ok", "run0"],
    "t1": ["width=32", "failed", "0", "-", "-", "0.0200", "-", "-", "run1"],
    "t2": ["width=48", "completed", "6", "2.0000", "0.500", "0.0500", "4.20T", "collapsed", "run2"],
    "t3": ["width=64", "diverged", "4", "-", "0.010", "0.1000", "300.00G", "diverged", "run3"],
    "t4": ["width=80", "completed", "6", "9.0000", "0.900", "0.2000", "9.00T", "ok", "run4"],
    "t5": ["width=96", "pending", "0", "-", "-", "-", "-", "-", "run5"],
}


@pytest.mark.parametrize("metric, order", [
    ("fd_classifier", ["t2", "t0", "t4", "t1", "t3", "t5"]),  # a distance: lowest first
    ("precision_classifier", ["t4", "t0", "t2", "t1", "t3", "t5"]),  # a share of good samples: highest first
])
def test_results_table_is_sorted_by_the_metric_best_first_with_diversity_and_compute_beside_it(tmp_path, metric,
                                                                                                 order):
    from orchestrator.study import load_study
    from orchestrator.summary import format_outcomes

    study = load_study(_study(tmp_path), [f"eval.metric={metric}"])
    text = format_outcomes(study, OUTCOMES, "sqlite:///x.db")
    lines = text.splitlines()
    assert lines[0] == f"study edges: 3/6 completed (sorted by {metric}, best first)"
    header = lines[1]
    assert header.split() == ["trial_id", "name", "status", "step", metric, "diversity_pixels", "GFLOPs", "train",
                              "MACs", "health", "run_id"]
    rows = lines[2:2 + len(OUTCOMES)]
    assert [r.split()[0] for r in rows] == order
    for row in rows:
        assert row.split()[1:] == ROWS[row.split()[0]]
    assert lines[2 + len(OUTCOMES):2 + len(OUTCOMES) + 3] == [
        "unhealthy trials (left out of analyze/compare fits by default):",
        "  width=48: collapsed: diversity 0.02 < 0.1", "  width=64: diverged: non-finite loss_d"]
    assert "  width=32: failed: ValueError: dataset.path has no class subfolders" in lines


@pytest.mark.parametrize("metric", ["fd_classifier", "precision_classifier"])  # a name wider than its column
def test_results_table_values_stand_under_their_headings(tmp_path, metric):
    from orchestrator.study import load_study
    from orchestrator.summary import format_outcomes

    lines = format_outcomes(load_study(_study(tmp_path), [f"eval.metric={metric}"]), OUTCOMES, "sqlite:///x.db"
                            ).splitlines()
    header, rows = lines[1], lines[2:2 + len(OUTCOMES)]
    for row in rows:
        for label, value in zip(("step", metric, "diversity_pixels", "GFLOPs", "train MACs"), row.split()[3:8]):
            end = header.index(label) + len(label)  # right-aligned under its heading
            assert row[end - len(value):end] == value and row[end:end + 1] in (" ", ""), (label, row)
        start = header.index("run_id")
        assert row[start:].split() == [row.split()[-1]], row  # the run id starts under its heading

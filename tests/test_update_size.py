"""Update size (relative output change per step) against width, on a study with a known answer.

Trials of the width rule change their output by 1 % per step at every width; trials of a constant learning rate
by 1 % x width / 32 (slope 1 in log-log).  The study is a real sqlite MLflow store read back by `analysis.load`.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.load import load_studies
from analysis.report import write_report
from analysis.synthetic import family_trial, log_study, power_law_trials, synthetic_trial
from analysis.update_size import update_size

WIDTHS = (32, 64, 128)
STEPS = 200


def lr_trials() -> list:
    trials = []
    for width in WIDTHS:
        for rule in ("width", "constant"):
            for seed in range(3):
                t = synthetic_trial(width, 4, 2, 20.0, seed=seed, steps=STEPS, interval=50,
                                    extra={"train.lr_rule": rule})
                rng = np.random.default_rng(seed + width)
                size = 0.01 * (1.0 if rule == "width" else width / 32)
                # a large warm-up transient, logged densely: most of the points, all inside the first 10 % of
                # training, which the per-trial median must leave out
                warm = {s: 1.0 for s in range(0, STEPS // 10)}
                t.metrics["out_change_g"] = {**warm, **{s: size * np.exp(0.05 * rng.standard_normal())
                                                        for s in range(STEPS // 10 + 10, STEPS + 1, 10)}}
                t.metrics["out_change_d"] = {s: 2 * size for s in range(10, STEPS + 1, 10)}
                trials.append(t)
    return trials


def test_update_size_slopes_recover_the_width_dependence(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "lr", lr_trials())
    data = load_studies(uri, "lr")
    result = update_size(data.history, data.trials, ["train.lr_rule"], n_boot=200)
    slopes = result.slopes.set_index(["group", "key"])
    flat, steep = slopes.loc[("train.lr_rule=width", "out_change_g")], slopes.loc[("train.lr_rule=constant",
                                                                                   "out_change_g")]
    assert flat["slope"] == pytest.approx(0.0, abs=0.05) and flat["hi"] - flat["lo"] < 0.1
    assert steep["slope"] == pytest.approx(1.0, abs=0.05) and steep["lo"] > 0.8
    assert slopes.loc[("train.lr_rule=constant", "out_change_d"), "slope"] == pytest.approx(1.0, abs=1e-6)
    cell = result.per_width.query("group == 'train.lr_rule=width' and width == 128 and key == 'out_change_g'")
    assert cell["geomean"].iloc[0] == pytest.approx(0.01, rel=0.1) and cell["trials"].iloc[0] == 3

    report = write_report(data, tmp_path / "report", n_boot=50, log_artifacts=False)
    text = report.path.read_text()
    assert report.update_size is not None and "## Update size vs width" in text and "grows with width" in text
    assert (tmp_path / "report" / "plots" / "update_size.png").is_file()


def test_no_update_size_section_where_patch_size_varies_too(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trials = power_law_trials(3, patches=(2, 4))  # update size would follow patch size as well as width
    for t in trials:
        t.metrics["out_change_g"] = {s: 0.01 for s in range(50, 401, 50)}
    log_study(uri, "sizes", trials)
    data = load_studies(uri, "sizes")
    assert update_size(data.history, data.trials, []) is None


def test_a_single_seed_gives_slopes_without_intervals(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "lr1", [t for t in lr_trials() if t.config["train.seed"] == 0])
    data = load_studies(uri, "lr1")
    result = update_size(data.history, data.trials, ["train.lr_rule"], n_boot=100)
    assert result.slopes["slope"].notna().all() and result.slopes["lo"].isna().all()
    assert result.per_width["lo"].isna().all() and any("single trial" in n for n in result.notes)


def test_a_two_family_study_measures_the_trials_that_log_it(tmp_path) -> None:
    """DiT trials log no update size: the GAT trials of a GAT-vs-DiT study still get their slope."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trials = []
    for width in WIDTHS:
        for seed in range(2):
            gat = family_trial("gat", width, 4, 2, 20.0, seed=seed)
            gat.metrics["out_change_g"] = {s: 0.01 * width / 32 for s in range(50, 401, 10)}
            trials += [gat, family_trial("dit", width, 4, 2, 30.0, seed=seed)]
    log_study(uri, "both", trials)
    data = load_studies(uri, "both")
    result = update_size(data.history, data.trials, ["model.family"], n_boot=50)
    (row,) = result.slopes.itertuples()
    assert row.group == "model.family=gat" and row.slope == pytest.approx(1.0)


def test_a_width_with_one_trial_loses_its_own_interval_and_the_slopes(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trials = [t for t in lr_trials() if t.config["train.lr_rule"] == "width"
              and (t.config["model.width"] != 128 or t.config["train.seed"] == 0)]
    log_study(uri, "lr2", trials)
    data = load_studies(uri, "lr2")
    result = update_size(data.history, data.trials, [], n_boot=100)
    cells = result.per_width[result.per_width["key"] == "out_change_g"].set_index("width")
    assert cells.loc[[32, 64], "lo"].notna().all() and np.isnan(cells.at[128, "lo"])
    assert result.slopes["lo"].isna().all()


def test_the_unhealthy_trials_are_listed_beside_the_fits(tmp_path) -> None:
    """A collapsed trial is left out of the slopes but shown with its update sizes and health."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trials = lr_trials()
    bad = trials[0]
    bad.health, bad.health_reason = "collapsed", "D wins outright"
    bad.metrics["out_change_d"] = {s: 0.0005 for s in range(10, STEPS + 1, 10)}
    log_study(uri, "lr3", trials)
    report = write_report(load_studies(uri, "lr3"), tmp_path / "report", n_boot=20, log_artifacts=False)
    assert report.update_size.per_trial["run_id"].nunique() == len(trials) - 1
    text = report.path.read_text()
    section = text[text.index("## Update size"):text.index("## Scaling claims")]
    assert "left out of the fits as unhealthy" in section and "collapsed" in section and "0.0005" in section

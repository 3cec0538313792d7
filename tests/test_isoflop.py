"""Compute-optimal design: the `isoflop:` study shape, the isoFLOP analysis and the held-out prediction.

The analysis is checked against synthetic studies with a known answer (N_opt = k·C^a, metric_opt =
m·C^-b, lognormal noise), written to a real MLflow sqlite store by `analysis.synthetic` and read back as
`gat-study analyze` reads a real study.  Coverage over several noise draws is checked on the same trials
without the store (the analysis is a function of the loaded frame; one test shows the two agree exactly).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from analysis.isoflop import BUDGET_KEY, is_isoflop, isoflop_fit
from analysis.load import load_studies
from analysis.predict import ISOFLOP_COLUMNS, TRIAL_COLUMNS, isoflop_predictions, trial_predictions
from analysis.select import select_trials
from analysis.synthetic import (SyntheticTrial, family_trial, isoflop_trials, log_study, model_cost,
                                power_law_trials)
from orchestrator.analyze_cmd import run_analysis
from orchestrator.cli import main
from orchestrator.plan import plan_trial
from orchestrator.runner import run_study
from orchestrator.study import StudyError, load_study
from tests.helpers import children, tiny_study, write_study

BUDGETS = (1e12, 3e12, 1e13, 3e13)
WIDTHS = (16, 24, 32, 48, 64, 96, 128)
TRUE_A, TRUE_B = 0.5, 0.3


def _frame(trials: list[SyntheticTrial]) -> pd.DataFrame:
    """The columns the analysis reads, straight from synthetic trials (what the loader makes of them)."""
    rows = []
    for t in trials:
        metric = t.config["eval.metric"]
        final = t.metrics[metric][max(t.metrics[metric])]
        rows.append({"run_name": t.name, BUDGET_KEY: t.config.get(BUDGET_KEY), "params_g": t.params_g,
                     "train_flops": t.macs_per_sample_iter * t.config["train.batch_size"] * t.config["train.steps"]
                     if t.config.get("train.steps") else np.nan,
                     "metric_value": final, "size": f"w{t.config['model.width']}", "patch": 2,
                     "size_rank": t.config["model.width"]})
    return pd.DataFrame(rows)


# --- the study file ---------------------------------------------------------------------------------------
BASE = {"name": "iso", "dataset": {"name": "shapes", "resolution": 8, "size": 256},
        "model": {"depth": 2, "heads": 2, "patch_size": 2}, "train": {"batch_size": 8, "mng": "off"}}


def _write(tmp_path: Path, **changes: object) -> Path:
    study = {**BASE, **changes}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_isoflop_expands_to_budgets_x_sizes_x_grid(tmp_path: Path) -> None:
    path = _write(tmp_path, isoflop={"budgets": ["1e9", 3e9, 1e10], "sizes": {"model.width": [16, 24, 32]}},
                  grid={"train.seed": [0, 1]})
    study = load_study(path)
    got = [(t.config.train.flops_budget, t.config.model.width, t.config.train.seed) for t in study.trials]
    assert got == [(b, w, s) for b in (1e9, 3e9, 1e10) for w in (16, 24, 32) for s in (0, 1)]
    assert all(t.config.train.steps is None for t in study.trials)
    assert len({t.trial_id for t in study.trials}) == 18  # every budget is its own trial
    assert study.trials[0].swept == {BUDGET_KEY: 1e9, "model.width": 16, "train.seed": 0}
    steps = {(t.config.train.flops_budget, t.config.model.width): plan_trial(t).steps for t in study.trials}
    for w in (16, 24, 32):  # steps follow the budget: 3x the budget, about 3x the steps
        assert steps[(3e9, w)] == pytest.approx(3 * steps[(1e9, w)], rel=0.05)
    assert steps[(1e9, 16)] > steps[(1e9, 24)] > steps[(1e9, 32)] >= 2
    for t in study.trials:  # each trial spends (up to one step short of) its budget
        cost = plan_trial(t)
        assert cost.train_flops <= t.config.train.flops_budget < cost.train_flops + cost.macs_per_sample_iter * 8 + 1


@pytest.mark.parametrize("sizes", [
    {"model.width": [16, 24, 32], "model.heads": [2, 2, 4]},          # one mapping of zipped lists
    [{"model.width": 16, "model.heads": 2}, {"model.width": 24, "model.heads": 2},
     {"model.width": 32, "model.heads": 4}],                           # one mapping per size
    {"model": {"width": [16, 24, 32], "heads": [2, 2, 4]}},           # sections nested
])
def test_isoflop_size_syntaxes_are_the_same_design(tmp_path: Path, sizes: object) -> None:
    study = load_study(_write(tmp_path, isoflop={"budgets": [1e9, 2e9], "sizes": sizes}))
    assert [(t.config.model.width, t.config.model.heads) for t in study.trials] == [(16, 2), (24, 2), (32, 4)] * 2


def test_isoflop_sizes_can_be_presets(tmp_path: Path) -> None:
    path = _write(tmp_path, model={"patch_size": 2}, isoflop={"budgets": [1e15, 1e16],
                                                               "sizes": ["GAT-S/2", "GAT-B/2", "GAT-L/2"]})
    study = load_study(path)
    assert [t.config.model.preset for t in study.trials] == ["GAT-S/2", "GAT-B/2", "GAT-L/2"] * 2
    assert study.trials[0].config.model.width < study.trials[1].config.model.width


def test_isoflop_budgets_can_be_overridden_on_the_command_line(tmp_path: Path) -> None:
    path = _write(tmp_path, isoflop={"budgets": [1e9, 2e9], "sizes": {"model.width": [16, 24, 32]}})
    study = load_study(path, ["isoflop.budgets=[1.0e+8, 2.0e+8, 4.0e+8]"])
    assert sorted({t.config.train.flops_budget for t in study.trials}) == [1e8, 2e8, 4e8]


@pytest.mark.parametrize("changes, key, words", [
    ({"isoflop": {"budgets": [1e9], "sizes": {"model.width": [16, 24, 32]}}}, "isoflop.budgets", "at least 2"),
    ({"isoflop": {"budgets": [1e9, 1e9], "sizes": {"model.width": [16, 24, 32]}}}, "isoflop.budgets", "twice"),
    ({"isoflop": {"budgets": [1e9, -1], "sizes": {"model.width": [16, 24, 32]}}}, "isoflop.budgets.1",
     "greater than 0"),
    ({"isoflop": {"budgets": [1e9, True], "sizes": {"model.width": [16, 24, 32]}}}, "isoflop.budgets", "numbers"),
    ({"isoflop": {"budgets": [1e9, "lots"], "sizes": {"model.width": [16, 24, 32]}}}, "isoflop.budgets.1",
     "valid number"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": {"model.width": [16, 24]}}}, "isoflop.sizes", "at least 3"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": {"model.width": [16, 24, 32], "model.heads": [2, 2]}}},
     "isoflop.sizes", "same length"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": {"model.width": 16}}}, "isoflop.sizes.model.width", "list"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": [16, 24, 32]}}, "isoflop.sizes.0", "preset name or"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": [{"width": 16}, {"model.width": 24}, {"model.width": 32}]}},
     "isoflop.sizes.0", "only set keys under"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": {"model.width": [16, 16, 32]}}}, "isoflop.sizes", "the same"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": {"train.steps": [1, 2, 3]}}}, "isoflop.sizes",
     "sets it from isoflop.budgets"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": {"model.width": [16, 24, 32]}}, "grid": {"model.width": [8]}},
     "grid.model.width", "set by isoflop.sizes"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": {"model.width": [16, 24, 32]}},
      "grid": {"train.flops_budget": [1e9]}}, "grid.train.flops_budget", "set by isoflop.budgets"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": {"model.width": [16, 24, 32]}},
      "grid": {"family": [{"model.width": 8, "train.lr": 1e-3}]}}, "grid.family", "set by isoflop.sizes"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": {"model.width": [16, 24, 32]}},
      "train": {"batch_size": 8, "steps": 5}}, "train.steps", "remove train.steps"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": {"model.width": [16, 24, 32]}},
      "train": {"batch_size": 8, "flops_budget": 5e9}}, "train.flops_budget", "remove train.flops_budget"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": {"model.width": [16, 24, 32]}, "size": [1]}}, "isoflop.size",
     "unknown key"),
    ({"isoflop": {"budgets": [1e9, 2e9], "sizes": {"model.widht": [16, 24, 32]}}}, "model.widht", "unknown key"),
])
def test_bad_isoflop_sections_are_errors_naming_the_key(tmp_path: Path, changes: dict, key: str, words: str) -> None:
    with pytest.raises(StudyError) as err:
        load_study(_write(tmp_path, **changes))
    assert any(f": {key}: " in line and words in line for line in err.value.problems), err.value.problems


def test_the_readme_isoflop_example_loads(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text[text.index("```yaml\nisoflop:") + len("```yaml\n"):]
    block = block[:block.index("```")]
    path = tmp_path / "readme.yaml"
    path.write_text(yaml.safe_dump({**BASE, "dataset": {"name": "shapes", "resolution": 16}}) + block)
    study = load_study(path)
    assert len(study.trials) == 3 * 5 * 2
    assert {t.config.train.flops_budget for t in study.trials} == {5e11, 1.2e12, 3e12}


def test_the_shipped_isoflop_study_is_3_budgets_by_5_sizes_by_3_seeds() -> None:
    study = load_study(Path(__file__).resolve().parent.parent / "studies" / "isoflop.yaml")
    assert len(study.trials) == 45 and is_isoflop(pd.DataFrame(
        [{BUDGET_KEY: t.config.train.flops_budget, "params_g": plan_trial(t).params_g} for t in study.trials]))
    assert {t.config.train.seed for t in study.trials} == {0, 1, 2}
    assert sum(plan_trial(t).train_flops for t in study.trials) < 7.5e13  # sized for a 2-core CPU (about an hour)


def test_plan_of_an_isoflop_study(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _write(tmp_path, isoflop={"budgets": [1e9, 3e9], "sizes": {"model.width": [16, 24, 32]}})
    assert main(["plan", str(path), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["trials"]) == 6
    assert all(row["train_flops"] <= row["swept"][BUDGET_KEY] for row in plan["trials"])


# --- the isoFLOP analysis -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store: an isoFLOP study (4 budgets x 7 sizes x 2 seeds, 3 % noise) and a power-law study."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    trials, _ = isoflop_trials(BUDGETS, WIDTHS, a=TRUE_A, b=TRUE_B, seeds=(0, 1), rng_seed=0)
    log_study(uri, "isoflop", trials)
    log_study(uri, "powerlaw", power_law_trials(8, noise=0.05, seeds=(0, 1, 2), rng_seed=3))
    return uri


def test_isoflop_recovers_the_known_exponents_within_their_cis(store: str) -> None:
    data = load_studies(store, "isoflop")
    assert is_isoflop(data.trials)
    usable = select_trials(data, "fd_classifier").usable
    result = isoflop_fit(usable, "fd_classifier", n_boot=1000, seed=0)
    _, truth = isoflop_trials(BUDGETS, WIDTHS, a=TRUE_A, b=TRUE_B, seeds=(0, 1), rng_seed=0)
    assert result.a_ci[0] < TRUE_A < result.a_ci[1] and result.b_ci[0] < TRUE_B < result.b_ci[1]
    assert abs(result.a - TRUE_A) < 0.03 and abs(result.b - TRUE_B) < 0.02
    assert result.a_ci[1] - result.a_ci[0] < 0.1 and result.b_ci[1] - result.b_ci[0] < 0.05
    assert result.n_boot_ok == 1000 and not result.notes
    for p in result.profiles:  # each budget's optimum, inside the sizes tried, near the truth
        assert p.inside and p.n_trials == 14
        assert p.n_opt == pytest.approx(truth.n_opt(p.budget), rel=0.1)
        assert p.metric_opt_ci[0] < truth.metric_opt(p.budget) < p.metric_opt_ci[1]
    # the loaded store and the trials it was written from give the same analysis
    direct = isoflop_fit(_frame(isoflop_trials(BUDGETS, WIDTHS, a=TRUE_A, b=TRUE_B, seeds=(0, 1), rng_seed=0)[0]),
                         "fd_classifier", n_boot=1000, seed=0)
    assert [direct.a, *direct.a_ci, direct.b, *direct.b_ci] == pytest.approx([result.a, *result.a_ci, result.b,
                                                                             *result.b_ci], rel=1e-9)


def test_isoflop_intervals_cover_the_truth_without_being_trivially_wide() -> None:
    covered_a = covered_b = 0
    widths_a, widths_b = [], []
    draws = range(1, 7)
    for rng_seed in draws:
        trials, _ = isoflop_trials(BUDGETS, WIDTHS, a=TRUE_A, b=TRUE_B, seeds=(0, 1), rng_seed=rng_seed)
        r = isoflop_fit(_frame(trials), "fd_classifier", n_boot=500, seed=rng_seed)
        covered_a += r.a_ci[0] < TRUE_A < r.a_ci[1]
        covered_b += r.b_ci[0] < TRUE_B < r.b_ci[1]
        widths_a.append(r.a_ci[1] - r.a_ci[0])
        widths_b.append(r.b_ci[1] - r.b_ci[0])
    assert covered_a >= len(draws) - 1 and covered_b >= len(draws) - 1
    # a 95 % interval this narrow (a within +-0.04, b within +-0.02) carries information
    assert max(widths_a) < 0.08 and max(widths_b) < 0.04
    # and noisier trials give wider intervals: the width follows the data, it is not fixed
    noisy, _ = isoflop_trials(BUDGETS, WIDTHS, a=TRUE_A, b=TRUE_B, seeds=(0, 1), rng_seed=1, noise=0.12)
    r = isoflop_fit(_frame(noisy), "fd_classifier", n_boot=500, seed=1)
    assert r.a_ci[1] - r.a_ci[0] > 2 * np.median(widths_a)


def test_an_optimum_outside_the_sizes_tried_is_left_out_of_the_laws() -> None:
    """At the smallest budget only sizes above its optimum: the vertex is an extrapolation, not a measurement."""
    trials, truth = isoflop_trials(BUDGETS, WIDTHS, seeds=(0,), rng_seed=2, noise=0.01)
    frame = _frame(trials)
    lowest = frame[BUDGET_KEY] == BUDGETS[0]
    frame = frame[~lowest | (frame["params_g"] > 3 * truth.n_opt(BUDGETS[0]))]
    r = isoflop_fit(frame, "fd_classifier", n_boot=200)
    first = r.profiles[0]
    assert first.budget == BUDGETS[0] and first.ok and not first.inside and "add smaller sizes" in first.note
    assert r.n_opt_law.budgets == list(BUDGETS[1:])
    assert any(n.startswith("budget 1e+12: no compute-optimal size") for n in r.notes)
    assert r.a_ci[0] < TRUE_A < r.a_ci[1]
    kept = isoflop_fit(frame, "fd_classifier", n_boot=0, extrapolated=True)
    assert kept.n_opt_law.budgets == list(BUDGETS)


def test_a_profile_without_an_optimum_is_left_out_of_the_laws() -> None:
    """A profile that bends the wrong way (best at both ends) has no vertex to report."""
    trials, _ = isoflop_trials(BUDGETS, WIDTHS, seeds=(0,), rng_seed=2, noise=0.01)
    frame = _frame(trials)
    lowest = frame[BUDGET_KEY] == BUDGETS[0]
    log_n = np.log(frame.loc[lowest, "params_g"])
    frame.loc[lowest, "metric_value"] = 10.0 * np.exp(-0.3 * (log_n - log_n.mean()) ** 2)
    r = isoflop_fit(frame, "fd_classifier", n_boot=200)
    first = r.profiles[0]
    assert not first.ok and first.coef[2] < 0 and "not an optimum" in first.note
    assert r.n_opt_law.budgets == list(BUDGETS[1:]) and r.a_ci[0] < TRUE_A < r.a_ci[1]


def test_three_trials_per_budget_give_vertices_but_no_intervals() -> None:
    """A parabola through exactly 3 trials has no residual to resample: no interval rather than a zero-width one."""
    trials, _ = isoflop_trials(BUDGETS, (16, 48, 128), seeds=(0,), rng_seed=5)
    r = isoflop_fit(_frame(trials), "fd_classifier", n_boot=200)
    assert all(p.ok for p in r.profiles) and np.isfinite(r.a)
    assert np.isnan(r.a_ci).all() and np.isnan(r.b_ci).all() and np.isnan(r.profiles[0].n_opt_ci).all()
    assert any("no interval is given for a and b" in n for n in r.notes)
    assert r.to_dict()["n_opt_law"]["ci95"] == [None, None]


def test_higher_is_better_metrics_look_for_a_maximum() -> None:
    trials, _ = isoflop_trials(BUDGETS, WIDTHS, seeds=(0,), rng_seed=4, noise=0.01)
    frame = _frame(trials).assign(metric_value=lambda f: 1.0 / f["metric_value"])  # best size = the same
    r = isoflop_fit(frame, "precision_classifier", lower_is_better=False, n_boot=300)
    assert r.a_ci[0] < TRUE_A < r.a_ci[1]
    assert r.b == pytest.approx(-TRUE_B, abs=0.02)  # metric_opt rises with compute: b < 0
    assert all(p.coef[2] < 0 for p in r.profiles)


def test_a_plain_study_is_no_isoflop_study(store: str) -> None:
    assert not is_isoflop(load_studies(store, "powerlaw").trials)


# --- the report and the held-out prediction ---------------------------------------------------------------------
def test_analyze_reports_the_isoflop_design_and_its_prediction(store: str, tmp_path: Path) -> None:
    report = run_analysis("isoflop", store, tmp_path, n_boot=100, holdout=1, log_artifacts=False)
    fits = json.loads((tmp_path / "fits.json").read_text())
    (iso,) = fits["isoflop"]
    assert iso["n_opt_law"]["exponent"] == "a" and iso["metric_opt_law"]["exponent"] == "b"
    lo, hi = iso["n_opt_law"]["ci95"]
    assert lo < TRUE_A < hi and len(iso["profiles"]) == 4
    assert BUDGET_KEY not in fits["switches"]  # the design's axis, not an ablation
    prediction = fits["prediction"]
    assert prediction["kind"] == "isoflop" and prediction["holdout"] == 1
    assert [r["budget_macs"] for r in prediction["rows"]] == [3e13, 3e13]
    assert list(report.prediction.rows.columns) == ISOFLOP_COLUMNS
    _, truth = isoflop_trials(BUDGETS, WIDTHS, a=TRUE_A, b=TRUE_B, seeds=(0, 1), rng_seed=0)
    for row in prediction["rows"]:
        true = truth.n_opt(3e13) if row["quantity"] == "N_opt" else truth.metric_opt(3e13)
        assert row["pi95_lo"] < true < row["pi95_hi"] and row["covered"]
    md = (tmp_path / "report.md").read_text()
    assert "## Compute-optimal design (isoFLOP)" in md and "## Prediction of held-out larger trials" in md
    assert "plots/isoflop.png" in md and "plots/prediction.png" in md
    for name in ("isoflop.png", "isoflop.pdf", "prediction.png", "prediction.pdf"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000, name
    laws = pd.read_csv(tmp_path / "tables" / "isoflop_laws.csv")
    assert list(laws["exponent"]) == ["a", "b"]
    profiles = pd.read_csv(tmp_path / "tables" / "isoflop_profiles.csv")
    assert {"budget_macs", "n_opt", "n_opt_ci95", "fd_classifier_opt", "inside_sizes"} <= set(profiles.columns)
    assert list(pd.read_csv(tmp_path / "tables" / "prediction.csv").columns) == ISOFLOP_COLUMNS


def test_analyze_holdout_predicts_the_largest_trials_per_family(store: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "analysis"
    assert main(["analyze", "powerlaw", "--tracking-uri", store, "--out", str(out), "--holdout", "1",
                 "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert "prediction (--holdout 1):" in printed and "isoFLOP" not in printed
    fits = json.loads((out / "fits.json").read_text())
    assert fits["isoflop"] is None
    prediction = fits["prediction"]
    assert prediction["kind"] == "trials" and prediction["x"] == "train_flops"
    rows = pd.DataFrame(prediction["rows"])
    assert list(rows.columns) == TRIAL_COLUMNS
    power = rows[(rows["law"] == "a·x^-b") & (rows["group"] == "all")]
    assert len(power) == 3  # the 3 seeds of the largest model
    g = model_cost(512, 4, 2)["gflops_g"]
    true = 5.0 * g ** -0.4  # power_law_trials' law, noiseless
    assert ((power["pi95_lo"] < true) & (true < power["pi95_hi"])).all()
    assert power["covered"].all() and (power["rel_error"].abs() < 0.15).all()
    assert "## Prediction of held-out larger trials" in (out / "report.md").read_text()
    assert (out / "plots" / "prediction.png").stat().st_size > 1000


def test_prediction_intervals_cover_held_out_trials_at_their_level() -> None:
    """Over noise draws, about 95 % of held-out trials fall in their intervals, which are not absurdly wide."""
    covered, total, widths = 0, 0, []
    for rng_seed in range(6):
        frame = _frame(power_law_trials(8, noise=0.05, seeds=(0, 1, 2), rng_seed=rng_seed))
        prediction = trial_predictions(frame, "fd_classifier", holdout=2, n_boot=300, seed=rng_seed)
        rows = prediction.rows[prediction.rows["law"] == "a·x^-b"]
        covered += int(rows["covered"].sum())
        total += len(rows)
        widths += list((rows["pi95_hi"] - rows["pi95_lo"]) / rows["predicted"])
    assert total == 36 and covered >= 0.8 * total
    assert max(widths) < 0.5  # 5 % noise: an interval of about +-10 to 20 %, not a shrug


def test_isoflop_prediction_intervals_cover_held_out_budgets() -> None:
    """The largest budget held out, over noise draws: its measured optimum falls in the interval about 95 % of
    the time, and the noiseless truth too."""
    covered, truth_in, total = 0, 0, 0
    for rng_seed in range(8):
        trials, truth = isoflop_trials(BUDGETS, WIDTHS, seeds=(0, 1), rng_seed=rng_seed)
        rows = isoflop_predictions(_frame(trials), "fd_classifier", holdout=1, n_boot=300, seed=rng_seed).rows
        for _, row in rows.iterrows():
            true = truth.n_opt(BUDGETS[-1]) if row["quantity"] == "N_opt" else truth.metric_opt(BUDGETS[-1])
            covered += bool(row["covered"])
            truth_in += bool(row["pi95_lo"] < true < row["pi95_hi"])
            total += 1
            assert (row["pi95_hi"] - row["pi95_lo"]) / row["predicted"] < 0.3  # about +-10 %: informative
    assert total == 16 and covered >= 13 and truth_in >= 13


def test_holdout_must_be_a_positive_whole_number(capsys: pytest.CaptureFixture) -> None:
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as exc:
            main(["analyze", "powerlaw", "--holdout", bad])
        assert exc.value.code == 2
        assert "--holdout" in capsys.readouterr().err


# GAT and DiT in one study: each family its own law (metric = a·gflops_g^-b · lognormal(noise)), never pooled
FAMILY_LAWS = {"gat": (5.0, 0.4, 0.05), "dit": (1.5, 0.2, 0.03)}  # a, b, noise
FAMILY_WIDTHS = (32, 48, 72, 108, 160, 240, 360, 512)


def _family_widths(family: str, own_widths: bool) -> tuple[int, ...]:
    """The widths of a family: the same for both, or (`own_widths`) DiT at its own widths, so no size is shared."""
    return tuple(w + 8 for w in FAMILY_WIDTHS) if own_widths and family == "dit" else FAMILY_WIDTHS


def _two_family_trials(own_widths: bool) -> list[SyntheticTrial]:
    rng = np.random.default_rng(11)
    trials = []
    for family, (a, b, noise) in FAMILY_LAWS.items():
        for width in _family_widths(family, own_widths):
            for seed in (0, 1, 2):
                g = model_cost(width, 4, 2)["gflops_g"]
                value = a * g ** -b * float(np.exp(noise * rng.standard_normal()))
                trials.append(family_trial(family, width, 4, 2, value, seed=seed))
    return trials


@pytest.mark.parametrize("own_widths", [False, True], ids=["same-widths", "own-widths"])
def test_analyze_holdout_predicts_each_family_from_its_own_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture, own_widths: bool) -> None:
    """`analyze --holdout 1` on a GAT + DiT study: each family's largest model (3 seeds) predicted from that family's
    own law (not a pooled one), its interval covering the family's noiseless truth and the measured values; the
    CSV, fits.json and the plot carry both families."""
    import analysis.predict

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "families", _two_family_trials(own_widths))
    plotted: list[list[dict]] = []
    real_plot = analysis.predict.plot_prediction

    def spy(panels, *args, **kwargs):  # the real figure, and what went into it
        plotted.append(panels)
        return real_plot(panels, *args, **kwargs)

    monkeypatch.setattr(analysis.predict, "plot_prediction", spy)
    out = tmp_path / "analysis"
    assert main(["analyze", "families", "--tracking-uri", uri, "--out", str(out), "--holdout", "1",
                 "--bootstrap", "200", "--no-log"]) == 0
    assert "prediction (--holdout 1):" in capsys.readouterr().out
    fits = json.loads((out / "fits.json").read_text())
    assert fits["switches"] == ["model.family"] and fits["isoflop"] is None
    prediction = fits["prediction"]
    assert prediction["kind"] == "trials" and prediction["holdout"] == 1
    rows = pd.DataFrame(prediction["rows"])
    assert set(rows["group"]) == {"family=gat", "family=dit"}  # per family, no pooled "all"
    csv = pd.read_csv(out / "tables" / "prediction.csv")
    assert list(csv.columns) == TRIAL_COLUMNS and set(csv["group"]) == {"family=gat", "family=dit"}
    assert len(csv) == len(rows)

    usable = select_trials(load_studies(uri, "families"), "fd_classifier").usable
    covered = 0
    for family, (a, b, noise) in FAMILY_LAWS.items():
        g_max = model_cost(_family_widths(family, own_widths)[-1], 4, 2)["gflops_g"]
        own = usable[usable["model.family"] == family]
        power = rows[(rows["group"] == f"family={family}") & (rows["law"] == "a·x^-b")]
        # the held-out trials are this family's largest model, every seed, and nothing of the other family
        held = own[own["train_flops"] == own["train_flops"].max()]
        assert sorted(power["run_name"]) == sorted(held["run_name"]) and len(power) == 3
        assert (power["n_fit"] == len(own) - 3).all()
        # predicted from the family's own fit: the same numbers as a prediction on that family's trials alone
        alone = trial_predictions(own, "fd_classifier", holdout=1, n_boot=200, seed=0).rows
        alone = alone[alone["law"] == "a·x^-b"].set_index("run_name").loc[power["run_name"]]
        assert power["predicted"].to_numpy() == pytest.approx(alone["predicted"].to_numpy(), rel=1e-9)
        # the noiseless truth at the held-out size lies in every interval; a measured value does where its noise
        # draw (known here) is within 1.5 sigma of the truth, and about 95 % of them overall
        true = a * g_max ** -b
        assert ((power["pi95_lo"] < true) & (true < power["pi95_hi"])).all()
        assert power["predicted"].to_numpy() == pytest.approx(true, rel=0.05)
        assert (power["rel_error"].abs() < 0.15).all()
        inside = (power["pi95_lo"] <= power["measured"]) & (power["measured"] <= power["pi95_hi"])
        assert (power["covered"] == inside).all()
        z = np.log(power["measured"] / true) / noise
        assert power.loc[z.abs() < 1.5, "covered"].all()
        covered += int(power["covered"].sum())
    assert covered >= 5  # of 6
    # a pooled law would predict neither family: its prediction at each family's held-out compute lies outside
    # that family's intervals
    pooled = trial_predictions(usable, "fd_classifier", holdout=1, n_boot=0, seed=0)
    (pooled_fit,) = [p["fit"] for p in pooled.panels if p["group"] == "all" and p["law"] == "a·x^-b"]
    for family in FAMILY_LAWS:
        power = rows[(rows["group"] == f"family={family}") & (rows["law"] == "a·x^-b")]
        guess = pooled_fit.predict(power["x_value"].to_numpy(float))
        assert ((guess < power["pi95_lo"]) | (guess > power["pi95_hi"])).all(), family

    (panels,) = plotted  # one figure, a panel per family and law
    assert {p["group"] for p in panels} == {"family=gat", "family=dit"}
    assert {(p["group"], p["law"]) for p in panels} >= {("family=gat", "a·x^-b"), ("family=dit", "a·x^-b")}
    for name in ("prediction.png", "prediction.pdf"):
        assert (out / "plots" / name).stat().st_size > 1000, name
    md = (out / "report.md").read_text()
    assert "## Prediction of held-out larger trials" in md and "family=gat" in md and "family=dit" in md


# --- a real isoFLOP study, run on this machine -------------------------------------------------------------------
REAL_BUDGETS = (1.2e9, 1.5e9, 1.9e9)  # MACs: 8 to 12 steps for width 32, 29 to 47 for width 16 (batch 8)
REAL_WIDTHS = (16, 24, 32)


def test_a_real_isoflop_study_runs_and_is_analysed(tmp_path: Path, ray_session: None) -> None:
    """3 budgets x 3 widths of the tiny model trained for real on the local Ray, then `analyze --holdout 1` on its
    store: a profile per budget of that budget's trials, each trial trained to its budget (within one iteration),
    the laws and profiles tables and the isoFLOP plot written.  A GAN this short is noise: no exponent is checked."""
    spec = tiny_study("isoreal", tmp_path / "out")
    del spec["train"]["steps"]
    spec["train"].update(checkpoint_every=1000)
    spec["eval"]["interval"] = 1000  # the final evaluation only
    spec["isoflop"] = {"budgets": list(REAL_BUDGETS), "sizes": {"model.width": list(REAL_WIDTHS)}}
    path = write_study(tmp_path / "study.yaml", spec)
    study = load_study(path)
    planned = {t.trial_id: plan_trial(t) for t in study.trials}
    assert all(8 <= c.steps <= 47 for c in planned.values())
    outcomes = run_study(study, quiet=True)
    assert [o.status for o in outcomes] == ["completed"] * 9

    client = MlflowClient(study.config.tracking_uri)
    runs = children(client, "isoreal")
    assert len(runs) == 9
    by_budget: dict[float, set[str]] = {}
    for run in runs:
        budget = float(run.data.params[BUDGET_KEY])
        by_budget.setdefault(budget, set()).add(run.info.run_name)
        per_iter = float(run.data.params["macs_per_sample_iter"]) * int(run.data.params["train.batch_size"])
        spent = run.data.metrics["train_flops"]
        assert spent <= budget < spent + per_iter, run.info.run_name  # its budget, up to one iteration short
        assert int(run.data.tags["final_step"]) == planned[run.data.tags["trial_id"]].steps
    assert sorted(by_budget) == list(REAL_BUDGETS) and all(len(names) == 3 for names in by_budget.values())

    out = tmp_path / "analysis"
    report = run_analysis("isoreal", study.config.tracking_uri, out, keep_unhealthy=True, n_boot=200, holdout=1,
                          log_artifacts=False, trial_ids={t.trial_id for t in study.trials})
    assert len(report.selection.usable) == 9
    (result,) = report.isoflop.results
    assert [p.budget for p in result.profiles] == list(REAL_BUDGETS)
    for profile in result.profiles:  # every budget's profile is made of that budget's 3 trials, one per width
        names = set(result.points.loc[result.points["budget"] == profile.budget, "run_name"])
        assert names == by_budget[profile.budget]
        assert profile.n_trials == 3 and profile.n_sizes == 3 and np.isfinite(profile.coef).all()
    fits = json.loads((out / "fits.json").read_text())
    (iso,) = fits["isoflop"]
    assert [p["budget_macs"] for p in iso["profiles"]] == list(REAL_BUDGETS)
    assert [p["trials"] for p in iso["profiles"]] == [3, 3, 3]
    laws = pd.read_csv(out / "tables" / "isoflop_laws.csv")
    assert list(laws.columns) == ["group", "law", "exponent", "value", "ci95", "coef", "budgets", "bootstrap_ok"]
    assert set(laws["exponent"]) <= {"a", "b"}  # whether a law exists here is up to the noise
    profiles = pd.read_csv(out / "tables" / "isoflop_profiles.csv")
    assert list(profiles["budget_macs"]) == list(REAL_BUDGETS) and list(profiles["trials"]) == [3, 3, 3]
    for name in ("isoflop.png", "isoflop.pdf"):
        assert (out / "plots" / name).stat().st_size > 1000, name
    md = (out / "report.md").read_text()
    assert "## Compute-optimal design (isoFLOP)" in md and "plots/isoflop.png" in md
    # the held-out prediction: the largest budget predicted from the two others, or a reason it could not be
    prediction = fits["prediction"]
    assert prediction["kind"] == "isoflop" and prediction["holdout"] == 1
    assert {r["budget_macs"] for r in prediction["rows"]} <= {REAL_BUDGETS[-1]}
    assert prediction["rows"] or prediction["skipped"]
    assert list(pd.read_csv(out / "tables" / "prediction.csv").columns) == ISOFLOP_COLUMNS

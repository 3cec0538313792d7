"""Steps and samples to a target per batch size, and the critical batch size, on studies with a known answer.

The synthetic trials follow the 2022 TTUR analysis's form: steps to reach a quality K(B) = c·B / (B - B0), so
samples to reach it B·K(B) = c·B² / (B - B0) are smallest at B* = 2·B0.  With B0 = 6 and batch sizes 8-128,
B* = 12 lies between 8 and 16 and the tried batch size with fewest samples is 16 (32c at 8, 25.6c at 16,
39.4c at 32).  Every study is a real sqlite MLflow store read back by `analysis.load`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analysis.batch_size import batch_analysis, crossing_step, is_batch_study
from analysis.load import load_studies
from analysis.report import write_report
from analysis.synthetic import SyntheticTrial, log_study, power_law_trials, synthetic_trial

BATCHES = (8, 16, 32, 64, 128)
B0, C = 6.0, 100.0
STEPS, INTERVAL = 1000, 20


def steps_to_ten(batch: float) -> float:
    """K(B): the step at which the synthetic metric reaches 10 (it starts at 100 and falls tenfold per K steps)."""
    return C * batch / (batch - B0)


def batch_trials(seeds: int = 3, noise: float = 0.03) -> list[SyntheticTrial]:
    trials = []
    for batch in BATCHES:
        for seed in range(seeds):
            k = steps_to_ten(batch) * (1 + noise * np.random.default_rng(seed + 7 * batch).standard_normal())
            trials.append(synthetic_trial(32, 4, 2, 1.0, seed=seed, steps=STEPS, interval=INTERVAL, batch_size=batch,
                                          curve=lambda p, k=k: 100.0 * 0.1 ** (p * STEPS / k)))
    return trials


@pytest.fixture(scope="module")
def batch_store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('batch') / 'mlflow.db'}"
    log_study(uri, "batch", batch_trials())
    return uri


def test_crossing_step_interpolates_in_log_metric() -> None:
    steps, values = np.array([0.0, 100.0, 200.0]), np.array([100.0, 20.0, 5.0])
    assert crossing_step(steps, values, 10.0) == pytest.approx(100 + 100 * math.log(2) / math.log(4))
    assert crossing_step(steps, values, 20.0) == 100.0
    assert math.isnan(crossing_step(steps, values, 1.0))
    assert crossing_step(steps, np.array([0.1, 0.5, 0.9]), 0.5, lower_is_better=False) == 100.0


def test_critical_batch_size_and_steps_of_a_known_study(batch_store: str) -> None:
    data = load_studies(batch_store, "batch")
    usable = data.trials
    assert is_batch_study(usable)
    result = batch_analysis(data.history, usable, "fd_classifier", target=10.0, n_boot=200)
    assert result is not None and result.samples == 500  # intermediate evaluations only, not the final one
    per_batch = result.per_batch.set_index("batch")
    for batch in BATCHES:  # the interpolation recovers K(B) within the seeds' 3 % noise
        assert per_batch.at[batch, "steps"] == pytest.approx(steps_to_ten(batch), rel=0.06)
        assert per_batch.at[batch, "steps_lo"] <= per_batch.at[batch, "steps"] <= per_batch.at[batch, "steps_hi"]
    assert result.critical == 16
    assert per_batch.at[16, "critical_share"] > 0.9
    assert result.steps_rho == pytest.approx(-1.0)  # fewer steps at every larger batch
    # the default target: more than half the trials of every batch size reach it, the slowest batch size barely
    default = batch_analysis(data.history, usable, "fd_classifier", n_boot=0)
    assert default.per_batch["steps"].map(math.isfinite).all() and (default.per_batch["reached"] >= 2).all()
    assert default.per_batch.set_index("batch").at[8, "reached"] == 2  # the loosest such target: one seed of 8 misses


@pytest.mark.parametrize("seeds", [2, 4])
def test_the_default_target_is_reached_by_a_majority_at_even_seed_counts(tmp_path, seeds: int) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "even", batch_trials(seeds=seeds, noise=0.1))
    data = load_studies(uri, "even")
    result = batch_analysis(data.history, data.trials, "fd_classifier", n_boot=50)
    assert (result.per_batch["reached"] > seeds / 2).all()
    assert result.per_batch["steps"].map(math.isfinite).all()


def test_higher_is_better_metric(tmp_path) -> None:
    """An accuracy-like metric rising from 0 to 1: the same K(B), read from below."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trials = batch_trials()
    for t in trials:
        t.metrics["recall"] = {step: 1.0 - v / 100.0 for step, v in t.metrics.pop("fd_classifier").items()}
    log_study(uri, "acc", trials)
    data = load_studies(uri, "acc")
    result = batch_analysis(data.history, data.trials, "recall", target=0.9, lower_is_better=False, n_boot=50)
    assert result.critical == 16 and "recall ≥ 0.9" in result.reaches
    assert result.per_batch.set_index("batch").at[32, "steps"] == pytest.approx(steps_to_ten(32), rel=0.06)


def test_censored_replicates_stay_in_the_interval(tmp_path) -> None:
    """Batch 8 reaches 0.36 in 2 of its 3 seeds: its interval's upper end is "not reached", not the reached ones'."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "cens", batch_trials(seeds=3, noise=0.1))
    data = load_studies(uri, "cens")
    per_trial = batch_analysis(data.history, data.trials, "fd_classifier", target=0.36, n_boot=0).per_trial
    eight = per_trial[per_trial["batch"] == 8]["steps"]
    assert eight.isna().any() and eight.notna().any(), eight.to_list()  # the scenario: some seeds miss
    result = batch_analysis(data.history, data.trials, "fd_classifier", target=0.36, n_boot=200)
    row = result.per_batch.set_index("batch").loc[8]
    assert row["steps_hi"] == math.inf and "not reached" in result.table().iloc[0]["95 % CI"]
    assert result.critical_ci[0] in BATCHES and result.critical_ci[1] in BATCHES  # tried sizes only


def test_a_batch_size_that_never_reaches_the_target_has_no_samples_to_target(batch_store: str) -> None:
    data = load_studies(batch_store, "batch")
    # 0.2 is reached by the last intermediate evaluation (step 980) only where K(B) < 980 / log10(500) ~ 363: every
    # batch size but 8 (K = 400)
    result = batch_analysis(data.history, data.trials, "fd_classifier", target=0.2, n_boot=50)
    per_batch = result.per_batch.set_index("batch")
    assert per_batch.at[8, "reached"] == 0 and per_batch.at[8, "sfo"] == math.inf
    assert result.critical == 16
    assert any("edge" in note for note in result.notes)  # 16 is now the smallest batch that reached it


def test_the_report_has_a_batch_section_only_in_a_batch_study(batch_store: str, tmp_path) -> None:
    report = write_report(load_studies(batch_store, "batch"), tmp_path / "batch", n_boot=50, log_artifacts=False)
    assert report.batch is not None
    text = report.path.read_text()
    assert "## Batch size: steps and samples to a target" in text and "Critical batch size" in text
    assert (tmp_path / "batch" / "plots" / "batch_size.png").is_file()
    assert (tmp_path / "batch" / "tables" / "batch_size.csv").is_file()
    assert json.loads((tmp_path / "batch" / "fits.json").read_text())["batch_size"]["critical_batch"] is not None
    # one model size per batch size: the scaling claims, which compare sizes, have nothing to test
    assert report.claims.groups == [] and len(report.claims.single_size) == len(BATCHES)
    assert "No claim that compares sizes for" in text and "(a) Pearson correlation" not in text

    uri = f"sqlite:///{tmp_path / 'sizes.db'}"
    log_study(uri, "sizes", power_law_trials(6))
    sizes = write_report(load_studies(uri, "sizes"), tmp_path / "sizes", n_boot=20, log_artifacts=False)
    assert sizes.batch is None and "## Batch size" not in sizes.path.read_text()

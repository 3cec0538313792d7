"""The scaling claims of `gat-study analyze` (issue 16, cpu-scaling) on studies with a known answer.

Every study is a real sqlite MLflow store: the runs (parent, one child per trial, params, tags) are created by
`analysis.synthetic.log_study`, and the metrics are then written the way a training trial writes them: the
trainer's events (`gat_core.loop.TrainEvent`: progress, eval with `eval.num_samples` samples, final with
`eval.final_samples`) through `orchestrator.tracking.Reporter` into `orchestrator.tracking.TrialLogger`, which also sets
the final status and health tags.  Bootstraps are small: only the plumbing is under test.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.claims import claims_markdown, comparisons, evaluations, scaling_claims, total_steps
from analysis.load import load_studies
from analysis.render import values_table
from analysis.report import write_report
from analysis.select import primary_metric, select_trials
from analysis.synthetic import SyntheticTrial, log_study, power_law_trials, synthetic_trial
from gat_core.loop import TrainEvent
from orchestrator.analyze_cmd import add_analyze_parser
from orchestrator.tracking import Reporter
from orchestrator.tracking import TrialLogger

N_BOOT = 100
EVAL_KEYS = ("fd_classifier", "eval_samples", "diversity_pixels")


def _write(uri: str, name: str, trials: list[SyntheticTrial]) -> None:
    """The runs by `log_study`, their metrics by the trainer's events through Reporter and TrialLogger."""
    histories = [t.metrics for t in trials]
    states = [(t.status, t.final_step, t.health, t.health_reason) for t in trials]
    for t in trials:
        t.metrics = {}
    log_study(uri, name, trials)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = {r.data.tags["trial_id"]: r.info.run_id
            for r in client.search_runs([client.get_experiment_by_name(name).experiment_id],
                                        filter_string="tags.`gat_study.role` = 'trial'")}
    for index, (metrics, (status, final_step, health, reason)) in enumerate(zip(histories, states)):
        logger = TrialLogger(uri, runs[f"synth{index:05d}"], flush_seconds=3600)
        report = Reporter(logger, publish=lambda metrics, folder: None)
        steps = sorted({s for values in metrics.values() for s in values})
        report(TrainEvent("start", 0, final_step, {"classifier_accuracy": 0.9}))
        for step in steps:
            at = {k: v[step] for k, v in metrics.items() if step in v}
            scores = {k: v for k, v in at.items() if k in EVAL_KEYS}
            rest = {k: v for k, v in at.items() if k not in EVAL_KEYS}
            if rest:
                report(TrainEvent("progress", step, final_step, rest))
            if scores:
                kind = "final" if step == final_step and status == "completed" else "eval"
                report(TrainEvent(kind, step, final_step, scores))
            if step % 100 == 0:
                report(TrainEvent("persist", step, final_step))
        logger.finish(status, final_step, health=(health or "ok", reason))


def _monotone() -> list[SyntheticTrial]:
    """6 sizes x 3 seeds on fd = 5·gflops^-0.4 (noise 1 %), every trial along the same curve, so the larger model
    is better at every step; and one collapsed trial whose fd is absurdly good (left out)."""
    trials = power_law_trials(6, a=5.0, b=0.4, noise=0.01, seeds=(0, 1, 2), rng_seed=1, diversity=0.9, health="ok")
    trials.append(synthetic_trial(1024, 4, 2, 0.01, seed=0, diversity=0.03, health="collapsed",
                                  health_reason="mode collapse: final diversity_pixels 0.030 < 0.2"))
    return trials


def _plateau() -> list[SyntheticTrial]:
    """3 sizes x 2 seeds whose curves have flattened by mid-training (1 + 3 exp(-20 progress))."""
    return [synthetic_trial(w, 4, 2, 10.0 * (64 / w) ** 0.5, seed=s, curve=lambda p: 1.0 + 3.0 * math.exp(-20 * p),
                            diversity=0.9, health="ok") for w in (32, 64, 128) for s in (0, 1)]


def _zigzag() -> list[SyntheticTrial]:
    """One size, 3 seeds, 1200 steps: flat, but every other evaluation 25 % above the level and the others 25 %
    below (fd swings like that between neighbouring evaluations of a real GAN), so two single evaluations
    (step 800 high, step 1100 low) would say "still improving" by 40 %."""
    return [synthetic_trial(16, 4, 4, 40.0, seed=s, steps=1200, curve=lambda p: 1.0 + 0.25 * (-1) ** round(12 * p),
                            diversity=0.9, health="ok") for s in (0, 1, 2)]


def _mixed_samples() -> list[SyntheticTrial]:
    """3 sizes x 2 seeds, larger always better; the largest trial of seed 0 carries a 1000-sample evaluation at
    step 200 (the final one of an earlier, shorter run it was extended from), much worse than the others: it must
    be compared with nothing, since the others evaluated 500 samples there."""
    trials = [synthetic_trial(w, 4, 2, 10.0 * (64 / w) ** 0.5, seed=s, diversity=0.9, health="ok")
              for w in (32, 64, 128) for s in (0, 1)]
    extended = trials[4]  # width 128, seed 0
    extended.metrics["eval_samples"][200] = 1000.0
    extended.metrics["fd_classifier"][200] *= 100
    return trials


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    _write(uri, "monotone", _monotone())
    _write(uri, "flat", power_law_trials(6, b=0.0, noise=0.3, seeds=(0, 1, 2), rng_seed=5, diversity=0.9,
                                         health="ok"))
    _write(uri, "plateau", _plateau())
    _write(uri, "mixed-samples", _mixed_samples())
    _write(uri, "zigzag", _zigzag())
    _write(uri, "one-seed", power_law_trials(4, a=5.0, b=0.4, noise=0.01, seeds=(0,), rng_seed=2, diversity=0.9))
    return uri


def _claims(uri: str, study: str, n_boot: int = N_BOOT):
    data = load_studies(uri, study)
    sel = select_trials(data, primary_metric(data))
    return data, sel, scaling_claims(data.history, sel.usable, sel.metric, lower_is_better=sel.lower_is_better,
                                     n_boot=n_boot, n_unhealthy_left_out=int((~sel.unhealthy["used"]).sum())
                                     if len(sel.unhealthy) else 0)


def _group(claims, name: str = "all") -> dict:
    return next(g for g in claims.groups if g["group"] == name)


def test_the_store_tells_intermediate_from_final_evaluations(store: str) -> None:
    data = load_studies(store, "monotone")
    sel = select_trials(data, "fd_classifier")
    evals, source = evaluations(data.history, sel.usable, "fd_classifier")
    assert "eval_samples" in source and "without it" not in source
    assert set(evals.loc[evals["final"], "step"]) == {400} and set(evals.loc[evals["final"], "samples"]) == {1000.0}
    assert set(evals.loc[~evals["final"], "step"]) == {0, 100, 200, 300}
    assert set(evals.loc[~evals["final"], "samples"]) == {500.0}
    assert set(evals["total"]) == {400} and set(evals["seed"]) == {"0", "1", "2"}


def test_a_monotone_study_gives_fraction_one_and_r_near_minus_one(store: str) -> None:
    _, sel, claims = _claims(store, "monotone")
    assert claims.n_used == 18 and claims.n_unhealthy_left_out == 1  # the collapsed trial's fd 0.01 is not used
    g = _group(claims)
    assert g["bootstrap_unit"] == "seed" and g["seeds"] == ["0", "1", "2"]
    for c in g["correlation"]:
        assert c["n"] == 18 and c["r"] < -0.99 and c["ci95"][1] < -0.98, c
    gflops = next(c for c in g["correlation"] if c["x"] == "gflops_g")
    assert gflops["valid_resamples"] == N_BOOT
    mid, final = g["larger_better"]["intermediate"], g["larger_better"]["final"]
    # 15 pairs of sizes x 3 seeds, at steps 100, 200, 300 (> 10 % of 400; step 0 is not) and at the final step
    assert (mid["n"], mid["larger_better"], mid["fraction"], mid["ci95"]) == (135, 135, 1.0, [1.0, 1.0])
    assert (final["n"], final["larger_better"], final["fraction"]) == (45, 45, 1.0)
    pairs = claims.pairs["all"]
    assert len(pairs) == 15 and (pairs["intermediate_n"] == 9).all() and (pairs["final_n"] == 3).all()
    assert (pairs["intermediate_fraction"] == 1.0).all() and (pairs["gflops_ratio"] > 1).all()
    p = g["plateau"]  # the default curve 1 + 3 (1 - progress)^2: 1.75 at step 200, 1.1875 at step 300
    assert (p["middle_steps"], p["last_steps"], p["samples"]) == ([200], [300], 500.0) and p["trials"] == 3
    assert p["relative_improvement"] == pytest.approx(1 - 1.1875 / 1.75, rel=1e-3)
    assert p["verdict"] == "still improving" and [e["step"] for e in p["evaluations"]] == [100, 200, 300]


def test_a_study_without_scaling_gives_intervals_around_no_relation(store: str) -> None:
    _, _, claims = _claims(store, "flat")
    g = _group(claims)
    for c in g["correlation"]:
        lo, hi = c["ci95"]
        assert lo < 0 < hi, c
    for kind in ("intermediate", "final"):
        lo, hi = g["larger_better"][kind]["ci95"]
        assert lo < 0.5 < hi, (kind, lo, hi)
    # the same statistic the fits report, on the same trials
    data = load_studies(store, "flat")
    sel = select_trials(data, "fd_classifier")
    from analysis.fit import correlations

    expected = correlations(sel.usable["gflops_g"].to_numpy(float), sel.usable["metric_value"].to_numpy(float))
    assert g["correlation"][0]["r"] == pytest.approx(expected["pearson_log_r"])


def test_a_flattened_curve_is_near_plateau(store: str) -> None:
    _, _, claims = _claims(store, "plateau")
    p = _group(claims)["plateau"]
    assert p["size"] == "w32-d4" and p["trials"] == 2 and p["verdict"] == "near plateau"
    assert abs(p["relative_improvement"]) < 1e-3


def test_the_plateau_compares_window_means_not_two_noisy_evaluations_and_holds_for_one_size(store: str) -> None:
    _, _, claims = _claims(store, "zigzag")
    assert claims.groups == [] and claims.single_size == ["all"]
    p = claims.single_size_plateau["all"]
    assert p["middle_steps"] == [500, 600, 700, 800] and p["last_steps"] == [900, 1000, 1100]
    assert p["mean_middle"] == pytest.approx(40.0) and p["mean_last"] == pytest.approx(40.0 * 2.75 / 3)
    assert p["relative_improvement"] == pytest.approx(1 - 2.75 / 3) and p["verdict"] == "near plateau"
    assert [e["window"] for e in p["evaluations"]] == ["first third"] * 4 + ["middle third"] * 4 + ["last third"] * 3
    text = claims_markdown(claims, values_table)
    assert "(c) all: plateau of the smallest model, w16-d4 (3 trials)" in text and "**near plateau**" in text


def test_evaluations_of_different_sample_counts_are_never_compared(store: str) -> None:
    data = load_studies(store, "mixed-samples")
    sel = select_trials(data, "fd_classifier")
    evals, _ = evaluations(data.history, sel.usable, "fd_classifier")
    comp = comparisons(evals, lower_is_better=True)
    extended = sel.usable.loc[(sel.usable["model.width"] == 128) & (sel.usable["train.seed"] == 0), "run_id"].iloc[0]
    at_200 = comp[(comp["step"] == 200) & ((comp["run_small"] == extended) | (comp["run_large"] == extended))]
    assert at_200.empty
    g = _group(scaling_claims(data.history, sel.usable, "fd_classifier", n_boot=N_BOOT))
    # 3 pairs x 2 seeds x 3 steps, less the 2 pairs of seed 0 at step 200 with the 1000-sample evaluation
    assert (g["larger_better"]["intermediate"]["n"], g["larger_better"]["intermediate"]["fraction"]) == (16, 1.0)


def test_a_single_seed_resamples_trials(store: str) -> None:
    _, _, claims = _claims(store, "one-seed")
    g = _group(claims)
    assert g["bootstrap_unit"] == "trial"
    mid = g["larger_better"]["intermediate"]
    assert (mid["n"], mid["fraction"], mid["ci95"]) == (18, 1.0, [1.0, 1.0])  # 6 pairs x 3 steps


def test_analyze_reports_the_claims_in_report_json_and_summary(store: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_analyze_parser(parser.add_subparsers())
    out = tmp_path / "analysis"
    args = parser.parse_args(["analyze", "monotone", "--tracking-uri", store, "--out", str(out), "--bootstrap", "50",
                              "--holdout", "1"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "claims all" in printed
    assert "larger better in 135 of 135 same-step comparisons (1.00 [1.00, 1.00])" in printed
    claims = json.loads((out / "fits.json").read_text())["claims"]
    assert claims["n_used"] == 18 and claims["unhealthy_left_out"] == 1 and claims["bootstrap"]["resamples"] == 50
    assert {"correlation", "larger_better", "plateau", "prediction"} == set(claims["method"])
    g = next(g for g in claims["groups"] if g["group"] == "all")
    assert len(g["pairs"]) == 15 and g["larger_better"]["final"]["fraction"] == 1.0
    largest = [line for line in claims["prediction_of_the_largest"] if line.startswith("all, a·x^-b")]
    assert len(largest) == 1 and "the largest model" in largest[0] and "of 3 inside" in largest[0]
    text = (out / "report.md").read_text()
    section = text[text.index("## Scaling claims"):text.index("## Compute-efficient frontier")]
    for words in ("1 unhealthy trial left out", "(a) Pearson correlation", "log gflops_g vs log fd_classifier",
                  "log train_flops vs log fd_classifier", "seeds of one size are trials of the same x",
                  "135 of 135", "Per pair of sizes", "eval_samples", "**still improving**",
                  "near plateau\" when that improvement is below 10%", "(d) held-out prediction of the largest model",
                  "inside**", "(plots/training_curves.png)"):
        assert words in section, words
    for suffix in (".md", ".tex", ".csv"):
        assert (out / "tables" / f"claims_pairs_all{suffix}").exists()
    assert (out / "plots" / "training_curves.png").stat().st_size > 1000


def test_without_holdout_the_report_says_how_to_get_the_prediction(store: str, tmp_path: Path) -> None:
    data = load_studies(store, "plateau")
    report = write_report(data, tmp_path, n_boot=20, log_artifacts=False)
    assert report.claims is not None and report.claims.prediction == [
        "not run: `analyze --holdout 1` predicts the largest model from a fit on the others"]
    assert "**near plateau**" in report.path.read_text()
    assert np.isfinite(_group(report.claims)["correlation"][0]["r"])


def test_no_log_leaves_the_store_as_it_was(store: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    parser = argparse.ArgumentParser()
    add_analyze_parser(parser.add_subparsers())
    args = parser.parse_args(["analyze", "one-seed", "--tracking-uri", store, "--out", str(tmp_path), "--bootstrap",
                              "20", "--no-log"])
    assert args.func(args) == 0 and (tmp_path / "report.md").exists()
    parent = load_studies(store, "one-seed").parents["one-seed"]
    assert not MlflowClient(tracking_uri=store).list_artifacts(parent, "analysis")


def test_an_extended_trial_counts_the_steps_it_finished_at_not_its_first_params() -> None:
    """MLflow params never change: a trial extended from 600 to 1200 steps still has steps=600 in them."""
    trials = pd.DataFrame({"steps": ["600", "600", None, "400"], "train.steps": ["600", "600", "300", "400"],
                           "final_step": [1200, 600, 300, 250]})  # extended, as asked, no `steps`, diverged at 250
    assert total_steps(trials).tolist() == [1200.0, 600.0, 300.0, 400.0]

"""Collapsed trials, fits that are no scaling law, and GAT vs DiT only where the intervals separate.

Issue 11: a GAT family fitted b = -1.69, 95 % CI [-5.68, 0.40] (wrong sign, CI includes 0) and the
equal-compute table still declared GAT better at every compute.  Every study here is written by
`analysis.synthetic` to a real MLflow sqlite store and read back as `gat-study analyze` and
`gat-study compare` read a real one.  Bootstraps are small where only plumbing is under test.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.compare import better_family, compare_families, write_comparison
from analysis.fit import fit_power_law, judge_law
from analysis.load import load_studies
from analysis.select import diversity_key, diversity_metric, lower_is_better, select_trials
from analysis.synthetic import family_trial, log_study, model_cost, power_law_trials, synthetic_trial
from orchestrator.analyze_cmd import add_analyze_parser, analyze
from orchestrator.compare_cmd import add_compare_parser

COLLAPSE_REASON = "mode collapse: final diversity_pixels 0.030 < 0.2"
C0 = 1e12


def _collapse_trials() -> list:
    """6 healthy trials on a law (3 tagged ok, 3 from an older store without the tag), a collapsed trial whose
    FD is absurdly good, and a diverged one without a health tag."""
    tagged = power_law_trials(3, a=5.0, b=0.4, noise=0.02, rng_seed=11, diversity=0.9, health="ok", max_width=96)
    untagged = power_law_trials(3, a=5.0, b=0.4, noise=0.02, rng_seed=12, diversity=0.85, min_width=128,
                                max_width=384)
    collapsed = synthetic_trial(512, 4, 2, 0.01, diversity=0.03, health="collapsed", health_reason=COLLAPSE_REASON)
    diverged = synthetic_trial(48, 4, 2, 3.0, diverge_at=200)
    return tagged + untagged + [collapsed, diverged]


def _family(family: str, a: float, b: float, noise: float, rng: np.random.Generator, **kwargs) -> list:
    """3 widths x 2 training lengths of one family with final FD = a (C / C0)^-b x lognormal noise."""
    trials = []
    for width in (32, 64, 128):
        for steps in (200, 400):
            macs = (6 if family == "gat" else 3) * model_cost(width, 4, 2)["gflops_g"] * 1e9 * 32 * steps
            value = a * (macs / C0) ** -b * math.exp(noise * rng.standard_normal())
            trials.append(family_trial(family, width, 4, 2, value, steps=steps, **kwargs))
    return trials


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    log_study(uri, "collapse", _collapse_trials())
    log_study(uri, "flat", power_law_trials(8, b=0.0, noise=0.1, rng_seed=5, diversity=0.9, health="ok"))
    log_study(uri, "wrong-sign", power_law_trials(8, b=-0.3, noise=0.03, rng_seed=6))
    rng = np.random.default_rng(3)
    log_study(uri, "separate", _family("gat", 30.0, 0.3, 0.01, rng, diversity=0.9, health="ok")
              + _family("dit", 80.0, 0.3, 0.01, rng))
    # one law and the same noise draws for both families: nearly equal fits at equal compute
    log_study(uri, "overlap", _family("gat", 50.0, 0.3, 0.1, np.random.default_rng(9))
              + _family("dit", 50.0, 0.3, 0.1, np.random.default_rng(9)))
    log_study(uri, "gat-no-law", _family("gat", 50.0, 0.0, 0.15, rng) + _family("dit", 80.0, 0.3, 0.01, rng))
    gat = _family("gat", 30.0, 0.3, 0.01, rng, diversity=0.9, health="ok")
    gat[-1] = family_trial("gat", 128, 4, 2, 500.0, steps=400, diversity=0.02, health="collapsed",
                           health_reason=COLLAPSE_REASON)
    log_study(uri, "family-collapse", gat + _family("dit", 80.0, 0.3, 0.01, rng))
    return uri


# --- the contract ----------------------------------------------------------------------------------
def test_health_and_diversity_are_read_from_the_contract(store: str) -> None:
    data = load_studies(store, "collapse")
    t = data.trials.set_index("run_name")
    assert sorted(t["health"].value_counts().items()) == [("collapsed", 1), ("diverged", 1), ("ok", 6)]
    sick = t[t["health"] == "collapsed"].iloc[0]
    assert sick["status"] == "completed" and sick["health_reason"] == COLLAPSE_REASON
    gone = t[t["status"] == "diverged"].iloc[0]  # no health tag: unhealthy because diverged, with its reason
    assert gone["health"] == "diverged" and gone["health_reason"] == "non-finite loss_d at step 200"
    assert diversity_key("fd_classifier") == diversity_key("fid") == "diversity_pixels"  # whatever the extractor
    assert diversity_metric(data, "fd_classifier") == "diversity_pixels"
    assert diversity_metric(load_studies(store, "wrong-sign"), "fd_classifier") is None  # an older store
    assert not lower_is_better("diversity_pixels") and lower_is_better("fd_classifier")
    assert lower_is_better("kid_inception") and not lower_is_better("inception_score")  # one rule, by name
    assert sick["diversity_pixels"] == pytest.approx(0.03)
    curve = data.history[(data.history["key"] == "diversity_pixels") & (data.history["run_id"] == sick["run_id"])]
    assert curve.sort_values("step")["value"].tolist() == pytest.approx([0.5, 0.3825, 0.265, 0.1475, 0.03])


# --- collapsed trials do not become science ----------------------------------------------------------
def test_collapsed_trial_left_out_by_default_and_named(store: str) -> None:
    data = load_studies(store, "collapse")
    sel = select_trials(data, "fd_classifier")
    assert len(sel.usable) == 6 and set(sel.usable["health"]) == {"ok"}
    assert dict(zip(sel.excluded["health"], sel.excluded["reason"])) == {
        "collapsed": f"collapsed: {COLLAPSE_REASON}", "diverged": "diverged: non-finite loss_d at step 200"}
    kept = select_trials(data, "fd_classifier", keep_unhealthy=True)
    assert len(kept.usable) == 7 and "collapsed" in set(kept.usable["health"])  # diverged still needs include_failed
    assert len(select_trials(data, "fd_classifier", keep_unhealthy=True, include_failed=True).usable) == 8


def test_analyze_excludes_collapsed_trials_with_a_note_and_keeps_them_on_request(store: str, tmp_path: Path, capsys) -> None:
    default = tmp_path / "default"
    text = analyze("collapse", store, default, None, n_boot=50).read_text()
    fits = json.loads((default / "fits.json").read_text())
    assert fits["n_used"] == 6 and fits["diversity_metric"] == "diversity_pixels"
    note = next(n for n in fits["notes"] if "unhealthy" in n)
    sick = load_studies(store, "collapse").trials.query("health == 'collapsed'")["run_name"].iloc[0]
    assert f"{sick} (collapsed: {COLLAPSE_REASON})" in note and "--keep-unhealthy" in note
    assert "(diverged: non-finite loss_d at step 200)" in note
    assert note in text and "2 left out as unhealthy" in text
    power = next(f for f in fits["fits"] if f["kind"] == "power" and f["x"] == "gflops_g" and f["group"] == "all")
    assert power["n"] == 6 and power["scaling_law"] and abs(power["params"]["b"] - 0.4) < 0.05
    trials = pd.read_csv(default / "tables" / "trials.csv")
    assert {"health", "health_reason", "diversity_pixels", "used"} <= set(trials.columns)
    assert trials.loc[trials["health"] == "collapsed", "used"].tolist() == [False]
    final = text[text.index("## Trials (final values)"):text.index("## Scaling fits")]
    assert "| fd_classifier | diversity_pixels |" in final and sick not in final and "| 0.9 |" in final
    excluded = text[text.index("## Excluded trials"):text.index("## Trials (final values)")]
    assert "| 0.03 |" in excluded  # the diversity that explains the exclusion
    frontier = pd.read_csv(default / "tables" / "frontier.csv")
    assert sick not in set(frontier["run_name"])
    assert (default / "plots" / "training_curves.png").exists()

    parser = argparse.ArgumentParser()
    add_analyze_parser(parser.add_subparsers())
    kept = tmp_path / "kept"
    args = parser.parse_args(["analyze", "collapse", "--tracking-uri", store, "--out", str(kept), "--bootstrap", "50",
                              "--keep-unhealthy"])
    assert args.keep_unhealthy and args.func(args) == 0
    fits = json.loads((kept / "fits.json").read_text())
    assert fits["n_used"] == 7 and fits["keep_unhealthy"]
    assert any("kept in the fits as asked" in n and COLLAPSE_REASON in n for n in fits["notes"])
    power = next(f for f in fits["fits"] if f["kind"] == "power" and f["x"] == "gflops_g" and f["group"] == "all")
    assert power["n"] == 7
    args = parser.parse_args(["analyze", "collapse", "--tracking-uri", store, "--out", str(tmp_path / "json"),
                              "--bootstrap", "20", "--json"])
    capsys.readouterr()
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["n_used"] == 6  # --json prints fits.json, nothing else


def test_ablation_tables_show_diversity_beside_the_metric(store: str, tmp_path: Path) -> None:
    from analysis.report import write_report

    trials = []
    for width in (32, 64):
        for mng, div in (("exp", 0.9), ("off", 0.4)):
            for seed in (0, 1):
                trials.append(synthetic_trial(width, 4, 2, 10.0 * 64 / width, seed=seed, extra={"train.mng": mng},
                                              diversity=div + 0.01 * seed, health="ok"))
    log_study(store, "ablate-diversity", trials)
    report = write_report(load_studies(store, "ablate-diversity"), tmp_path, n_boot=20, log_artifacts=False)
    table = report.diversity_ablations["train.mng"]
    assert table.metric == "diversity_pixels" and not table.lower_is_better
    assert table.baseline == "off"  # no base config: the "off" setting
    np.testing.assert_allclose(table.cells.loc[table.cells["value"] == "exp", "delta"], 0.5)
    assert (tmp_path / "tables" / "ablation_train_mng_diversity_pixels.tex").exists()
    text = report.path.read_text()
    assert "diversity_pixels (higher is better) by train.mng" in text


# --- no scaling law is reported as such --------------------------------------------------------------
def test_judge_law_on_sign_and_interval() -> None:
    assert judge_law(0.3, (0.2, 0.4)) == ""
    assert "includes 0" in judge_law(0.3, (-0.1, 0.7))
    assert "wrong sign" in judge_law(-0.3, (-0.4, -0.2)) and judge_law(-0.3, (-0.4, -0.2), lower_is_better=False) == ""
    assert judge_law(0.3, (math.nan, math.nan)) == ""  # no bootstrap: the sign alone
    motivating = judge_law(-1.69, (-5.68, 0.40))
    assert "wrong sign" in motivating and "includes 0" in motivating
    x = np.geomspace(1, 100, 8)
    assert not fit_power_law(x, 3 * x ** 0.2, n_boot=20).is_law  # FD rising with compute


@pytest.mark.parametrize("study", ["flat", "wrong-sign"])
def test_no_scaling_law_is_reported_and_predicts_nothing(store: str, tmp_path: Path, study: str) -> None:
    text = analyze(study, store, tmp_path, None, n_boot=200).read_text()
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert fits["fits"] and not any(f["scaling_law"] for f in fits["fits"])
    for f in fits["fits"]:
        assert f["no_law_reason"] and f["extrapolation"]["skipped"].startswith("no scaling law at this scale")
    power = next(f for f in fits["fits"] if f["kind"] == "power" and f["x"] == "gflops_g")
    assert ("includes 0" if study == "flat" else "wrong sign") in power["no_law_reason"]
    table = pd.read_csv(tmp_path / "tables" / "fits.csv")
    assert table["scaling_law"].str.startswith("none: ").all() and table["extrap_abs_rel_err"].isna().all()
    assert "**no scaling law at this scale**" in text and "| none: " in text
    assert any("no fit is a scaling law" in n for n in fits["notes"])


# --- compare names a family only where the intervals separate ------------------------------------
def test_better_family_rule() -> None:
    row = {"gat_law": True, "dit_law": True, "gat_fit_lo": 1.0, "gat_fit_hi": 2.0, "dit_fit_lo": 3.0,
           "dit_fit_hi": 4.0}
    assert better_family(row) == "GAT" and better_family(row, lower_is_better=False) == "DiT"
    assert better_family({**row, "dit_fit_lo": 1.9}) == "not separable"
    assert better_family({**row, "gat_fit_lo": math.nan, "gat_fit_hi": math.nan}) == "not separable"
    assert better_family({**row, "gat_law": False}) == "no scaling law (GAT)"


def test_compare_separate_intervals_name_the_family(store: str, tmp_path: Path) -> None:
    comp = compare_families(load_studies(store, "separate"), n_boot=200)
    table = comp.equal_compute
    assert len(table) and (table["better"] == "GAT").all()
    assert (table["gat_fit_hi"] < table["dit_fit_lo"]).all()
    assert comp.diversity == "diversity_pixels"
    write_comparison(comp, tmp_path, log_artifacts=False)
    trials = (tmp_path / "tables" / "trials.md").read_text()
    assert "| fd_classifier | diversity_pixels |" in trials and "| 0.9 |" in trials


def test_compare_overlapping_intervals_are_not_separable(store: str) -> None:
    comp = compare_families(load_studies(store, "overlap"), n_boot=200)
    table = comp.equal_compute
    assert comp.law("gat") is not None and comp.law("dit") is not None
    assert len(table) and (table["better"] == "not separable").all()
    # GAT's fitted values are 2 % lower (the old table called that "GAT better"), well inside both intervals
    np.testing.assert_allclose(table["dit_over_gat"], 1.02, atol=0.01)
    assert (table["gat_fit"] < table["dit_fit"]).all()
    assert ((table["gat_fit_lo"] < table["dit_fit"]) & (table["dit_fit_lo"] < table["gat_fit"])).all()


def test_compare_without_a_law_predicts_nothing_for_that_family(store: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", "gat-no-law", "--tracking-uri", store, "--out", str(tmp_path), "--no-speed",
                              "--bootstrap", "200"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "GAT no scaling law" in printed and "no scaling law at this scale" in printed
    summary = json.loads((tmp_path / "compare.json").read_text())
    fits = summary["fits"]
    assert not fits["gat"]["train_flops"]["scaling_law"] and fits["dit"]["train_flops"]["scaling_law"]
    equal = pd.read_csv(tmp_path / "tables" / "equal_compute.csv")
    assert len(equal) and equal["gat_fit"].isna().all() and equal["dit_fit"].notna().all()
    assert (equal["better"] == "no scaling law (GAT)").all() and equal["dit_over_gat"].isna().all()
    assert equal["gat_best"].notna().all()  # the measured values stay
    needed = pd.read_csv(tmp_path / "tables" / "needed_compute.csv")
    assert len(needed) and needed["gat_macs"].isna().all() and needed["dit_macs"].notna().all()
    text = (tmp_path / "compare.md").read_text()
    assert "**no scaling law at this scale**" in text and "| no scaling law |" in text
    assert "no scaling law (GAT)" in text


def test_compare_leaves_a_collapsed_trial_out_unless_kept(store: str) -> None:
    data = load_studies(store, "family-collapse")
    comp = compare_families(data, n_boot=20)
    assert comp.counts() == {"gat": 5, "dit": 6}
    assert comp.health_note and COLLAPSE_REASON in comp.health_note and comp.health_note in comp.notes
    assert comp.excluded["health"].tolist() == ["collapsed"] and comp.excluded["family"].tolist() == ["gat"]
    assert comp.fit("gat").n == 5
    kept = compare_families(data, n_boot=20, keep_unhealthy=True)
    assert kept.counts() == {"gat": 6, "dit": 6} and kept.excluded.empty and "kept in the fits" in kept.health_note


def test_one_healthy_trial_beside_collapsed_ones_still_gets_its_report(tmp_path: Path) -> None:
    """What the quickstart can end with: the others collapsed. That is a result to report, not an error."""
    from orchestrator.analyze_cmd import run_analysis

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ok = synthetic_trial(32, 4, 2, 30.0, diversity=0.4, health="ok")
    sick = [synthetic_trial(w, 4, 2, 10.0, diversity=0.1, health="collapsed", health_reason=COLLAPSE_REASON)
            for w in (64, 128)]
    log_study(uri, "mostly-collapsed", [ok, *sick])
    report = run_analysis("mostly-collapsed", uri, tmp_path / "out", n_boot=10, log_artifacts=False)
    text = report.path.read_text()
    assert len(report.selection.usable) == 1 and COLLAPSE_REASON in text and "no scaling fit was possible" in text


def test_a_d_wins_episode_before_the_verdicts_window_is_shown_not_acted_on(tmp_path: Path) -> None:
    """A trial whose D won outright mid-run and recovered is tagged healthy (the verdict sees the last 10 %);
    the report shows the share of its steps after the first 10 % that D won, and names it in a note."""
    from orchestrator.analyze_cmd import run_analysis

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trials = power_law_trials(4, diversity=0.9, health="ok")  # 400 steps, loss_d logged every 25
    episode, warmup = trials[1], trials[2]
    for step in episode.metrics["loss_d"]:
        if 100 <= step <= 250:
            episode.metrics["loss_d"][step] = 1e-4  # 7 of the 15 logged steps after step 40
    warmup.metrics["loss_d"][25] = 1e-4  # inside the first 10 %: the start of a GAN, not counted
    log_study(uri, "episodes", trials)
    report = run_analysis("episodes", uri, tmp_path / "out", n_boot=10, log_artifacts=False)
    usable = report.selection.usable
    assert len(usable) == 4 and sorted(usable["d_wins"].round(4).tolist()) == [0.0, 0.0, 0.0, round(7 / 15, 4)]
    flagged = usable.loc[usable["d_wins"] > 0, "run_name"].item()
    assert "D wins (share of steps)" in report.path.read_text()
    (note,) = [n for n in report.notes if "D winning outright" in n]
    assert note.startswith("1 trial(s) used in the fits") and f"{flagged} (47% of logged steps)" in note

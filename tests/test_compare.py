"""`gat-study compare` against synthetic GAT and DiT studies with known power laws (real MLflow sqlite store).

GAT's final FD follows 50 (C / C0)^-0.3 and DiT's 80 (C / C0)^-0.35 in training MACs C
(C0 = 1e12 MACs), with 1 % seeded noise; every trial also has per-step evaluations (above
its law until the end) and DiT trials carry `fd_classifier_nfe<k>` and `sample_gflops_nfe<k>`.
The expected tables are computed here from the trials as written, not from MLflow.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.compare import compare_families, nice_grid
from analysis.errors import AnalysisError
from analysis.load import load_studies
from analysis.synthetic import family_trial, log_study, model_cost, synthetic_trial
from orchestrator.compare_cmd import add_compare_parser, compare

ROOT = Path(__file__).resolve().parent.parent
C0 = 1e12
LAWS = {"gat": (50.0, 0.3), "dit": (80.0, 0.35)}
NFE = (1, 2, 4, 8)
SAMPLE_STEPS = 8


def law(family: str, macs: float | np.ndarray) -> float | np.ndarray:
    a, b = LAWS[family]
    return a * (np.asarray(macs, float) / C0) ** -b


def inverse(family: str, value: float) -> float:
    a, b = LAWS[family]
    return C0 * (a / value) ** (1 / b)


def _family_trials() -> dict[str, list]:
    """Per family 3 widths x 2 training lengths; final FD on the family's law (1 % noise)."""
    rng = np.random.default_rng(0)
    out: dict[str, list] = {"gat": [], "dit": []}
    for family in ("gat", "dit"):
        for width in (32, 64, 128):
            for steps in (200, 400):
                macs = (6 if family == "gat" else 3) * model_cost(width, 4, 2)["gflops_g"] * 1e9 * 32 * steps
                value = float(law(family, macs)) * math.exp(0.01 * rng.standard_normal())
                trial = family_trial(family, width, 4, 2, value, steps=steps, sample_steps=SAMPLE_STEPS, eval_nfe=NFE)
                assert trial.metrics["train_flops"][steps] == pytest.approx(macs)
                out[family].append(trial)
    return out


TRIALS = _family_trials()


def _truth_points(family: str) -> list[tuple[float, float]]:
    """(training MACs, FD) of every evaluation after step 0 of the family's trials, as written."""
    points = []
    for trial in TRIALS[family]:
        flops = trial.metrics["train_flops"]
        points += [(flops[s], v) for s, v in trial.metrics["fd_classifier"].items() if s > 0]
    return points


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    log_study(uri, "families", TRIALS["gat"] + TRIALS["dit"])
    log_study(uri, "gat-only", [family_trial("gat", w, 4, 2, 10.0 / w) for w in (32, 64, 128)])
    one_dit = [family_trial("gat", w, 4, 2, 10.0 / w) for w in (32, 64)] + [family_trial("dit", 32, 4, 2, 1.0)]
    diverged = synthetic_trial(64, 4, 2, 1.0, diverge_at=200, extra={"model.family": "dit"})
    log_study(uri, "one-dit", one_dit + [diverged])
    tiny = [family_trial(f, w, 4, 2, 100.0 / w * (1.5 if f == "dit" else 1.0), resolution=8, eval_nfe=(1, 2, 4),
                         sample_steps=4) for f in ("gat", "dit") for w in (16, 32)]
    log_study(uri, "tiny", tiny)
    return uri


@pytest.fixture(scope="module")
def comparison(store: str):
    return compare_families(load_studies(store, "families"), budgets=[2e11, 5e11, 1e12, 1.5e12],
                            targets=[90.0, 70.0, 55.0], n_boot=500, seed=0)


# --- the equal-compute table ------------------------------------------------------------------
def test_equal_compute_table_reproduces_the_known_laws(comparison) -> None:
    comp = comparison
    assert comp.metric == "fd_classifier" and comp.lower_is_better and comp.counts() == {"gat": 6, "dit": 6}
    for family, (a, b) in LAWS.items():
        fit = comp.fit(family, "train_flops")
        assert fit.n == 6 and fit.ci["b"][0] < b < fit.ci["b"][1] and abs(fit.params["b"] - b) < 0.01
        assert fit.params["a"] == pytest.approx(a * C0 ** b, rel=0.15)
        assert comp.fit(family, "gflops_g") is not None
    table = comp.equal_compute
    assert table["budget_macs"].tolist() == [2e11, 5e11, 1e12, 1.5e12]
    for family in LAWS:
        truth = law(family, table["budget_macs"])
        np.testing.assert_allclose(table[f"{family}_fit"], truth, rtol=0.02)
        assert ((table[f"{family}_fit_lo"] <= table[f"{family}_fit"])
                & (table[f"{family}_fit"] <= table[f"{family}_fit_hi"])).all()
        assert ((table[f"{family}_fit_lo"] < truth * 1.01) & (truth * 0.99 < table[f"{family}_fit_hi"])).all()
        assert not table[f"{family}_extrapolated"].any()
        # best observed at <= budget: the lowest evaluation of any trial of the family at most that compute
        points = _truth_points(family)
        for budget, best, at in zip(table["budget_macs"], table[f"{family}_best"], table[f"{family}_best_macs"]):
            reachable = [(v, c) for c, v in points if c <= budget * (1 + 1e-12)]
            want = min(reachable)
            assert best == pytest.approx(want[0], rel=1e-9) and at <= budget
    budgets = table["budget_macs"]
    np.testing.assert_allclose(table["dit_over_gat"], law("dit", budgets) / law("gat", budgets), rtol=0.03)
    assert (table["better"] == "GAT").all()  # DiT's law lies above GAT's over this range


def test_needed_compute_matches_the_analytic_inverse(comparison) -> None:
    comp = comparison
    needed = comp.needed
    assert needed["target"].tolist() == [90.0, 70.0, 55.0]
    for family in LAWS:
        fit = comp.fit(family)
        a, b = fit.params["a"], fit.params["b"]
        for target, macs, lo, hi, seen in needed[["target", f"{family}_macs", f"{family}_macs_lo", f"{family}_macs_hi",
                                                  f"{family}_observed_macs"]].itertuples(index=False):
            assert macs == pytest.approx((a / target) ** (1 / b), rel=1e-9)  # exact inverse of the fitted law
            assert macs == pytest.approx(inverse(family, target), rel=0.08)  # and of the true one
            assert lo <= macs <= hi and hi / lo < 1.3  # bootstrap interval around the estimate
            assert lo / 1.02 < inverse(family, target) < hi * 1.02
            assert fit.predict(macs) == pytest.approx(target, rel=1e-9)
            reached = [c for c, v in _truth_points(family) if v <= target]
            assert seen == pytest.approx(min(reached), rel=1e-9) if reached else math.isnan(seen)
    ratio = np.array([inverse("dit", t) / inverse("gat", t) for t in needed["target"]])
    np.testing.assert_allclose(needed["dit_over_gat"], ratio, rtol=0.12)
    assert (needed["dit_over_gat"] > 1).all()


def test_default_budgets_and_targets_lie_in_both_families_ranges(store: str) -> None:
    comp = compare_families(load_studies(store, "families"), n_boot=50)
    (g_lo, g_hi), (d_lo, d_hi) = comp.fit("gat").x_range, comp.fit("dit").x_range
    budgets = comp.equal_compute["budget_macs"].to_numpy()
    assert len(budgets) == 5 and (np.diff(budgets) > 0).all()
    assert budgets.min() >= max(g_lo, d_lo) and budgets.max() <= min(g_hi, d_hi)
    assert all(float(f"{x:.2g}") == x for x in budgets)  # rounded to 2 significant digits
    targets = comp.needed["target"].to_numpy()
    assert len(targets) >= 3 and (np.diff(targets) < 0).all()  # from the easiest to the hardest
    finals = comp.trials.groupby("family")["metric_value"].agg(["min", "max"])
    assert targets.max() <= finals["max"].min() and targets.min() >= finals["min"].max()
    assert nice_grid(1.0, 1.0, 3) == [1.0] and nice_grid(1.23e13, 9.87e14, 3) == [1.3e13, 1.1e14, 9.8e14]


# --- the sampling table -----------------------------------------------------------------------
def test_sampling_table_has_gat_at_one_nfe_and_dit_at_each_nfe(comparison) -> None:
    s = comparison.sampling
    trials = comparison.trials.set_index("run_id")
    gat, dit = s[s["family"] == "gat"], s[s["family"] == "dit"]
    assert len(gat) == 6 and (gat["nfe"] == 1).all()
    for row in gat.itertuples():
        assert row.sample_gflops == pytest.approx(trials.at[row.run_id, "gflops_g"], rel=1e-9)
        assert row.value == pytest.approx(trials.at[row.run_id, "metric_value"])
    assert len(dit) == 6 * len(NFE)
    for run_id, rows in dit.groupby("run_id"):
        assert rows["nfe"].tolist() == list(NFE)
        forward, final = trials.at[run_id, "gflops_g"], trials.at[run_id, "metric_value"]
        np.testing.assert_allclose(rows["sample_gflops"], forward * np.array(NFE), rtol=1e-9)
        np.testing.assert_allclose(rows["value"], final * (SAMPLE_STEPS / np.array(NFE)) ** 0.5, rtol=1e-9)
        assert rows["source"].tolist() == [f"fd_classifier_nfe{k}" for k in NFE]
    assert s["family"].tolist()[:6] == ["gat"] * 6  # GAT first


# --- files and MLflow ---------------------------------------------------------------------------
def test_compare_writes_markdown_latex_csv_plots_and_logs_them(store: str, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    path = compare("families", store, out, None, speed=False, n_boot=200)
    assert path == out / "compare.md"
    text = path.read_text()
    for heading in ("# GAT vs DiT: families", "## Equal training compute", "## Training compute needed for a target",
                    "## Metric vs sampling compute per image", "## Sampling speed", "_not measured (--no-speed)_",
                    "(plots/compare_train_compute.png)", "(plots/compare_sampling_compute.png)"):
        assert heading in text, heading
    for name in ("fits", "equal_compute", "needed_compute", "sampling"):
        md, tex = (out / "tables" / f"{name}.md").read_text(), (out / "tables" / f"{name}.tex").read_text()
        assert "| " in md and all(k in tex for k in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{"))
        assert not (out / "tables" / "speed.csv").exists()
    equal = pd.read_csv(out / "tables" / "equal_compute.csv")
    assert {"budget_macs", "gat_fit", "gat_fit_lo", "gat_best", "dit_fit", "dit_best", "dit_over_gat"} <= set(equal)
    assert r"\times10^{" in (out / "tables" / "equal_compute.tex").read_text()  # MACs as 1.2 x 10^12
    sampling = pd.read_csv(out / "tables" / "sampling.csv")
    assert set(sampling.groupby("family")["nfe"].apply(lambda x: tuple(sorted(set(x))))) == {(1,), NFE}
    for stem in ("compare_train_compute", "compare_sampling_compute"):
        for suffix in (".png", ".pdf"):
            assert (out / "plots" / f"{stem}{suffix}").stat().st_size > 1000
    summary = json.loads((out / "compare.json").read_text())
    assert summary["trials"] == {"gat": 6, "dit": 6} and summary["speed"] is None
    assert abs(summary["fits"]["gat"]["train_flops"]["params"]["b"] - 0.3) < 0.01
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    parent = load_studies(store, "families").parents["families"]
    logged = {a.path for a in client.list_artifacts(parent, "compare")}
    assert {"compare/compare.md", "compare/compare.json", "compare/tables", "compare/plots"} <= logged
    assert "compare/tables/equal_compute.tex" in {a.path for a in client.list_artifacts(parent, "compare/tables")}


def test_speed_table_on_tiny_models(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole command with the speed measurement, on width 16 and 32 models at 8x8 (two trials per family)."""
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", "tiny", "--tracking-uri", store, "--out", str(tmp_path), "--bootstrap", "50"])
    assert args.speed and args.batch == 64
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "images/s" in printed and f"comparison: {tmp_path / 'compare.md'}" in printed
    speed = pd.read_csv(tmp_path / "tables" / "speed.csv")
    assert speed[["size", "family"]].drop_duplicates().values.tolist() == [["w16-d4", "gat"], ["w16-d4", "dit"],
                                                                           ["w32-d4", "gat"], ["w32-d4", "dit"]]
    assert (speed["batch"] == 64).all() and (speed["images_per_s"] > 0).all()
    assert (speed.loc[speed["family"] == "gat", "nfe"] == 1).all()
    from gat_core.flops import dit_forward_macs, generator_cost
    from orchestrator.compare_cmd import trial_config

    data = load_studies(store, "tiny")
    for width in (16, 32):
        rows = speed[speed["width"] == width]
        dit = rows[rows["family"] == "dit"].set_index("nfe")
        assert dit.index.tolist() == [1, 2, 4] and dit.at[1, "timing"] == "measured"
        assert dit.at[4, "images_per_s"] == pytest.approx(dit.at[1, "images_per_s"] / 4)
        forward = dit_forward_macs(3, 8, 2, width, 4) / 1e9
        np.testing.assert_allclose(dit["sample_gflops"], forward * np.array([1, 2, 4]))
        row = data.trials[(data.trials["model.width"] == width) & (data.trials["model.family"] == "gat")].iloc[0]
        cfg, dropped = trial_config(row)
        assert cfg.model.width == width and cfg.dataset.resolution == 8 and dropped == []
        gat = rows[rows["family"] == "gat"].iloc[0]
        assert gat["sample_gflops"] == pytest.approx(generator_cost(cfg.model, 8, 3, cfg.train.levels).total / 1e9)
    text = (tmp_path / "compare.md").read_text()
    assert "random weights" in text and "× NFE" in text and "| w16-d4 | GAT | 1 |" in text
    assert r"\toprule" in (tmp_path / "tables" / "speed.tex").read_text()
    summary = json.loads((tmp_path / "compare.json").read_text())
    assert len(summary["speed"]["rows"]) == len(speed)
    assert any("exactly through 2 trials" in n for n in summary["notes"])  # two trials per family: an exact law


def test_speed_builds_each_size_from_the_config_its_study_stored(store: str, tmp_path: Path) -> None:
    """A study that logged `study/trials.json` (as `gat-study run` does): the speed table's networks come from
    those exact configs (here a depth the run params do not say), not from the params rebuilt."""
    from mlflow.tracking import MlflowClient

    from orchestrator.compare_cmd import measure_sampling_speed, stored_configs, trial_config

    trials = [family_trial(f, w, 4, 2, 100.0 / w, resolution=8, eval_nfe=(1,), sample_steps=1)
              for f in ("gat", "dit") for w in (16, 32)]
    parent = log_study(store, "stored", trials)
    data = load_studies(store, "stored")
    grid = []
    for _, row in data.trials.iterrows():
        cfg, dropped = trial_config(row)
        assert dropped == [] and cfg.model.depth == 4
        exact = cfg.model_dump(mode="json")
        exact["model"]["depth"] = 6
        grid.append({"trial_id": row["trial_id"], "name": row["run_name"], "swept": {}, "config": exact})
    (tmp_path / "trials.json").write_text(json.dumps(grid))
    MlflowClient(store).log_artifact(parent, str(tmp_path / "trials.json"), artifact_path="study")

    configs = stored_configs(load_studies(store, "stored"))
    assert set(configs) == set(data.trials["trial_id"])
    cfg, dropped = trial_config(data.trials.iloc[0], configs)
    assert dropped == [] and cfg.model.depth == 6 and cfg.model.width == 16
    comp = compare_families(data, n_boot=10)
    speed, _, notes = measure_sampling_speed(comp.trials, 4, device="cpu", repeats=1, min_time=0.0, configs=configs)
    assert (speed["depth"] == 6).all() and len(speed) == 4 and not notes


# --- clear messages -----------------------------------------------------------------------------
@pytest.mark.parametrize("study, metric, words", [
    ("gat-only", None, ["no DiT trials", "GAT (3 trials)", "model.family"]),
    ("one-dit", None, ["1 usable DiT trial", "at least 2 per family", "non-finite loss_d at step 200"]),
    ("no-such-study", None, ["unknown study 'no-such-study'", "families"]),
    ("families", "fid", ["logged the metric 'fid'"]),
])
def test_clear_messages(store: str, tmp_path: Path, study: str, metric: str | None, words: list[str]) -> None:
    with pytest.raises(AnalysisError) as err:
        compare(study, store, tmp_path, metric, speed=False)
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert not (tmp_path / "compare.md").exists()


def test_cli_exit_code_and_no_torch_without_speed(store: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", "gat-only", "--tracking-uri", store, "--out", str(tmp_path), "--no-speed"])
    assert args.func(args) == 2 and "error: " in capsys.readouterr().err
    code = ("import sys\nfrom pathlib import Path\nfrom orchestrator.compare_cmd import compare\n"
            f"compare('tiny', {store!r}, Path({str(tmp_path / 'light')!r}), None, speed=False, n_boot=10)\n"
            "print('TORCH' if 'torch' in sys.modules else 'CLEAN')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "CLEAN" in out.stdout


def _plain(value: object) -> object:
    """A table cell as compare.json writes it: missing values (NaN) as None, numpy scalars as Python ones."""
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value.item() if isinstance(value, np.generic) else value


def test_cli_compare_json_prints_the_numbers_of_the_text_summary_and_of_the_files(
        store: str, comparison, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gat-study compare STUDY --json` through the CLI's main: stdout is one JSON document holding the fits per
    family with their bootstrap intervals and the equal-compute rows; the same numbers as the comparison computed
    in-process with the same settings, as the text summary prints and as the written tables hold."""
    from orchestrator.cli import main

    common = ["compare", "families", "--tracking-uri", store, "--no-speed", "--bootstrap", "500", "--seed", "0",
              "--budgets", "2e11,5e11,1e12,1.5e12", "--targets", "90,70,55"]  # the `comparison` fixture's settings
    assert main([*common, "--out", str(tmp_path / "json"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    assert summary == json.loads((tmp_path / "json" / "compare.json").read_text())
    assert summary["metric"] == "fd_classifier" and summary["lower_is_better"] is True
    assert summary["trials"] == {"gat": 6, "dit": 6} and summary["speed"] is None
    assert summary["bootstrap"] == {"resamples": 500, "seed": 0, "unit": "trial"}
    for family in LAWS:
        for x in ("train_flops", "gflops_g"):
            fit, want = summary["fits"][family][x], comparison.fit(family, x)
            assert fit["n"] == want.n == 6 and fit["x"] == x
            for key in ("a", "b"):
                assert fit["params"][key] == pytest.approx(want.params[key], rel=1e-12)
                assert fit["ci95"][key] == pytest.approx(list(want.ci[key]), rel=1e-12)
                assert fit["ci95"][key][0] <= fit["params"][key] <= fit["ci95"][key][1]
    table = comparison.equal_compute
    assert len(summary["equal_compute"]) == len(table) == 4
    for row, want in zip(summary["equal_compute"], table.to_dict(orient="records")):
        assert set(row) == set(want)
        for key, value in want.items():
            value = _plain(value)
            assert row[key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key
    assert [row["budget_macs"] for row in summary["equal_compute"]] == [2e11, 5e11, 1e12, 1.5e12]

    # the text summary of the same command prints these numbers, and its tables hold them
    assert main([*common, "--out", str(tmp_path / "text")]) == 0
    text = capsys.readouterr().out
    for family, name in (("gat", "GAT"), ("dit", "DiT")):
        fit = summary["fits"][family]["train_flops"]
        lo, hi = fit["ci95"]["b"]
        assert (f"  {name:<4} fd_classifier ~ train MACs^-b: b = {fit['params']['b']:.3f} [{lo:.3f}, {hi:.3f}], "
                f"n = {fit['n']}\n") in text
    for row in summary["equal_compute"]:
        assert (f"  at {row['budget_macs']:.3g} MACs: GAT {row['gat_fit']:.4g}, DiT {row['dit_fit']:.4g} -> "
                f"{row['better']}\n") in text
    written = pd.read_csv(tmp_path / "text" / "tables" / "equal_compute.csv")
    assert written.columns.tolist() == list(summary["equal_compute"][0])
    for row, want in zip(summary["equal_compute"], written.to_dict(orient="records")):
        for key, value in want.items():
            value = _plain(value)
            assert row[key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key
    fits = pd.read_csv(tmp_path / "text" / "tables" / "fits.csv")
    assert sorted(zip(fits["family"], fits["x"])) == sorted((f, x) for f in LAWS for x in ("train_flops", "gflops_g"))
    for row in fits.to_dict(orient="records"):
        fit = summary["fits"][row["family"]][row["x"]]
        assert row["n"] == fit["n"]
        for key in ("a", "b"):
            assert [row[key], row[f"{key}_lo"], row[f"{key}_hi"]] == pytest.approx(
                [fit["params"][key], *fit["ci95"][key]], rel=1e-12)

"""The analysis against studies with a known answer, logged to a real MLflow store (sqlite).

Every study here is written by `analysis.synthetic` following the README's run contract
(parent run, one child run per trial, dotted params, metrics by step), then read back
through MLflow exactly as `gat-study analyze` reads a real study.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.ablation import ablation_table, baseline_value, detect_switches
from analysis.errors import AnalysisError
from analysis.fit import fit_power_law, fit_saturating
from analysis.frontier import compute_frontier, eval_points, frontier_at, frontier_segments
from analysis.load import load_studies
from analysis.select import primary_metric, select_trials
from analysis.synthetic import log_study, model_cost, power_law_trials, synthetic_trial
from orchestrator.analyze_cmd import AnalysisError as CliAnalysisError
from orchestrator.analyze_cmd import add_analyze_parser, analyze

TRUE_A, TRUE_B = 5.0, 0.4
BASE = {"model": {"width": 64, "depth": 4, "patch_size": 2}, "train": {"mng": "exp", "lr_rule": "width", "seed": 0}}


def _ablation_trials() -> list:
    """3 sizes x MNG on/off x 3 seeds; MNG off is 20 % worse; block utilisation and sample grids logged."""
    rng = np.random.default_rng(7)
    trials = []
    for width in (32, 64, 128):
        for mng in ("exp", "off"):
            for seed in (0, 1, 2):
                g = model_cost(width, 4, 2)["gflops_g"]
                value = TRUE_A * g ** -TRUE_B * (1.2 if mng == "off" else 1.0) * np.exp(0.02 * rng.standard_normal())
                util = [0.05 if mng == "off" and i < 2 else 0.4 for i in range(4)]
                trials.append(synthetic_trial(width, 4, 2, value, seed=seed, extra={"train.mng": mng},
                                              block_util=util, sample=rng.random((8, 8, 3))))
    return trials


def _switch_trials() -> list:
    """2 sizes x VFM on/off x lr rule x K levels; VFM on is 10 % better, the rest does nothing."""
    trials = []
    for width in (32, 64):
        for vfm in (False, True):
            for rule in ("width", "constant"):
                for levels in (2, 4):
                    value = 10.0 * (64 / width) ** 0.5 * (0.9 if vfm else 1.0)
                    extra = {"train.lr_rule": rule, "train.mng_levels": levels}
                    if vfm:
                        extra.update({"train.vfm.model": "vit_base_patch14_dinov2", "train.vfm.weight": 1.0})
                    trials.append(synthetic_trial(width, 4, 2, value, extra=extra))
    return trials


def _family_trials() -> list:
    """GAT vs DiT at two preset sizes (widths scaled down), DiT 30 % worse at equal size."""
    trials = []
    for size, width in (("S", 32), ("B", 64)):
        for family in ("gat", "dit"):
            value = 10.0 * (64 / width) * (1.3 if family == "dit" else 1.0)
            extra = {"model.preset": f"{ {'gat': 'GAT', 'dit': 'DiT'}[family]}-{size}/2", "model.family": family}
            trials.append(synthetic_trial(width, 4, 2, value, extra=extra))
    return trials


def _frontier_trials() -> list:
    """Small model: fast start, final 10; 4x larger model: final 5 (curve multiplier 1 + 3(1 - progress)^2)."""
    return [synthetic_trial(32, 4, 2, 10.0), synthetic_trial(64, 4, 2, 5.0)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store with every synthetic study of this module."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    log_study(uri, "pl-8", power_law_trials(8, a=TRUE_A, b=TRUE_B, noise=0.05, rng_seed=1), base_config=BASE)
    log_study(uri, "pl-32", power_law_trials(32, a=TRUE_A, b=TRUE_B, noise=0.05, rng_seed=2, max_width=1024),
              base_config=BASE)
    log_study(uri, "sat", power_law_trials(12, a=TRUE_A, b=0.5, E=2.0, noise=0.01, rng_seed=3, max_width=2048))
    log_study(uri, "ablation", _ablation_trials(), base_config=BASE)
    log_study(uri, "frontier", _frontier_trials())
    log_study(uri, "families", _family_trials(), swept=["model.preset"])
    log_study(uri, "switches", _switch_trials(), base_config={**BASE, "train": {**BASE["train"], "vfm": None}})
    log_study(uri, "single", power_law_trials(1))
    diverged = [synthetic_trial(w, 4, 2, 30.0, diverge_at=200) for w in (32, 64, 128)]
    log_study(uri, "all-diverged", diverged)
    mixed = power_law_trials(3) + [synthetic_trial(256, 4, 2, 2.0, metric="fd_dinov2"),
                                   synthetic_trial(512, 4, 2, 1.5, metric="fd_dinov2")]
    log_study(uri, "mixed", mixed)
    some_failed = power_law_trials(4, rng_seed=4) + [synthetic_trial(1024, 4, 2, 1.0, diverge_at=300)]
    log_study(uri, "some-diverged", some_failed)
    return uri


def _usable(uri: str, study: str) -> pd.DataFrame:
    data = load_studies(uri, study)
    return select_trials(data, primary_metric(data)).usable


# --- loading -----------------------------------------------------------------------------------
def test_load_gives_one_tidy_row_per_trial(store: str) -> None:
    data = load_studies(store, "some-diverged")
    t = data.trials
    assert len(t) == 5 and t["run_id"].is_unique
    assert {"model.width", "model.patch_size", "train.mng", "train.seed", "gflops_g", "params_g", "train_flops",
            "fd_classifier", "status", "reason", "final_step", "size", "patch"} <= set(t.columns)
    assert t["model.width"].dtype.name == "Int64" and t["gflops_g"].dtype == float
    assert set(t["status"]) == {"completed", "diverged"}
    bad = t[t["status"] == "diverged"].iloc[0]
    assert bad["reason"] == "non-finite loss_d at step 300" and bad["final_step"] == 300
    assert {"run_id", "key", "step", "value"} <= set(data.history.columns)
    assert data.parents["some-diverged"]
    sel = select_trials(data, "fd_classifier")
    assert len(sel.usable) == 4 and list(sel.excluded["status"]) == ["diverged"]
    assert "non-finite loss_d at step 300" in sel.excluded["reason"].iloc[0]
    with_failed = select_trials(data, "fd_classifier", include_failed=True)
    assert len(with_failed.usable) == 5  # the diverged trial at its last finite evaluation


def test_only_the_trials_of_the_study_file_as_it_stands(store: str) -> None:
    """An edited grid: runs of trials the file no longer has are left out, with a note."""
    every = load_studies(store, "some-diverged")
    kept = set(every.trials["trial_id"][:3])
    data = load_studies(store, "some-diverged", trial_ids=kept)
    assert set(data.trials["trial_id"]) == kept and set(data.history["run_id"]) <= set(data.trials["run_id"])
    assert data.notes == ["2 runs of trials no longer in the study file are left out "
                          "(give the study name instead of the file to include them)"]
    assert not every.notes
    with pytest.raises(AnalysisError, match="none of the 2 trials of study 'some-diverged' as its file now stands"):
        load_studies(store, "some-diverged", trial_ids={"not-run-1", "not-run-2"})


def test_several_studies_load_into_one_frame(store: str) -> None:
    data = load_studies(store, ["pl-8", "frontier"])
    assert set(data.trials["study"]) == {"pl-8", "frontier"} and len(data.trials) == 10


def _run_by_run(uri: str, study: str) -> pd.DataFrame:
    """The histories as the plain API gives them: one get_metric_history per run and curve key."""
    from mlflow.tracking import MlflowClient

    from analysis.load import HISTORY_COLUMNS, find_study_runs, wants_history

    client = MlflowClient(uri)
    rows = [(run.info.run_id, key, m.step, m.value, m.timestamp) for run in find_study_runs(client, study)[1]
            for key in sorted(k for k in run.data.metrics if wants_history(k))
            for m in client.get_metric_history(run.info.run_id, key)]
    return _sorted(pd.DataFrame(rows, columns=HISTORY_COLUMNS))


def _sorted(history: pd.DataFrame) -> pd.DataFrame:
    return history.sort_values(["run_id", "key", "step", "timestamp"]).reset_index(drop=True)


def _spy_run_by_run(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the runs read one request at a time (`analysis.load._one_by_one`)."""
    import analysis.load as load

    calls: list[int] = []
    plain = load._one_by_one

    def counted(client, run_ids, key):
        calls.append(len(run_ids))
        return plain(client, run_ids, key)

    monkeypatch.setattr(load, "_one_by_one", counted)
    return calls


def test_histories_of_a_sqlite_store_in_bulk_equal_the_run_by_run_ones(store: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import analysis.load as load

    calls = _spy_run_by_run(monkeypatch)
    monkeypatch.setattr(load, "SQL_RUNS_PER_QUERY", 3)  # several queries per key, as for a large study
    data = load_studies(store, "some-diverged")
    assert not calls
    expected = _run_by_run(store, "some-diverged")
    pd.testing.assert_frame_equal(_sorted(data.history), expected)
    assert np.isnan(data.history["value"]).any()  # the diverged trial's non-finite losses come through

    def no_model(*args):
        raise ImportError("an MLflow without mlflow.store.tracking.dbmodels")

    monkeypatch.setattr(load, "_sql_columns", no_model)  # then the store's get_metric_history_bulk
    pd.testing.assert_frame_equal(_sorted(load_studies(store, "some-diverged").history), expected)
    assert not calls


def test_histories_from_a_tracking_server_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a real `mlflow server`: one get-history-bulk request per key for a batch of runs; an answer
    that may have been cut short is split, down to the paginated per-run call for a run longer than one answer."""
    import analysis.load as load
    from tests.helpers import Server

    server = Server(tmp_path)
    server.start()
    try:
        diverged = synthetic_trial(1024, 4, 2, 1.0, diverge_at=300)
        log_study(server.uri, "served", power_law_trials(5, rng_seed=3) + [diverged])
        expected = _run_by_run(server.uri, "served")
        calls = _spy_run_by_run(monkeypatch)
        data = load_studies(server.uri, "served")
        assert not calls  # no request per run per metric
        pd.testing.assert_frame_equal(_sorted(data.history), expected)
        monkeypatch.setattr(load, "SERVER_VALUES_PER_REQUEST", 12)  # loss_d has 17 values a run, fd_classifier 5
        split = load_studies(server.uri, "served")
        assert calls and set(calls) == {1}  # only the runs longer than one answer, each alone
        pd.testing.assert_frame_equal(_sorted(split.history), expected)
        pd.testing.assert_frame_equal(split.trials, data.trials)
    finally:
        server.stop()


# --- fits --------------------------------------------------------------------------------------
def test_power_law_recovered_and_ci_narrows_with_more_trials(store: str) -> None:
    widths = {}
    for study in ("pl-8", "pl-32"):
        usable = _usable(store, study)
        fit = fit_power_law(usable["gflops_g"], usable["metric_value"], n_boot=1000, seed=0)
        lo, hi = fit.ci["b"]
        assert lo < TRUE_B < hi, (study, fit.params, fit.ci)
        assert fit.ci["a"][0] < TRUE_A < fit.ci["a"][1]
        assert fit.n_boot == 1000 and fit.n_boot_ok >= 990
        assert fit.r2_log > 0.95 and fit.correlation["pearson_log_r"] < -0.95 and fit.correlation["spearman_rho"] < -0.9
        widths[study] = hi - lo
    assert widths["pl-32"] < widths["pl-8"]
    again = fit_power_law(usable["gflops_g"], usable["metric_value"], n_boot=1000, seed=0)
    assert again.ci == fit.ci  # seeded


def test_saturating_fit_recovers_the_irreducible_level(store: str) -> None:
    usable = _usable(store, "sat")
    fit = fit_saturating(usable["gflops_g"], usable["metric_value"], n_boot=1000, seed=0)
    assert fit.ci["E"][0] < 2.0 < fit.ci["E"][1]
    assert abs(fit.params["E"] - 2.0) < 0.2
    assert fit.ci["b"][0] < 0.5 < fit.ci["b"][1]
    pure = fit_power_law(usable["gflops_g"], usable["metric_value"], n_boot=0)
    assert fit.rmse_log < pure.rmse_log  # the level is real: the pure law fits worse


def _saturating_data(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n trials on FD = 2 + 5 * x^-0.4 (x spanning three decades) with lognormal noise."""
    x = np.geomspace(1e-3, 3.0, n)
    return x, (2.0 + 5.0 * x ** -0.4) * np.exp(noise * np.random.default_rng(seed).standard_normal(n))


def _plain_huber(theta: np.ndarray, lx: np.ndarray, ly: np.ndarray, delta: float = 1e-3) -> float:
    """The objective written out: sum of Huber(log(E + a x^-b) - log y), E = e^theta0, a = e^theta1."""
    r = np.log(np.exp(theta[0]) + np.exp(theta[1] - theta[2] * lx)) - ly
    return float(np.where(np.abs(r) <= delta, 0.5 * r ** 2, delta * (np.abs(r) - 0.5 * delta)).sum())


def test_saturating_fit_is_the_minimum_of_the_plain_huber_objective() -> None:
    """scipy's least_squares(loss='huber') minimises exactly the Chinchilla objective, and the fit is its minimum:
    no lower value near it (Nelder-Mead on the plain formula, started at the truth and at the fit)."""
    from scipy import optimize

    from analysis.fit import _bounds, _least_squares

    x, y = _saturating_data(60, noise=0.02, seed=1)
    fit = fit_saturating(x, y, n_boot=0)
    lx, ly = np.log(x / fit.x_ref), np.log(y)
    theta, cost = _least_squares(fit.theta, lx, ly, 1e-3, _bounds(ly))
    assert cost == pytest.approx(_plain_huber(theta, lx, ly), rel=1e-12)
    truth = np.array([np.log(2.0), np.log(5.0 * fit.x_ref ** -0.4), 0.4])
    for start in (truth, fit.theta):
        plain = optimize.minimize(_plain_huber, start, args=(lx, ly), method="Nelder-Mead",
                                  options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000, "maxfev": 20000})
        assert _plain_huber(fit.theta, lx, ly) <= plain.fun * (1 + 1e-7)
    assert abs(fit.params["E"] - 2.0) < 0.15 and abs(fit.params["b"] - 0.4) < 0.03


@pytest.mark.parametrize("n, noise", [(12, 0.01), (80, 0.05)])
def test_batched_bootstrap_ends_where_scipy_ends(n: int, noise: float) -> None:
    """Every bootstrap replicate (solved together by the batched Gauss-Newton) is at least as low as scipy's
    least_squares from the full-data optimum on that replicate, and at the same parameters where both find
    the same minimum; the intervals equal those of one scipy fit per replicate."""
    from analysis.fit import MIN_POINTS, _bounds, _huber_cost, _least_squares, _residuals

    x, y = _saturating_data(n, noise=noise, seed=n)
    fit = fit_saturating(x, y, n_boot=200, seed=5)
    lx, ly = np.log(x / fit.x_ref), np.log(y)
    idx = np.random.default_rng(5).integers(0, n, size=(200, n))  # the replicates fit_law draws
    idx = idx[[len(np.unique(rows)) >= MIN_POINTS["saturating"][1] for rows in idx]]
    assert len(idx) == len(fit.boot) == fit.n_boot_ok
    reference = []
    for theta, rows in zip(fit.boot, idx):
        ref, ref_cost = _least_squares(fit.theta, lx[rows], ly[rows], 1e-3, _bounds(ly[rows]))
        cost = float(_huber_cost(_residuals(theta, lx[rows], ly[rows]), 1e-3))
        assert cost <= ref_cost * (1 + 1e-9) + 1e-15
        reference.append(ref)
    reference = np.array(reference)
    same = np.abs(fit.boot - reference).max(axis=1) < 1e-3
    assert same.mean() > 0.9  # the rest: a lower local minimum than scipy's from the optimum
    np.testing.assert_allclose(fit.boot[same], reference[same], atol=1e-5)
    for k, col in (("b", 2),):
        ref_ci = np.percentile(reference[:, col], [2.5, 97.5])
        width = ref_ci[1] - ref_ci[0]
        assert np.abs(np.array(fit.ci[k]) - ref_ci).max() < 0.05 * width


# --- frontier ----------------------------------------------------------------------------------
def test_frontier_on_hand_made_curves(store: str) -> None:
    data = load_studies(store, "frontier")
    points = eval_points(data.history, data.trials, "fd_classifier")
    small, large = (data.trials.sort_values("params_g")["run_id"]).tolist()
    frontier = compute_frontier(points)
    # curve values at progress 1/4 .. 1: 1 + 3(1-p)^2 = 2.6875, 1.75, 1.1875, 1
    assert frontier["run_id"].tolist() == [small] * 4 + [large] * 3
    np.testing.assert_allclose(frontier["value"], [26.875, 17.5, 11.875, 10.0, 8.75, 5.9375, 5.0])
    step_macs = model_cost(32, 4, 2)["macs_per_sample_iter"] * 32
    np.testing.assert_allclose(frontier["train_flops"].iloc[:4], step_macs * np.array([100, 200, 300, 400]))
    segments = frontier_segments(frontier)
    assert segments["size"].tolist() == ["w32-d4", "w64-d4"]
    assert frontier_at(frontier, [step_macs * 50, step_macs * 250, 1e30]).tolist()[1:] == [17.5, 5.0]
    assert np.isnan(frontier_at(frontier, step_macs * 50)[0])
    higher = compute_frontier(points.assign(value=-points["value"]), lower_is_better=False)
    assert higher["run_id"].tolist() == frontier["run_id"].tolist()


# --- ablations ---------------------------------------------------------------------------------
def test_ablation_shows_the_known_effect_with_the_right_sign(store: str, tmp_path: Path) -> None:
    data = load_studies(store, "ablation")
    usable = select_trials(data, "fd_classifier").usable
    switches = detect_switches(usable)
    assert switches == ["train.mng"]  # not the widths, not the seeds
    base = baseline_value(usable, "train.mng", data.base_configs["ablation"])
    assert base == "exp"
    table = ablation_table(usable, "train.mng", metric_name="fd_classifier", baseline=base)
    assert table.contexts == ["w32-d4", "w64-d4", "w128-d4"]
    off = table.cells[table.cells["value"] == "off"]
    assert len(off) == 3 and (off["n"] == 3).all()
    assert (off["delta"] > 0).all()  # MNG off is worse, and FD is lower-is-better
    np.testing.assert_allclose(off["delta_pct"], 20.0, atol=5.0)
    md, tex = table.to_markdown(), table.to_latex()
    assert "| train.mng | w32-d4 | w64-d4 | w128-d4 |" in md and "exp (baseline)" in md and "Δ off − exp" in md
    assert all(k in tex for k in (r"\toprule", r"\midrule", r"\bottomrule", r"$\Delta$ off $-$ exp", r"\pm"))
    csv = pd.read_csv(table.to_csv(tmp_path / "t.csv"))
    assert {"value", "context", "mean", "std", "n", "delta", "delta_se"} <= set(csv.columns)


def test_switches_vfm_on_off_lr_rule_and_levels(store: str) -> None:
    data = load_studies(store, "switches")
    assert set(data.trials["train.vfm"]) == {"on", "off"}  # train.vfm: null vs train.vfm.* params
    usable = select_trials(data, "fd_classifier").usable
    switches = detect_switches(usable)
    assert switches == ["train.lr_rule", "train.mng_levels", "train.vfm"]  # train.vfm.weight is the same split
    base = baseline_value(usable, "train.vfm", data.base_configs["switches"])
    assert base == "off"
    table = ablation_table(usable, "train.vfm", baseline=base, other_switches=switches)
    on = table.cells[table.cells["value"] == "on"]
    assert len(on) == 8 and np.allclose(on["delta_pct"], -10.0)
    assert "w32-d4 lr_rule=constant mng_levels=2" in table.contexts
    rule = ablation_table(usable, "train.lr_rule", baseline=baseline_value(usable, "train.lr_rule",
                                                                         data.base_configs["switches"]))
    assert rule.baseline == "width" and np.allclose(rule.cells["delta"], 0.0)


def test_gat_against_dit_is_a_switch_and_sizes_are_shared(store: str) -> None:
    data = load_studies(store, "families")
    assert sorted(set(data.trials["model.preset"])) == ["DiT-B/2", "DiT-S/2", "GAT-B/2", "GAT-S/2"]
    usable = select_trials(data, "fd_classifier").usable
    assert list(dict.fromkeys(usable["size"])) == ["S", "B"]  # GAT-B and DiT-B are one size
    assert detect_switches(usable) == ["model.family"]  # swept through model.preset
    table = ablation_table(usable, "model.family", baseline="gat")
    assert np.allclose(table.cells[table.cells["value"] == "dit"]["delta_pct"], 30.0)


def test_a_legend_lists_at_most_twelve_of_many_sizes() -> None:
    """40 model sizes: the legend spreads 12 of them from the smallest to the largest and says how many there are
    (one entry each made it taller than the figure); a few sizes are all listed."""
    from analysis.plots import make_style

    trials = pd.DataFrame({"size": [f"w{32 + 4 * i}-d4" for i in range(40)], "size_rank": range(40), "patch": 2})
    labels = [h.get_label() for h in make_style(trials).legend_handles(trials["size"], trials["patch"])]
    assert len(labels) == 14 and labels[0] == "w32-d4" and labels[11] == "w188-d4"
    assert labels[12:] == ["(12 of 40 sizes shown)", "patch 2"]
    few = trials.iloc[:12]
    assert [h.get_label() for h in make_style(few).legend_handles(few["size"], [])] == list(few["size"])


# --- the command ------------------------------------------------------------------------------
def test_analyze_writes_fits_tables_plots_report_and_logs_them(store: str, tmp_path: Path) -> None:
    out = tmp_path / "analysis"
    report = analyze("ablation", store, out, None)
    assert report == out / "report.md" and report.exists()
    fits = json.loads((out / "fits.json").read_text())
    assert fits["metric"] == "fd_classifier" and fits["n_used"] == 18 and fits["switches"] == ["train.mng"]
    main = [f for f in fits["fits"] if f["group"] == "mng=exp" and f["x"] == "gflops_g" and f["kind"] == "power"]
    assert len(main) == 1
    f = main[0]
    assert abs(f["params"]["b"] - TRUE_B) < 0.03 and f["ci95"]["b"][0] < f["params"]["b"] < f["ci95"]["b"][1]
    assert f["n"] == 9 and f["bootstrap"]["resamples"] == 1000
    assert {"r2_log", "rmse_log", "correlation", "extrapolation"} <= set(f)
    assert f["extrapolation"]["n_held_out"] == 3 and f["extrapolation"]["mean_abs_rel_error"] < 0.1
    assert {fi["x"] for fi in fits["fits"]} == {"gflops_g", "params_g", "train_flops"}
    for name in ("ablation_train_mng.md", "ablation_train_mng.tex", "ablation_train_mng.csv", "fits.csv",
                 "trials.csv", "excluded.csv", "frontier.csv"):
        assert (out / "tables" / name).exists(), name
    for stem in ("scaling_gflops_g", "scaling_params_g", "scaling_train_flops", "compute_frontier",
                 "ablation_train_mng", "training_curves", "block_util", "samples"):
        for suffix in (".png", ".pdf"):
            assert (out / "plots" / f"{stem}{suffix}").stat().st_size > 1000, stem + suffix
    text = report.read_text()
    assert "![" in text and "(plots/scaling_gflops_g.png)" in text and "(plots/samples.png)" in text
    assert "| train.mng |" in text
    # G's per-block utilisation by MNG setting: the early blocks of the MNG-off trials carry less (0.05 vs 0.4)
    util = fits["block_util"]
    assert util["switch"] == "train.mng" and util["baseline"] == "exp"
    off = pd.DataFrame(util["cells"]).query("value == 'off'")
    early = off["context"].str.endswith(("block 0", "block 1"))
    assert len(off) == 12 and (off["n"] == 3).all()
    assert np.allclose(off.loc[early, "delta"], -0.35) and np.allclose(off.loc[~early, "delta"], 0.0)
    assert (out / "tables" / "block_util.tex").exists() and "Δ off − exp" in text
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    data = load_studies(store, "ablation")
    logged = {a.path for a in client.list_artifacts(data.parents["ablation"], "analysis")}
    assert {"analysis/report.md", "analysis/fits.json", "analysis/plots", "analysis/tables"} <= logged


def test_analyze_skips_what_was_not_logged_with_a_note(store: str, tmp_path: Path) -> None:
    report = analyze("pl-8", store, tmp_path, None)
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert any("block_util" in n for n in fits["notes"]) and any("samples/final.png" in n for n in fits["notes"])
    assert not (tmp_path / "plots" / "block_util.png").exists()
    assert "not logged by any run" in report.read_text()
    assert any(f["kind"] == "saturating" for f in fits["fits"])


# --- clear messages ---------------------------------------------------------------------------
@pytest.mark.parametrize("study, metric, words", [
    ("no-such-study", None, ["unknown study 'no-such-study'", "pl-8"]),
    ("single", None, ["single usable trial", "at least 3"]),
    ("all-diverged", None, ["all 3 trials", "diverged", "non-finite loss_d at step 200"]),
    ("pl-8", "fid", ["logged the metric 'fid'", "fd_classifier"]),
    ("mixed", None, ["different quality metrics", "fd_classifier (3 trials)", "fd_dinov2 (2 trials)", "--metric"]),
])
def test_clear_messages(store: str, tmp_path: Path, study: str, metric: str | None, words: list[str]) -> None:
    with pytest.raises(CliAnalysisError) as err:
        analyze(study, store, tmp_path, metric)
    assert isinstance(err.value, AnalysisError) and isinstance(err.value, ValueError)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_mixed_metrics_can_be_analysed_one_at_a_time(store: str) -> None:
    data = load_studies(store, "mixed")
    sel = select_trials(data, primary_metric(data, "fd_classifier"))
    assert len(sel.usable) == 3 and all("did not log fd_classifier" in r for r in sel.excluded["reason"])


def test_missing_store_and_cli_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(AnalysisError, match="no MLflow store"):
        analyze("x", f"sqlite:///{tmp_path / 'nothing.db'}", tmp_path, None)
    assert not (tmp_path / "nothing.db").exists()
    parser = argparse.ArgumentParser()
    add_analyze_parser(parser.add_subparsers())
    args = parser.parse_args(["analyze", "x", "--tracking-uri", f"sqlite:///{tmp_path / 'nothing.db'}",
                              "--out", str(tmp_path)])
    assert args.func(args) == 2
    assert "error: no MLflow store" in capsys.readouterr().err

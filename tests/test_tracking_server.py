"""Against a real `mlflow server` on 127.0.0.1: an unreachable server is a clear error before training,
and a server that stops mid-run loses no metric (TrialLogger buffers and retries)."""

from __future__ import annotations

import json
import time

import pytest
import requests
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.tracking import StudyTracker, TrackingUnavailable, TrialLogger
from tests.helpers import Server, free_port, tiny_study, write_study


@pytest.fixture()
def server(tmp_path):
    srv = Server(tmp_path)
    srv.start()
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


def test_unreachable_server_is_a_clear_error_before_anything_runs(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingUnavailable, match="not reachable"):
        StudyTracker(uri, "x")
    path = write_study(tmp_path / "s.yaml", tiny_study("down", tmp_path / "out"))
    assert main(["run", str(path), "--tracking-uri", uri]) == 2
    assert f"MLflow tracking server {uri} is not reachable" in capsys.readouterr().err
    assert not (tmp_path / "out" / "trials").exists()  # nothing trained


def test_server_stopped_mid_run_loses_no_metric(server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    client = MlflowClient(server.uri)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    logger = TrialLogger(server.uri, run_id, flush_seconds=0.0)
    for step in range(1, 6):
        logger.log(step, {"loss": float(step)})
    server.stop()
    for step in range(6, 11):  # the server is down: every flush fails, training goes on
        started = time.monotonic()
        logger.log(step, {"loss": float(step)})
        assert time.monotonic() - started < 15
    assert logger.buffer, "metrics logged during the outage must be kept"
    server.start()
    logger.finish("completed", 10)
    history = MlflowClient(server.uri).get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 11))
    assert MlflowClient(server.uri).get_run(run_id).data.tags["status"] == "completed"


def test_what_the_mlflow_ui_reads_through_the_rest_api(server, tmp_path, ray_session, capsys):
    """A finished study as the MLflow UI sees it, asked through MLflow's REST API: a training experiment (not
    GenAI traces), the study as the parent run, its trials nested under readable names with the swept key
    as a param, the quality and diversity metrics, and the report and sample grids among the artifacts."""
    spec = tiny_study("ui", tmp_path / "out")
    spec["grid"] = {"model.width": [32, 40, 48]}
    path = write_study(tmp_path / "ui.yaml", spec)
    assert main(["run", str(path), "--tracking-uri", server.uri]) == 0
    assert main(["analyze", "ui", "--tracking-uri", server.uri, "--out", str(tmp_path / "analysis"),
                 "--bootstrap", "10", "--keep-unhealthy"]) == 0  # 6-step trials are collapsed, rightly
    api = f"{server.uri}/api/2.0/mlflow"
    exp = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "ui"}, timeout=10).json()
    exp = exp["experiment"]
    exp_tags = {t["key"]: t["value"] for t in exp["tags"]}
    assert exp_tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp_tags["mlflow.sharedViewState.gat-study-ui"])  # the study's saved view ("Views" menu)
    state = json.loads(view["state"])
    assert state["selectedColumns"][:3] == ["params.`model.width`", "metrics.`fd_classifier`", "metrics.`diversity_pixels`"]
    assert "tags.`gat_study.role` = 'trial'" in state["searchFilter"]  # trials shown, not folded under the parent
    # the chart view: the study's section first, quality and diversity vs step, then the GAN losses, then
    # quality vs GFLOPs per image and vs training compute (the UI's default: every metric alphabetically)
    study_section, *others = state["compareRunSections"]
    assert study_section["name"] == "gat-study: ui"
    assert [s["name"] for s in others] == ["Model metrics", "System metrics"]
    assert state["isAccordionReordered"] is True and state["globalLineChartConfig"]["xAxisKey"] == "step"
    cards = state["compareRunCharts"]
    assert {c["metricSectionId"] for c in cards} == {study_section["uuid"]}
    assert [(c["type"], c.get("metricKey")) for c in cards[:4]] == [
        ("LINE", "fd_classifier"), ("LINE", "diversity_pixels"), ("LINE", "loss_g"), ("LINE", "loss_d")]
    assert all(c["useGlobalXaxisKey"] and c["selectedMetricKeys"] == [c["metricKey"]] for c in cards[:4])
    assert [(c["type"], c["xaxis"], c["yaxis"]) for c in cards[4:]] == [
        ("SCATTER", {"key": "gflops_g", "type": "PARAM"}, {"key": "fd_classifier", "type": "METRIC"}),
        ("SCATTER", {"key": "train_flops", "type": "METRIC"}, {"key": "fd_classifier", "type": "METRIC"})]
    runs = requests.post(f"{api}/runs/search", json={"experiment_ids": [exp["experiment_id"]], "max_results": 50},
                         timeout=10).json()["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs}
    (parent,) = [rid for rid, t in tags.items() if t.get("gat_study.role") == "study"]
    trials = [r for r in runs if tags[r["info"]["run_id"]].get("gat_study.role") == "trial"]
    assert sorted(r["info"]["run_name"] for r in trials) == ["width=32", "width=40", "width=48"]
    for r in trials:
        assert tags[r["info"]["run_id"]]["mlflow.parentRunId"] == parent
        params = {p["key"]: p["value"] for p in r["data"]["params"]}
        assert params["model.width"] in ("32", "40", "48") and params["swept"] == '["model.width"]'
        logged = {m["key"] for m in r["data"]["metrics"]}
        assert {"fd_classifier", "diversity_pixels", "loss_g", "loss_d", "train_flops"} <= logged
        assert float(params["gflops_g"]) > 0  # the scatter's x: every chart card names what each trial logs
        files = requests.get(f"{api}/artifacts/list", params={"run_id": r["info"]["run_id"]}, timeout=10).json()
        assert {"samples", "model"} <= {f["path"] for f in files["files"]}
    files = requests.get(f"{api}/artifacts/list", params={"run_id": parent, "path": "study"}, timeout=10).json()
    assert "study/study.yaml" in {f["path"] for f in files["files"]}
    files = requests.get(f"{api}/artifacts/list", params={"run_id": parent, "path": "analysis"}, timeout=10).json()
    assert "analysis/report.md" in {f["path"] for f in files["files"]}
    # `gat-study ui` points at the runs table and the chart view in the UI's training mode (MLflow 3 opens on
    # GenAI traces)
    capsys.readouterr()
    assert main(["ui", str(path), "--tracking-uri", server.uri]) == 0
    table, charts = capsys.readouterr().out.strip().splitlines()
    url = (f"{server.uri}/#/experiments/{exp['experiment_id']}/runs?workflowType=machine_learning"
           "&viewStateShareKey=gat-study-ui")
    assert table == url and charts == f"charts: {url}&compareRunsMode=CHART"
    assert requests.get(url.split("#")[0], timeout=10).ok

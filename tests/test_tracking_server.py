"""Against a real `mlflow server` on 127.0.0.1: an unreachable server is a clear error before training,
and a server that stops mid-run loses no metric (TrialLogger buffers and retries)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.tracking import StudyTracker, TrackingUnavailable, TrialLogger
from tests.conftest import tiny_study, write_study


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` bound to 127.0.0.1, startable and stoppable."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(self.uri + "/health", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)
        self.proc.wait(timeout=30)


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

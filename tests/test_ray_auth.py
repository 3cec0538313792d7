"""Ray token authentication: a study runs on a token-protected head with the token, fails with one clear
paragraph without it, and the token (like other secrets in the environment) never reaches MLflow.

The head is a real `ray start --head --block` bound to 127.0.0.1 with its own temp dir.  It is stopped by
SIGTERM to that one process (which drains and stops its own GCS, raylet and workers), never by `ray stop`,
which would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.study import load_study
from tests.helpers import ROOT, cli, free_port, listening, tiny_study, write_study

pytestmark = pytest.mark.slow
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def pids_under(folder: str) -> set[int]:
    """Processes whose command line names `folder` (the head's own temp dir): this cluster's, nobody else's."""
    out = subprocess.run(["pgrep", "-f", folder], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()} - {os.getpid()}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture(scope="module")
def auth_head():
    """A token-authenticated single-node Ray head on 127.0.0.1: (address, token, its temp dir)."""
    token = secrets.token_hex(32)
    temp = tempfile.mkdtemp(prefix="gat-auth-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    port = free_port()
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray's loopback switch; --node-ip-address alone still listens on all
    # interfaces and advertises the public address
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    log = open(Path(temp) / "head.log", "wb")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={temp}",
         "--disable-usage-stats"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while b"Ray runtime started" not in (Path(temp) / "head.log").read_bytes():
            assert head.poll() is None and time.monotonic() < deadline, (Path(temp) / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", token, temp
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        for pid in pids_under(temp):  # anything of this cluster that outlived its head
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def run_cli(tmp_path: Path, address: str, env: dict[str, str], name: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`gat-study run` of a fresh one-trial study against `address`, in a subprocess (a driver of its own)."""
    spec = tiny_study(name, tmp_path / name)
    spec["grid"] = {"train.seed": [0]}
    path = write_study(tmp_path / f"{name}.yaml", spec)
    result = subprocess.run(cli("run", str(path), "--address", address), cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    return result, path


def test_head_listens_on_loopback_only(auth_head):
    sockets = listening(pids_under(auth_head[2]))
    assert sockets, "no sockets of the test head found: the check would be vacuous"
    assert all(s[0].rsplit(":", 1)[0].strip("[]").endswith("127.0.0.1") for s in sockets), sockets


def test_study_runs_with_the_token_and_no_secret_reaches_mlflow(tmp_path, auth_head):
    address, token, _ = auth_head
    secrets_in_env = {"RAY_AUTH_TOKEN": token, "MLFLOW_TRACKING_PASSWORD": "mlflow-" + secrets.token_hex(8),
                      "AWS_SECRET_ACCESS_KEY": "aws-" + secrets.token_hex(8)}
    result, path = run_cli(tmp_path, address, clean_env(**secrets_in_env), "authed")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    study = load_study(path)
    client = MlflowClient(study.config.tracking_uri)
    experiment = client.get_experiment_by_name(study.config.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert {r.data.tags.get("status") for r in runs} == {"completed"} and len(runs) == 2  # parent and trial
    logged = [str(r.data.params) + str(r.data.tags) for r in runs]
    files = [p for p in (study.config.out / "mlartifacts").rglob("*") if p.is_file()]
    assert any(p.name == "resolved_study.json" for p in files) and any(p.name == "environment.json" for p in files)
    for name, secret in secrets_in_env.items():
        assert not [text for text in logged if secret in text], f"{name} in MLflow params or tags"
        leaked = [p for p in [*files, study.config.out / "mlflow.db"] if secret.encode() in p.read_bytes()]
        assert not leaked, f"{name} in {leaked}"


def test_without_the_token_the_run_fails_with_one_clear_paragraph(tmp_path, auth_head):
    address, _, _ = auth_head
    # a short GCS retry budget: without it Ray retries the refused connection for about 20 s
    result, path = run_cli(tmp_path, address, clean_env(RAY_gcs_server_port_wait_time_s="2"), "anonymous")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert f"cannot connect to the Ray cluster at {address}: it requires token authentication" in line
    assert "sent no token" in line and "RAY_AUTH_TOKEN" in line and "RAY_AUTH_TOKEN_PATH" in line
    study = load_study(path)  # refused before any MLflow run was created: nothing to clean up
    experiment = MlflowClient(study.config.tracking_uri).get_experiment_by_name(study.config.experiment)
    assert experiment is None or not MlflowClient(study.config.tracking_uri).search_runs([experiment.experiment_id])


def test_a_wrong_token_is_refused_with_one_clear_paragraph(tmp_path, auth_head):
    address, _, temp = auth_head
    token_file = Path(temp) / "wrong_token"
    token_file.write_text(secrets.token_hex(32))
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_gcs_server_port_wait_time_s="2")
    result, _ = run_cli(tmp_path, address, env, "wrong")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "refused the token this driver sent" in line


def test_a_token_file_alone_is_enough(auth_head):
    """RAY_AUTH_TOKEN_PATH without RAY_AUTH_MODE: init_ray turns token mode on and the driver gets in."""
    address, token, temp = auth_head
    token_file = Path(temp) / "token"
    token_file.write_text(token)
    code = (f"from orchestrator.cluster import init_ray; init_ray({address!r}, False); import ray; "
            "print('answer', ray.get(ray.remote(lambda: 6 * 7).remote()))")
    result = subprocess.run([sys.executable, "-c", code], env=clean_env(RAY_AUTH_TOKEN_PATH=str(token_file)),
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "answer 42" in result.stdout, result.stderr[-3000:]

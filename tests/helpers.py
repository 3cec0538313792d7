"""Helpers the test modules share (shared fixtures live in conftest.py): tiny study specs, the study CLI in a
subprocess, a kill-and-resume scenario, MLflow child runs, Ray's listening sockets, a free loopback port, a real
`mlflow server`, an image folder with every kind of file a dataset folder can hold."""

from __future__ import annotations

import io
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from mlflow.tracking import MlflowClient

from orchestrator.study import load_study
from orchestrator.tracking import ROLE_TAG

ROOT = Path(__file__).resolve().parent.parent


def tiny_study(name: str, out: Path, **train: object) -> dict:
    """A study whose trials take a few seconds: 8x8 shapes, width 32, depth 4."""
    return {
        "name": name,
        "output_dir": str(out),
        "dataset": {"name": "shapes", "resolution": 8, "size": 512},
        "model": {"width": 32, "depth": 4, "heads": 2, "patch_size": 2},
        "train": {"steps": 6, "batch_size": 8, "log_every": 2, "checkpoint_every": 3, **train},
        "eval": {"interval": 3, "num_samples": 64, "final_samples": 64, "batch_size": 64, "classifier_epochs": 1,
                 "grid_size": 4},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2, "max_failures": 0},
    }


def blur(sigma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A separable Gaussian blur of NCHW images (replicate padding): a distortion that FD must rank."""
    radius = math.ceil(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()

    def apply(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (radius,) * 4, mode="replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return apply


def write_study(path: Path, study: dict) -> Path:
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def children(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial'")


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


ONE_TRIAL_STEPS = 24


def start_one_trial_study(tmp_path: Path, name: str, max_failures: int = 0, workers: int = 1):
    """`gat-study run` of a one-trial, 24-step study in a subprocess, returned once it checkpointed step >= 8."""
    spec = tiny_study(name, tmp_path / "out", steps=ONE_TRIAL_STEPS, checkpoint_every=4, log_every=2)
    spec["eval"]["interval"] = 12
    spec["resources"].update(max_failures=max_failures, workers=workers)
    spec["grid"] = {"train.seed": [0]}
    path = write_study(tmp_path / "study.yaml", spec)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cli("run", str(path)), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    trial_dir = tmp_path / "out" / "trials"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if any(int(p.stem.split("-")[1]) >= 8 for p in trial_dir.glob("*/checkpoints/ckpt-*.pt")):
            return path, proc, trial_dir, env
        time.sleep(0.3)
    raise AssertionError("the trial never reached its second checkpoint: " + proc.stdout.read().decode()[-3000:])


def kill_and_finish(tmp_path: Path, name: str, pid_file: str, workers: int = 1):
    """Start a one-trial study, SIGKILL the process whose pid is in `pid_file` once the trial has checkpointed,
    and check that the study still completes: a new process finished the trial, in its one MLflow run, with a
    continuous step axis and one resume from a checkpoint.  Returns that run."""
    path, proc, trial_dir, _ = start_one_trial_study(tmp_path, name, max_failures=2, workers=workers)
    killed = int(next(trial_dir.glob(f"*/{pid_file}")).read_text())
    os.kill(killed, signal.SIGKILL)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert int(next(trial_dir.glob(f"*/{pid_file}")).read_text()) != killed  # a new process finished it
    client = MlflowClient(load_study(path).config.tracking_uri)
    (run,) = children(client, name)
    assert run.data.tags["status"] == "completed"
    assert steps_of(client, run.info.run_id, "loss_d") == list(range(2, ONE_TRIAL_STEPS + 1, 2))
    (resumed,) = [m.value for m in client.get_metric_history(run.info.run_id, "resumed_from_step")]
    assert resumed >= 4
    return run


def listening(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process) of every listening TCP socket of the given processes, from `ss -ltnp`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        owners = " ".join(parts[5:])
        if any(f"pid={pid}," in owners for pid in pids):
            rows.append((parts[3], owners))
    return rows


def ray_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "gcs_server|raylet|dashboard|ray::|default_worker|log_monitor"],
                         capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


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
        deadline = time.monotonic() + 240  # a loaded 2-core machine once needed more than 90 s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if requests.get(self.uri + "/health", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        self.stop()  # never leave a half-started server (and its job runners) behind
        raise RuntimeError(f"mlflow server on port {self.port} did not start")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, 15)
        except ProcessLookupError:  # already gone
            pass
        self.proc.wait(timeout=30)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls, colour in (("b_dog", (0, 0, 255)), ("a_cat", (255, 0, 0))):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            img = np.zeros((12 + 4 * i, 20, 3), np.uint8) + np.array(colour, np.uint8)
            (root / cls / f"{i}.png").write_bytes(png_bytes(img))
    # Grey and RGBA images are converted to RGB.
    (root / "a_cat" / "grey.png").write_bytes(png_bytes(rng.integers(0, 255, (9, 9), dtype=np.uint8)))
    (root / "a_cat" / "alpha.png").write_bytes(png_bytes(np.full((9, 9, 4), 200, np.uint8)))
    # Non-square: the centre crop keeps the green middle.
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, :10, 0], wide[:, 10:20, 1], wide[:, 20:, 2] = 255, 255, 255
    (root / "b_dog" / "wide.png").write_bytes(png_bytes(wide))
    good = png_bytes(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    (root / "b_dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "a_cat" / "garbage.jpg").write_bytes(b"this is not an image")
    (root / ".hidden").mkdir()  # ignored: not a class
    return root

"""A simulated two-node Ray cluster on this machine: trials of one study run on both nodes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.runner import run_study
from orchestrator.study import load_study
from tests.helpers import tiny_study, write_study


@pytest.fixture(scope="module")
def cluster():
    """One local 2-node Ray cluster (a head and a worker node, one CPU each) for the whole module."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture()
def two_nodes(cluster):
    """The module's cluster with its worker node, added again where a test removed it."""
    if len(cluster.list_all_nodes()) < 2:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    return cluster


def test_trials_run_on_both_nodes_of_a_cluster(tmp_path, two_nodes):
    spec = tiny_study("cluster", tmp_path / "out")
    spec["grid"] = {"train.seed": [0, 1]}
    study = load_study(write_study(tmp_path / "study.yaml", spec))
    outcomes = run_study(study, address=two_nodes.address, storage=str(tmp_path / "shared"), quiet=True)
    assert [o.status for o in outcomes] == ["completed", "completed"]
    client = MlflowClient(study.config.tracking_uri)
    nodes = {client.get_run(o.run_id).data.tags["ray_node"] for o in outcomes}
    assert len(nodes) == 2  # one CPU per node, one CPU per trial: they cannot share a node at once
    assert list((tmp_path / "shared").glob("cluster-*/*/checkpoint_*"))  # Tune persisted checkpoints there


def test_study_finishes_after_a_worker_node_is_removed(tmp_path, two_nodes):
    """Remove the second node while both trials train: the lost trial restarts on the head node from the
    checkpoint Tune persisted, and both finish with one MLflow run each."""
    import threading
    import time

    worker = next(n for n in two_nodes.list_all_nodes() if n is not two_nodes.head_node)
    spec = tiny_study("shrink", tmp_path / "out", steps=30, checkpoint_every=4, log_every=2)
    spec["resources"]["max_failures"] = 3
    spec["grid"] = {"train.seed": [0, 1]}
    study = load_study(write_study(tmp_path / "study.yaml", spec))
    removed = threading.Event()

    def remove_when_both_checkpointed() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            dirs = list((tmp_path / "out" / "trials").glob("*/checkpoints"))
            if len(dirs) == 2 and all(any(int(p.stem.split("-")[1]) >= 8 for p in d.glob("ckpt-*.pt")) for d in dirs):
                two_nodes.remove_node(worker)
                removed.set()
                return
            time.sleep(0.3)

    thread = threading.Thread(target=remove_when_both_checkpointed, daemon=True)
    thread.start()
    outcomes = run_study(study, address=two_nodes.address, storage=str(tmp_path / "shared"), quiet=True)
    thread.join(timeout=5)
    assert removed.is_set(), "both trials finished before the node could be removed"
    assert [o.status for o in outcomes] == ["completed", "completed"]
    client = MlflowClient(study.config.tracking_uri)
    for o in outcomes:
        steps = [m.step for m in client.get_metric_history(o.run_id, "loss_d")]
        assert steps == list(range(2, 31, 2))
    resumed = [o for o in outcomes if client.get_metric_history(o.run_id, "resumed_from_step")]
    assert len(resumed) == 1  # the trial of the removed node, and only it, restarted from a checkpoint


def test_data_parallel_trial_spans_both_nodes(tmp_path, two_nodes):
    """Two workers with one CPU each on two one-CPU nodes: one worker per node, Ray Train's TCP rendezvous."""
    spec = tiny_study("spread", tmp_path / "out", steps=6)
    spec["resources"]["workers"] = 2
    study = load_study(write_study(tmp_path / "study.yaml", spec))
    (outcome,) = run_study(study, address=two_nodes.address, storage=str(tmp_path / "shared"), quiet=True)
    assert outcome.status == "completed" and outcome.step == 6
    tags = MlflowClient(study.config.tracking_uri).get_run(outcome.run_id).data.tags
    assert (tags["workers"], tags["per_worker_batch_size"], tags["dp_backend"]) == ("2", "4", "gloo")
    assert list((tmp_path / "shared").glob("trial-*/checkpoint_*"))  # Ray Train persisted the checkpoints there


def test_a_study_without_address_starts_its_own_ray_beside_a_running_cluster(tmp_path, two_nodes):
    """With no --address, `run` must never join a local cluster it finds on the machine (as `ray.init()`
    does): a quickstart that joined the test suite's cluster lost every actor when that cluster shut down
    ("the actor never ran")."""
    import ray

    if not ray.is_initialized():  # the module's earlier tests leave this process connected as the cluster's driver
        ray.init(address=two_nodes.address)
    drivers = len(ray._private.state.jobs())
    spec = tiny_study("own-ray", tmp_path / "out", steps=2, checkpoint_every=2)
    spec["grid"] = {"train.seed": [0]}
    path = write_study(tmp_path / "study.yaml", spec)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(path)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    jobs = ray._private.state.jobs()  # every driver the cluster ever had, finished ones included
    assert len(jobs) == drivers, f"the study's driver joined the running cluster: {jobs}"

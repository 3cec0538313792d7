"""A simulated two-node Ray cluster on this machine: trials of one study run on both nodes."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.runner import run_study
from orchestrator.study import load_study
from tests.conftest import tiny_study, write_study


@pytest.fixture()
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


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

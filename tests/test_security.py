"""Security defaults of the embedded Ray: every port on 127.0.0.1, no dashboard, token authentication on."""

from __future__ import annotations


import pytest

from tests.helpers import listening, ray_pids


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from orchestrator.cluster import init_ray

    init_ray(None, dashboard=False, num_cpus=1)
    yield ray
    ray.shutdown()


def test_embedded_ray_is_a_loopback_node_without_dashboard(local_ray):
    node = local_ray._private.worker.global_worker.node
    assert node.node_ip_address == "127.0.0.1"
    assert node.address.startswith("127.0.0.1:")
    assert not node.address_info.get("webui_url")
    sockets = listening(ray_pids())
    assert sockets, "no Ray sockets found: the check would be vacuous"
    assert not [s for s in sockets if "dashboard" in s[1]], sockets
    # every port of every Ray process (GCS, raylet, workers, agents) on the loopback interface only
    exposed = [s for s in sockets if not s[0].rsplit(":", 1)[0].strip("[]").endswith("127.0.0.1")]
    assert not exposed, exposed
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    assert is_token_auth_enabled()  # and Ray's token authentication stays on

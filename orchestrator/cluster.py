"""The Ray cluster a study runs on: an embedded one bound to 127.0.0.1 or an existing one, its size, and how
many multi-worker trials it holds at once."""

from __future__ import annotations

import os
from typing import Any


def init_ray(address: str | None, dashboard: bool, num_cpus: int | None = None) -> None:
    """Start an embedded Ray bound to 127.0.0.1, or connect to the cluster at `address`.

    A cluster with token authentication gets its token from RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (either one
    turns RAY_AUTH_MODE=token on for this driver); a missing or refused token is a ConnectionError saying how
    to give it, not a traceback.
    """
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune snapshots its state whenever a trial checkpoints (we keep one per trial): expected, not a problem
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A single-machine Ray on the loopback address: Ray's own switch for laptops (it otherwise advertises the
    # machine's public address).  Read at import time by Ray, so set it for this process and its children.
    # A cluster at 127.0.0.1 may be a head bound to loopback the same way: Ray would swap in the public address.
    if not address or address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
        os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
    if not address:
        # "local": a cluster of our own; with no address Ray joins one it finds in /tmp/ray, whose end kills ours
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 log_to_driver=False, configure_logging=False)
        return
    from ray._private.authentication.authentication_token_setup import _enable_token_auth
    from ray.exceptions import AuthenticationError

    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None and (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        _enable_token_auth()  # Ray sends no token to an explicit address unless RAY_AUTH_MODE=token
        mode = "token"
    try:
        ray.init(address=address, log_to_driver=False)
    except (AuthenticationError, ConnectionError) as exc:
        if not any(isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e) for e in (exc, exc.__cause__)):
            raise
        if mode != "token":
            why = "it requires token authentication and this driver sent no token" + (f" (RAY_AUTH_MODE={mode})"
                                                                                       if mode else "")
        elif "no authentication token was found" in str(exc):
            why = "RAY_AUTH_MODE=token but no token was found in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
        else:
            why = "it requires token authentication and refused the token this driver sent"
        raise ConnectionError(
            f"cannot connect to the Ray cluster at {address}: {why}. Give "
            "the cluster's token (`ray get-auth-token` prints it on the head node) in the environment variable "
            "RAY_AUTH_TOKEN, or in a file named by RAY_AUTH_TOKEN_PATH, with RAY_AUTH_MODE unset or 'token', and "
            "run the same command again. Nothing was trained.") from None


def cluster_facts() -> dict[str, str]:
    """The Ray cluster the study's trials ran on: nodes, CPUs and GPUs (parent-run tags `machine.ray_*`)."""
    import ray

    try:
        total = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    except Exception:  # the cluster went away: its size is simply not recorded
        return {}
    return {"ray_nodes": str(nodes), "ray_cpus": f"{total.get('CPU', 0):g}", "ray_gpus": f"{total.get('GPU', 0):g}"}


def default_concurrency(res: Any) -> int:
    """Trials at once when the study does not say (0: as many as Tune can place).

    A multi-worker trial's Tune process holds no CPU (its Ray Train workers do), so Tune alone would start
    every trial's driver at once; cap them at what the cluster can run now.
    """
    if res.workers == 1:
        return 0
    import ray

    total = ray.cluster_resources()
    fits = [total.get("CPU", 0) // (res.cpus_per_trial * res.workers)]
    if res.gpus_per_trial:
        fits.append(total.get("GPU", 0) // (res.gpus_per_trial * res.workers))
    return max(1, int(min(fits)))

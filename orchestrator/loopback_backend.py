"""Process groups of data-parallel trials on the embedded single-machine Ray, kept off the network.

Ray Train's default rendezvous is a torch TCPStore on rank 0, which listens on every interface.
On a laptop nothing needs to reach it from outside, so here the workers meet through a file
(a torch FileStore, a fresh one for every start of the worker group) and gloo talks over the
loopback interface.  On a real cluster (`--address`) the standard TorchConfig is used instead.

This builds on Ray Train's torch backend internals (`_TorchBackend`, `_setup_torch_process_group`);
tests/test_data_parallel.py checks with `ss` that nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.train.torch.config import TorchConfig, _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend


def loopback_interface() -> str:
    """The name of the loopback interface (`lo` on Linux, `lo0` on macOS)."""
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in names if n in ("lo", "lo0")), names[0] if names else "lo")


def _use_loopback() -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()


class _FileRendezvousBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: "LoopbackTorchConfig") -> None:
        store = Path(backend_config.store_dir) / f"process-group-{uuid.uuid4().hex}"
        store.parent.mkdir(parents=True, exist_ok=True)
        worker_group.execute(_use_loopback)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend=backend_config.backend, world_rank=i,
                                                   world_size=len(worker_group), init_method=f"file://{store}",
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """Rendezvous through a file under `store_dir` (on the machine all the workers share); gloo on loopback."""

    store_dir: str = ""

    @property
    def backend_cls(self):
        return _FileRendezvousBackend

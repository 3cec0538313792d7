"""Shared helpers: machine description, matmul peak, result files, a random Inception weights file."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from gat_core.atomic import write_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}


def matmul_peak(dtype: str = "float32", n: int = 2048, seconds: float = 3.0, device: str = "cpu") -> float:
    """Dense matmul FLOP/s (2 per MAC) on this machine now: the reference of every MFU number.

    On CUDA the products are queued asynchronously; the clock stops after a synchronize, so it counts
    the work done, not the work launched."""
    import torch

    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=dt, device=device), torch.randn(n, n, dtype=dt, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    sync()
    return 2 * n**3 * count / (time.perf_counter() - start)


def save(name: str, result: dict[str, Any]) -> Path:
    path = write_atomic(RESULTS / f"{name}.json", json.dumps({"machine": machine(), **result}, indent=2))
    print(json.dumps(result, indent=2))
    return path


def write_random_inception_weights(path: Path, seed: int = 0, gain: float = 2.0) -> Path:
    """A randomly initialised network in the exact format of torch-fidelity's Inception weights file.

    For tests and benchmarks on machines without the real file.  torchvision's Inception-v3
    (aux_logits off, 1008 classes) has exactly torch-fidelity's state-dict keys and shapes.  Its
    default initialisation makes the pool_3 features vanish (~1e-8: every FID is 0), so the
    convolutions are re-drawn He-normal (`gain` = 2: ReLU-preserving variance); callers should still
    check that the features vary across images.
    """
    import torch
    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    g = torch.Generator().manual_seed(seed)
    state = net.state_dict()
    for key, value in state.items():
        if key.endswith("conv.weight"):
            value.copy_(torch.randn(value.shape, generator=g) * (gain / value[0].numel()) ** 0.5)
        elif key == "fc.weight":
            value.copy_(torch.randn(value.shape, generator=g) * (1.0 / value.shape[1]) ** 0.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path

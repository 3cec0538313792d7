"""Where a GAT training iteration spends its time, by op class, from the torch profiler.

Classes: matmul (mm, addmm, bmm, linear, ...), attention (scaled-dot-product attention kernels),
augmentation (everything DiffAugment runs in the forward pass), optimiser (zero_grad, the gradient
clip, the AdamW step), EMA (the generator average), elementwise (every other aten op: norms,
activations, copies, casts, reductions, and the backward of augmentation), and Python overhead
(the iteration's wall time not spent inside any op).  An op's *self* time counts once, in the class
of its nearest labelled caller (augmentation, optimiser, EMA) or else of its own name, so the
classes add up to the wall time of the profiled iterations.  The profiler slows small ops down:
read the split as where to look, the timed rounds of `bench/mfu.py` as the speed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

CLASSES = ("matmul", "attention", "elementwise", "augmentation", "optimiser", "ema", "python")
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
              "aten::_convolution", "aten::mkldnn_convolution", "aten::convolution")
ATTENTION_MARK = ("scaled_dot_product", "flash_attention", "efficient_attention")
SCOPES = {"gat-study.augmentation": "augmentation", "gat-study.optimiser": "optimiser", "gat-study.ema": "ema"}
OPTIMISER_MARK = ("Optimizer.step", "Optimizer.zero_grad")


def op_class(name: str) -> str:
    """The class of an op by its own name (callers aside)."""
    if name.startswith(OPTIMISER_MARK):
        return "optimiser"
    if any(mark in name for mark in ATTENTION_MARK):
        return "attention"
    if name in MATMUL_OPS:
        return "matmul"
    return "elementwise"


@contextlib.contextmanager
def labelled_scopes() -> Iterator[None]:
    """Label DiffAugment, the gradient clip and the EMA update for the profiler while it runs (the library
    itself carries no profiler code); restored afterwards."""
    import torch.nn.utils
    from torch.autograd.profiler import record_function

    import gat_core.augment
    import gat_core.gan_trainer

    def scoped(fn: Callable, label: str, method_of_policy: bool) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if method_of_policy and not args[0]:  # an empty DiffAugment policy is no augmentation
                return fn(*args, **kwargs)
            with record_function(label):
                return fn(*args, **kwargs)
        return wrapper

    targets = [(gat_core.augment.DiffAugment, "sample", "gat-study.augmentation", True),
               (gat_core.augment.DiffAugment, "apply", "gat-study.augmentation", True),
               (torch.nn.utils, "clip_grad_norm_", "gat-study.optimiser", False),
               (gat_core.gan_trainer, "ema_update", "gat-study.ema", False)]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _, _ in targets]
    try:
        for owner, attr, label, method_of_policy in targets:
            setattr(owner, attr, scoped(getattr(owner, attr), label, method_of_policy))
        yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)


def split(events: list, wall_us: float) -> dict[str, float]:
    """Microseconds per class from the profiler's function events (each with `name`, `self_cpu_time_total`
    and `cpu_parent`); `python` is what the ops leave of `wall_us`."""
    totals = dict.fromkeys(CLASSES, 0.0)
    for event in events:
        scope, parent = None, event
        while parent is not None and scope is None:
            scope = SCOPES.get(parent.name) or ("optimiser" if parent.name.startswith(OPTIMISER_MARK) else None)
            parent = parent.cpu_parent
        totals[scope or op_class(event.name)] += event.self_cpu_time_total
    totals["python"] = max(0.0, wall_us - sum(totals.values()))
    return totals


def profile_split(iteration: Callable[[], Any], iterations: int = 1) -> dict[str, Any]:
    """Profile `iterations` calls of `iteration` (after one untimed call) and split their time by class:
    seconds per iteration and fractions of the wall time."""
    from torch.profiler import ProfilerActivity, profile

    with labelled_scopes():
        iteration()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(iterations):
                iteration()
            wall_us = (time.perf_counter() - start) * 1e6
    totals = split(list(prof.events()), wall_us)
    return {"seconds_per_iteration": wall_us / 1e6 / iterations,
            "seconds": {k: v / 1e6 / iterations for k, v in totals.items()},
            "fraction": {k: v / wall_us for k, v in totals.items()}}


def format_split(name: str, result: dict[str, Any]) -> str:
    parts = ", ".join(f"{k} {result['fraction'][k]:.1%}" for k in CLASSES)
    return f"{name}: {result['seconds_per_iteration']:.2f} s per profiled iteration: {parts}"

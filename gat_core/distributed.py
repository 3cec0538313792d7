"""Data parallelism inside one trial, on plain `torch.distributed`.

Every worker builds the same trainer from the same seed, takes its contiguous slice of each
global batch and averages gradients with the others before every optimiser step, so W workers
take the optimiser steps of one worker with the same (effective) batch.  Gradients are averaged
explicitly after `backward()` rather than through DistributedDataParallel: a GAN step runs the
discriminator several times before one backward (reals, fakes, the finite-difference penalty
passes) and toggles `requires_grad`, which DDP's reducer handles poorly.

Whoever launches the workers (Ray Train, torchrun) sets up the process group; without one this
is a single worker and every method is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the trial's data-parallel group."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> "DataParallel":
        """The initialised process group, or a single worker."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The worker that evaluates, writes checkpoints and reports metrics."""
        return self.rank == 0

    def local_batch(self, global_batch: int) -> int:
        if global_batch % self.world_size:
            raise ValueError(f"train.batch_size: {global_batch} does not split evenly over {self.world_size} "
                             "data-parallel workers (resources.workers)")
        return global_batch // self.world_size

    def shard(self, items: torch.Tensor) -> torch.Tensor:
        """This worker's contiguous slice of a global batch (of indices or samples)."""
        if not self.enabled:
            return items
        n = self.local_batch(items.shape[0])
        return items[self.rank * n:(self.rank + 1) * n]

    def noise_seed(self, seed: int, step: int) -> int:
        """A seed for this worker's noise (z, augmentation, MNG, penalties) from `step` on: distinct per worker."""
        return (seed * 1_000_003 + step * 7_919 + self.rank * 104_729) % (2**63)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the workers (one flat all-reduce per call).

        Every worker runs the same code path, so the set of parameters with a gradient is the same on all.
        """
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world_size
        for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(averaged)

    def average(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mean of each scalar over the workers, so all of them log and decide on the same numbers."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
        dist.all_reduce(stacked)
        stacked /= self.world_size
        return dict(zip(keys, stacked.unbind()))

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """True on every worker when it is true on one."""
        if not self.enabled:
            return flag
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def check_same(self, name: str, value: int, device: torch.device | str = "cpu") -> None:
        """Fail loudly when workers disagree (e.g. resumed from different checkpoints)."""
        if not self.enabled:
            return
        values = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(self.world_size)]
        dist.all_gather(values, torch.tensor([value], dtype=torch.long, device=device))
        seen = [int(v.item()) for v in values]
        if len(set(seen)) > 1:
            raise RuntimeError(f"data-parallel workers disagree on {name}: {seen} (by rank); every worker must "
                               "see the trial's newest checkpoint (use storage all nodes share)")

    def check_in_sync(self, *modules: torch.nn.Module, device: torch.device | str = "cpu") -> None:
        """Fail loudly when the workers' weights have drifted apart (they must stay bit-identical)."""
        if not self.enabled:
            return
        with torch.no_grad():
            checksum = sum(float(p.double().sum()) for m in modules for p in m.parameters())
        sums = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(self.world_size)]
        dist.all_gather(sums, torch.tensor([checksum], dtype=torch.float64, device=device))
        seen = [float(s.item()) for s in sums]
        if len(set(seen)) > 1:
            raise RuntimeError(f"data-parallel workers' weights differ (parameter sums by rank: {seen})")

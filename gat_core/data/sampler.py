"""Seeded, resumable batch sampling.

Training resumed from a checkpoint must see exactly the batches the
uninterrupted run would have seen, so the sampler's whole state (permutation,
position, generator) is plain tensors and ints that `torch.load(weights_only=True)`
accepts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gat_core.data.dataset import ImageDataset


def sample_labels(num_classes: int, n: int, generator: torch.Generator) -> Tensor:
    """`n` uniformly random class labels (int64, on the generator's device)."""
    return torch.randint(0, num_classes, (n,), generator=generator, device=generator.device)


class BatchSampler:
    """Random full-size batches in epochs: each image is used once per pass over a fresh permutation.

    A batch that straddles an epoch boundary is completed from the next
    permutation, so every batch has exactly `batch_size` images even when the
    dataset is smaller than a batch.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, seed: int, device: str | torch.device = "cpu",
                 shard: Callable[[Tensor], Tensor] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError(f"dataset {dataset.name!r} is empty")
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._generator = torch.Generator().manual_seed(seed)
        self._seed = seed
        self._epoch = 0
        self._position = 0
        self._permutation = torch.randperm(len(dataset), generator=self._generator)
        # data parallelism: every worker walks the same global batches and keeps its own slice of each
        self._shard = shard or (lambda indices: indices)

    @property
    def epoch(self) -> int:
        """Completed passes over the data."""
        return self._epoch

    def _indices(self) -> Tensor:
        parts: list[Tensor] = []
        need = self.batch_size
        n = len(self.dataset)
        while need:
            if self._position == n:
                self._permutation = torch.randperm(n, generator=self._generator)
                self._position = 0
                self._epoch += 1
            take = min(need, n - self._position)
            parts.append(self._permutation[self._position:self._position + take])
            self._position += take
            need -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def next_indices(self) -> Tensor:
        """Dataset indices of the next batch, this worker's slice of it (for callers that gather more than
        images and labels)."""
        return self._shard(self._indices())

    def next(self) -> tuple[Tensor, Tensor]:
        """The next batch: images [B, C, H, W] and labels [B] on the sampler's device."""
        idx = self.next_indices()
        images = self.dataset.batch(idx).to(self.device, non_blocking=True)
        labels = self.dataset.labels[idx].to(self.device, non_blocking=True)
        return images, labels

    def __iter__(self) -> "BatchSampler":
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        return self.next()

    def state_dict(self) -> dict[str, Tensor | int]:
        return {
            "seed": self._seed,
            "num_images": len(self.dataset),
            "epoch": self._epoch,
            "position": self._position,
            "permutation": self._permutation.clone(),
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        """Continue the batch sequence of the sampler that produced `state` (on the same dataset)."""
        n = int(state["num_images"])
        if n != len(self.dataset):
            raise ValueError(f"sampler state is for a dataset of {n} images, this one has {len(self.dataset)}")
        permutation = state["permutation"]
        generator = state["generator"]
        assert isinstance(permutation, Tensor) and isinstance(generator, Tensor)
        self._seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._position = int(state["position"])
        self._permutation = permutation.clone().long()
        self._generator.set_state(generator.clone())

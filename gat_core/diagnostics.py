"""Diagnostics the paper could only show qualitatively, as numbers a study can plot.

* Block utilisation: how much G's final output changes when one block is skipped.
  Early blocks that do nothing (the failure MNG fixes) show up as values near 0.
* Relative output change per optimiser step of G and D: the quantity the
  width-aware learning rate is meant to keep constant across widths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gat_core.models.discriminator import GATDiscriminator
from gat_core.models.generator import GATGenerator


def _relative_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).float().norm() / before.float().norm().clamp_min(1e-12))


@torch.no_grad()
def block_utilisation(gen: GATGenerator, z: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Per block: ||G_without_block(z) - G(z)|| / ||G(z)|| on the final output."""
    w = gen.style(z, labels)
    base = gen.forward_levels(w)[-1]
    return [_relative_change(gen.forward_levels(w, skip_block=i)[-1], base) for i in range(len(gen.blocks))]


@dataclass
class OutputProbe:
    """Fixed inputs on which G's image and D's logits are compared before and after a step."""

    z: torch.Tensor
    labels: torch.Tensor
    real_stack: torch.Tensor

    @torch.no_grad()
    def outputs(self, gen: GATGenerator, disc: GATDiscriminator) -> tuple[torch.Tensor, torch.Tensor]:
        return gen(self.z, self.labels), disc(self.real_stack, self.labels)

    def change(self, before: tuple[torch.Tensor, torch.Tensor], gen: GATGenerator,
               disc: GATDiscriminator) -> dict[str, float]:
        image, logits = self.outputs(gen, disc)
        return {"out_change_g": _relative_change(image, before[0]), "out_change_d": _relative_change(logits, before[1])}

"""GAT generator: a pure transformer driven by a style vector w.

z and the class embedding are RMS-normalised, concatenated and mapped to w by a
slow (lr-multiplier 0.01) MLP.  The input tokens are a fixed 2-D sin-cos grid;
every block is an RMSNorm/(1 + scale(w)) pre-norm block with w-gated residuals.
K output heads sit at depth/K intervals and their outputs accumulate, so the
k-th output is the sum of the first k heads (the MNG levels).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gat_core.models.layers import (
    Attention,
    EqualLinear,
    RMSNorm,
    Rope2D,
    SwiGLU,
    init_xavier,
    normalize_2nd_moment,
    sincos_2d,
    unpatchify,
)


def head_indices(depth: int, levels: int) -> list[int]:
    """Blocks after which an output head sits; the last head always sits on the last block."""
    step = depth // levels
    return [(i + 1) * step - 1 for i in range(levels - 1)] + [depth - 1]


class GATBlock(nn.Module):
    """Pre-norm block modulated by w: scale on the normalised input, gate on the residual."""

    def __init__(self, width: int, heads: int, rope: Rope2D) -> None:
        super().__init__()
        self.norm1 = RMSNorm(width, affine=False)
        self.attn = Attention(width, heads, rope)
        self.norm2 = RMSNorm(width, affine=False)
        self.mlp = SwiGLU(width)
        self.modulation = nn.Linear(width, 4 * width)

    def forward(self, h: torch.Tensor, w_act: torch.Tensor) -> torch.Tensor:
        scale_a, gate_a, scale_m, gate_m = self.modulation(w_act).unsqueeze(1).chunk(4, dim=-1)
        # h + gate * branch as one addcmul: one pass over the tokens instead of a product and a sum
        h = torch.addcmul(h, gate_a, self.attn(self.norm1(h) * (1 + scale_a)))
        return torch.addcmul(h, gate_m, self.mlp(self.norm2(h) * (1 + scale_m)))


class OutputHead(nn.Module):
    """RMSNorm modulated by w, then a linear map of each token to a p x p x C patch."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(width, affine=False)
        self.modulation = nn.Linear(width, width)
        self.linear = nn.Linear(width, out_dim)

    def forward(self, h: torch.Tensor, w_act: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(h) * (1 + self.modulation(w_act).unsqueeze(1)))


class GATGenerator(nn.Module):
    """Class-conditional transformer generator with K cumulative output heads."""

    def __init__(
        self,
        *,
        channels: int,
        resolution: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        num_classes: int,
        levels: int = 4,
        z_dim: int = 64,
        class_dim: int = 64,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.channels, self.patch_size, self.z_dim = channels, patch_size, z_dim
        self.num_classes, self.levels = num_classes, levels
        self.grad_checkpoint = grad_checkpoint
        grid = resolution // patch_size

        self.class_embed = nn.Embedding(num_classes, class_dim)
        self.mapping = nn.Sequential(
            EqualLinear(z_dim + class_dim, width, lr_mult=0.01), nn.SiLU(), EqualLinear(width, width, lr_mult=0.01))
        self.register_buffer("pos", sincos_2d(width, grid)[None], persistent=False)
        rope = Rope2D(width // heads, grid)
        self.blocks = nn.ModuleList(GATBlock(width, heads, rope) for _ in range(depth))
        self.head_at = head_indices(depth, levels)
        self.out_heads = nn.ModuleList(OutputHead(width, patch_size**2 * channels) for _ in range(levels))
        self.register_buffer("w_avg", torch.zeros(num_classes, width))
        self._init_weights()

    def _init_weights(self) -> None:
        init_xavier(self.blocks)
        init_xavier(self.out_heads)
        for m in [*(b.modulation for b in self.blocks), *(h.modulation for h in self.out_heads)]:
            nn.init.xavier_uniform_(m.weight, gain=0.1)
        nn.init.normal_(self.class_embed.weight, std=0.02)

    def style(self, z: torch.Tensor, labels: torch.Tensor, psi: float = 0.0) -> torch.Tensor:
        """Map (z, class) to w; psi > 0 moves w that fraction toward the class mean (truncation)."""
        w = self.mapping(torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(self.class_embed(labels))], dim=1))
        if psi:
            w = torch.lerp(w, self.w_avg[labels].to(w.dtype), psi)
        return w

    @torch.no_grad()
    def update_w_avg(self, w: torch.Tensor, labels: torch.Tensor, beta: float) -> None:
        """Move the running per-class mean of w toward this batch's per-class means."""
        sums = torch.zeros_like(self.w_avg).index_add_(0, labels, w.detach().float())
        counts = torch.bincount(labels, minlength=self.num_classes).float()
        seen = counts > 0
        means = sums[seen] / counts[seen, None]
        self.w_avg[seen] = torch.lerp(means, self.w_avg[seen], beta)

    def forward_levels(self, w: torch.Tensor, skip_block: int | None = None) -> list[torch.Tensor]:
        """All K cumulative outputs, shallowest first.  `skip_block` drops one block (diagnostics)."""
        w_act = nn.functional.silu(w)
        # The residual stream stays in the position grid's dtype (fp32) under autocast, as in the
        # official code, whose fp32 position parameter promotes every residual add: each gated block
        # update is added in fp32, not rounded to bf16.
        h = self.pos.expand(w.shape[0], -1, -1)
        outputs: list[torch.Tensor] = []
        image: torch.Tensor | None = None
        heads = iter(self.out_heads)
        for i, block in enumerate(self.blocks):
            if i != skip_block:
                if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                    h = checkpoint(block, h, w_act, use_reentrant=False)
                else:
                    h = block(h, w_act)
            if i in self.head_at:
                delta = unpatchify(next(heads)(h, w_act), self.channels, self.patch_size)
                image = delta if image is None else image + delta
                outputs.append(image)
        return outputs

    def forward(self, z: torch.Tensor, labels: torch.Tensor, psi: float = 0.0) -> torch.Tensor:
        """The final image only (what sampling and evaluation use)."""
        return self.forward_levels(self.style(z, labels, psi))[-1]

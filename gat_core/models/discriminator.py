"""GAT discriminator: a ViT over the K noisy levels stacked on the channel axis.

Patch embedding of the stack, sin-cos positions, a cls token, RoPE on the
spatial tokens, affine RMSNorm, QK-norm, SwiGLU and LayerScale (init 0.1).
Class conditioning is a projection head: the logit is the inner product of the
normalised cls token (projected) with a mapped class embedding.
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
    patchify,
    rms_norm,
    sincos_2d,
)


class DBlock(nn.Module):
    """Pre-norm block with LayerScale on both residual branches."""

    def __init__(self, width: int, heads: int, rope: Rope2D, layer_scale: float = 0.1) -> None:
        super().__init__()
        self.norm1 = RMSNorm(width)
        self.attn = Attention(width, heads, rope)
        self.norm2 = RMSNorm(width)
        self.mlp = SwiGLU(width)
        self.ls_attn = nn.Parameter(torch.full((width,), layer_scale))
        self.ls_mlp = nn.Parameter(torch.full((width,), layer_scale))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # The norm gains and LayerScale are folded into the weights of the linears around them
        # (weight-sized products instead of token-sized ones, forward and backward).  The residual
        # stream is kept in the gains' dtype, fp32, as the unfolded fp32 gain times a bf16 branch
        # made it under autocast.
        attn_in = rms_norm(h, eps=self.norm1.eps)
        h = h.to(self.ls_attn.dtype) + self.attn(attn_in, in_scale=self.norm1.weight, out_scale=self.ls_attn)
        return h + self.mlp(rms_norm(h, eps=self.norm2.eps), in_scale=self.norm2.weight, out_scale=self.ls_mlp)


class GATDiscriminator(nn.Module):
    """Judges a [B, K*C, H, W] stack of noise-perturbed levels, conditioned on the class."""

    def __init__(
        self,
        *,
        channels: int,
        levels: int,
        resolution: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        num_classes: int,
        cond_dim: int = 2048,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grad_checkpoint = grad_checkpoint
        grid = resolution // patch_size
        self.patch_embed = nn.Linear(channels * levels * patch_size**2, width)
        self.register_buffer("pos", sincos_2d(width, grid)[None], persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        rope = Rope2D(width // heads, grid, prefix=1)
        self.blocks = nn.ModuleList(DBlock(width, heads, rope) for _ in range(depth))
        self.norm = RMSNorm(width)
        self.proj = nn.Linear(width, cond_dim)
        self.class_embed = nn.Embedding(num_classes, cond_dim)
        self.class_mapping = nn.Sequential(
            EqualLinear(cond_dim, cond_dim, lr_mult=0.01), nn.SiLU(), EqualLinear(cond_dim, cond_dim, lr_mult=0.01))
        init_xavier(self)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.class_embed.weight, std=0.02)

    def tokens(self, stack: torch.Tensor) -> torch.Tensor:
        """Final-block tokens, cls first: [B, 1 + T, width]."""
        h = self.patch_embed(patchify(stack, self.patch_size)) + self.pos.to(stack.dtype)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1).to(h.dtype), h], dim=1)
        for block in self.blocks:
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        return h

    def forward(self, stack: torch.Tensor, labels: torch.Tensor,
                return_tokens: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One logit per sample, shape [B] (and the final-block tokens for VFM alignment)."""
        tokens = self.tokens(stack)
        cls = self.proj(self.norm(tokens[:, 0]))
        cond = self.class_mapping(self.class_embed(labels))
        logits = (cls * cond).sum(dim=-1)
        return (logits, tokens) if return_tokens else logits

"""Transformer pieces shared by the generator and the discriminator.

RMSNorm, 2-D rotary position embedding, attention with QK-norm, SwiGLU, fixed
2-D sin-cos grids, and the equalised-learning-rate linear of the mapping nets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMS normalisation over the last axis, with or without a learned gain."""

    def __init__(self, dim: int, affine: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype)
        return y * self.weight if self.weight is not None else y


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit mean square (StyleGAN's input normalisation)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class EqualLinear(nn.Module):
    """Linear with an equalised learning-rate multiplier.

    Weights are stored divided by `lr_mult` and multiplied back at run time, so
    Adam's per-parameter step moves the effective weight `lr_mult` times slower.
    """

    def __init__(self, in_dim: int, out_dim: int, lr_mult: float = 1.0) -> None:
        super().__init__()
        self.lr_mult = lr_mult
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mult)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = lr_mult / math.sqrt(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mult)


def sincos_2d(width: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position grid, shape [grid*grid, width] (half the channels per axis)."""
    if width % 4:
        raise ValueError(f"sin-cos embedding needs a width divisible by 4, got {width}")
    coords = torch.arange(grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width / 4))

    def embed(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed(yy), embed(xx)], dim=1).float()


class Rope2D(nn.Module):
    """2-D rotary embedding: half of each head's channels rotate with the row, half with the column.

    `prefix` tokens (e.g. a cls token) at the start of the sequence are left unrotated.
    """

    def __init__(self, head_dim: int, grid: int, prefix: int = 0, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
        self.prefix = prefix
        quarter = head_dim // 4
        freqs = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float32) / quarter)
        coords = torch.arange(grid, dtype=torch.float32)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        angles = torch.cat([yy.reshape(-1, 1) * freqs, xx.reshape(-1, 1) * freqs], dim=1)  # [T, head_dim/2]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, T, head_dim] -> same shape, spatial tokens rotated pairwise."""
        head, body = x[..., : self.prefix, :], x[..., self.prefix:, :]
        pairs = body.float().unflatten(-1, (-1, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        cos, sin = self.cos, self.sin
        rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).to(x.dtype)
        return torch.cat([head, rotated], dim=-2) if self.prefix else rotated


class Attention(nn.Module):
    """Multi-head self-attention with QK RMS-norm and 2-D RoPE, via PyTorch SDPA."""

    def __init__(self, dim: int, heads: int, rope: Rope2D) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(dim // heads)
        self.k_norm = RMSNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.rope(self.q_norm(q)), self.rope(self.k_norm(k))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    """Gated FFN with hidden size 8d/3, which costs what a GELU MLP of ratio 4 does."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = int(2 * 4 * dim / 3)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), C*p*p]."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, channels: int, p: int) -> torch.Tensor:
    """[B, T, C*p*p] -> [B, C, H, W] for a square token grid."""
    b, t, _ = tokens.shape
    g = int(math.isqrt(t))
    x = tokens.reshape(b, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, g * p, g * p)


def init_xavier(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every nn.Linear below `module`."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

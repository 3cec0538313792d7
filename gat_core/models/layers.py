"""Transformer pieces shared by the generator and the discriminator.

RMSNorm, 2-D rotary position embedding, attention with QK-norm, SwiGLU, fixed
2-D sin-cos grids, and the equalised-learning-rate linear of the mapping nets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _inv_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """rsqrt(mean(x^2) + eps) over the last axis, accumulated in fp32 or wider by one fused reduction."""
    acc = torch.promote_types(x.dtype, torch.float32)
    return torch.rsqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=acc).square() / x.shape[-1] + eps)


class _RMSNormFunction(torch.autograd.Function):
    """y = x * rsqrt(mean(x^2) + eps), with the backward written out.

    autograd's backward of the composite (product, vector_norm, rsqrt, accumulation) makes about
    seven passes over x; the closed form dx = r g - x r^3 <g, x> / D makes three.  It is written in
    differentiable ops and recomputes r from x when a graph is being built, so double backward
    (the exact R1/R2 penalties) stays exact.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        r = _inv_rms(x, eps)
        ctx.eps = eps
        ctx.save_for_backward(x, r)
        return x * r.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, r = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: r must carry its dependence on x
            r = _inv_rms(x, ctx.eps)
        dot = (grad * x).sum(-1, keepdim=True, dtype=r.dtype)
        coef = (dot * r.pow(3) / x.shape[-1]).to(x.dtype)
        return torch.addcmul(grad * r.to(x.dtype), x, coef, value=-1), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) over the last axis, then times `weight` (broadcast) if given.

    The mean square is accumulated in fp32 or wider (bf16 inputs under autocast included) by one
    fused reduction, `vector_norm`, instead of a materialised x^2 and a mean; x is scaled in its
    own dtype, so fp32 inputs make no dtype round trip and bf16 inputs stay bf16.
    """
    y = _RMSNormFunction.apply(x, eps)
    return y if weight is None else y * weight


class RMSNorm(nn.Module):
    """RMS normalisation over the last axis, with or without a learned gain."""

    def __init__(self, dim: int, affine: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit mean square (StyleGAN's input normalisation)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class EqualLinear(nn.Module):
    """Linear with a learning-rate multiplier, in the official GAT form.

    The stored weight is initialised Xavier-uniform with gain 1 / lr_mult and used as
    W_eff = lr_mult * W (the bias likewise), so the effective weight starts Xavier-uniform and
    one Adam step, which moves each stored entry by about lr, moves it by about lr * lr_mult.
    (Not StyleGAN's randn / lr_mult with a further 1 / sqrt(fan_in) at run time, whose steps are
    sqrt(fan_in) times smaller.)
    """

    def __init__(self, in_dim: int, out_dim: int, lr_mult: float = 1.0) -> None:
        super().__init__()
        self.lr_mult = lr_mult
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        nn.init.xavier_uniform_(self.weight, gain=1.0 / lr_mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (lr_mult W)^T + lr_mult b, with lr_mult applied to the input: batch x in_dim products
        # instead of in_dim x out_dim (4M elements per call for D's 2048-wide class mapping)
        return F.linear(x * self.lr_mult, self.weight, self.bias * self.lr_mult)


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

    Layout: channels (2i, 2i+1) of a head form pair i (interleaved, not rotate-half); pairs
    0 .. head_dim/4 - 1 rotate by row * freq_i, the other pairs by column * freq_i.  In eager mode
    each pair is rotated as one complex multiplication (a + ib)(cos + i sin): a single kernel with
    a single-kernel backward, instead of slicing, four products and a stack.  `prefix` tokens
    (e.g. a cls token) at the start of the sequence are left unrotated: cos 1, sin 0, exactly.
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

    def cos_sin(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of every token's angles, [prefix + T, head_dim/2]; the prefix tokens get cos 1, sin 0."""
        pad = (0, 0, self.prefix, 0)
        return F.pad(self.cos.to(dtype), pad, value=1.0), F.pad(self.sin.to(dtype), pad, value=0.0)

    def forward(self, x: torch.Tensor, token_dim: int = -2) -> torch.Tensor:
        """x: [..., tokens, ..., head_dim] with the tokens on `token_dim` -> same shape and dtype, rotated.

        The rotation runs in fp32 or wider (bf16 inputs are upcast once and cast back).
        """
        dtype = torch.promote_types(x.dtype, torch.float32)
        cos, sin = self.cos_sin(dtype)
        shape = [1] * x.dim()
        shape[token_dim], shape[-1] = cos.shape
        cos, sin = cos.view(shape), sin.view(shape)
        pairs = x.to(dtype).unflatten(-1, (-1, 2))
        if torch.compiler.is_compiling():  # Inductor fuses the real form into one kernel but has no complex codegen
            a, b = pairs.unbind(-1)
            rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
        else:  # eager: one complex product (and one in the backward) instead of six ops and a stack
            rotated = torch.view_as_real(torch.view_as_complex(pairs.contiguous()) * torch.complex(cos, sin))
        return rotated.flatten(-2).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with QK RMS-norm and 2-D RoPE, via PyTorch SDPA.

    q and k are normalised and rotated together, as one [B, T, 2, H, head_dim] tensor (each with
    its own norm gain); SDPA reads q, k, v as strided views of [B, T, H, head_dim] and writes its
    output in that layout too, so no transpose is ever copied.
    """

    def __init__(self, dim: int, heads: int, rope: Rope2D) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(dim // heads)
        self.k_norm = RMSNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None,
                out_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Per-channel `in_scale` (a norm gain) and `out_scale` (LayerScale) are folded into qkv and proj."""
        b, t, d = x.shape
        qk, v = scaled_linear(self.qkv, x, in_scale).view(b, t, 3, self.heads, d // self.heads).split([2, 1], dim=2)
        gains = torch.stack([self.q_norm.weight, self.k_norm.weight])[:, None]  # [2, 1, head_dim]
        q, k = self.rope(rms_norm(qk, gains, self.q_norm.eps), token_dim=1).unbind(2)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.squeeze(2).transpose(1, 2))
        return scaled_linear(self.proj, out.transpose(1, 2).reshape(b, t, d), out_scale=out_scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v by SDPA.  Under bf16 autocast on a CPU it runs in fp32 and returns the
    autocast dtype: the CPU's bf16 attention kernel (forward + backward) is about 3x slower than its fp32 one at
    these sizes (65 tokens, head dim 64: BENCHMARKS.md), and fp32 is the more exact of the two.  Everywhere
    else (fp32, or CUDA with its fused bf16 kernels) it is SDPA as called."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        return out.to(torch.get_autocast_dtype("cpu"))
    return F.scaled_dot_product_attention(q, k, v)


def scaled_linear(linear: nn.Linear, x: torch.Tensor, in_scale: torch.Tensor | None = None,
                  out_scale: torch.Tensor | None = None) -> torch.Tensor:
    """out_scale * linear(x * in_scale) for per-channel scales, folded into the weight and bias.

    Scaling the (out x in) weight costs far less than scaling (tokens x channels) activations,
    and the backward then needs no activation-sized product either: a norm gain in front of a
    linear (in_scale) or a LayerScale behind it (out_scale) become free.
    """
    weight, bias = linear.weight, linear.bias
    if in_scale is not None:
        weight = weight * in_scale
    if out_scale is not None:
        weight, bias = weight * out_scale[:, None], bias * out_scale
    return F.linear(x, weight, bias)


class SwiGLU(nn.Module):
    """Gated FFN with hidden size 8d/3, which costs what a GELU MLP of ratio 4 does."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = int(2 * 4 * dim / 3)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None,
                out_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Per-channel `in_scale` (a norm gain) and `out_scale` (LayerScale) are folded into w12 and w3."""
        a, b = scaled_linear(self.w12, x, in_scale).chunk(2, dim=-1)
        return scaled_linear(self.w3, F.silu(a) * b, out_scale=out_scale)


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

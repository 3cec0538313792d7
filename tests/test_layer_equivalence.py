"""The fast layer formulations compute what the plain formulas of the method compute.

Each fused or folded form in `gat_core.models` (fused-reduction RMSNorm, complex-product RoPE with
q and k rotated together, LayerScale folded into the output projections, addcmul residual gates,
input-scaled EqualLinear) is checked against the textbook expression, values and gradients, in
float64 so that only a real difference in the math could fail.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gat_core.models.discriminator import DBlock
from gat_core.models.generator import GATBlock
from gat_core.models.layers import Attention, EqualLinear, RMSNorm, Rope2D, rms_norm

HEAD_DIM, GRID = 16, 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def plain_rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


def plain_rope(x: torch.Tensor, rope: Rope2D) -> torch.Tensor:
    """Pairs (2i, 2i+1) rotated by the token's angle i; prefix tokens untouched.  x: [..., T, head_dim]."""
    head, body = x[..., : rope.prefix, :], x[..., rope.prefix:, :]
    pairs = body.unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = rope.cos.to(x.dtype), rope.sin.to(x.dtype)
    rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    return torch.cat([head, rotated], dim=-2)


def plain_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    b, t, d = x.shape
    q, k, v = attn.qkv(x).view(b, t, 3, attn.heads, d // attn.heads).permute(2, 0, 3, 1, 4)
    q = plain_rope(plain_rms_norm(q, attn.q_norm.weight), attn.rope)
    k = plain_rope(plain_rms_norm(k, attn.k_norm.weight), attn.rope)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // attn.heads)
    out = scores.softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, t, d))


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter off its initial value, so that gains of 1 or gates of 0 hide nothing."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return module


def assert_same_function(fast, plain, inputs: list[torch.Tensor], params: list[torch.Tensor]) -> None:
    """Same values and same gradients w.r.t. inputs and parameters (float64)."""
    leaves = [x.detach().requires_grad_(True) for x in inputs]
    grads = []
    for fn in (fast, plain):
        out = fn(*leaves)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)  # a non-uniform upstream gradient
        grads.append((out.detach(), torch.autograd.grad((out * weights).sum(), [*leaves, *params])))
    (out_fast, g_fast), (out_plain, g_plain) = grads
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_fast, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("affine", [False, True])
def test_rms_norm_matches_the_mean_square_formula(affine: bool) -> None:
    norm = randomise(RMSNorm(32, affine=affine)).double()
    x = torch.randn(3, 5, 32, dtype=torch.float64) * 4 + 1
    assert_same_function(norm, lambda x: plain_rms_norm(x, norm.weight), [x], list(norm.parameters()))


def test_rms_norm_hand_written_backward_is_exact_to_second_order() -> None:
    """First and second derivatives (the exact R1/R2 penalties differentiate D's input gradient)."""
    x = torch.randn(3, 4, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w), (x, w))
    assert torch.autograd.gradgradcheck(lambda x, w: rms_norm(x, w), (x, w))


def test_rms_norm_accumulates_bf16_inputs_in_fp32_and_returns_bf16() -> None:
    x = (torch.randn(4, 64) * 30).bfloat16()
    y = rms_norm(x)
    assert y.dtype == torch.bfloat16
    expected = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).bfloat16()
    torch.testing.assert_close(y, expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("compiled_form", [False, True])
def test_rope_complex_and_real_forms_match_the_pairwise_rotation(prefix: int, compiled_form: bool,
                                                                 monkeypatch) -> None:
    # compiled_form: the branch torch.compile traces (Inductor has no complex codegen), run eagerly here
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiled_form)
    rope = Rope2D(HEAD_DIM, GRID, prefix=prefix).double()
    x = torch.randn(2, 3, prefix + GRID * GRID, HEAD_DIM, dtype=torch.float64)
    assert_same_function(rope, lambda x: plain_rope(x, rope), [x], [])


def test_rope_token_axis_can_be_anywhere_and_bf16_round_trips() -> None:
    rope = Rope2D(HEAD_DIM, GRID, prefix=1)
    x = torch.randn(2, 1 + GRID * GRID, 2, 3, HEAD_DIM)  # [B, T, q/k, H, head_dim] as Attention uses it
    expected = plain_rope(x.permute(0, 2, 3, 1, 4), rope).permute(0, 3, 1, 2, 4)
    torch.testing.assert_close(rope(x, token_dim=1), expected)
    out = rope(x.bfloat16(), token_dim=1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("prefix", [0, 1])
def test_attention_with_joint_qk_norm_and_rope_matches_the_per_tensor_formulas(prefix: int) -> None:
    attn = randomise(Attention(32, 2, Rope2D(16, GRID, prefix=prefix))).double()
    x = torch.randn(3, prefix + GRID * GRID, 32, dtype=torch.float64)
    assert_same_function(attn, lambda x: plain_attention(attn, x), [x], list(attn.parameters()))


def test_attention_kernel_is_sdpa_itself_in_fp32_and_computed_in_fp32_under_cpu_bf16_autocast() -> None:
    from gat_core.models.layers import attention

    q, k, v = (torch.randn(2, 2, 17, 16, requires_grad=True) for _ in range(3))
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))  # fp32: unchanged, bit for bit
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v.bfloat16())
    assert out.dtype == torch.bfloat16  # what autocast's SDPA returns, for the layers after it
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.bfloat16().double())
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=4e-3)  # fp32 inside: only the output is rounded
    out.float().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_discriminator_block_with_folded_layer_scale_matches_the_explicit_gains() -> None:
    block = randomise(DBlock(32, 2, Rope2D(16, GRID, prefix=1))).double()

    def plain(h: torch.Tensor) -> torch.Tensor:
        h = h + block.ls_attn * plain_attention(block.attn, plain_rms_norm(h, block.norm1.weight))
        n = plain_rms_norm(h, block.norm2.weight)
        a, b = block.mlp.w12(n).chunk(2, dim=-1)
        return h + block.ls_mlp * block.mlp.w3(F.silu(a) * b)

    h = torch.randn(3, 1 + GRID * GRID, 32, dtype=torch.float64)
    assert_same_function(block, plain, [h], list(block.parameters()))


def test_discriminator_residual_stream_stays_fp32_under_bf16_autocast() -> None:
    block = DBlock(32, 2, Rope2D(16, GRID, prefix=1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(torch.randn(2, 1 + GRID * GRID, 32).bfloat16())
    assert out.dtype == torch.float32  # as the unfolded fp32 LayerScale gain times a bf16 branch made it


def test_generator_block_with_addcmul_gates_matches_the_explicit_formula() -> None:
    block = randomise(GATBlock(32, 2, Rope2D(16, GRID))).double()

    def plain(h: torch.Tensor, w_act: torch.Tensor) -> torch.Tensor:
        scale_a, gate_a, scale_m, gate_m = block.modulation(w_act).unsqueeze(1).chunk(4, dim=-1)
        h = h + gate_a * plain_attention(block.attn, plain_rms_norm(h) * (1 + scale_a))
        a, b = block.mlp.w12(plain_rms_norm(h) * (1 + scale_m)).chunk(2, dim=-1)
        return h + gate_m * block.mlp.w3(F.silu(a) * b)

    h, w_act = torch.randn(3, GRID * GRID, 32, dtype=torch.float64), torch.randn(3, 32, dtype=torch.float64)
    assert_same_function(block, plain, [h, w_act], list(block.parameters()))


def test_equal_linear_scaling_the_input_equals_scaling_the_weight() -> None:
    layer = randomise(EqualLinear(24, 16, lr_mult=0.01)).double()
    x = torch.randn(5, 24, dtype=torch.float64)
    plain = lambda x: F.linear(x, layer.weight * layer.lr_mult, layer.bias * layer.lr_mult)  # noqa: E731  (lr_mult W, lr_mult b)
    assert_same_function(layer, plain, [x], list(layer.parameters()))

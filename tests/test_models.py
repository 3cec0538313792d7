"""Layers, generator and discriminator of GAT on tiny CPU configs (real modules, seeded, no mocks)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gat_core.models.discriminator import GATDiscriminator
from gat_core.models.generator import GATGenerator, head_indices
from gat_core.models.layers import (
    EqualLinear,
    RMSNorm,
    Rope2D,
    SwiGLU,
    normalize_2nd_moment,
    patchify,
    sincos_2d,
    unpatchify,
)
from gat_core.models.registry import PRESETS, parse_preset


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_generator(**overrides) -> GATGenerator:
    kw = dict(channels=3, resolution=8, patch_size=2, width=32, depth=4, heads=2, num_classes=5, levels=4)
    kw.update(overrides)
    return GATGenerator(**kw).eval()


def tiny_discriminator(**overrides) -> GATDiscriminator:
    kw = dict(channels=3, levels=4, resolution=8, patch_size=2, width=32, depth=2, heads=2, num_classes=5,
              cond_dim=64)
    kw.update(overrides)
    return GATDiscriminator(**kw).eval()


# --------------------------------------------------------------------------------------------- RMSNorm

def test_rmsnorm_without_affine_gives_unit_rms_and_does_not_centre() -> None:
    x = torch.randn(6, 64) * 7.0 + 3.0  # large scale and a mean offset: LayerNorm would remove the mean
    norm = RMSNorm(64, affine=False)
    y = norm(x)
    assert norm.weight is None and not list(norm.parameters())
    torch.testing.assert_close(y.pow(2).mean(-1).sqrt(), torch.ones(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(y, x / x.pow(2).mean(-1, keepdim=True).sqrt(), atol=1e-5, rtol=1e-5)
    assert (y.mean(-1) > 0.2).all()  # the offset survives: RMS, not layer, normalisation


def test_rmsnorm_affine_gain_multiplies_the_normalised_vector() -> None:
    norm = RMSNorm(16, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 16))
    x = torch.randn(3, 16) * 5
    torch.testing.assert_close(norm(x), RMSNorm(16, affine=False)(x) * norm.weight)


def test_normalize_2nd_moment_gives_unit_mean_square() -> None:
    x = torch.randn(4, 64) * 0.1
    torch.testing.assert_close(normalize_2nd_moment(x).pow(2).mean(-1), torch.ones(4), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------- RoPE

HEAD_DIM, GRID = 16, 4


def _token(y: int, x: int) -> int:
    return y * GRID + x


def test_rope_preserves_norms_and_is_identity_only_at_position_zero() -> None:
    rope = Rope2D(HEAD_DIM, GRID)
    x = torch.randn(2, 3, GRID * GRID, HEAD_DIM)
    out = rope(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[..., 0, :], x[..., 0, :], atol=0, rtol=0)
    for t in range(1, GRID * GRID):  # every other grid position is actually rotated
        assert (out[..., t, :] - x[..., t, :]).abs().max() > 1e-3, t


def test_rope_leaves_prefix_token_untouched_and_rotates_the_rest_as_without_prefix() -> None:
    with_cls = Rope2D(HEAD_DIM, GRID, prefix=1)
    plain = Rope2D(HEAD_DIM, GRID)
    x = torch.randn(2, 2, 1 + GRID * GRID, HEAD_DIM)
    out = with_cls(x)
    torch.testing.assert_close(out[..., 0, :], x[..., 0, :], atol=0, rtol=0)
    torch.testing.assert_close(out[..., 1:, :], plain(x[..., 1:, :]))
    assert (out[..., 2, :] - x[..., 2, :]).abs().max() > 1e-3  # spatial token (0, 1) is rotated


def test_rope_query_key_product_depends_only_on_the_relative_offset() -> None:
    rope = Rope2D(HEAD_DIM, GRID)
    q, k = torch.randn(HEAD_DIM), torch.randn(HEAD_DIM)
    rq = rope(q.expand(1, 1, GRID * GRID, HEAD_DIM))[0, 0]
    rk = rope(k.expand(1, 1, GRID * GRID, HEAD_DIM))[0, 0]

    def dot(pq: tuple[int, int], pk: tuple[int, int]) -> torch.Tensor:
        return rq[_token(*pq)] @ rk[_token(*pk)]

    cases = [((0, 0), (1, 2)), ((2, 1), (0, 0)), ((1, 1), (1, 3)), ((0, 2), (2, 0))]
    for (py, px), (ky, kx) in cases:
        base = dot((py, px), (ky, kx))
        for dy in range(-min(py, ky), GRID - max(py, ky)):
            for dx in range(-min(px, kx), GRID - max(px, kx)):
                shifted = dot((py + dy, px + dx), (ky + dy, kx + dx))
                torch.testing.assert_close(shifted, base, atol=1e-5, rtol=1e-5)
    # ... and it really depends on the offset, along both axes
    assert abs(dot((0, 0), (0, 1)) - dot((0, 0), (0, 2))) > 1e-3
    assert abs(dot((0, 0), (1, 0)) - dot((0, 0), (2, 0))) > 1e-3
    assert abs(dot((0, 0), (0, 1)) - dot((0, 0), (1, 0))) > 1e-3


def test_rope_rejects_head_dims_not_divisible_by_four() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        Rope2D(6, GRID)


# --------------------------------------------------------------------------------------------- sin-cos, patches, FFN

def test_sincos_2d_shape_distinct_rows_and_axis_split() -> None:
    grid, width = 4, 32
    pe = sincos_2d(width, grid)
    assert pe.shape == (grid * grid, width) and pe.dtype == torch.float32
    dists = torch.cdist(pe, pe) + torch.eye(grid * grid) * 1e9
    assert dists.min() > 1e-2  # every position gets its own vector
    rows = pe.view(grid, grid, width)
    # first half encodes the row only, second half the column only
    torch.testing.assert_close(rows[:, :1, : width // 2].expand(-1, grid, -1), rows[..., : width // 2])
    torch.testing.assert_close(rows[:1, :, width // 2:].expand(grid, -1, -1), rows[..., width // 2:])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(30, grid)


@pytest.mark.parametrize("c,h,p", [(4, 8, 2), (3, 16, 4), (1, 8, 1), (2, 16, 8)])
def test_patchify_unpatchify_round_trip_and_token_content(c: int, h: int, p: int) -> None:
    x = torch.randn(2, c, h, h)
    tokens = patchify(x, p)
    g = h // p
    assert tokens.shape == (2, g * g, c * p * p)
    # token (i, j) holds exactly the (i, j) patch, channel-major
    i, j = g - 1, 0
    torch.testing.assert_close(tokens[:, i * g + j], x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(2, -1))
    torch.testing.assert_close(unpatchify(tokens, c, p), x, atol=0, rtol=0)


@pytest.mark.parametrize("dim,hidden", [(32, 85), (48, 128), (384, 1024), (1152, 3072)])
def test_swiglu_hidden_size_is_int_eight_thirds_of_width(dim: int, hidden: int) -> None:
    ffn = SwiGLU(dim)
    assert hidden == int(8 * dim / 3)
    assert ffn.w12.in_features == dim and ffn.w12.out_features == 2 * hidden
    assert ffn.w3.in_features == hidden and ffn.w3.out_features == dim


# --------------------------------------------------------------------------------------------- EqualLinear

def test_equal_linear_is_the_official_form() -> None:
    """Official GAT: stored weight Xavier-uniform with gain 1/lr_mult, used as lr_mult * W (bias likewise)."""
    in_dim, out_dim, lr_mult = 256, 128, 0.01
    layer = EqualLinear(in_dim, out_dim, lr_mult=lr_mult)
    bound = math.sqrt(6 / (in_dim + out_dim))  # xavier_uniform_ with gain 1
    effective = layer.weight * lr_mult
    assert effective.abs().max().item() <= bound * (1 + 1e-6)
    assert effective.abs().max().item() > 0.95 * bound  # uniform on the whole interval, not narrower
    assert effective.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    assert torch.equal(layer.bias, torch.zeros(out_dim))
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(5, in_dim)
    torch.testing.assert_close(layer(x), x @ effective.T + layer.bias * lr_mult)


def _twins(in_dim: int, out_dim: int, lr_mult: float) -> tuple[EqualLinear, nn.Linear]:
    """An EqualLinear and a plain Linear that compute the same function."""
    eq = EqualLinear(in_dim, out_dim, lr_mult=lr_mult).double()  # float64: stored weights are ~1/lr_mult
    with torch.no_grad():
        eq.bias.normal_()
    plain = nn.Linear(in_dim, out_dim).double()
    with torch.no_grad():
        plain.weight.copy_(eq.weight * lr_mult)
        plain.bias.copy_(eq.bias * lr_mult)
    return eq, plain


def _effective(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    scale = layer.lr_mult if isinstance(layer, EqualLinear) else 1.0
    return (layer.weight * scale).detach().clone(), (layer.bias * scale).detach().clone()


def _one_step(layer: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, r: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    w0, b0 = _effective(layer)
    opt.zero_grad()
    (layer(x) * r).sum().backward()
    opt.step()
    w1, b1 = _effective(layer)
    return w1 - w0, b1 - b0


def test_equal_linear_sgd_step_is_lr_mult_squared_times_a_plain_linear_step() -> None:
    """With plain SGD the effective step shrinks by lr_mult^2 (gradient x lr_mult, then the step x lr_mult)."""
    in_dim, out_dim, lr_mult, lr = 16, 8, 0.01, 0.1
    eq, plain = _twins(in_dim, out_dim, lr_mult)
    x, r = torch.randn(4, in_dim, dtype=torch.float64), torch.randn(4, out_dim, dtype=torch.float64)
    torch.testing.assert_close(eq(x), plain(x))
    dw_eq, db_eq = _one_step(eq, torch.optim.SGD(eq.parameters(), lr=lr), x, r)
    dw_plain, db_plain = _one_step(plain, torch.optim.SGD(plain.parameters(), lr=lr), x, r)
    assert dw_plain.abs().min() > 0
    torch.testing.assert_close(dw_eq, dw_plain * lr_mult**2, rtol=1e-4, atol=0)
    torch.testing.assert_close(db_eq, db_plain * lr_mult**2, rtol=1e-4, atol=0)


@pytest.mark.parametrize("in_dim", [16, 2048])
def test_equal_linear_adam_step_moves_the_effective_weight_by_lr_times_lr_mult(in_dim: int) -> None:
    """The official formula: one Adam step moves every effective weight and bias by lr * lr_mult, whatever
    the fan-in (the StyleGAN form moved it sqrt(fan_in) times less: 45x at fan-in 2048)."""
    out_dim, lr, lr_mult = 8, 1e-3, 0.01
    eq, _ = _twins(in_dim, out_dim, lr_mult)
    x, r = torch.randn(4, in_dim, dtype=torch.float64), torch.randn(4, out_dim, dtype=torch.float64)
    adam = dict(lr=lr, betas=(0.0, 0.99), eps=1e-12, weight_decay=0.0)
    dw, db = _one_step(eq, torch.optim.AdamW(eq.parameters(), **adam), x, r)
    torch.testing.assert_close(dw.abs(), torch.full_like(dw, lr * lr_mult), rtol=1e-3, atol=0)
    torch.testing.assert_close(db.abs(), torch.full_like(db, lr * lr_mult), rtol=1e-3, atol=0)


# --------------------------------------------------------------------------------------------- registry

def test_registry_presets_follow_dit_sizes() -> None:
    assert parse_preset("GAT-XL/2") == {"depth": 28, "width": 1152, "heads": 16, "patch_size": 2}
    assert parse_preset("GAT-B/4") == {"depth": 12, "width": 768, "heads": 12, "patch_size": 4}
    assert {k: v["depth"] for k, v in PRESETS.items()} == {"GAT-S": 12, "GAT-B": 12, "GAT-L": 24, "GAT-XL": 28}
    with pytest.raises(ValueError, match="GAT-S/2"):
        parse_preset("GAT-M/2")


# --------------------------------------------------------------------------------------------- generator

@pytest.mark.parametrize("resolution,patch,channels,levels,depth", [
    (8, 2, 4, 4, 4),
    (16, 4, 3, 2, 3),
    (8, 1, 1, 1, 2),
    (16, 8, 3, 3, 6),
])
def test_generator_output_shapes(resolution: int, patch: int, channels: int, levels: int, depth: int) -> None:
    g = tiny_generator(resolution=resolution, patch_size=patch, channels=channels, levels=levels, depth=depth)
    z, y = torch.randn(3, g.z_dim), torch.tensor([0, 4, 2])
    with torch.no_grad():
        outs = g.forward_levels(g.style(z, y))
        final = g(z, y)
    assert len(outs) == levels
    for out in outs:
        assert out.shape == (3, channels, resolution, resolution)
        assert torch.isfinite(out).all()
    torch.testing.assert_close(final, outs[-1], atol=0, rtol=0)
    assert g.head_at == head_indices(depth, levels)


@pytest.mark.parametrize("depth,expected", [(12, [2, 5, 8, 11]), (24, [5, 11, 17, 23]), (28, [6, 13, 20, 27])])
def test_head_indices_match_the_spec(depth: int, expected: list[int]) -> None:
    assert head_indices(depth, 4) == expected


def test_head_indices_last_head_always_on_last_block() -> None:
    for depth in range(1, 31):
        for levels in range(1, min(depth, 8) + 1):
            idx = head_indices(depth, levels)
            assert len(idx) == levels
            assert idx[-1] == depth - 1
            assert all(a < b for a, b in zip(idx, idx[1:])), (depth, levels, idx)
            assert idx[0] >= 0


def test_generator_levels_accumulate_head_outputs() -> None:
    g = tiny_generator()
    z, y = torch.randn(2, g.z_dim), torch.tensor([1, 3])
    deltas: list[torch.Tensor] = []
    hooks = [h.register_forward_hook(lambda m, i, o: deltas.append(o)) for h in g.out_heads]
    with torch.no_grad():
        outs = g.forward_levels(g.style(z, y))
    for h in hooks:
        h.remove()
    images = [unpatchify(d, g.channels, g.patch_size) for d in deltas]
    assert len(images) == 4
    torch.testing.assert_close(outs[0], images[0])
    for k in range(1, 4):
        torch.testing.assert_close(outs[k] - outs[k - 1], images[k], atol=1e-5, rtol=1e-5)
        assert (outs[k] - outs[k - 1]).abs().max() > 1e-4  # every head contributes


def test_zeroing_the_last_head_makes_the_last_two_levels_equal() -> None:
    g = tiny_generator()
    z, y = torch.randn(2, g.z_dim), torch.tensor([0, 2])
    with torch.no_grad():
        before = g.forward_levels(g.style(z, y))
        assert (before[-1] - before[-2]).abs().max() > 1e-4
        g.out_heads[-1].linear.weight.zero_()
        g.out_heads[-1].linear.bias.zero_()
        after = g.forward_levels(g.style(z, y))
    torch.testing.assert_close(after[-1], after[-2], atol=0, rtol=0)
    for k in range(3):  # earlier levels are untouched
        torch.testing.assert_close(after[k], before[k], atol=0, rtol=0)


def test_truncation_psi_zero_is_identity_and_psi_one_is_the_class_mean() -> None:
    g = tiny_generator()
    with torch.no_grad():
        g.w_avg.normal_()
    z, y = torch.randn(3, g.z_dim), torch.tensor([4, 0, 4])
    with torch.no_grad():
        w = g.style(z, y)
        w0 = g.style(z, y, psi=0.0)
        w1 = g.style(z, y, psi=1.0)
        w03 = g.style(z, y, psi=0.3)
    torch.testing.assert_close(w0, w, atol=0, rtol=0)
    torch.testing.assert_close(w1, g.w_avg[y])
    torch.testing.assert_close(w03, 0.7 * w + 0.3 * g.w_avg[y])
    assert (w - g.w_avg[y]).abs().max() > 1e-2


def test_w_avg_moves_toward_class_means_only_for_classes_in_the_batch() -> None:
    g = tiny_generator()
    with torch.no_grad():
        g.w_avg.normal_()
    old = g.w_avg.clone()
    w = torch.randn(4, 32)
    y = torch.tensor([1, 3, 1, 1])
    beta = 0.9
    g.update_w_avg(w, y, beta)
    torch.testing.assert_close(g.w_avg[1], beta * old[1] + (1 - beta) * w[[0, 2, 3]].mean(0))
    torch.testing.assert_close(g.w_avg[3], beta * old[3] + (1 - beta) * w[1])
    for c in (0, 2, 4):
        torch.testing.assert_close(g.w_avg[c], old[c], atol=0, rtol=0)
    assert "w_avg" in g.state_dict()  # persistent: it survives checkpoints and the EMA copy


def test_modulation_linears_start_small_other_linears_are_xavier() -> None:
    g = tiny_generator()

    def bound(lin: nn.Linear) -> float:
        return math.sqrt(6.0 / (lin.in_features + lin.out_features))

    mods = [b.modulation for b in g.blocks] + [h.modulation for h in g.out_heads]
    for m in mods:
        assert m.weight.abs().max() <= 0.1 * bound(m) + 1e-7
        assert m.weight.abs().max() > 0.09 * bound(m)  # uniform with gain 0.1, not zero
        assert torch.count_nonzero(m.bias) == 0
    others = [b.attn.qkv for b in g.blocks] + [b.mlp.w12 for b in g.blocks] + [h.linear for h in g.out_heads]
    for lin in others:
        assert lin.weight.abs().max() > 0.9 * bound(lin)
        assert lin.weight.abs().max() <= bound(lin) + 1e-7
        assert torch.count_nonzero(lin.bias) == 0
    # consequence: the per-block scales and gates start near zero
    with torch.no_grad():
        w = g.style(torch.randn(8, g.z_dim), torch.arange(8) % 5)
        mod = g.blocks[0].modulation(nn.functional.silu(w))
    assert mod.abs().mean() < 0.1 * w.abs().mean()


def test_skipping_a_block_changes_the_output() -> None:
    g = tiny_generator()
    z, y = torch.randn(2, g.z_dim), torch.tensor([0, 1])
    with torch.no_grad():
        w = g.style(z, y)
        full = g.forward_levels(w)
        torch.testing.assert_close(g.forward_levels(w, skip_block=None)[-1], full[-1], atol=0, rtol=0)
        for block in range(len(g.blocks)):
            skipped = g.forward_levels(w, skip_block=block)
            assert (skipped[-1] - full[-1]).abs().max() > 1e-5, block
        # skipping the last block leaves every earlier level unchanged
        last = g.forward_levels(w, skip_block=len(g.blocks) - 1)
    for k in range(3):
        torch.testing.assert_close(last[k], full[k], atol=0, rtol=0)


def test_generator_depends_on_z_and_label() -> None:
    g = tiny_generator()
    z = torch.randn(2, g.z_dim)
    with torch.no_grad():
        base = g(z, torch.tensor([0, 0]))
        other_label = g(z, torch.tensor([1, 1]))
        other_z = g(torch.randn(2, g.z_dim), torch.tensor([0, 0]))
    assert (base - other_label).abs().max() > 1e-5
    assert (base - other_z).abs().max() > 1e-5


# --------------------------------------------------------------------------------------------- discriminator

def test_discriminator_logit_shape_and_label_dependence() -> None:
    d = tiny_discriminator()
    stack = torch.randn(5, 3 * 4, 8, 8)
    with torch.no_grad():
        logits = d(stack, torch.tensor([0, 1, 2, 3, 4]))
        relabelled = d(stack, torch.tensor([1, 2, 3, 4, 0]))
    assert logits.shape == (5,)
    assert torch.isfinite(logits).all()
    assert ((logits - relabelled).abs() > 1e-7 * logits.abs().max()).all()
    assert d.patch_embed.in_features == 3 * 4 * 2 * 2  # all levels stacked on the channel axis


def test_discriminator_logit_depends_on_every_level() -> None:
    d = tiny_discriminator()
    stack = torch.randn(2, 12, 8, 8)
    y = torch.tensor([0, 1])
    with torch.no_grad():
        base = d(stack, y)
        for level in range(4):
            changed = stack.clone()
            changed[:, 3 * level:3 * (level + 1)] += 1.0
            assert (d(changed, y) - base).abs().max() > 1e-7 * base.abs().max(), level


def test_discriminator_layer_scale_is_per_channel_and_starts_at_0_1() -> None:
    d = tiny_discriminator()
    names = {n for n, _ in d.named_parameters()}
    for i, block in enumerate(d.blocks):
        for ls in (block.ls_attn, block.ls_mlp):
            assert isinstance(ls, nn.Parameter) and ls.shape == (32,)
            torch.testing.assert_close(ls.detach(), torch.full((32,), 0.1), atol=0, rtol=0)
        assert f"blocks.{i}.ls_attn" in names and f"blocks.{i}.ls_mlp" in names
        assert block.norm1.weight is not None  # affine RMSNorm in D


def test_discriminator_cls_token_is_excluded_from_rope() -> None:
    d = tiny_discriminator()
    for block in d.blocks:
        rope = block.attn.rope
        assert rope.prefix == 1
        assert rope.cos.shape[0] == 16  # one angle row per spatial token, none for cls
    rope = d.blocks[0].attn.rope
    x = torch.randn(2, 2, 17, 16)
    out = rope(x)
    torch.testing.assert_close(out[..., 0, :], x[..., 0, :], atol=0, rtol=0)  # cls
    torch.testing.assert_close(out[..., 1, :], x[..., 1, :], atol=0, rtol=0)  # spatial (0, 0)
    assert (out[..., 2, :] - x[..., 2, :]).abs().max() > 1e-3  # spatial (0, 1)
    tokens = d.tokens(torch.randn(2, 12, 8, 8))
    assert tokens.shape == (2, 17, 32)

"""MNG noise, RpGAN losses, R1/R2 penalties and DiffAugment on tiny real modules (CPU, seeded)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gat_core.augment import AugmentParams, DiffAugment
from gat_core.models.discriminator import GATDiscriminator
from gat_core.objectives.gan import Judge, discriminator_loss, generator_loss
from gat_core.objectives.mng import corrupt, nested_noise, noise_levels

ALL_OPS = ["color", "translation", "cutout", "flip"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_judge(levels: int, policy: list[str]) -> Judge:
    disc = GATDiscriminator(channels=2, levels=levels, resolution=8, patch_size=2, width=16, depth=1, heads=1,
                            num_classes=3, cond_dim=16)
    ts = noise_levels("exp", levels) if levels > 1 else noise_levels("off", 1)
    return Judge(disc, ts, DiffAugment(policy))


# --------------------------------------------------------------------------------------------- MNG schedule

def test_exp_schedule_matches_the_reference_code() -> None:
    ts = noise_levels("exp", 4, 0.125)
    assert ts == pytest.approx([0.885, 0.76, 0.51, 0.01], abs=1e-9)


@pytest.mark.parametrize("levels", [2, 3, 4, 6])
def test_linear_schedule_is_decreasing_and_ends_at_0_01(levels: int) -> None:
    ts = noise_levels("linear", levels, 0.125)
    assert len(ts) == levels
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert ts[-1] == pytest.approx(0.01, abs=1e-12)
    assert ts[0] == pytest.approx(1 - 0.125 + 0.01, abs=1e-12)
    # linear in the signal fraction: equal steps
    steps = [a - b for a, b in zip(ts, ts[1:])]
    assert steps == pytest.approx([steps[0]] * len(steps), abs=1e-12)


def test_off_schedule_is_one_clean_level_and_unknown_is_rejected() -> None:
    assert noise_levels("off", 4) == [0.01]
    with pytest.raises(ValueError, match="unknown schedule"):
        noise_levels("cosine", 4)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- nested noise

TS = noise_levels("exp", 4)


@pytest.fixture(scope="module")
def big_noise() -> list[torch.Tensor]:
    like = torch.zeros(50, 4, 32, 32, dtype=torch.float64)  # 204,800 elements per level
    return nested_noise(like, TS, generator=torch.Generator().manual_seed(1))


def test_nested_noise_marginal_std_is_t_k(big_noise: list[torch.Tensor]) -> None:
    assert len(big_noise) == 4
    for n, t in zip(big_noise, TS):
        assert n.shape == (50, 4, 32, 32) and n.dtype == torch.float64
        assert n.std().item() == pytest.approx(t, rel=0.01)
        assert abs(n.mean().item()) < 0.01 * t


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def test_nested_noise_correlation_between_levels_matches_theory(big_noise: list[torch.Tensor]) -> None:
    # n_k = ratio_k * n_{k+1} + fresh  =>  corr(n_k, n_j) = prod of ratios * t_j / t_k   (j > k)
    for k in range(3):
        for j in range(k + 1, 4):
            ratio = (1 - TS[k]) / (1 - TS[j])
            expected = ratio * TS[j] / TS[k]
            assert _corr(big_noise[k], big_noise[j]) == pytest.approx(expected, abs=0.01), (k, j)
    assert _corr(big_noise[0], big_noise[1]) > 0.1  # genuinely nested, not independent draws


def test_real_copies_form_one_diffusion_trajectory(big_noise: list[torch.Tensor]) -> None:
    """For identical copies, the noisier level is ratio x the cleaner level plus independent noise."""
    x = torch.randn(50, 4, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    stack = corrupt([x] * 4, TS, big_noise)
    assert stack.shape == (50, 16, 32, 32)
    levels = stack.chunk(4, dim=1)
    for k in range(3):
        ratio = (1 - TS[k]) / (1 - TS[k + 1])
        residual = levels[k] - ratio * levels[k + 1]
        fresh_std = math.sqrt(TS[k] ** 2 - (TS[k + 1] * ratio) ** 2)
        assert residual.std().item() == pytest.approx(fresh_std, rel=0.01)
        assert abs(_corr(residual, levels[k + 1])) < 0.01  # independent of the cleaner level
        assert abs(_corr(residual, x)) < 0.01  # and carries no signal
    # signal coefficients (1 - t_k): regression of each level on x
    for k, t in enumerate(TS):
        coef = float((levels[k] * x).sum() / (x * x).sum())
        assert coef == pytest.approx(1 - t, abs=0.01)


def test_nested_noise_is_reproducible_with_a_generator() -> None:
    like = torch.zeros(2, 3, 4, 4)
    a = nested_noise(like, TS, generator=torch.Generator().manual_seed(5))
    b = nested_noise(like, TS, generator=torch.Generator().manual_seed(5))
    c = nested_noise(like, TS, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


# --------------------------------------------------------------------------------------------- R1 / R2

F64 = torch.float64


def penalty_judge(levels: int) -> Judge:
    """A float64 D whose patch embedding reads every level slot with the same (down-scaled) weights.

    A trained D sees the same image in every slot, so its per-level input gradients are correlated;
    tying the slots makes that explicit (at random init they are nearly orthogonal, which would hide
    the difference between ||sum_k g_k||^2 and sum_k ||g_k||^2).  The 0.1 scale keeps the gradient
    norm similar across augmentation/noise draws, so the finite-difference average below is limited
    only by the chi-square noise of (g . delta)^2, not by spread between copies.
    """
    disc = GATDiscriminator(channels=2, levels=levels, resolution=8, patch_size=4, width=16, depth=1, heads=1,
                            num_classes=3, cond_dim=16).to(F64)
    slot = 2 * 4 * 4
    with torch.no_grad():
        w = disc.patch_embed.weight
        w.copy_(0.1 * w[:, :slot].repeat(1, levels))
    ts = noise_levels("exp", levels) if levels > 1 else noise_levels("off", 1)
    return Judge(disc, ts, DiffAugment(["translation", "flip", "cutout"]))


@pytest.fixture(scope="module", params=[1, 4], ids=["levels1", "levels4"])
def penalties(request: pytest.FixtureRequest) -> tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Exact and finite-difference (sigma 1e-3, float64) penalties of discriminator_loss on the same draws.

    One real image and one fake stack, repeated 4000 times: every copy gets its own delta (and its own
    augmentation and MNG noise), and the exact and approximate calls see identical draws because they
    start from the same RNG state.  The mean of ((D(x) - D(x + delta)) / sigma)^2 over the copies
    estimates the mean squared input gradient with a relative standard error of about 2.3 %
    (sqrt(2 / 4000) chi-square noise, inflated slightly by the spread between draws).
    """
    levels, n = request.param, 4000
    torch.manual_seed(1)
    judge = penalty_judge(levels)
    real = torch.randn(1, 2, 8, 8, dtype=F64).expand(n, -1, -1, -1)
    fakes = [torch.randn(1, 2, 8, 8, dtype=F64).expand(n, -1, -1, -1) for _ in range(levels)]
    labels = torch.ones(n, dtype=torch.long)
    torch.manual_seed(124)
    _, exact = discriminator_loss(judge, real, fakes, labels, 1.0, 1.0, exact=True)
    torch.manual_seed(124)
    _, approx = discriminator_loss(judge, real, fakes, labels, 1.0, 1.0, exact=False, sigma=1e-3)
    return levels, exact, approx


def test_penalty_calls_share_their_draws(penalties) -> None:
    _, exact, approx = penalties
    assert torch.equal(exact["logit_real"], approx["logit_real"])
    assert torch.equal(exact["logit_fake"], approx["logit_fake"])
    assert exact["r1"] > 0 and exact["r2"] > 0


def test_finite_difference_r1_matches_exact_r1(penalties) -> None:
    """The K real copies are one input: exact R1 is the gradient w.r.t. the real image, like the estimate."""
    levels, exact, approx = penalties
    assert approx["r1"].item() == pytest.approx(exact["r1"].item(), rel=0.1)


def test_finite_difference_r2_matches_exact_r2(penalties) -> None:
    _, exact, approx = penalties
    assert approx["r2"].item() == pytest.approx(exact["r2"].item(), rel=0.1)


@pytest.mark.parametrize("levels", [1, 4])
def test_exact_r1_is_the_squared_gradient_wrt_the_real_image(levels: int) -> None:
    """Independent reference: autograd w.r.t. the (single) real image through the judge, same draw."""
    judge = penalty_judge(levels)
    real, labels = torch.randn(3, 2, 8, 8, dtype=F64), torch.tensor([0, 1, 2])
    fakes = [torch.randn(3, 2, 8, 8, dtype=F64) for _ in range(levels)]
    torch.manual_seed(7)
    _, logs = discriminator_loss(judge, real, fakes, labels, 1.0, 0.0, exact=True)
    torch.manual_seed(7)
    draw = judge.draw(real)  # the real draw is the first one discriminator_loss takes
    leaf = real.clone().requires_grad_(True)
    logit = judge([leaf] * levels, labels, draw)
    assert logit.mean().item() == pytest.approx(logs["logit_real"].item(), rel=1e-12)
    (grad,) = torch.autograd.grad(logit.sum(), leaf)
    assert logs["r1"].item() == pytest.approx(grad.square().flatten(1).sum(1).mean().item(), rel=1e-6)


# --------------------------------------------------------------------------------------------- RpGAN losses

def _setup(levels: int = 4) -> tuple[Judge, torch.Tensor, list[torch.Tensor], torch.Tensor]:
    judge = tiny_judge(levels, ALL_OPS)
    real = torch.randn(6, 2, 8, 8)
    fakes = [torch.randn(6, 2, 8, 8) for _ in range(levels)]
    return judge, real, fakes, torch.tensor([0, 1, 2, 0, 1, 2])


def test_losses_are_finite_and_combine_the_penalties_with_gamma_over_two() -> None:
    judge, real, fakes, labels = _setup()
    loss, logs = discriminator_loss(judge, real, fakes, labels, r1_gamma=0.1, r2_gamma=0.3)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in logs.values())
    assert logs["r1"] > 0 and logs["r2"] > 0
    expected = logs["loss_d"] + 0.1 / 2 * logs["r1"] + 0.3 / 2 * logs["r2"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    _, no_pen = discriminator_loss(judge, real, fakes, labels, r1_gamma=0.0, r2_gamma=0.0)
    assert no_pen["r1"] == 0 and no_pen["r2"] == 0
    g_loss, g_logs = generator_loss(judge, real, fakes, labels)
    assert torch.isfinite(g_loss) and g_loss.item() == g_logs["loss_g"].item()


def test_d_loss_is_softplus_of_the_paired_relativistic_difference() -> None:
    judge, real, fakes, labels = _setup()
    torch.manual_seed(11)
    loss, logs = discriminator_loss(judge, real, fakes, labels, 0.0, 0.0)
    torch.manual_seed(11)
    real_draw, fake_draw = judge.draw(real), judge.draw(fakes[-1])
    with torch.no_grad():
        d_real = judge([real] * 4, labels, real_draw)
        d_fake = judge(fakes, labels, fake_draw)
    assert d_real.shape == d_fake.shape == (6,)
    torch.testing.assert_close(loss, F.softplus(d_fake - d_real).mean())
    # pairing is index-wise: other pairings give other losses
    assert abs(loss.item() - F.softplus(d_fake.roll(1) - d_real).mean().item()) > 1e-6


def test_d_loss_decreases_when_real_logits_go_up() -> None:
    judge, real, fakes, labels = _setup()
    torch.manual_seed(21)
    loss_before, before = discriminator_loss(judge, real, fakes, labels, 0.0, 0.0)
    # push every real up the direction that increases its own logit, under the same draw
    torch.manual_seed(21)
    draw = judge.draw(real)
    leaf = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(judge([leaf] * 4, labels, draw).sum(), leaf)
    step = 0.05 / grad.flatten(1).norm(dim=1).max()
    torch.manual_seed(21)
    loss_after, after = discriminator_loss(judge, real + step * grad, fakes, labels, 0.0, 0.0)
    assert after["logit_real"] > before["logit_real"]
    assert torch.equal(after["logit_fake"], before["logit_fake"])
    assert loss_after < loss_before


def test_g_loss_decreases_when_fake_logits_go_up_and_only_fakes_get_gradient() -> None:
    judge, real, fakes, labels = _setup()
    leaves = [f.clone().requires_grad_(True) for f in fakes]
    torch.manual_seed(31)
    loss_before, _ = generator_loss(judge, real, leaves, labels)
    grads = torch.autograd.grad(loss_before, leaves)
    assert all(g.abs().sum() > 0 for g in grads)  # every level gets gradient through the stacked D input
    torch.manual_seed(31)
    step = 0.05 / max(g.norm() for g in grads)
    loss_after, _ = generator_loss(judge, real, [f - step * g for f, g in zip(fakes, grads)], labels)
    assert loss_after < loss_before


# --------------------------------------------------------------------------------------------- DiffAugment

def test_empty_policy_is_identity_and_falsy() -> None:
    aug = DiffAugment([])
    assert not aug and DiffAugment(["flip"])
    x = torch.randn(3, 4, 8, 8)
    params = aug.sample(x)
    assert params == AugmentParams()
    assert torch.equal(aug.apply(x, params), x)


def test_same_params_give_the_same_transform_to_every_tensor() -> None:
    aug = DiffAugment(ALL_OPS)
    x = torch.randn(8, 4, 16, 16)
    params = aug.sample(x)
    out = aug.apply(x, params)
    assert torch.equal(aug.apply(x.clone(), params), out)  # no hidden randomness in apply
    assert not torch.equal(aug.apply(x, aug.sample(x)), out)  # a new draw is a new transform
    # the geometric part is linear, so a shared draw commutes with sums of levels
    geo = DiffAugment(["translation", "cutout", "flip"])
    p = geo.sample(x)
    y = torch.randn_like(x)
    torch.testing.assert_close(geo.apply(x + y, p), geo.apply(x, p) + geo.apply(y, p))


def _shift_reference(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[..., i, j] = x[..., i - dy, j - dx]
    return out


def test_translation_shifts_content_by_the_sampled_amount_with_zero_padding() -> None:
    aug = DiffAugment(["translation"])
    x = torch.randn(4, 2, 16, 16)
    shifts = torch.tensor([[2, -1], [-2, 2], [0, 0], [1, -2]])
    out = aug.apply(x, AugmentParams(shift=shifts))
    for b, (dy, dx) in enumerate(shifts.tolist()):
        torch.testing.assert_close(out[b], _shift_reference(x[b], dy, dx), atol=0, rtol=0)
    sampled = aug.sample(torch.zeros(4000, 1, 32, 32)).shift
    assert sampled.shape == (4000, 2)
    assert sampled.min() == -4 and sampled.max() == 4  # up to 1/8 of the side, both directions
    out = aug.apply(x, aug.sample(x))
    assert out.shape == x.shape


def test_flip_flips_horizontally_only_the_selected_samples() -> None:
    aug = DiffAugment(["flip"])
    x = torch.randn(3, 2, 8, 8)
    out = aug.apply(x, AugmentParams(flip=torch.tensor([True, False, True])))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[2], x[2].flip(-1))
    assert torch.equal(out[1], x[1])
    rate = aug.sample(torch.zeros(20000, 1, 4, 4)).flip.float().mean().item()
    assert rate == pytest.approx(0.4, abs=0.02)


def test_cutout_zeroes_one_centred_square_and_nothing_else() -> None:
    aug = DiffAugment(["cutout"])
    x = torch.ones(2, 3, 16, 16)
    out = aug.apply(x, AugmentParams(cutout=torch.tensor([[8, 8], [0, 15]])))
    zero = out[:, 0] == 0
    assert torch.equal(zero, (out == 0).all(1))  # same mask on every channel
    rows, cols = zero[0].nonzero().unbind(1)
    side = int(rows.max() - rows.min() + 1)
    assert side == int(cols.max() - cols.min() + 1) and zero[0].sum() == side * side  # a full square
    assert 6 <= side <= 8 and rows.float().mean() == pytest.approx(8, abs=1)
    assert zero[1, 0, 15] and not zero[1, 15, 0]  # clipped at the border around its centre
    assert torch.equal(out[~zero.unsqueeze(1).expand_as(out)], x[~zero.unsqueeze(1).expand_as(x)])


@pytest.mark.parametrize("h", [8, 16, 32])
def test_cutout_square_has_half_the_side_length(h: int) -> None:
    aug = DiffAugment(["cutout"])
    out = aug.apply(torch.ones(1, 1, h, h), AugmentParams(cutout=torch.tensor([[h // 2, h // 2]])))
    assert int((out == 0).sum()) == (h // 2) ** 2


def test_colour_changes_only_the_selected_half_of_the_batch() -> None:
    aug = DiffAugment(["color"])
    x = torch.randn(200, 4, 8, 8)
    params = aug.sample(x)
    on = params.color[3].flatten()
    out = aug.apply(x, params)
    changed = (out - x).flatten(1).abs().amax(1) > 1e-6
    assert torch.equal(changed, on)
    assert 0.35 < on.float().mean().item() < 0.65

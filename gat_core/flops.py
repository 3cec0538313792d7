"""Analytic parameter and MAC counts for G, D and one training iteration.

Convention (DiT's "Gflops"): one multiply-accumulate = one FLOP, forward pass,
per image, elementwise ops, norms and softmax ignored.  torch's FlopCounterMode
counts 2 per MAC, so its totals are twice these numbers.  Training compute is
counted in the same MAC units, summed over the passes the trainer really runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gat_core.config import ModelConfig, TrialConfig


@dataclass(frozen=True)
class NetCost:
    """Forward MACs per image, split so that backward costs can be derived per part."""

    blocks: int          # transformer blocks (token linears + attention + per-image modulation)
    first_layer: int     # patch embedding (D) or mapping-net input layer (G): no input gradient needed
    cond: int            # class-conditioning branch that does not depend on the image (D's mapping)
    other: int           # heads, projections, the rest of the mapping net

    @property
    def total(self) -> int:
        return self.blocks + self.first_layer + self.cond + self.other


def _block_macs(width: int, tokens: int) -> int:
    hidden = int(2 * 4 * width / 3)
    linears = tokens * (4 * width * width + 3 * hidden * width)  # qkv, proj, SwiGLU in and out
    attention = 2 * tokens * tokens * width                       # QK^T and AV
    return linears + attention


def generator_cost(model: ModelConfig, resolution: int, channels: int, levels: int) -> NetCost:
    width, tokens = model.width, (resolution // model.patch_size) ** 2
    blocks = model.depth * (_block_macs(width, tokens) + 4 * width * width)  # + per-image modulation
    heads = levels * (width * width + tokens * width * model.patch_size**2 * channels)
    first = (model.z_dim + model.class_dim) * width
    return NetCost(blocks=blocks, first_layer=first, cond=0, other=heads + width * width)


def discriminator_cost(model: ModelConfig, resolution: int, channels: int, levels: int) -> NetCost:
    width, tokens = model.disc_width, (resolution // model.patch_size) ** 2
    blocks = model.disc_depth * _block_macs(width, tokens + 1)
    embed = tokens * levels * channels * model.patch_size**2 * width
    cond = 2 * model.disc_cond_dim**2
    return NetCost(blocks=blocks, first_layer=embed, cond=cond, other=width * model.disc_cond_dim)


def parameter_counts(model: ModelConfig, channels: int, levels: int, num_classes: int) -> tuple[int, int]:
    """(params of G, params of D), matching the modules in gat_core.models."""
    def block(width: int, heads: int) -> int:
        hidden = int(2 * 4 * width / 3)
        attn = 3 * width * width + 3 * width + width * width + width + 2 * (width // heads)  # + QK-norm gains
        return attn + width * 2 * hidden + 2 * hidden + hidden * width + width

    w, p = model.width, model.patch_size
    g = (num_classes * model.class_dim
         + (model.z_dim + model.class_dim) * w + w + w * w + w
         + model.depth * (block(w, model.heads) + 4 * w * w + 4 * w)
         + levels * (w * w + w + w * p * p * channels + p * p * channels))
    dw, c = model.disc_width, model.disc_cond_dim
    d = (channels * levels * p * p * dw + dw + dw
         + model.disc_depth * (block(dw, model.disc_heads) + 4 * dw)  # + two affine norms, two LayerScales
         + dw + dw * c + c + num_classes * c + 2 * (c * c + c))
    return g, d


@dataclass(frozen=True)
class TrialCost:
    """What one trial costs, in MACs (DiT convention) unless named otherwise."""

    params_g: int
    params_d: int
    gflops_g: float            # G forward per image, GMACs
    gflops_d: float            # D forward per image (all levels stacked), GMACs
    macs_per_sample_iter: int  # one D step + one G step, per sample
    steps: int
    batch_size: int

    @property
    def train_flops(self) -> float:
        """Total training compute of the trial, MACs."""
        return float(self.macs_per_sample_iter) * self.batch_size * self.steps

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "train_flops": self.train_flops}


def iteration_macs(g: NetCost, d: NetCost, exact_penalty: bool = False) -> int:
    """MACs of one training iteration per sample, summed over the passes the trainer runs.

    D step: G forward without grad; D on real, fake and (approximated penalties) the two
    perturbed stacks; backward through those D passes for D's weights (the first layer needs
    no input gradient).  G step: G forward; D on real (no grad) and fake; backward through D
    for the input only (D frozen, its class branch needs nothing) and through G.
    """
    d_fwd = d.total
    d_back_weights = 2 * d_fwd - d.first_layer  # weight grads everywhere, input grads but for the first layer
    d_back_input = d_fwd - d.cond               # activation grads only
    g_back = 2 * g.total - g.first_layer
    if exact_penalty:
        # penalties reuse the real/fake forwards; their double backward costs about 2 D backward passes each
        d_step = g.total + 2 * d_fwd + 2 * d_back_input + 2 * (d_back_weights + d_back_input)
    else:
        d_step = g.total + 4 * d_fwd + 4 * d_back_weights
    g_step = g.total + 2 * d_fwd + d_back_input + g_back
    return d_step + g_step


def trial_cost(cfg: TrialConfig, num_classes: int) -> TrialCost:
    """Parameter counts, per-image GMACs and the training compute of one trial."""
    res, ch, levels = cfg.dataset.resolution, cfg.dataset.channels, cfg.train.levels
    g = generator_cost(cfg.model, res, ch, levels)
    d = discriminator_cost(cfg.model, res, ch, levels)
    per_iter = iteration_macs(g, d, exact_penalty=cfg.train.penalty == "exact")
    steps = cfg.train.steps or max(1, int(cfg.train.flops_budget // (per_iter * cfg.train.batch_size)))
    params_g, params_d = parameter_counts(cfg.model, ch, levels, num_classes)
    return TrialCost(params_g=params_g, params_d=params_d, gflops_g=g.total / 1e9, gflops_d=d.total / 1e9,
                     macs_per_sample_iter=per_iter, steps=steps, batch_size=cfg.train.batch_size)

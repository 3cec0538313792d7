"""Analytic parameter and MAC counts for G, D and one training iteration.

Convention (DiT's "Gflops"): one multiply-accumulate = one FLOP, forward pass,
per image; elementwise ops, norms, softmax and embedding look-ups are ignored.
torch's FlopCounterMode counts 2 per MAC, so its totals are twice these numbers
(`gat_core.flop_counter.count_macs` divides by 2 and adds the CPU attention
kernel that torch 2.14 does not count).  Training compute is counted in the same
MAC units, summed over the passes `GANTrainer.iteration` really runs.

Per matmul y = x W (M MACs) a backward pass costs M for the input gradient (when
x requires grad) plus M for the weight gradient (when W requires grad).  Attention
(QK^T and AV, 2 batched matmuls forward) costs 5 batched matmuls backward with the
fused kernels (flash / efficient / the CPU flash kernel recompute QK^T) and 4 with
the math backend.  These are the conventions FlopCounterMode uses, and the counts
below agree with it exactly (see tests/test_flops.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

from gat_core.config import ModelConfig, TrialConfig, VFMConfig


@dataclass(frozen=True)
class NetCost:
    """Forward MACs per image, split so that backward costs can be derived per part."""

    blocks: int          # transformer blocks: token linears + attention (+ G's per-image modulation)
    first_layer: int     # D: patch embedding; G: input layer of the mapping net
    cond: int            # D: class-conditioning mapping net (depends on the label only); G: 0
    other: int           # G: output heads + rest of the mapping net; D: cls projection
    attention: int = 0   # the part of `blocks` that is QK^T and AV (batched matmuls, no weights)

    @property
    def total(self) -> int:
        return self.blocks + self.first_layer + self.cond + self.other

    @property
    def linear(self) -> int:
        """MACs of weight matmuls (everything but attention)."""
        return self.total - self.attention


def ffn_hidden(width: int) -> int:
    """SwiGLU hidden size, as `gat_core.models.layers.SwiGLU` computes it."""
    return int(2 * 4 * width / 3)


def _block_linear_macs(width: int, tokens: int) -> int:
    return tokens * (4 * width * width + 3 * ffn_hidden(width) * width)  # qkv, proj, SwiGLU in (2h) and out


def _attention_macs(width: int, tokens: int) -> int:
    return 2 * tokens * tokens * width  # QK^T and AV over all heads


def generator_cost(model: ModelConfig, resolution: int, channels: int, levels: int) -> NetCost:
    """G forward per image: mapping net, `depth` modulated blocks, `levels` output heads."""
    width, tokens = model.width, (resolution // model.patch_size) ** 2
    attention = model.depth * _attention_macs(width, tokens)
    blocks = model.depth * (_block_linear_macs(width, tokens) + 4 * width * width) + attention  # + modulation
    heads = levels * (width * width + tokens * width * model.patch_size**2 * channels)     # modulation + linear
    first = (model.z_dim + model.class_dim) * width
    return NetCost(blocks=blocks, first_layer=first, cond=0, other=heads + width * width, attention=attention)


def discriminator_cost(model: ModelConfig, resolution: int, channels: int, levels: int) -> NetCost:
    """D forward per image: patch embedding of the K-level stack, blocks over cls + tokens, projection logit."""
    width, tokens = model.disc_width, (resolution // model.patch_size) ** 2
    attention = model.disc_depth * _attention_macs(width, tokens + 1)
    blocks = model.disc_depth * _block_linear_macs(width, tokens + 1) + attention
    embed = tokens * levels * channels * model.patch_size**2 * width
    cond = 2 * model.disc_cond_dim**2
    return NetCost(blocks=blocks, first_layer=embed, cond=cond, other=width * model.disc_cond_dim,
                   attention=attention)


def parameter_counts(model: ModelConfig, channels: int, levels: int, num_classes: int) -> tuple[int, int]:
    """(params of G, params of D), matching the modules in gat_core.models."""
    def block(width: int, heads: int) -> int:
        hidden = ffn_hidden(width)
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


# timm DINOv2 teachers: width, depth, MLP fc1 outputs, fc2 inputs (SwiGLU-packed for giant), register tokens
DINOV2_ARCH: dict[str, tuple[int, int, int, int, int]] = {
    "vit_small_patch14_dinov2": (384, 12, 1536, 1536, 0),
    "vit_base_patch14_dinov2": (768, 12, 3072, 3072, 0),
    "vit_large_patch14_dinov2": (1024, 24, 4096, 4096, 0),
    "vit_giant_patch14_dinov2": (1536, 40, 8192, 4096, 0),
    "vit_small_patch14_reg4_dinov2": (384, 12, 1536, 1536, 4),
    "vit_base_patch14_reg4_dinov2": (768, 12, 3072, 3072, 4),
    "vit_large_patch14_reg4_dinov2": (1024, 24, 4096, 4096, 4),
    "vit_giant_patch14_reg4_dinov2": (1536, 40, 8192, 4096, 4),
}


@lru_cache(maxsize=None)
def teacher_macs(model_name: str, image_size: int) -> int:
    """Forward MACs per image of the frozen VFM teacher (`gat_core.vfm.VFMTeacher`: timm forward_features).

    Analytic for the timm DINOv2 models (patch-14 conv embedding, cls (+ registers), ViT blocks);
    any other timm name is built on the meta device and counted with FlopCounterMode.
    """
    if model_name in DINOV2_ARCH:
        width, depth, fc1, fc2, registers = DINOV2_ARCH[model_name]
        patches = (image_size // 14) ** 2
        tokens = patches + 1 + registers
        block = tokens * (4 * width * width + width * fc1 + fc2 * width) + _attention_macs(width, tokens)
        return patches * 3 * 14 * 14 * width + depth * block
    import timm
    import torch

    from gat_core.flop_counter import count_macs

    with torch.device("meta"):
        net = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=image_size)
        images = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        return count_macs(net.forward_features, images)


@dataclass(frozen=True)
class VFMCost:
    """Per-image MACs of VFM alignment (D step only): frozen teacher forward and REPA head forward."""

    teacher: int
    head: int


def vfm_cost(vfm: VFMConfig, model: ModelConfig, resolution: int) -> VFMCost:
    """The teacher sees the real images at `vfm.image_size`; the REPA head maps D's cls + spatial tokens."""
    tokens = (resolution // model.patch_size) ** 2 + 1
    teacher_dim = (DINOV2_ARCH[vfm.model][0] if vfm.model in DINOV2_ARCH
                   else _timm_feature_dim(vfm.model, vfm.image_size))
    hidden = vfm.hidden_dim
    head = tokens * (model.disc_width * hidden + hidden * hidden + hidden * teacher_dim)
    return VFMCost(teacher=teacher_macs(vfm.model, vfm.image_size), head=head)


@lru_cache(maxsize=None)
def _timm_feature_dim(model_name: str, image_size: int) -> int:
    import timm
    import torch

    with torch.device("meta"):
        return int(timm.create_model(model_name, pretrained=False, num_classes=0, img_size=image_size).num_features)


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


def _attention_backward(attention: int, fused: bool) -> int:
    """Backward MACs of attention whose forward costs `attention` (2 batched matmuls)."""
    return 5 * attention // 2 if fused else 2 * attention


# The passes of one iteration, in the order the trainer runs them.  "penalty passes": with approximated
# penalties the D forwards on the perturbed stacks; with exact ones the input-gradient passes
# (create_graph), whose double backward is part of "D backward".  "recompute": the block forwards that
# gradient checkpointing re-runs, once per backward traversal of a checkpointed pass.
PASS_LABELS: dict[str, str] = {
    "d_step_g_forward": "D step: G forward (no grad)",
    "d_step_d_forward": "D step: D forward, real + fake",
    "d_step_penalty": "D step: R1/R2 penalty passes",
    "d_step_vfm_teacher": "D step: VFM teacher forward (no grad)",
    "d_step_vfm_head": "D step: REPA head forward + backward",
    "d_step_d_backward": "D step: D backward (weights)",
    "d_step_recompute": "D step: checkpoint recompute of D blocks",
    "g_step_g_forward": "G step: G forward",
    "g_step_d_forward": "G step: D forward, real (no grad) + fake",
    "g_step_d_backward": "G step: D backward (inputs, D frozen)",
    "g_step_g_backward": "G step: G backward",
    "g_step_recompute": "G step: checkpoint recompute of D and G blocks",
}


def iteration_passes(g: NetCost, d: NetCost, exact_penalty: bool = False, *, r1: bool = True, r2: bool = True,
                     fused_attention: bool = True, grad_checkpoint: bool = False,
                     vfm: VFMCost | None = None) -> dict[str, int]:
    """MACs per sample of each pass of one training iteration (keys: `PASS_LABELS`, zero when not run).

    D step (`discriminator_loss`): G forward without grad; D on the real and fake stacks.
    - approx penalties: D on the perturbed real (R1) and fake (R2) stacks; one backward through
      all D passes for D's weights.  The stacks need no gradient, so the patch embedding gets a
      weight gradient only; everything after it also propagates input gradients.
    - exact penalties: `autograd.grad(..., create_graph=True)` of each penalised logit w.r.t. its
      levels (input gradients through the patch embedding, blocks and projection; the class branch
      is not on that path), then the backward of loss: every matmul of the forward and of the
      gradient pass gets both its gradients (the levels are leaves requiring grad), i.e. 4x the
      input-gradient linears + 2x the class branch.  The fused attention kernels have no double
      backward, so the D step (forward and backward) must run on the math backend (4 batched
      matmuls per attention backward): the exact D step counts math attention whatever
      `fused_attention` says.
    - VFM alignment (`vfm`): the frozen teacher's forward on the reals, and the REPA head on the
      real pass's tokens, forward plus backward (weight and token gradients: 2x forward).
    G step (`generator_loss`): G forward; D on real (no grad) and fake; backward through the
    frozen D for input gradients only (nothing for the class branch) and through G (every
    matmul's input and weight gradients: even the mapping net's first layer gets an input
    gradient because the class embedding is trainable).
    Gradient checkpointing (`grad_checkpoint`, every block of G and D when grad is enabled):
    each backward traversal of a checkpointed pass re-runs its blocks' forward once; an exact
    penalised D pass is traversed twice (the input-gradient pass and the double backward).

    `r1`/`r2`: whether that penalty runs (its gamma > 0).  `fused_attention`: SDPA runs a fused
    kernel (CPU flash, CUDA flash/efficient); False for the math backend (e.g. the meta device).
    """
    f_g, f_d = g.total, d.total
    d_in = d.linear - d.cond  # matmuls on the input path of D: patch embedding, blocks, projection
    penalised = int(r1) + int(r2)
    passes = dict.fromkeys(PASS_LABELS, 0)
    passes["d_step_g_forward"] = f_g
    passes["d_step_d_forward"] = 2 * f_d
    if exact_penalty:
        math_back = _attention_backward(d.attention, fused=False)
        passes["d_step_penalty"] = penalised * (d_in + math_back)
        double_back = 4 * d_in + 2 * d.cond + 3 * math_back          # forward nodes + gradient-pass nodes
        plain_back = 2 * d.linear + math_back                         # unpenalised pass, leaf inputs need grad
        passes["d_step_d_backward"] = penalised * double_back + (2 - penalised) * plain_back
        d_traversals = 2 * penalised + (2 - penalised)
    else:
        passes["d_step_penalty"] = penalised * f_d
        weight_back = 2 * d.linear - d.first_layer + _attention_backward(d.attention, fused_attention)
        passes["d_step_d_backward"] = (2 + penalised) * weight_back
        d_traversals = 2 + penalised
    if vfm is not None:
        passes["d_step_vfm_teacher"] = vfm.teacher
        passes["d_step_vfm_head"] = 3 * vfm.head
    passes["g_step_g_forward"] = f_g
    passes["g_step_d_forward"] = 2 * f_d
    passes["g_step_d_backward"] = d_in + _attention_backward(d.attention, fused_attention)
    passes["g_step_g_backward"] = 2 * g.linear + _attention_backward(g.attention, fused_attention)
    if grad_checkpoint:
        passes["d_step_recompute"] = d_traversals * d.blocks
        passes["g_step_recompute"] = d.blocks + g.blocks
    return passes


def iteration_macs(g: NetCost, d: NetCost, exact_penalty: bool = False, *, r1: bool = True, r2: bool = True,
                   fused_attention: bool = True, grad_checkpoint: bool = False, vfm: VFMCost | None = None) -> int:
    """MACs of one training iteration per sample, summed over the passes the trainer runs.

    See `iteration_passes` for the per-pass accounting.  With approximated penalties, fused
    attention, no checkpointing and no VFM this is 4 F_G + 15 F_D - 4 (D patch embedding)
    - (D class branch) + 3.5 (D attention) + 0.5 (G attention).
    """
    return sum(iteration_passes(g, d, exact_penalty, r1=r1, r2=r2, fused_attention=fused_attention,
                                grad_checkpoint=grad_checkpoint, vfm=vfm).values())


def model_shape(cfg: TrialConfig) -> tuple[int, int]:
    """(resolution, channels) of what G produces and D sees (the latent grid when training on latents)."""
    return cfg.dataset.model_resolution, cfg.dataset.model_channels


def trial_cost(cfg: TrialConfig, num_classes: int) -> TrialCost:
    """Parameter counts, per-image GMACs and the training compute of one trial."""
    (res, ch), t, levels = model_shape(cfg), cfg.train, cfg.train.levels
    g = generator_cost(cfg.model, res, ch, levels)
    d = discriminator_cost(cfg.model, res, ch, levels)
    vfm = vfm_cost(t.vfm, cfg.model, res) if t.vfm is not None else None
    per_iter = iteration_macs(g, d, exact_penalty=t.penalty == "exact", r1=t.r1_gamma > 0, r2=t.r2_gamma > 0,
                              grad_checkpoint=t.grad_checkpoint, vfm=vfm)
    steps = cfg.train.steps or max(1, int(cfg.train.flops_budget // (per_iter * cfg.train.batch_size)))
    params_g, params_d = parameter_counts(cfg.model, ch, levels, num_classes)
    return TrialCost(params_g=params_g, params_d=params_d, gflops_g=g.total / 1e9, gflops_d=d.total / 1e9,
                     macs_per_sample_iter=per_iter, steps=steps, batch_size=cfg.train.batch_size)


# --- the diffusion-transformer baseline (model.family: dit) --------------------------------------------------
# diffusers' DiTTransformer2DModel as built by gat_core.models.dit: patch-embedding conv; per block an
# adaLN-Zero whose own timestep MLP (256-d sinusoid -> Linear -> SiLU -> Linear) and label table make the
# conditioning vector, its 6w modulation linear, q/k/v/out projections with bias, attention, a GELU MLP of
# ratio 4; the final layer recomputes block 0's timestep MLP, a 2w modulation linear and the linear to patches.

DIT_TIME_FEATURES = 256  # diffusers' Timesteps(num_channels=256)


@dataclass(frozen=True)
class DiTNetCost:
    """Forward MACs per image of the DiT denoiser, split so that backward costs can be derived per part."""

    embed: int        # patch-embedding conv (its input, the noisy image, needs no gradient)
    blocks: int       # per block: token linears 12 T w^2 + attention 2 T^2 w + conditioning 256 w + 7 w^2
    final: int        # block 0's timestep MLP again, the 2w modulation linear, the linear to patches
    attention: int    # the part of `blocks` that is QK^T and AV
    time_first: int   # first layers of the (depth + 1) timestep MLPs (input: sinusoid, no gradient)

    @property
    def total(self) -> int:
        return self.embed + self.blocks + self.final

    @property
    def linear(self) -> int:
        return self.total - self.attention


def dit_cost(channels: int, resolution: int, patch_size: int, width: int, depth: int) -> DiTNetCost:
    """Forward MACs per image of `gat_core.models.dit.DiTDenoiser` (one network evaluation, no guidance)."""
    w, tokens, patch = width, (resolution // patch_size) ** 2, patch_size**2 * channels
    attention = depth * 2 * tokens * tokens * w
    cond = DIT_TIME_FEATURES * w + w * w + 6 * w * w
    blocks = depth * (12 * tokens * w * w + cond) + attention
    final = DIT_TIME_FEATURES * w + w * w + 2 * w * w + tokens * w * patch
    return DiTNetCost(embed=tokens * patch * w, blocks=blocks, final=final, attention=attention,
                      time_first=(depth + 1) * DIT_TIME_FEATURES * w)


def dit_forward_macs(channels: int, resolution: int, patch_size: int, width: int, depth: int) -> int:
    """Forward MACs per image of the DiT denoiser (DiT's "Gflops" x 1e9)."""
    return dit_cost(channels, resolution, patch_size, width, depth).total


def dit_parameter_count(channels: int, patch_size: int, width: int, depth: int, num_classes: int) -> int:
    """Parameters of the DiT denoiser: every block carries its own timestep MLP and (num_classes + 1)-row label table."""
    w, patch = width, patch_size**2 * channels
    block = (DIT_TIME_FEATURES * w + w + w * w + w     # timestep MLP
             + (num_classes + 1) * w                   # label table with the null row
             + 6 * w * w + 6 * w                       # adaLN-Zero modulation
             + 4 * (w * w + w)                         # q, k, v, out
             + 4 * w * w + 4 * w + 4 * w * w + w)      # GELU MLP
    return patch * w + w + depth * block + 2 * w * w + 2 * w + w * patch + patch


def dit_iteration_passes(cost: DiTNetCost, *, fused_attention: bool = True,
                         grad_checkpoint: bool = False) -> dict[str, int]:
    """MACs per sample of the passes of one `DiffusionTrainer.iteration()`: forward, backward, recompute.

    Backward: every weight matmul gets its weight gradient and its input gradient, except the patch
    embedding and the timestep MLPs' first layers, whose inputs (noisy image, sinusoid) need none;
    attention backward is 2.5x forward with the fused kernels, 2x on the math backend.  Label
    embeddings are look-ups (no MACs).  Gradient checkpointing re-runs every block forward once.
    """
    backward = 2 * cost.linear - cost.embed - cost.time_first + _attention_backward(cost.attention, fused_attention)
    return {"forward": cost.total, "backward": backward, "recompute": cost.blocks if grad_checkpoint else 0}


def dit_iteration_macs(cost: DiTNetCost, *, fused_attention: bool = True, grad_checkpoint: bool = False) -> int:
    """MACs of one diffusion training iteration per sample (about 3x the forward)."""
    return sum(dit_iteration_passes(cost, fused_attention=fused_attention, grad_checkpoint=grad_checkpoint).values())


def sampling_macs(forward: int, nfe: int, guidance: float = 1.0) -> int:
    """Sampling MACs per image: NFE x forward, x 2 with classifier-free guidance (guidance > 1)."""
    return forward * nfe * (2 if guidance > 1.0 else 1)


def dit_trial_cost(cfg: TrialConfig, num_classes: int) -> TrialCost:
    """`TrialCost` of a `model.family: dit` trial: params_g/gflops_g are the denoiser's, D's are 0."""
    (res, ch), m, t = model_shape(cfg), cfg.model, cfg.train
    cost = dit_cost(ch, res, m.patch_size, m.width, m.depth)
    per_iter = dit_iteration_macs(cost, grad_checkpoint=t.grad_checkpoint)
    steps = t.steps or max(1, int(t.flops_budget // (per_iter * t.batch_size)))
    return TrialCost(params_g=dit_parameter_count(ch, m.patch_size, m.width, m.depth, num_classes), params_d=0,
                     gflops_g=cost.total / 1e9, gflops_d=0.0, macs_per_sample_iter=per_iter, steps=steps,
                     batch_size=t.batch_size)


def family_trial_cost(cfg: TrialConfig, num_classes: int) -> TrialCost:
    """`trial_cost` or `dit_trial_cost`, by `model.family` (what a planner of mixed studies should call)."""
    return dit_trial_cost(cfg, num_classes) if cfg.model.family == "dit" else trial_cost(cfg, num_classes)

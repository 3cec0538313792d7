"""Analytic peak accelerator memory of one training trial: weights, gradients, AdamW state, EMA, activations.

What the trainers hold (`gat_core.gan_trainer.GANTrainer`, `gat_core.diffusion_trainer.DiffusionTrainer`), all in bytes:

- weights: every trainable parameter in fp32 (bf16 autocast keeps fp32 master weights), the EMA copy of G (of the
  denoiser for DiT) in fp32, and the frozen VFM teacher in fp32.
- gradients: fp32, one per trainable parameter.  Both networks' gradients are alive at once: `optimise` sets a
  network's gradients to None only right before its own next backward, so D's are still there in the G step.
- optimiser: AdamW's two moments (exp_avg, exp_avg_sq) in fp32 per trainable parameter (its step counters, one
  scalar per tensor, are left out).
- activations: what autograd saves for backward in the larger of the iteration's two steps, at the per-worker
  batch.  A pass of a network with T tokens, width w and depth L saves b T w (L F + O) bytes plus K bytes per block
  parameter (the LayerScale/RMSNorm-folded weights each pass builds, and autocast's bf16 weight casts).  With
  gradient checkpointing a block keeps only its input (R bytes per token and channel) and one block at a time is
  recomputed during the backward (b T w F + K x one block's parameters, at most once).
  The GAN's D step holds D's passes on the real and fake stacks plus one per approximated R1/R2 penalty; its G
  step holds G's pass and D's pass on the fake stack (D frozen: input gradients only; the real pass is no-grad).

F, O, R and K were measured (`ACTIVATION_FACTORS`) with `torch.autograd.graph.saved_tensors_hooks`, counting the
distinct storages autograd saves that are not parameters, on CPU with torch 2.14.1, width 80, depth 4 and 8, 64
tokens (+1 cls token in D), batch 6; the two depths separate F from O.  CUDA's fused attention saves what the CPU
flash kernel saves (output and log-sum-exp).  Exact penalties (`train.penalty: exact`) run the D step on the math
attention backend and keep a double-backward graph: their estimate adds the attention probabilities but is a
lower bound.  Not counted: the CUDA context and allocator slack (about 0.5-1 GB per process), data batches, the
evaluation (no-grad, EMA generator) and the feature extractor.  tests/test_plan.py measures the same quantity on
other sizes and checks the estimate against it (within 10 %).  Measured accuracy, widths 32-96, 16-256 tokens:
within 7 % without checkpointing; with checkpointing within 6 % at 256 tokens but up to 37 % low at 16 tokens,
where the parts outside the blocks (patch embedding of the K-level stack, output heads), which O does not scale
with the patch size, dominate: small models, where memory is no question.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gat_core.config import TrialConfig
from gat_core.flops import DINOV2_ARCH, dit_parameter_count, ffn_hidden, parameter_counts

FP32 = 4  # bytes of an fp32 value

# (dtype, pass role) -> (F, O, R, K): bytes per token-channel-block, per token-channel, per token-channel-block when
# checkpointed, per block parameter (weight copies).  Roles: "g" G with grad, "d_train" D with weight gradients
# (D step), "d_frozen" D passing input gradients only (G step), "dit" the DiT denoiser.  D's tokens include the cls.
ACTIVATION_FACTORS: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("fp32", "g"): (107.8, 32.7, 4.0, 0.0),
    ("fp32", "d_train"): (91.5, 7.7, 4.0, 3.94),
    ("fp32", "d_frozen"): (64.8, 5.2, 4.0, 3.94),
    ("fp32", "dit"): (81.4, 14.4, 4.0, 0.0),
    ("bf16", "g"): (62.4, 24.5, 4.0, 2.1),
    ("bf16", "d_train"): (50.2, 5.9, 4.0, 2.2),
    ("bf16", "d_frozen"): (36.8, 5.1, 4.0, 2.1),
    ("bf16", "dit"): (40.8, 7.8, 2.0, 1.7),
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one training worker (one GPU), by part; `peak(checkpointed)` is what must fit."""

    parameters: int           # trainable parameters (G + D (+ REPA head), or the denoiser)
    weights: int              # trainable parameters in fp32
    ema: int                  # the EMA copy, fp32
    teacher: int              # frozen VFM teacher, fp32 (0 without VFM)
    gradients: int            # fp32
    optimizer: int            # AdamW: 2 moments, fp32
    activations: int          # saved for backward at the per-worker batch, no checkpointing
    activations_checkpointed: int
    batch_per_worker: int
    dtype: str                # the activations' precision (bf16 autocast or fp32)
    grad_checkpoint: bool     # what the trial itself runs with

    @property
    def states(self) -> int:
        """Everything but activations (independent of batch and checkpointing)."""
        return self.weights + self.ema + self.teacher + self.gradients + self.optimizer

    def peak(self, checkpointed: bool) -> int:
        return self.states + (self.activations_checkpointed if checkpointed else self.activations)

    @property
    def trial_peak(self) -> int:
        """The peak with the trial's own `train.grad_checkpoint` setting."""
        return self.peak(self.grad_checkpoint)

    def as_dict(self) -> dict[str, float]:
        """The fields and totals, byte counts named `*_bytes`."""
        counts = {"parameters": self.parameters, "batch_per_worker": self.batch_per_worker, "dtype": self.dtype,
                  "grad_checkpoint": self.grad_checkpoint}
        sizes = {k: v for k, v in asdict(self).items() if k not in counts}
        sizes |= {"states": self.states, "peak": self.peak(False), "peak_checkpointed": self.peak(True),
                  "trial_peak": self.trial_peak}
        return {**counts, **{f"{k}_bytes": v for k, v in sizes.items()}}


def repa_head_parameters(disc_width: int, hidden: int, teacher_dim: int) -> int:
    """`gat_core.vfm.REPAHead`: three biased linears d_width -> hidden -> hidden -> teacher_dim."""
    return disc_width * hidden + hidden + hidden * hidden + hidden + hidden * teacher_dim + teacher_dim


def teacher_parameters(model_name: str, image_size: int) -> int:
    """timm DINOv2 `forward_features` network at `image_size` (position embedding resized to its patch grid)."""
    width, depth, fc1, fc2, registers = DINOV2_ARCH[model_name]
    grid = image_size // 14
    block = (2 * width + 3 * width * width + 3 * width + width * width + width + width   # norm1, qkv, proj, ls1
             + 2 * width + width * fc1 + fc1 + fc2 * width + width + width)             # norm2, mlp, ls2
    positions = grid * grid + (0 if registers else 1)  # with registers timm embeds no position for the cls token
    embed = 3 * 14 * 14 * width + width + width + registers * width + positions * width
    return embed + depth * block + 2 * width


def _pass(role: str, dtype: str, batch: int, tokens: int, width: int, depth: int, block_params: int,
          checkpointed: bool) -> tuple[float, float]:
    """(saved bytes of one pass, bytes of the one block recomputed at a time when checkpointed)."""
    f, o, r, k = ACTIVATION_FACTORS[(dtype, role)]
    per_tc = batch * tokens * width
    if not checkpointed:
        return per_tc * (depth * f + o) + k * block_params, 0.0
    return per_tc * (depth * r + o), per_tc * f + k * block_params / depth


def _block_params(width: int) -> int:
    """Parameters of one GAT block's weights (qkv, proj, SwiGLU in and out)."""
    return 4 * width * width + 3 * ffn_hidden(width) * width


def step_activations(cfg: TrialConfig, batch: int, dtype: str, checkpointed: bool, num_classes: int) -> dict[str, float]:
    """Bytes saved for backward by each step of one iteration at `batch` samples ("d_step" and "g_step" for the GAN,
    "step" for DiT) and "recompute": the one checkpointed block rebuilt at a time in a backward (0 without)."""
    m, t, d = cfg.model, cfg.train, cfg.dataset
    tokens = (d.model_resolution // m.patch_size) ** 2
    if m.family == "dit":
        blocks = (dit_parameter_count(d.model_channels, m.patch_size, m.width, m.depth, num_classes)
                  - dit_parameter_count(d.model_channels, m.patch_size, m.width, 0, num_classes))
        saved, block = _pass("dit", dtype, batch, tokens, m.width, m.depth, blocks, checkpointed)
        return {"step": saved, "recompute": block}
    gw, dw = m.width, m.disc_width
    g_blocks, d_blocks = m.depth * (_block_params(gw) + 4 * gw * gw), m.disc_depth * _block_params(dw)
    d_train, d_block = _pass("d_train", dtype, batch, tokens + 1, dw, m.disc_depth, d_blocks, checkpointed)
    d_frozen, _ = _pass("d_frozen", dtype, batch, tokens + 1, dw, m.disc_depth, d_blocks, checkpointed)
    g_pass, g_block = _pass("g", dtype, batch, tokens, gw, m.depth, g_blocks, checkpointed)
    d_passes = 2 + (t.r1_gamma > 0) + (t.r2_gamma > 0) if t.penalty != "exact" else 2
    d_step = d_passes * d_train
    bytes_el = 2 if dtype == "bf16" else FP32
    if t.penalty == "exact":  # math attention keeps the probabilities of every head (a lower bound, see above)
        d_step += 2 * batch * m.disc_heads * (tokens + 1) ** 2 * bytes_el * m.disc_depth
    if t.vfm is not None:  # REPA head on the real pass's tokens: its linears' and SiLUs' inputs, the teacher output
        teacher_dim = DINOV2_ARCH[t.vfm.model][0]
        d_step += batch * (tokens + 1) * (dw + 4 * t.vfm.hidden_dim + teacher_dim) * bytes_el
    return {"d_step": d_step, "g_step": g_pass + d_frozen, "recompute": max(g_block, d_block)}


def activation_bytes(cfg: TrialConfig, batch: int, dtype: str, checkpointed: bool, num_classes: int) -> int:
    """Peak bytes autograd holds in one training iteration of `cfg` at `batch` samples (one worker): the larger
    step's saved tensors plus, when checkpointed, the block being recomputed."""
    steps = step_activations(cfg, batch, dtype, checkpointed, num_classes)
    recompute = steps.pop("recompute")
    return round(max(steps.values()) + recompute)


def memory_estimate(cfg: TrialConfig, num_classes: int, dtype: str, workers: int = 1) -> MemoryEstimate:
    """Peak memory of one worker of a trial whose activations are in `dtype` ("bf16" autocast or "fp32")."""
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"activation dtype {dtype!r}: expected bf16 or fp32")
    m, t, d = cfg.model, cfg.train, cfg.dataset
    batch = max(1, t.batch_size // workers)
    teacher = 0
    if m.family == "dit":
        trainable = dit_parameter_count(d.model_channels, m.patch_size, m.width, m.depth, num_classes)
        ema = trainable
    else:
        params_g, params_d = parameter_counts(m, d.model_channels, t.levels, num_classes)
        trainable, ema = params_g + params_d, params_g
        if t.vfm is not None:
            trainable += repa_head_parameters(m.disc_width, t.vfm.hidden_dim, DINOV2_ARCH[t.vfm.model][0])
            teacher = teacher_parameters(t.vfm.model, t.vfm.image_size)
    return MemoryEstimate(
        parameters=trainable, weights=FP32 * trainable, ema=FP32 * ema, teacher=FP32 * teacher,
        gradients=FP32 * trainable, optimizer=2 * FP32 * trainable,
        activations=activation_bytes(cfg, batch, dtype, False, num_classes),
        activations_checkpointed=activation_bytes(cfg, batch, dtype, True, num_classes),
        batch_per_worker=batch, dtype=dtype, grad_checkpoint=t.grad_checkpoint)

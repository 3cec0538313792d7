"""The diffusion-transformer baseline: diffusers' `DiTTransformer2DModel` at a GAT's sizes.

`build_dit(...)` makes the diffusers model with the same width, depth, heads and patch
size as the GAT it is compared with (width = heads x attention_head_dim), class-conditional
(adaLN-Zero), in pixel or latent space.  `DiTDenoiser` wraps it as `forward(x, t, labels)`.

Choices and facts of the installed diffusers (0.42):
- No learned sigma: `out_channels = in_channels`, the network predicts epsilon (DDPM) or the
  velocity (flow matching) only; DiT's learned variance (out_channels = 2C, the VLB loss) is
  left out to keep the objectives plain MSE.
- Conditioning: every `BasicTransformerBlock` has its own `AdaLayerNormZero` with its own
  `CombinedTimestepLabelEmbeddings` (sinusoid(256) -> Linear -> SiLU -> Linear, plus a label
  table), and the final layer recomputes block 0's embedding.  Original DiT shares one t/y
  embedding; diffusers' layout costs `depth + 1` timestep MLPs per forward (counted exactly in
  `gat_core.flops.dit_forward_macs`) and `depth` label tables of parameters.
- Null label: `CombinedTimestepLabelEmbeddings` builds its `LabelEmbedding` with a hard-coded
  dropout probability 0.1, so every label table has `num_classes + 1` rows and row
  `num_classes` is the "no class" embedding used by classifier-free guidance.  In training
  mode each `LabelEmbedding` would drop labels on its own, independently per block (and again
  in the final layer).  That is switched off here (`dropout_prob = 0`): label dropout is done
  once per sample by the caller (`drop_labels`), with the rate from the config, so every block
  sees the same (possibly null) label.
- Timesteps are floats in the scheduler's scale (0..num_train_timesteps), for DDPM the integer
  step, for flow matching sigma x num_train_timesteps.
"""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel
from torch import nn

TIME_PROJ_DIM = 256  # diffusers' sinusoidal timestep features (Timesteps(num_channels=256))


def build_dit(channels: int, resolution: int, patch_size: int, width: int, depth: int, heads: int,
              num_classes: int) -> DiTTransformer2DModel:
    """diffusers' DiT, class-conditional, epsilon/velocity output only (out_channels = channels)."""
    if width % heads:
        raise ValueError(f"model.heads: width {width} is not divisible by heads {heads}")
    if resolution % patch_size:
        raise ValueError(f"model.patch_size: {patch_size} does not divide the resolution {resolution}")
    net = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=width // heads, in_channels=channels, out_channels=channels,
        num_layers=depth, sample_size=resolution, patch_size=patch_size, num_embeds_ada_norm=num_classes,
        activation_fn="gelu-approximate", norm_type="ada_norm_zero", attention_bias=True,
    )
    for module in net.modules():
        if hasattr(module, "embedding_table") and hasattr(module, "token_drop"):  # diffusers LabelEmbedding
            if module.embedding_table.num_embeddings != num_classes + 1:
                raise RuntimeError("diffusers DiT: expected a null-label row in every label table; "
                                   "the installed diffusers builds them differently")
            module.dropout_prob = 0.0  # label dropout happens once, in DiTDenoiser's caller
    return net


def drop_labels(labels: torch.Tensor, prob: float, null_label: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by `null_label` with probability `prob` (classifier-free-guidance training)."""
    if prob <= 0:
        return labels
    u = torch.rand(labels.shape[0], generator=generator).to(labels.device)
    return torch.where(u < prob, torch.full_like(labels, null_label), labels)


class DiTDenoiser(nn.Module):
    """`forward(x, t, labels) -> prediction` around diffusers' DiT (epsilon or velocity, shaped like x)."""

    def __init__(self, channels: int, resolution: int, patch_size: int, width: int, depth: int, heads: int,
                 num_classes: int) -> None:
        super().__init__()
        self.channels, self.resolution, self.patch_size = channels, resolution, patch_size
        self.width, self.depth, self.heads, self.num_classes = width, depth, heads, num_classes
        self.net = build_dit(channels, resolution, patch_size, width, depth, heads, num_classes)

    @property
    def null_label(self) -> int:
        """The label id of the unconditional ("no class") embedding."""
        return self.num_classes

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.channels, self.resolution, self.resolution

    def enable_grad_checkpoint(self) -> None:
        self.net.enable_gradient_checkpointing()

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, labels: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W); t: float timesteps (N,) or a scalar, scheduler scale; labels: (N,) ids, `null_label` = none."""
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.net(x, timestep=t, class_labels=labels, return_dict=False)[0]

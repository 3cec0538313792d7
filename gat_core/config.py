"""Configuration of one training trial: data, model, optimisation, evaluation.

These pydantic models are the vocabulary shared by `gat_core`, the orchestrator
and the analysis.  They import neither torch nor anything heavy, so the analysis
and the CLI can validate a study without loading the training stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from gat_core.models.registry import PRESETS, parse_preset, preset_family

DATASET_CHANNELS = {"digits": 1, "shapes": 3, "photos": 3, "folder": 3}
DATASET_CLASSES = {"digits": 10, "photos": 3}
DEFAULT_SHAPE_CLASSES = 10  # classes of `shapes` when dataset.num_classes is not set
DATASET_NAMES = tuple(DATASET_CHANNELS)
AugmentOp = Literal["color", "translation", "cutout", "flip"]
OFFICIAL_AUGMENT: tuple[AugmentOp, ...] = ("color", "translation", "cutout", "flip")


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, assignment re-validates."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(StrictModel):
    """Which images a trial trains on, at which resolution (pixel space, [-1, 1])."""

    name: Literal["digits", "shapes", "photos", "folder"] = Field(
        "shapes", description="digits: scikit-learn 8x8 digits; shapes: procedural coloured shapes; photos: crops of "
        "the sample photographs scikit-learn and matplotlib ship (one class per photo); folder: one subfolder per class")
    resolution: int = Field(16, ge=4, le=1024, description="Side length in pixels the images are resized to.")
    path: Path | None = Field(None, description="Root folder of a `folder` dataset (one subfolder per class).")
    num_classes: int | None = Field(None, ge=1, description=f"Number of classes of `shapes` (default {DEFAULT_SHAPE_CLASSES}); fixed by the data otherwise.")
    size: int = Field(8000, ge=16, description="Number of images generated for `shapes` or cropped for `photos`.")
    seed: int = Field(0, description="Seed of procedural data (shapes, photo crops).")
    latents: Path | None = Field(
        None, description="Folder written by `gat-study encode`: train in that VAE latent space instead of pixels.")
    _meta: tuple[str, dict] | None = PrivateAttr(None)  # (meta.json path, its content): read once, not per access

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.name == "folder" and self.path is None:
            raise ValueError("dataset.path: required when dataset.name is 'folder'")
        if self.name != "folder" and self.path is not None:
            raise ValueError(f"dataset.path: only used by the 'folder' dataset, not '{self.name}'")
        if self.name != "shapes" and self.num_classes is not None:
            raise ValueError(f"dataset.num_classes: only settable for 'shapes'; '{self.name}' takes it from the data")
        return self

    @property
    def channels(self) -> int:
        """Channels of the source images."""
        return DATASET_CHANNELS[self.name]

    def __eq__(self, other: object) -> bool:  # the fields only: the meta.json read cache is no part of the config
        return isinstance(other, DataConfig) and self.model_dump() == other.model_dump()

    def latent_meta(self) -> dict | None:
        """meta.json of the encoded latents (None in pixel space), read once per `latents` path."""
        if self.latents is None:
            return None
        path = Path(self.latents) / "meta.json"
        if self._meta is not None and self._meta[0] == str(path):
            return self._meta[1]
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise ValueError(f"dataset.latents: {path} not found or unreadable; create it with `gat-study encode`") from None
        self._meta = (str(path), meta)
        return meta

    @property
    def model_channels(self) -> int:
        """Channels of what G produces and D sees (latent channels in latent space)."""
        meta = self.latent_meta()
        return int(meta["latent_channels"]) if meta else self.channels

    @property
    def model_resolution(self) -> int:
        """Spatial size of what G produces and D sees."""
        meta = self.latent_meta()
        return int(meta["latent_resolution"]) if meta else self.resolution


class ModelConfig(StrictModel):
    """Sizes of the generator and the discriminator.

    Either a registry preset (`GAT-S/2` ... `GAT-XL/8`, DiT's depths/widths/heads)
    or free sizes for micro-scale studies.  The discriminator defaults to the
    generator's size; `d_width`/`d_depth`/`d_heads` decouple them.
    """

    family: Literal["gat", "dit"] = Field(
        "gat", description="gat: the GAN (G and D); dit: the diffusion-transformer baseline at the same sizes.")
    preset: str | None = Field(None, description=f"Registry size, one of {sorted(PRESETS)} x /2,/4,/8; overrides width/depth/heads/patch_size.")
    width: int = Field(64, ge=8, description="Generator width (model dimension).")
    depth: int = Field(4, ge=1, description="Generator depth (number of blocks).")
    heads: int = Field(4, ge=1, description="Generator attention heads.")
    patch_size: int = Field(2, ge=1, description="Patch size (pixels or latent cells per token side).")
    d_width: int | None = Field(None, ge=8, description="Discriminator width (default: width).")
    d_depth: int | None = Field(None, ge=1, description="Discriminator depth (default: depth).")
    d_heads: int | None = Field(None, ge=1, description="Discriminator heads (default: heads).")
    z_dim: int = Field(64, ge=1, description="Latent noise dimension.")
    class_dim: int = Field(64, ge=1, description="Generator class-embedding dimension.")
    d_cond_dim: int | None = Field(
        None, ge=1, description="Discriminator class-projection dimension (paper: 2048). Default: 2048 for width >= 256, else 4 x d_width.")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("preset") is not None:
            preset = parse_preset(str(data["preset"]))  # raises ValueError naming the choices
            family = data.get("family") or preset_family(str(data["preset"]))
            data = {**data, **preset, "family": family}
        return data

    @model_validator(mode="after")
    def _check_heads(self) -> "ModelConfig":
        if self.width % self.heads:
            raise ValueError(f"model.heads: width {self.width} is not divisible by heads {self.heads}")
        if (self.width // self.heads) % 4:
            raise ValueError(f"model.heads: head dimension {self.width // self.heads} must be a multiple of 4 (2-D RoPE)")
        if self.disc_width % self.disc_heads:
            raise ValueError(f"model.d_heads: d_width {self.disc_width} is not divisible by d_heads {self.disc_heads}")
        if (self.disc_width // self.disc_heads) % 4:
            raise ValueError(f"model.d_heads: head dimension {self.disc_width // self.disc_heads} must be a multiple of 4 (2-D RoPE)")
        return self

    @property
    def disc_width(self) -> int:
        return self.d_width or self.width

    @property
    def disc_depth(self) -> int:
        return self.d_depth or self.depth

    @property
    def disc_heads(self) -> int:
        return self.d_heads or self.heads

    @property
    def disc_cond_dim(self) -> int:
        if self.d_cond_dim is not None:
            return self.d_cond_dim
        return 2048 if self.disc_width >= 256 else 4 * self.disc_width


class VFMConfig(StrictModel):
    """REPA-style alignment of D's tokens to a frozen DINOv2 (weights from a local file)."""

    weights: Path | None = Field(None, description="Local DINOv2 weights file (default: $GAT_STUDY_DINOV2_WEIGHTS).")
    model: str = Field("vit_base_patch14_dinov2", pattern=r"^vit_(small|base|large|giant)_patch14(_reg4)?_dinov2$",
                       description="timm model name of the DINOv2 teacher (vit_{small,base,large,giant}_patch14[_reg4]_dinov2).")
    weight: float = Field(1.0, ge=0, description="Loss weight of the alignment term.")
    image_size: int = Field(224, ge=14, description="Teacher input size (224 = 16x16 patches at /14).")
    hidden_dim: int = Field(2048, ge=8, description="Hidden width of the projection MLP on D's tokens.")


class DiffusionConfig(StrictModel):
    """Objective and sampler of `model.family: dit` trials (diffusers schedulers)."""

    objective: Literal["ddpm", "flow"] = Field(
        "ddpm", description="ddpm: epsilon prediction with the linear-beta schedule (DiT); flow: flow matching (SiT).")
    num_train_timesteps: int = Field(1000, ge=2)
    sampler: Literal["ddim", "ddpm", "euler"] = Field(
        "ddim", description="Sampler for ddpm-trained models (ddim or ddpm); flow models always use the Euler ODE sampler.")
    sample_steps: int = Field(32, ge=1, description="NFE of the in-training evaluations.")
    eval_nfe: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32],
                                description="NFE values of the final evaluation (quality vs sampling compute).")
    guidance: float = Field(1.0, ge=1.0, description="Classifier-free guidance scale (1 = off; > 1 doubles sampling cost).")
    class_dropout: float = Field(0.1, ge=0, lt=1, description="Label dropout in training (needed for guidance).")


class TrainConfig(StrictModel):
    """Optimisation and the GAT method switches (MNG, learning-rate rule, penalties)."""

    steps: int | None = Field(None, ge=1, description="Training iterations (one D step + one G step each).")
    flops_budget: float | None = Field(
        None, gt=0, description="Training budget in MACs (DiT convention, 1 multiply-accumulate = 1 FLOP); converted to steps.")
    batch_size: int = Field(32, ge=2)
    lr: float = Field(2e-4, gt=0, lt=1, description="Base learning rate (at lr_base_width when lr_rule is 'width').")
    lr_rule: Literal["width", "constant"] = Field("width", description="width: lr = lr * lr_base_width / width, per network.")
    lr_base_width: int = Field(768, ge=1)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0, description="Gradient-norm clip for G and D (null: off).")
    ema: float = Field(0.999, ge=0, lt=1, description="EMA decay of the generator per iteration.")
    ema_warmup: bool = Field(
        False, description="Decay min(ema, (1+step)/(10+step)): a usable EMA within a few hundred steps (micro studies).")
    w_avg_beta: float = Field(0.995, ge=0, lt=1, description="EMA decay of the per-class mean style (truncation).")
    mng: Literal["exp", "linear", "off"] = Field("exp", description="Multi-level noise-perturbed guidance schedule.")
    mng_levels: int = Field(4, ge=2, le=8, description="K output heads / noise levels when MNG is on.")
    mng_min_info: float = Field(0.125, gt=0, lt=1, description="Signal fraction of the noisiest level (exp schedule).")
    r1_gamma: float = Field(0.1, ge=0, description="R1 weight (applied as gamma/2).")
    r2_gamma: float = Field(0.1, ge=0, description="R2 weight (applied as gamma/2).")
    penalty: Literal["approx", "exact"] = Field("approx", description="Finite-difference or exact gradient penalties.")
    penalty_sigma: float = Field(0.01, gt=0, description="Perturbation std of the approximated penalties.")
    augment: list[AugmentOp] = Field(
        default_factory=lambda: list(OFFICIAL_AUGMENT),
        description="DiffAugment policy applied to real and fake in GAN trials; default: the official GAT recipe, all "
        "four ops at probability 1; [] switches augmentation off.")
    vfm: VFMConfig | None = Field(None, description="VFM alignment of D (off when not configured).")
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig, description="Used by model.family: dit.")
    seed: int = Field(0, description="Seed of initialisation, noise and batch order.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    grad_checkpoint: bool = Field(False, description="Recompute block activations in backward (saves memory, costs compute).")
    compile: bool = Field(False, description="torch.compile every transformer block (pays off on GPU, rarely on CPU).")
    collapse_loss_d: float | None = Field(
        None, gt=0, description="Divergence detector: stop as diverged when loss_d stays below this (D wins outright).")
    collapse_diversity: float | None = Field(
        None, gt=0, description="Divergence detector: stop as diverged when the diversity metric (eval.diversity_metric) "
        "stays below this for collapse_patience consecutive evaluations after step 0 (mode collapse).")
    collapse_patience: int = Field(
        5, ge=1, description="Consecutive reports below collapse_loss_d (or evaluations below collapse_diversity) "
        "that count as collapse.")
    log_every: int = Field(10, ge=1, description="Steps between metric reports.")
    checkpoint_every: int = Field(100, ge=1, description="Steps between checkpoints.")

    @model_validator(mode="after")
    def _budget(self) -> "TrainConfig":
        if (self.steps is None) == (self.flops_budget is None):
            raise ValueError("train.steps: give exactly one of train.steps and train.flops_budget")
        return self

    @property
    def levels(self) -> int:
        """Number of generator outputs the discriminator judges."""
        return 1 if self.mng == "off" else self.mng_levels


class EvalConfig(StrictModel):
    """When and how samples are scored during training, and with which metrics.

    Metric names say their feature extractor (`gat_core.metrics.names`): `fid` is the Inception
    Fréchet distance only; `fd_dinov2`, `fd_classifier`, `kid_<x>`, `precision_<x>`, `recall_<x>`,
    `fid_inf`/`fd_inf_<x>` name theirs.  Values from different extractors are never comparable.
    """

    metric: str = Field(
        "fd_classifier", description="Primary quality metric (every evaluation), named by its feature extractor: "
        "fd_classifier (a classifier trained on the study data: no download), fid (Inception; needs "
        "eval.inception_weights), fd_dinov2 (needs eval.dinov2_weights), or kid_/precision_/recall_<extractor>.")
    diversity: bool = Field(
        True, description="Log diversity_pixels (within-class pixel spread of the samples over the data's; 1 = as "
        "varied as the data, near 0 = mode collapse) beside the metric at every evaluation.")
    health_min_diversity: float | None = Field(
        0.2, ge=0, description="A finished trial whose final diversity is below this is tagged health=collapsed and "
        "left out of fits by default (null: never).")
    health_max_diversity: float | None = Field(
        1.2, gt=0, description="A finished trial whose final diversity is above this (samples spread more within a "
        "class than the data: noise, not images; seen when D won outright early) is tagged health=diverged and left "
        "out of fits by default (null: never).")
    health_min_loss_d: float | None = Field(
        0.01, ge=0, description="A finished GAN trial whose loss_d, averaged over the last 10 % of training, is below "
        "this (D wins outright) is tagged health=collapsed (null: never).")
    extra_metrics: list[str] = Field(
        default_factory=list, description="Metrics computed at the final evaluation only, on the same samples, e.g. "
        "kid_classifier, precision_classifier, recall_classifier, fid, fid_inf.")
    interval: int = Field(100, ge=1, description="Steps between evaluations with the EMA generator.")
    num_samples: int = Field(1000, ge=2, description="Generated samples per in-training evaluation.")
    final_samples: int = Field(2000, ge=2, description="Generated samples of the final evaluation.")
    batch_size: int = Field(250, ge=1)
    grid_size: int = Field(8, ge=1, le=32, description="Sample grid is grid_size x grid_size images.")
    classifier_epochs: int = Field(8, ge=1, description="Epochs of the feature classifier trained on the dataset.")
    vae: Path | None = Field(None, description="VAE folder that decodes latent samples (default: the encoder's VAE).")
    truncation: float = Field(
        0.0, ge=0, le=1, description="Truncation psi of GAN samples in evaluations (0 = off; w moves this fraction toward "
        "the class mean); logged as eval_truncation.")
    inception_weights: Path | None = Field(
        None, description="Local weights-inception-2015-12-05-6726825d.pth of torch-fidelity (default: "
        "$GAT_STUDY_INCEPTION_WEIGHTS); needed by fid, kid_inception, ...")
    dinov2_weights: Path | None = Field(
        None, description="Local official DINOv2 ViT-*/14 checkpoint (default: $GAT_STUDY_DINOV2_WEIGHTS); needed by "
        "fd_dinov2, ...")
    reference_stats: Path | None = Field(
        None, description="An .npz with `mu` and `sigma` (e.g. an ADM reference batch) used as the primary metric's "
        "reference instead of statistics computed from the dataset; its reference images (`arr_0`), if any, serve "
        "the per-sample metrics of the same extractor.")

    @field_validator("metric")
    @classmethod
    def _check_metric(cls, value: str) -> str:
        from gat_core.metrics.names import parse_metric  # torch-free

        return parse_metric(value).name

    @field_validator("extra_metrics")
    @classmethod
    def _check_extra(cls, value: list[str]) -> list[str]:
        from gat_core.metrics.names import parse_metric

        names = [parse_metric(v).name for v in value]
        return list(dict.fromkeys(names))

    @property
    def diversity_metric(self) -> str | None:
        """`diversity_pixels` (None when eval.diversity is off): see `gat_core.metrics.names`."""
        return "diversity_pixels" if self.diversity else None

    @property
    def interval_metrics(self) -> list[str]:
        """What every in-training evaluation scores: the primary metric and the diversity metric."""
        return list(dict.fromkeys([self.metric, *([self.diversity_metric] if self.diversity else [])]))

    @property
    def final_metrics(self) -> list[str]:
        """The interval metrics, then the extra ones (the final evaluation's list)."""
        return list(dict.fromkeys([*self.interval_metrics, *self.extra_metrics]))


class TrialConfig(StrictModel):
    """Everything one trial needs; what `gat_core.train` consumes."""

    dataset: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=1000))
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _consistency(self) -> "TrialConfig":
        res, p = self.dataset.model_resolution, self.model.patch_size
        where = "the latent resolution" if self.dataset.latents else "dataset.resolution"
        if res % p:
            raise ValueError(f"model.patch_size: {p} does not divide {where} {res}")
        if self.model.family == "gat" and self.train.mng != "off" and self.model.depth < self.train.mng_levels:
            raise ValueError(
                f"model.depth: {self.model.depth} blocks cannot carry train.mng_levels={self.train.mng_levels} output heads")
        return self

"""VFM alignment (REPA) of the discriminator to a frozen DINOv2 teacher, and the DINOv2 loader it shares
with the `fd_dinov2` extractor.

The teacher is a timm DINOv2 ViT loaded from a local weights file (no download),
its position embedding resampled to the teacher's input size by timm's own
checkpoint filter.  D's last-block tokens of the real stack go through a small
MLP and are pulled toward the teacher's cls and patch features by cosine
similarity; the teacher's patch grid is resized to D's token grid.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gat_core.flops import DINOV2_ARCH
from gat_core.models.layers import init_xavier
from gat_core.weights import dinov2_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError("not a state dict")
    return state


def dinov2_model_name(state: dict[str, torch.Tensor]) -> str:
    """timm name of the DINOv2 architecture a checkpoint holds (width from cls_token, registers or not)."""
    cls = state.get("cls_token")
    if cls is None:
        raise ValueError("no cls_token: not a DINOv2 ViT checkpoint")
    width, registers = int(cls.shape[-1]), "register_tokens" in state or "reg_token" in state
    names = [name for name, arch in DINOV2_ARCH.items() if arch[0] == width and (arch[4] > 0) == registers]
    if not names:
        raise ValueError(f"unknown DINOv2 width {width}")
    return names[0]


def load_dinov2(path: Path, key: str, model_name: str | None = None, image_size: int = 224) -> nn.Module:
    """A frozen timm DINOv2 ViT from a local official checkpoint (read with weights_only), its position
    embedding resampled to `image_size` by timm's checkpoint filter; the architecture is the file's when
    `model_name` is None.  A ValueError naming `key` and the file if the file is not such a checkpoint."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        state = _state_dict(path)
        net = timm.create_model(model_name or dinov2_model_name(state), pretrained=False, num_classes=0,
                                img_size=image_size)
        net.load_state_dict(checkpoint_filter_fn(state, net))
    except Exception as exc:  # unpickling, key or shape mismatches
        what = f"a {model_name}" if model_name else "an official DINOv2 ViT-*/14"
        raise ValueError(f"{key}: {path} is not {what} checkpoint ({type(exc).__name__}: {str(exc)[:300]})") from None
    return net.eval().requires_grad_(False)


class VFMTeacher(nn.Module):
    """Frozen DINOv2 ViT from timm: images in [-1, 1] -> (cls [B, C], patches [B, grid*grid, C])."""

    def __init__(self, model_name: str, weights: Path, image_size: int = 224) -> None:
        super().__init__()
        self.net = load_dinov2(dinov2_weights(weights), "train.vfm.weights", model_name, image_size)
        self.image_size = image_size
        self.dim = self.net.num_features
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VFMTeacher":
        return super().train(False)  # always frozen

    @torch.no_grad()
    def forward(self, images: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images.float().clamp(-1, 1) + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        feats = self.net.forward_features((x - self.mean) / self.std)
        cls, patches = feats[:, 0], feats[:, self.net.num_prefix_tokens:]
        side = int(patches.shape[1] ** 0.5)
        if side != grid:
            maps = patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)
            maps = F.interpolate(maps, size=(grid, grid), mode="bicubic", align_corners=False)
            patches = maps.flatten(2).transpose(1, 2)
        return cls, patches


class REPAHead(nn.Module):
    """MLP from D's token width to the teacher's feature width (training only).

    It belongs to D: optimised, and gradient-clipped, together with D's parameters."""

    def __init__(self, width: int, teacher_dim: int, hidden: int = 2048) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, teacher_dim))
        init_xavier(self)  # part of D in the official code, initialised as D is

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(tokens)


def alignment_loss(student: torch.Tensor, teacher_cls: torch.Tensor, teacher_patches: torch.Tensor) -> torch.Tensor:
    """(1 - cos) on the cls token plus the mean (1 - cos) over patches; student is [B, 1 + T, C]."""
    cls_term = 1 - F.cosine_similarity(student[:, 0].float(), teacher_cls.float(), dim=-1)
    patch_term = 1 - F.cosine_similarity(student[:, 1:].float(), teacher_patches.float(), dim=-1).mean(dim=1)
    return (cls_term + patch_term).mean()

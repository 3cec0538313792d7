"""Shared fixtures: tiny studies that train in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="module")
def ray_session():
    """One embedded local Ray for a test module, shut down at its end."""
    import ray

    from orchestrator.cluster import init_ray

    init_ray(None, dashboard=False, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory) -> Path:
    """A randomly initialised DINOv2 ViT-S/14 state dict at the official 518 px grid (timm resamples it)."""
    import timm
    import torch

    net = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("dino") / "dinov2_vits14.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory) -> Path:
    """A randomly initialised AutoencoderKL (downsampling x2) saved with save_pretrained."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16))
    folder = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(folder)
    return folder

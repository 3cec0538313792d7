"""Latent space: encode a dataset with a diffusers AutoencoderKL, train on its moments, decode samples.

`encode_dataset` writes shards of [mean, std] moments (the posterior of each
image), labels and, optionally, the uint8 source images (for pixel metrics and
the VFM teacher).  Training re-samples z = (mean + std * eps) * scaling_factor
every step, as the GAT and REPA pipelines do.  Shards are written one at a time
with `meta.json` updated after each, so an interrupted encode says what it wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gat_core.checkpoint import read, save_atomic
from gat_core.data import BatchSampler, ImageDataset
from gat_core.data.dataset import quantize_uint8
from gat_core.data.folder import load_files, scan_folder
from gat_core.weights import resolve_local

META_FILE = "meta.json"
IMAGES_FILE = "images.npy"  # uint8 [N, C, R, R], memory-mapped when loaded
VAE_ENV = "GAT_STUDY_VAE"
VAE_HINT = ("a diffusers AutoencoderKL folder saved with save_pretrained (config.json + weights), e.g. "
            "stabilityai/sd-vae-ft-mse downloaded on a networked machine")


def load_vae(path: Path | str | None, key: str = "vae", device: str | torch.device = "cpu"):
    """A frozen AutoencoderKL from a local `from_pretrained` folder; WeightsNotFound if it is missing."""
    from diffusers import AutoencoderKL

    folder = resolve_local(path, VAE_ENV, key, VAE_HINT, folder=True)
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ValueError(f"{key}: {folder} is not a loadable AutoencoderKL folder ({exc})") from exc
    return vae.to(device).eval().requires_grad_(False)


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    tmp = out / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / META_FILE)


@dataclass(frozen=True)
class EncodeSource:
    """What an encode reads, a chunk at a time, so that memory holds one shard and not the dataset."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    resolution: int
    channels: int
    num_items: int  # images (or files, some of which may turn out unreadable)
    read: Callable[[int, int], tuple[Tensor, Tensor, list[str]]]  # items [start, stop) -> images, labels, skipped


def memory_source(dataset: ImageDataset) -> EncodeSource:
    return EncodeSource(dataset.name, dataset.num_classes, tuple(dataset.class_names), dataset.resolution,
                        dataset.channels, len(dataset),
                        lambda start, stop: (dataset.batch(slice(start, stop)), dataset.labels[start:stop], []))


def folder_source(root: Path, resolution: int) -> EncodeSource:
    """An image folder read file by file: ImageNet-sized folders never have to fit in memory."""
    root = Path(root)
    files, classes = scan_folder(root)
    return EncodeSource(root.name, len(classes), classes, resolution, 3, len(files),
                        lambda start, stop: load_files(files[start:stop], resolution))


def _encode_chunk(vae, images: Tensor, batch_size: int, device: str | torch.device) -> Tensor:
    moments = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size].to(device)
        if batch.shape[1] == 1 and vae.config.in_channels == 3:
            batch = batch.expand(-1, 3, -1, -1)
        dist = vae.encode(batch).latent_dist
        moments.append(torch.cat([dist.mean, dist.std], dim=1).float().cpu())
    return torch.cat(moments)


def _pixel_file(out: Path, meta: dict[str, Any], source: EncodeSource) -> np.memmap:
    """The uint8 source images, one row per encoded image, written in place (room for every item)."""
    path = out / IMAGES_FILE
    shape = (source.num_items, source.channels, source.resolution, source.resolution)
    meta["images_file"] = IMAGES_FILE
    if meta["items_done"]:  # continuing an interrupted encode
        if not path.exists():
            raise ValueError(f"--out: {path} of the interrupted encode is missing; delete {out} and encode again")
        return np.lib.format.open_memmap(path, mode="r+")
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)


def _resumable(out: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The metadata of an earlier encode of the same source with the same VAE into `out`, if any."""
    try:
        old = json.loads((out / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = ("source", "vae", "image_resolution", "shard_size", "keep_images", "num_items")
    if any(old.get(k) != meta[k] for k in same):
        raise ValueError(f"--out: {out} holds an encode of something else ({old.get('source')} with {old.get('vae')}); "
                         "choose another folder or delete it")
    return old


@torch.no_grad()
def encode_dataset(source: ImageDataset | EncodeSource, vae_path: Path, out: Path, *, batch_size: int = 64,
                   shard_size: int = 4096, keep_images: bool = True, config: dict[str, Any] | None = None,
                   device: str | torch.device = "cpu") -> dict[str, Any]:
    """Encode every image to its posterior moments, one shard at a time; returns the metadata written to
    `out/meta.json`.  Run it again after an interruption and it continues after the last complete shard;
    unreadable files are skipped and listed in the metadata (`skipped`)."""
    if isinstance(source, ImageDataset):
        source = memory_source(source)
    vae = load_vae(vae_path, "--vae", device)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "source": config or {"name": source.name}, "vae": str(Path(vae_path).resolve()),
        "scaling_factor": float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215),
        "num_classes": source.num_classes, "class_names": list(source.class_names),
        "image_resolution": source.resolution, "image_channels": source.channels,
        "shard_size": shard_size, "keep_images": keep_images, "num_items": source.num_items,
        "items_done": 0, "num_images": 0, "shards": [], "skipped": [], "complete": False,
    }
    meta = _resumable(out, meta) or meta
    if meta["complete"]:
        return meta
    pixels = _pixel_file(out, meta, source) if keep_images else None
    for start in range(meta["items_done"], source.num_items, shard_size):
        images, labels, skipped = source.read(start, min(start + shard_size, source.num_items))
        meta["skipped"] += skipped
        if len(labels):
            shard = {"moments": _encode_chunk(vae, images, batch_size, device), "labels": labels.clone()}
            if pixels is not None:
                pixels[meta["num_images"]:meta["num_images"] + len(labels)] = quantize_uint8(images).numpy()
                pixels.flush()
            name = f"shard-{len(meta['shards']):05d}.pt"
            save_atomic(shard, out / name)
            meta["shards"].append(name)
            meta["num_images"] += len(labels)
            meta["latent_channels"] = shard["moments"].shape[1] // 2
            meta["latent_resolution"] = shard["moments"].shape[-1]
        meta["items_done"] = min(start + shard_size, source.num_items)
        _write_meta(out, meta)  # after the shard: a crash loses at most the shard being written
    if not meta["num_images"]:
        raise ValueError(f"encode: no readable images among the {source.num_items} of {source.name}")
    meta["complete"] = True
    _write_meta(out, meta)
    return meta


def read_meta(folder: Path) -> dict[str, Any]:
    """meta.json of an encoded dataset; ValueError naming the folder if it is missing or incomplete."""
    path = Path(folder) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"dataset.latents: {path} is not readable ({exc}); create it with `gat-study encode`") from None
    if not meta.get("complete"):
        raise ValueError(f"dataset.latents: {folder} is an incomplete encode ({meta.get('num_images', 0)} images in "
                         f"{len(meta.get('shards', []))} shards); run `gat-study encode` again")
    return meta


@dataclass
class LatentData:
    """An encoded dataset in memory: moments for training, source pixels for metrics and the teacher."""

    moments: ImageDataset        # images = [N, 2C, h, w] (mean, std) so the batch sampler can serve them
    pixels: ImageDataset | None  # the uint8 source images as [-1, 1] floats, if the encode kept them
    scaling_factor: float
    meta: dict[str, Any]


def _checked_shard(path: Path, meta: dict[str, Any]) -> dict[str, Tensor]:
    """A latent shard, checked against meta.json: ValueError naming the file and what is wrong."""
    shard = read(path, what="latent shard")
    if not isinstance(shard, dict) or not isinstance(shard.get("moments"), Tensor) or not isinstance(shard.get("labels"), Tensor):
        raise ValueError(f"dataset.latents: {path} is not a latent shard (expected 'moments' and 'labels' tensors)")
    moments, labels = shard["moments"], shard["labels"]
    c, r = meta.get("latent_channels"), meta.get("latent_resolution")
    if moments.ndim != 4 or tuple(moments.shape[1:]) != (2 * c, r, r):
        raise ValueError(f"dataset.latents: {path} holds moments of shape {tuple(moments.shape)}; meta.json says "
                         f"[N, {2 * c}, {r}, {r}] (mean and std of {c}x{r}x{r} latents)")
    if labels.shape != (moments.shape[0],):
        raise ValueError(f"dataset.latents: {path} has {tuple(labels.shape)} labels for {moments.shape[0]} latents")
    return shard


def _mapped_images(path: Path, meta: dict[str, Any]) -> Tensor:
    """The source images as a uint8 tensor backed by the file: pages are read when a batch needs them."""
    n, ch, res = meta["num_images"], meta["image_channels"], meta["image_resolution"]
    try:  # copy-on-write mapping: writable for torch, never written back
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"dataset.latents: {path} is not readable ({exc}); encode the dataset again") from None
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[0] < n or tuple(array.shape[1:]) != (ch, res, res):
        raise ValueError(f"dataset.latents: {path} holds images {array.dtype} {array.shape}; expected uint8 "
                         f"[>= {n}, {ch}, {res}, {res}]")
    return torch.from_numpy(array[:n])


def load_latents(folder: Path) -> LatentData:
    folder = Path(folder)
    meta = read_meta(folder)
    shards = [_checked_shard(folder / name, meta) for name in meta["shards"]]
    moments = torch.cat([s["moments"] for s in shards]).float()
    labels = torch.cat([s["labels"] for s in shards]).long()
    names = tuple(meta.get("class_names", ()))
    pixels = None
    if meta.get("images_file"):
        images = _mapped_images(folder / meta["images_file"], meta)
        pixels = ImageDataset(images, labels, meta["num_classes"], meta["source"].get("name", "latents"), names)
    data = ImageDataset(moments, labels, meta["num_classes"], f"latents:{folder.name}", names)
    return LatentData(moments=data, pixels=pixels, scaling_factor=float(meta["scaling_factor"]), meta=meta)


class LatentSampler:
    """Batches of freshly sampled latents z = (mean + std * eps) * scale, and the matching pixels."""

    def __init__(self, data: LatentData, batch_size: int, seed: int, device: torch.device,
                 shard: Callable[[Tensor], Tensor] | None = None) -> None:
        self.data = data
        self.sampler = BatchSampler(data.moments, batch_size, seed=seed, device=device, shard=shard)
        self.last_pixels: Tensor | None = None

    def next(self) -> tuple[Tensor, Tensor]:
        idx = self.sampler.next_indices()
        device = self.sampler.device
        moments, labels = self.data.moments.images[idx].to(device), self.data.moments.labels[idx].to(device)
        if self.data.pixels is not None:
            self.last_pixels = self.data.pixels.batch(idx).to(device)
        mean, std = moments.chunk(2, dim=1)
        return (mean + std * torch.randn_like(std)) * self.data.scaling_factor, labels

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


class LatentDecoder:
    """Latents (scaled) -> images in [-1, 1] through the VAE decoder, in batches."""

    def __init__(self, vae_path: Path | str | None, scaling_factor: float, device: torch.device,
                 out_channels: int | None = None) -> None:
        self.vae = load_vae(vae_path, "eval.vae", device)
        self.scaling_factor = scaling_factor
        self.out_channels = out_channels

    @torch.no_grad()
    def __call__(self, latents: Tensor) -> Tensor:
        images = self.vae.decode(latents.float() / self.scaling_factor).sample.clamp(-1, 1)
        if self.out_channels == 1 and images.shape[1] == 3:
            images = images.mean(dim=1, keepdim=True)
        return images

"""Latent space: encode a dataset with a diffusers AutoencoderKL, train on its moments, decode samples.

`encode_dataset` writes the [mean, std] moments of each image's posterior, its
label and, optionally, the uint8 source image (for pixel metrics and the VFM
teacher) as rows of three .npy arrays that training memory-maps, so the dataset
never has to fit in memory and trials on one machine share the pages.  Training
re-samples z = (mean + std * eps) * scaling_factor every step, as the GAT and
REPA pipelines do.  Images are encoded a chunk at a time with `meta.json`
updated after each, so an interrupted encode says what it wrote and continues.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gat_core.atomic import write_atomic
from gat_core.data import BatchSampler, ImageDataset
from gat_core.data.dataset import quantize_uint8
from gat_core.data.folder import load_files, scan_folder
from gat_core.weights import VAE_ENV, VAE_HINT, resolve_local

META_FILE = "meta.json"
FORMAT = "gat-study-latents/2"
# one row per image, memory-mapped when loaded
MOMENTS_FILE = "moments.npy"  # float32 [N, 2C, h, w]: posterior mean and std
LABELS_FILE = "labels.npy"  # int64 [N]
IMAGES_FILE = "images.npy"  # uint8 [N, C, R, R]: the source images (for metrics and the VFM teacher)


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
    write_atomic(out / META_FILE, json.dumps(meta, indent=2))


@dataclass(frozen=True)
class EncodeSource:
    """What an encode reads, a chunk at a time, so that memory holds one chunk and not the dataset."""

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


def _array_file(out: Path, name: str, meta: dict[str, Any], dtype: np.dtype, row: tuple[int, ...]) -> np.memmap:
    """One of the encode's arrays, a row per item (room for every item; `num_images` rows are valid),
    created on first use and reopened when an interrupted encode continues."""
    path = out / name
    if path.exists() and meta["num_images"]:
        array = np.lib.format.open_memmap(path, mode="r+")
        if array.dtype != dtype or array.shape != (meta["num_items"], *row):
            raise ValueError(f"--out: {path} does not belong to this encode; delete {out} and encode again")
        return array
    if meta["num_images"]:
        raise ValueError(f"--out: {path} of the interrupted encode is missing; delete {out} and encode again")
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(meta["num_items"], *row))


def _resumable(out: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The metadata of an earlier encode of the same source with the same VAE into `out`, if any."""
    try:
        old = json.loads((out / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = ("format", "source", "vae", "image_resolution", "chunk_size", "keep_images", "num_items")
    if any(old.get(k) != meta[k] for k in same):
        raise ValueError(f"--out: {out} holds an encode of something else ({old.get('source')} with {old.get('vae')}); "
                         "choose another folder or delete it")
    return old


@torch.no_grad()
def encode_dataset(source: ImageDataset | EncodeSource, vae_path: Path, out: Path, *, batch_size: int = 64,
                   chunk_size: int = 4096, keep_images: bool = True, config: dict[str, Any] | None = None,
                   device: str | torch.device = "cpu", vae: Any = None) -> dict[str, Any]:
    """Encode every image to its posterior moments, `chunk_size` images at a time, into memory-mappable
    arrays; returns the metadata written to `out/meta.json`.  `vae`: the AutoencoderKL already loaded from
    `vae_path` (a caller that checks it before building its images), else it is loaded here.

    Run it again after an interruption and it continues after the last complete chunk; unreadable files
    are skipped and listed in the metadata (`skipped`).
    """
    if isinstance(source, ImageDataset):
        source = memory_source(source)
    vae = load_vae(vae_path, "--vae", device) if vae is None else vae.to(device)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format": FORMAT, "source": config or {"name": source.name}, "vae": str(Path(vae_path).resolve()),
        "scaling_factor": float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215),
        "num_classes": source.num_classes, "class_names": list(source.class_names),
        "image_resolution": source.resolution, "image_channels": source.channels,
        "chunk_size": chunk_size, "keep_images": keep_images, "num_items": source.num_items,
        "items_done": 0, "num_images": 0, "skipped": [], "complete": False,
    }
    meta = _resumable(out, meta) or meta
    if meta["complete"]:
        return meta
    image_row = (source.channels, source.resolution, source.resolution)
    for start in range(meta["items_done"], source.num_items, chunk_size):
        images, labels, skipped = source.read(start, min(start + chunk_size, source.num_items))
        meta["skipped"] += skipped
        if len(labels):
            moments = _encode_chunk(vae, images, batch_size, device)
            meta["latent_channels"], meta["latent_resolution"] = moments.shape[1] // 2, moments.shape[-1]
            rows = slice(meta["num_images"], meta["num_images"] + len(labels))
            written = [(MOMENTS_FILE, np.float32, tuple(moments.shape[1:]), moments.numpy()),
                       (LABELS_FILE, np.int64, (), labels.numpy())]
            if keep_images:
                written.append((IMAGES_FILE, np.uint8, image_row, quantize_uint8(images).numpy()))
            for name, dtype, row, values in written:
                array = _array_file(out, name, meta, np.dtype(dtype), row)
                array[rows] = values
                array.flush()
            meta["num_images"] += len(labels)
        meta["items_done"] = min(start + chunk_size, source.num_items)
        _write_meta(out, meta)  # after the rows: a crash loses at most the chunk being written
    if not meta["num_images"]:
        raise ValueError(f"encode: no readable images among the {source.num_items} of {source.name}")
    meta["complete"] = True
    _write_meta(out, meta)
    return meta


def read_meta(folder: Path) -> dict[str, Any]:
    """meta.json of an encoded dataset; ValueError naming the folder if it is missing, incomplete or old."""
    path = Path(folder) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"dataset.latents: {path} is not readable ({exc}); create it with `gat-study encode`") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"dataset.latents: {folder} was written by another version of `gat-study encode` "
                         f"(format {meta.get('format')!r}, expected {FORMAT!r}); encode the dataset again")
    required = ("num_images", "num_items", "num_classes", "scaling_factor", "image_channels", "image_resolution",
                "keep_images", "source")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ValueError(f"dataset.latents: {path} lacks {', '.join(missing)}; encode the dataset again")
    if not meta.get("complete"):
        raise ValueError(f"dataset.latents: {folder} is an incomplete encode ({meta.get('num_images', 0)} of "
                         f"{meta.get('num_items', '?')} images); run `gat-study encode` again to finish it")
    return meta


@dataclass
class LatentData:
    """An encoded dataset: moments for training, source pixels for metrics and the teacher, both memory-mapped."""

    moments: ImageDataset        # images = [N, 2C, h, w] (mean, std) so the batch sampler can serve them
    pixels: ImageDataset | None  # the uint8 source images, if the encode kept them
    scaling_factor: float
    meta: dict[str, Any]


def _mapped(path: Path, dtype: np.dtype, row: tuple[int, ...], n: int) -> Tensor:
    """The first n rows of an encode's array as a tensor backed by the file: pages are read when a batch
    needs them, and trials on one machine share them.  ValueError naming the file if it does not fit."""
    try:  # copy-on-write mapping: writable for torch, never written back
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"dataset.latents: {path} is not readable ({exc}); encode the dataset again") from None
    if array.dtype != dtype or array.ndim != len(row) + 1 or array.shape[0] < n or tuple(array.shape[1:]) != row:
        raise ValueError(f"dataset.latents: {path} holds {array.dtype} {array.shape}; meta.json says "
                         f"{np.dtype(dtype)} [>= {n}, {', '.join(map(str, row))}]")
    return torch.from_numpy(array[:n])


def load_latents(folder: Path) -> LatentData:
    folder = Path(folder)
    meta = read_meta(folder)
    if "latent_channels" not in meta or "latent_resolution" not in meta:
        raise ValueError(f"dataset.latents: {folder / META_FILE} lacks the latent shape; encode the dataset again")
    n, c, r = meta["num_images"], meta["latent_channels"], meta["latent_resolution"]
    moments = _mapped(folder / MOMENTS_FILE, np.dtype(np.float32), (2 * c, r, r), n)
    labels = _mapped(folder / LABELS_FILE, np.dtype(np.int64), (), n)
    names = tuple(meta.get("class_names", ()))
    pixels = None
    if meta["keep_images"]:
        row = (meta["image_channels"], meta["image_resolution"], meta["image_resolution"])
        images = _mapped(folder / IMAGES_FILE, np.dtype(np.uint8), row, n)
        # a finished encode never changes: its metadata identifies the pixels (hashing them could mean reading 100s of GB)
        encode_id = hashlib.blake2b(json.dumps(meta, sort_keys=True).encode(), digest_size=16).hexdigest()
        pixels = ImageDataset(images, labels, meta["num_classes"], meta["source"].get("name", "latents"), names,
                              content_id=f"encode:{encode_id}")
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

"""Latent-space data path (diffusers AutoencoderKL) and VFM alignment (timm DINOv2), from local files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gat_core.config import DataConfig, TrialConfig
from gat_core.data import load_dataset
from gat_core.latents import encode_dataset, load_latents, read_meta
from gat_core.gan_trainer import GANTrainer
from gat_core.weights import WeightsNotFound
from orchestrator.cli import main


@pytest.fixture(scope="module")
def encoded(tiny_vae, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latents") / "shapes16"
    dataset = load_dataset(DataConfig(name="shapes", resolution=16, size=96))
    encode_dataset(dataset, tiny_vae, out, batch_size=32, chunk_size=40)
    return out


def test_encode_writes_moments_labels_and_images(encoded):
    meta = read_meta(encoded)
    assert meta["complete"] and meta["num_images"] == 96 and meta["items_done"] == 96
    assert sorted(p.name for p in encoded.iterdir()) == ["images.npy", "labels.npy", "meta.json", "moments.npy"]
    assert (meta["latent_channels"], meta["latent_resolution"]) == (4, 8)
    assert meta["scaling_factor"] == pytest.approx(0.18215)
    data = load_latents(encoded)
    assert data.moments.images.shape == (96, 8, 8, 8)
    assert (data.moments.images[:, 4:] > 0).all()  # std half of the moments
    source = load_dataset(DataConfig(name="shapes", resolution=16, size=96))
    assert torch.equal(data.moments.labels, source.labels)
    assert data.pixels.images.dtype == torch.uint8  # kept as bytes, memory-mapped from images.npy
    # the finished encode identifies its pixels (caches of reference statistics key on it) without hashing them
    assert data.pixels.content_id and data.pixels.fingerprint() == load_latents(encoded).pixels.fingerprint()
    assert (data.pixels.batch(slice(None)) - source.images).abs().max() <= 1 / 127.5 + 1e-6  # uint8 round trip


def test_latent_sampler_resamples_posterior(encoded):
    from gat_core.latents import LatentSampler

    data = load_latents(encoded)
    a = LatentSampler(data, 8, seed=0, device=torch.device("cpu"))
    b = LatentSampler(data, 8, seed=0, device=torch.device("cpu"))
    torch.manual_seed(1)
    za, ya = a.next()
    torch.manual_seed(2)
    zb, yb = b.next()
    assert torch.equal(ya, yb) and not torch.equal(za, zb)  # same images, fresh posterior samples
    assert a.last_pixels.shape == (8, 3, 16, 16)


def test_missing_and_bad_weights_give_clear_errors(tmp_path, encoded):
    with pytest.raises(WeightsNotFound, match="--vae: weights folder .*nowhere not found"):
        encode_dataset(load_dataset(DataConfig(name="digits", resolution=8)), tmp_path / "nowhere", tmp_path / "o")
    with pytest.raises(ValueError, match="dataset.latents: .*meta.json not found"):
        TrialConfig.model_validate({"dataset": {"name": "shapes", "latents": str(tmp_path / "none")}})
    (tmp_path / "bad").mkdir()
    meta = read_meta(encoded)
    (tmp_path / "bad" / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(ValueError, match="incomplete encode"):
        read_meta(tmp_path / "bad")
    (tmp_path / "bad" / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "num_classes"}))
    with pytest.raises(ValueError, match="meta.json lacks num_classes; encode the dataset again"):
        read_meta(tmp_path / "bad")
    with pytest.raises(ValueError, match=r"train.vfm.model"):
        TrialConfig.model_validate({"train": {"vfm": {"model": "resnet50"}}})
    (tmp_path / "bad" / "meta.json").write_text('{"complete": true, "shards": ["a"], "num_images": 3}')
    with pytest.raises(ValueError, match="written by another version of `gat-study encode`"):
        read_meta(tmp_path / "bad")


def test_encode_cli(tiny_vae, tmp_path, capsys):
    out = tmp_path / "digits8"
    assert main(["encode", "digits", "--vae", str(tiny_vae), "--out", str(out), "--resolution", "8"]) == 0
    assert "encoded 1797 images" in capsys.readouterr().out
    assert read_meta(out)["latent_resolution"] == 4
    assert main(["encode", "digits", "--vae", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "weights folder" in capsys.readouterr().err


def test_folder_encode_streams_skips_unreadable_files_and_resumes(tiny_vae, tmp_path):
    """Encode reads a folder a chunk at a time, lists unreadable files, and continues after a crash."""
    from dataclasses import replace

    from gat_core.data.folder import load_folder
    from gat_core.latents import folder_source
    from tests.helpers import make_folder

    root = make_folder(tmp_path / "images")  # 11 files, 2 of them unreadable (one in the first 8)
    source = folder_source(root, 8)
    chunks: list[int] = []

    def crashing_read(start: int, stop: int):
        chunks.append(stop - start)
        if start >= 8:
            raise RuntimeError("power cut")
        return source.read(start, stop)

    out = tmp_path / "latents"
    with pytest.raises(RuntimeError, match="power cut"):
        encode_dataset(replace(source, read=crashing_read), tiny_vae, out, batch_size=2, chunk_size=4)
    assert max(chunks) <= 4  # never more than a chunk of images in memory
    partial = __import__("json").loads((out / "meta.json").read_text())
    assert not partial["complete"] and partial["items_done"] == 8 and partial["num_images"] == 7
    with pytest.raises(ValueError, match="incomplete encode .*7 of 11 images"):
        load_latents(out)
    first = np.load(out / "moments.npy")[:7]

    meta = encode_dataset(source, tiny_vae, out, batch_size=2, chunk_size=4)  # the same command again
    assert meta["complete"] and meta["num_images"] == 9
    assert sorted(Path(n.split(" (")[0]).name for n in meta["skipped"]) == ["garbage.jpg", "truncated.png"]
    data = load_latents(out)
    assert torch.equal(data.moments.images[:7], torch.from_numpy(first))  # the rows before the crash are kept
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable file\(s\)"):  # the same two, said when read
        images, labels, classes = load_folder(root, 8)
    assert torch.equal(data.moments.labels, labels) and tuple(meta["class_names"]) == classes
    assert (data.pixels.batch(slice(None)) - images).abs().max() <= 1 / 127.5 + 1e-6  # rows written across the restart
    with pytest.raises(ValueError, match="holds an encode of something else"):
        encode_dataset(folder_source(root, 16), tiny_vae, out, chunk_size=4)


def test_latents_of_the_wrong_shape_are_named(encoded, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(encoded, broken)
    np.save(broken / "moments.npy", np.zeros((96, 8, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"moments.npy holds float32 \(96, 8, 4, 4\); meta.json says float32 \[>= 96, 8, 8, 8\]"):
        load_latents(broken)
    shutil.copy(encoded / "moments.npy", broken / "moments.npy")
    np.save(broken / "labels.npy", np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"labels.npy holds int64 \(3,\); meta.json says int64 \[>= 96, \]"):
        load_latents(broken)
    shutil.copy(encoded / "labels.npy", broken / "labels.npy")
    np.save(broken / "images.npy", np.zeros((96, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"images.npy holds uint8 \(96, 3, 8, 8\); meta.json says uint8 \[>= 96, 3, 16, 16\]"):
        load_latents(broken)
    (broken / "images.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"images.npy is not readable"):
        load_latents(broken)


def _trial(encoded: Path | None, dino: Path | None) -> TrialConfig:
    train = {"steps": 2, "batch_size": 4, "augment": ["translation", "flip"]}
    if dino is not None:
        train["vfm"] = {"weights": str(dino), "model": "vit_small_patch14_dinov2", "image_size": 56, "hidden_dim": 32}
    dataset = {"name": "shapes", "resolution": 16, "size": 96, **({"latents": str(encoded)} if encoded else {})}
    return TrialConfig.model_validate({
        "dataset": dataset, "model": {"width": 32, "depth": 4, "heads": 2, "patch_size": 2}, "train": train,
        "eval": {"num_samples": 16, "final_samples": 16, "classifier_epochs": 1, "grid_size": 2}})


def test_trainer_in_latent_space_with_vfm_teacher(encoded, tiny_dinov2, tmp_path):
    cfg = _trial(encoded, tiny_dinov2)
    assert (cfg.dataset.model_channels, cfg.dataset.model_resolution) == (4, 8)
    trainer = GANTrainer(cfg, tmp_path, cache_dir=tmp_path / "cache")
    assert trainer.G(torch.randn(2, 64), torch.tensor([0, 1])).shape == (2, 4, 8, 8)
    assert trainer.teacher is not None and trainer.teacher.dim == 384
    logs = [trainer.iteration() for _ in range(2)]
    assert all(torch.isfinite(v).all() for step in logs for v in step.values())
    assert 0 < float(logs[0]["vfm_align"]) <= 4  # two (1 - cos) terms
    trainer.prepare_eval()
    metrics = trainer.evaluate(16)
    assert metrics["fd_classifier"] > 0  # decoded through the VAE to 16 px pixels
    grid = trainer.sample_grid(tmp_path / "grid.png")
    assert grid.exists()


def test_vfm_alignment_pulls_tokens_toward_teacher(tiny_dinov2):
    from gat_core.vfm import VFMTeacher, alignment_loss

    teacher = VFMTeacher("vit_small_patch14_dinov2", tiny_dinov2, image_size=56)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    cls, patches = teacher(images, grid=4)
    assert cls.shape == (3, 384) and patches.shape == (3, 16, 384)
    perfect = torch.cat([cls[:, None], patches], dim=1)
    assert float(alignment_loss(perfect, cls, patches)) == pytest.approx(0.0, abs=1e-5)
    assert float(alignment_loss(-perfect, cls, patches)) == pytest.approx(4.0, abs=1e-4)


def test_vfm_weights_missing_is_a_study_error(tmp_path):
    from orchestrator.study import StudyError, load_study

    path = tmp_path / "s.yaml"
    path.write_text("name: s\ntrain: {steps: 2, vfm: {weights: /no/dinov2.pth}}\n")
    with pytest.raises(StudyError, match=r"train.vfm.weights: weights file /no/dinov2.pth not found"):
        load_study(path)


def test_latent_metadata_is_read_once_per_folder(tmp_path, monkeypatch):
    """model_channels and model_resolution come from meta.json, read on the first access only (configs are
    validated and queried many times); another folder is read afresh."""
    import json
    from pathlib import Path

    from gat_core.config import DataConfig

    for name, channels in (("a", 4), ("b", 8)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text(json.dumps({"latent_channels": channels, "latent_resolution": 4}))
    cfg = DataConfig(name="shapes", resolution=32, latents=tmp_path / "a")
    reads = []
    original = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self.name) or original(self, *a, **k))
    assert (cfg.model_channels, cfg.model_resolution, cfg.model_channels) == (4, 4, 4)
    assert reads == ["meta.json"]
    assert cfg == DataConfig(name="shapes", resolution=32, latents=tmp_path / "a")  # the cache is no part of it
    cfg.latents = tmp_path / "b"
    assert cfg.model_channels == 8 and reads == ["meta.json", "meta.json"]

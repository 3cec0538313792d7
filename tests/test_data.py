"""Datasets (shapes, digits, folder) and the resumable batch sampler, with real files and tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gat_core.config import DataConfig
from gat_core.data import BatchSampler, DatasetError, ImageDataset, load_dataset, sample_labels
from tests.helpers import make_folder, png_bytes


def shapes(**kw) -> ImageDataset:
    return load_dataset(DataConfig(name="shapes", **kw))


# --- shapes -------------------------------------------------------------------------------------

def test_shapes_deterministic_in_seed() -> None:
    a, b, c = shapes(size=64, seed=0), shapes(size=64, seed=0), shapes(size=64, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


@pytest.mark.parametrize("resolution", [8, 16, 24, 64])
def test_shapes_range_resolution_channels(resolution: int) -> None:
    ds = shapes(size=100, resolution=resolution)
    assert ds.images.shape == (100, 3, resolution, resolution)
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0
    assert ds.images.max() > 0.5  # shapes are bright on a dark background
    assert ds.images.median() < -0.5
    assert ds.name == "shapes" and ds.resolution == resolution and ds.channels == 3


def test_shapes_class_count_and_balance() -> None:
    ds = shapes(size=140, num_classes=7)
    assert ds.num_classes == 7 and len(ds.class_names) == 7 and len(set(ds.class_names)) == 7
    assert torch.bincount(ds.labels, minlength=7).tolist() == [20] * 7
    many = shapes(size=300, num_classes=25)  # more classes than shape kinds: still distinct (shape, hue) pairs
    assert many.num_classes == 25 and len(set(many.class_names)) == 25
    assert int(many.labels.max()) == 24


def test_shapes_class_colours_differ() -> None:
    ds = shapes(size=500)
    means = torch.stack([ds.images[ds.labels == k].amax(dim=(2, 3)).mean(0) for k in range(10)])  # brightest colour
    dists = torch.cdist(means, means) + torch.eye(10) * 10
    assert dists.min() > 0.2


def test_shapes_at_the_studies_size() -> None:
    ds = shapes(size=8000, resolution=16)  # the size every shipped study uses (its speed is not a unit test's job)
    assert len(ds) == 8000 and ds.images.shape[1:] == (3, 16, 16)


# --- digits -------------------------------------------------------------------------------------

def test_digits_shape_and_range() -> None:
    ds = load_dataset(DataConfig(name="digits", resolution=16))
    assert ds.images.shape == (1797, 1, 16, 16) and ds.num_classes == 10 and ds.name == "digits"
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0
    assert set(ds.labels.tolist()) == set(range(10))
    native = load_dataset(DataConfig(name="digits", resolution=8))
    from sklearn.datasets import load_digits
    assert torch.allclose(native.images[:, 0], torch.from_numpy(load_digits().images).float() / 8 - 1)
    small = load_dataset(DataConfig(name="digits", resolution=4))
    assert small.images.shape == (1797, 1, 4, 4)
    assert small.fingerprint() != ds.fingerprint()


# --- folder -------------------------------------------------------------------------------------

def test_folder_dataset_skips_unreadable_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    with pytest.warns(UserWarning) as record:
        ds = load_dataset(DataConfig(name="folder", path=root, resolution=8))
    message = " ".join(str(w.message) for w in record)
    assert "truncated.png" in message and "garbage.jpg" in message and "2 unreadable" in message
    assert ds.class_names == ("a_cat", "b_dog") and ds.num_classes == 2
    assert ds.images.shape == (9, 3, 8, 8) and ds.name == "folder"
    assert torch.bincount(ds.labels).tolist() == [5, 4]
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    dogs = ds.images[ds.labels == 1]
    assert torch.allclose(dogs[:3], torch.tensor([-1.0, -1.0, 1.0])[None, :, None, None].expand(3, 3, 8, 8))
    # ADM crop resizes before cropping: the outermost columns blend the red/blue neighbours a little
    assert torch.allclose(dogs[3][:, :, 1:-1], torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 8, 6), atol=0.05)
    assert torch.allclose(dogs[3], torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 8, 8), atol=0.1)


def test_folder_missing_or_empty_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match="nope"):
        load_dataset(DataConfig(name="folder", path=missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "stray.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))  # a file, but no class subfolder
    with pytest.raises(DatasetError, match="no class subfolders") as err:
        load_dataset(DataConfig(name="folder", path=empty))
    assert str(empty) in str(err.value)
    unreadable = tmp_path / "bad"
    (unreadable / "x").mkdir(parents=True)
    (unreadable / "x" / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="a.png"), pytest.raises(DatasetError, match="no readable images"):
        load_dataset(DataConfig(name="folder", path=unreadable))
    assert issubclass(DatasetError, ValueError)


# --- sampler ------------------------------------------------------------------------------------

def indexed_dataset(n: int) -> ImageDataset:
    """Labels are the image indices, so batches reveal exactly which images were drawn."""
    return ImageDataset(torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(),
                        torch.arange(n), n, "indexed")


def test_sampler_epochs_are_permutations() -> None:
    sampler = BatchSampler(indexed_dataset(100), batch_size=20, seed=0)
    for epoch in range(3):
        seen = torch.cat([sampler.next()[1] for _ in range(5)])
        assert sorted(seen.tolist()) == list(range(100))
    assert sampler.epoch == 2
    images, labels = BatchSampler(indexed_dataset(100), batch_size=30, seed=0).next()
    assert images.shape == (30, 1, 2, 2) and torch.equal(images[:, 0, 0, 0].long(), labels)


def test_sampler_seeded() -> None:
    ds = indexed_dataset(50)
    a = [BatchSampler(ds, 8, seed=1).next()[1] for _ in range(2)]
    b = BatchSampler(ds, 8, seed=2).next()[1]
    assert torch.equal(a[0], a[1]) and not torch.equal(a[0], b)


def test_sampler_batch_larger_than_dataset() -> None:
    sampler = BatchSampler(indexed_dataset(7), batch_size=16, seed=0)
    labels = sampler.next()[1]
    assert labels.shape == (16,) and set(labels.tolist()) == set(range(7))


def test_sampler_resume_continues_identical_sequence(tmp_path: Path) -> None:
    ds = indexed_dataset(37)  # batches straddle epoch boundaries
    original = BatchSampler(ds, batch_size=10, seed=5)
    for _ in range(6):
        original.next()
    torch.save({"sampler": original.state_dict()}, tmp_path / "ckpt.pt")
    expected = [original.next()[1] for _ in range(12)]

    resumed = BatchSampler(ds, batch_size=10, seed=123)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["sampler"])
    got = [resumed.next()[1] for _ in range(12)]
    assert all(torch.equal(e, g) for e, g in zip(expected, got))
    assert resumed.epoch == original.epoch

    with pytest.raises(ValueError, match="37 images"):
        BatchSampler(indexed_dataset(40), 10, 0).load_state_dict(original.state_dict())


def test_sample_labels() -> None:
    labels = sample_labels(10, 5000, torch.Generator().manual_seed(0))
    assert labels.shape == (5000,) and labels.dtype == torch.int64
    assert labels.min() == 0 and labels.max() == 9
    assert torch.bincount(labels).min() > 400
    assert torch.equal(labels, sample_labels(10, 5000, torch.Generator().manual_seed(0)))


def test_adm_center_crop_matches_the_reference_recipe():
    """Box-halving while the short side is >= 2x the target, bicubic to the target, centre crop."""
    import numpy as np
    from PIL import Image

    from gat_core.data.folder import adm_center_crop

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 520, 3), dtype=np.uint8))
    out = adm_center_crop(image, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    halved = image.resize((260, 150), Image.Resampling.BOX).resize((130, 75), Image.Resampling.BOX)
    scaled = np.asarray(halved.resize((round(130 * 64 / 75), 64), Image.Resampling.BICUBIC))
    left = (scaled.shape[1] - 64) // 2
    assert np.array_equal(out, scaled[:, left:left + 64])

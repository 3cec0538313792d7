"""Checkpoints on disk: atomic writes, safe loads, fall back past a corrupt newest file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

PREFIX, SUFFIX = "ckpt-", ".pt"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (names the file)."""


def save_atomic(obj: Any, path: Path) -> Path:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def read(path: Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True; a CheckpointError naming the file otherwise."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path}: file not found") from None
    except Exception as exc:  # truncated zip, pickle of a forbidden type, ...
        raise CheckpointError(f"{what} {path}: cannot be read ({type(exc).__name__}: {exc})") from exc


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint (weights_only=True); a clear CheckpointError otherwise."""
    state = read(path, map_location)
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"checkpoint {path}: not a gat-study training checkpoint (no 'step' entry)")
    return state


def step_path(folder: Path, step: int) -> Path:
    return folder / f"{PREFIX}{step:09d}{SUFFIX}"


def list_checkpoints(folder: Path) -> list[Path]:
    """Training checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX))


def load_latest(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """Newest readable checkpoint; warns about and skips corrupt newer ones; None if there is none."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return load(path, map_location)
        except CheckpointError as exc:
            warnings.warn(f"{exc}; falling back to the previous checkpoint", stacklevel=2)
    return None


def prune(folder: Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints."""
    for path in list_checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)

"""Checkpoints on disk: atomic writes, safe loads, fall back past a corrupt newest file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from gat_core.atomic import write_atomic

PREFIX, SUFFIX = "ckpt-", ".pt"
FORMAT_KEY = "weights_format"
WEIGHTS_FORMAT = 2
"""Version of what the saved weights mean.  2: EqualLinear in the official GAT form (stored weight
times lr_mult).  Files without the key are format 1 (stored weight times lr_mult / sqrt(fan_in)):
their tensors have the same names and shapes but mean other weights, so they are refused."""


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (names the file)."""


class IncompatibleCheckpoint(CheckpointError):
    """A readable file written by a version of gat-study whose weights mean something else."""


def stamp(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with the current weights format recorded (every checkpoint and model file carries it)."""
    return {**state, FORMAT_KEY: WEIGHTS_FORMAT}


def check_format(state: dict[str, Any], path: Path, what: str = "checkpoint") -> dict[str, Any]:
    """`state` itself, or IncompatibleCheckpoint naming the file when its weights format is not this version's."""
    found = state.get(FORMAT_KEY, 1)
    if found != WEIGHTS_FORMAT:
        raise IncompatibleCheckpoint(
            f"{what} {path}: written by another version of gat-study (weights format {found}, this version reads "
            f"{WEIGHTS_FORMAT}: the lr-multiplied mapping layers are now stored as the official GAT code stores them). "
            f"Loading it would give wrong weights; retrain the trial (delete its folder) or use the version that "
            f"wrote it.")
    return state


def save_atomic(obj: Any, path: Path) -> Path:
    """torch.save through a temporary file in the same folder and a rename: a crash never leaves half a file."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def read(path: Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True; a CheckpointError naming the file otherwise (and not torch's
    warning about the pickle protocol of a file that is not one of ours: the error says what was expected)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
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
    return check_format(state, path)


def step_path(folder: Path, step: int) -> Path:
    return folder / f"{PREFIX}{step:09d}{SUFFIX}"


def list_checkpoints(folder: Path) -> list[Path]:
    """Training checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX))


def load_latest(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """Newest readable checkpoint; warns about and skips corrupt newer ones; None if there is none.

    A readable checkpoint of another weights format is an error, not skipped: the older ones beside it
    were written by the same version."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return load(path, map_location)
        except IncompatibleCheckpoint:
            raise
        except CheckpointError as exc:
            warnings.warn(f"{exc}; falling back to the previous checkpoint", stacklevel=2)
    return None


def prune(folder: Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints."""
    for path in list_checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)

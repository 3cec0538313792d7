"""Local files of pretrained parts (DINOv2 teacher, VAE, ...): no download, a clear error instead.

Torch-free, so a study can be checked for missing files before anything runs.
"""

from __future__ import annotations

import os
from pathlib import Path

DINOV2_ENV = "GAT_STUDY_DINOV2_WEIGHTS"
DINOV2_HINT = ("the official DINOv2 checkpoint (e.g. dinov2_vitb14_pretrain.pth from the facebookresearch/dinov2 "
               "release), downloaded on a networked machine")


class WeightsNotFound(FileNotFoundError):
    """A pretrained component whose local weights are missing; the message names the key, file and source."""


def resolve_local(path: Path | str | None, env: str, key: str, hint: str, folder: bool = False) -> Path:
    """The configured path, else the environment variable; WeightsNotFound if neither exists."""
    chosen = Path(path) if path else (Path(os.environ[env]) if os.environ.get(env) else None)
    exists = chosen is not None and (chosen.is_dir() if folder else chosen.is_file())
    if not exists:
        kind = "folder" if folder else "file"
        raise WeightsNotFound(f"{key}: weights {kind} {chosen or '(not set)'} not found. Expected {hint}; "
                              f"give its path in {key} or ${env}.")
    return chosen


def dinov2_weights(path: Path | str | None) -> Path:
    return resolve_local(path, DINOV2_ENV, "train.vfm.weights", DINOV2_HINT)


def missing_weights(cfg) -> list[str]:
    """Problems with the local weights a trial config needs (empty when all are there)."""
    problems = []
    if cfg.train.vfm is not None:
        try:
            dinov2_weights(cfg.train.vfm.weights)
        except WeightsNotFound as exc:
            problems.append(str(exc))
    return problems

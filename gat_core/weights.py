"""Local files of pretrained parts (DINOv2 teacher, VAE, metric networks): no download, a clear error instead.

Torch-free, so a study can be checked for missing files before anything runs.
"""

from __future__ import annotations

import os
from pathlib import Path

DINOV2_ENV = "GAT_STUDY_DINOV2_WEIGHTS"
DINOV2_HINT = ("the official DINOv2 checkpoint (e.g. dinov2_vitb14_pretrain.pth from the facebookresearch/dinov2 "
               "release), downloaded on a networked machine")


VAE_ENV = "GAT_STUDY_VAE"
VAE_HINT = ("a diffusers AutoencoderKL folder saved with save_pretrained (config.json + weights), e.g. "
            "stabilityai/sd-vae-ft-mse downloaded on a networked machine")


class WeightsNotFound(FileNotFoundError):
    """A pretrained component whose local weights are missing; the message names the key, file and source."""


def resolve_local(path: Path | str | None, env: str, key: str, hint: str, folder: bool = False) -> Path:
    """The configured path, else the environment variable; WeightsNotFound if neither exists."""
    chosen = Path(path) if path else (Path(os.environ[env]) if os.environ.get(env) else None)
    exists = chosen is not None and (chosen.is_dir() if folder else chosen.is_file())
    if not exists:
        kind = "folder" if folder else "file"
        what = f"weights {kind} {chosen} not found" if chosen else f"no weights {kind} given ({key} and ${env} unset)"
        raise WeightsNotFound(f"{key}: {what}. Expected {hint}; "
                              f"give its path in {key} or ${env}.")
    return chosen


INCEPTION_ENV = "GAT_STUDY_INCEPTION_WEIGHTS"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_HINT = (f"torch-fidelity's port of the TF Inception-v3 'inception-2015-12-05' network, the file {INCEPTION_FILE} "
                  "(a release asset of torch-fidelity v0.2.0; its URL is "
                  "torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3), downloaded on a networked machine")
EVAL_DINOV2_HINT = ("the official DINOv2 checkpoint used for FD_DINOv2, e.g. dinov2_vitl14_pretrain.pth (ViT-L/14, as in "
                    "Stein et al. 2023) or dinov2_vitb14_pretrain.pth, from the facebookresearch/dinov2 release, "
                    "downloaded on a networked machine")


def dinov2_weights(path: Path | str | None) -> Path:
    return resolve_local(path, DINOV2_ENV, "train.vfm.weights", DINOV2_HINT)


def inception_weights(path: Path | str | None) -> Path:
    """The Inception weights file of `fid` (eval.inception_weights, else $GAT_STUDY_INCEPTION_WEIGHTS)."""
    return resolve_local(path, INCEPTION_ENV, "eval.inception_weights", INCEPTION_HINT)


def eval_dinov2_weights(path: Path | str | None) -> Path:
    """The DINOv2 weights file of `fd_dinov2` & co. (eval.dinov2_weights, else $GAT_STUDY_DINOV2_WEIGHTS)."""
    return resolve_local(path, DINOV2_ENV, "eval.dinov2_weights", EVAL_DINOV2_HINT)


def missing_weights(cfg) -> list[str]:
    """Problems with the local weights a trial config needs (empty when all are there)."""
    problems = []
    if cfg.train.vfm is not None:
        try:
            dinov2_weights(cfg.train.vfm.weights)
        except WeightsNotFound as exc:
            problems.append(str(exc))
    problems += missing_eval_files(cfg.eval)
    return problems


def missing_eval_files(eval_cfg) -> list[str]:
    """Problems with the local files the metrics of an EvalConfig need (Inception, DINOv2, reference stats)."""
    from gat_core.metrics.names import extractors_of  # torch-free

    problems = []
    needed = extractors_of([eval_cfg.metric, *eval_cfg.extra_metrics])
    checks = [(inception_weights, eval_cfg.inception_weights, "inception"),
              (eval_dinov2_weights, eval_cfg.dinov2_weights, "dinov2")]
    for resolve, path, extractor in checks:
        if extractor in needed:
            try:
                resolve(path)
            except WeightsNotFound as exc:
                problems.append(str(exc))
    ref = eval_cfg.reference_stats
    if ref is not None and not Path(ref).is_file():
        problems.append(f"eval.reference_stats: file {ref} not found. Expected an .npz with `mu` and `sigma` "
                        "(e.g. written by `gat-study ref-stats`, or an ADM reference batch such as "
                        "VIRTUAL_imagenet256_labeled.npz).")
    return problems


def weights_env() -> dict[str, tuple[str, str]]:
    """The $GAT_STUDY_* weight paths of this process, as given and made absolute against its working directory
    (where the files were checked): a Ray worker inherits the relative value but not the working directory, and
    a cluster node may not have the variable at all.  A worker sets each absolute path where its own value is
    unset or the same relative one (a node's own setting wins)."""
    return {name: (value, str(Path(value).expanduser().absolute())) for name in (DINOV2_ENV, INCEPTION_ENV, VAE_ENV)
            if (value := os.environ.get(name))}

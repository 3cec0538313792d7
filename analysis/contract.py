"""The MLflow run contract, in one place: the names both its writer and its readers use.

`orchestrator.tracking` writes runs with these tags, params and metrics; `analysis.load`
reads them; `analysis.synthetic` writes synthetic studies by the same names.  Plain Python
(no torch, no mlflow), so either side imports it.
"""

from __future__ import annotations

import re
from typing import Any

# --- params -----------------------------------------------------------------------------------------
TRIAL_SECTIONS = ("dataset", "model", "train", "eval")  # a trial config's sections: its params' first dotted part


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (`model.width`): how a trial run's params name its config."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


# --- tags -----------------------------------------------------------------------------------------
STUDY_TAG = "gat_study.study"  # the study's name, on the parent run and on every trial run
ROLE_TAG = "gat_study.role"  # "study" (the parent run) or "trial" (one child run per trial)
PARENT_TAG = "mlflow.parentRunId"
TRIAL_ID_TAG = "trial_id"  # the trial's id: a hash of what it learns from (orchestrator.study)
STATUS_TAG = "status"  # pending | running | completed | diverged | failed
HEALTH_TAG = "health"  # ok | collapsed | diverged: the verdict of gat_core.health on a finished trial
HEALTH_REASON_TAG = "health_reason"
EVAL_TAG = "eval_settings"  # JSON: the evaluation keys a finished trial was scored under
EARLIER_ID_TAG = "earlier_trial_id"  # the id a run had under gat-study's earlier whole-config hash, once adopted
FLOPS_TAG = "flops_convention"  # the compute convention, tagged on every trial run

# --- compute ----------------------------------------------------------------------------------------
FLOP_CONVENTION = "MAC (DiT): 1 multiply-accumulate = 1 FLOP"  # the value of FLOPS_TAG; reports extend it
GFLOPS_PARAM = "gflops_g"  # per-image GFLOPs of the generator (GAT) or denoiser (DiT) forward
TRAIN_FLOPS_METRIC = "train_flops"  # training compute so far (MACs), logged by every trial

# --- metric direction -------------------------------------------------------------------------------
_HIGHER_IS_BETTER = re.compile(r"(accuracy|precision|recall|^inception|^is$|^is_|psnr|ssim|density|coverage"
                               r"|^diversity_)", re.I)  # ^inception: the score, not kid_inception


def lower_is_better(metric: str) -> bool:
    """Distances and losses go down as models improve; accuracies, scores and diversity go up (default: down)."""
    return not _HIGHER_IS_BETTER.search(metric)

"""Trial identity: which config keys make a trial what it is, its id, and whether a run still matches it.

`orchestrator.study` names each trial by `trial_hash`; `orchestrator.runner` compares a child
run's recorded params and evaluation settings with `same_identity` and `same_evaluation`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Protocol

from analysis.contract import TRIAL_SECTIONS, flatten
from gat_core.config import TrialConfig


class TrialLike(Protocol):
    """What the checks below read of an `orchestrator.study.Trial` (no import of it: study imports this)."""

    config: TrialConfig
    swept: dict[str, Any]

    def params(self) -> dict[str, Any]: ...


# A trial is what it learns from: its data, model, objective and optimiser settings and its seed.  Every
# key of a trial's config is identity except the ones below, grouped by what a change of them does to a
# trial that exists already (`orchestrator.runner` acts on the groups; README "Extending and growing a
# study" lists them).  A key is matched with its sub-keys (`eval` covers `eval.metric`, ...); the most
# specific entry wins.  A new config key is identity until it is listed here.
#
# No training schedule depends on the total number of steps (the learning rates are constant, the EMA
# warm-up and the MNG levels depend on the current step only), so the first N steps of a longer trial are
# the steps of a shorter one: that is what makes `train.steps` a length and not an identity.  A schedule
# tied to the total (a warm-up or a decay over `train.steps`) would make `train.steps` identity.
LENGTH, EVALUATION, BOOKKEEPING = "length", "evaluation", "bookkeeping"
NOT_IDENTITY: dict[str, str] = {
    # length: raising it continues a finished trial from its last checkpoint; lowering it is refused
    "train.steps": LENGTH,
    "train.flops_budget": LENGTH,  # it only sets train.steps
    # evaluation: a change re-scores a finished trial's saved model (its final evaluation and health verdict)
    "eval": EVALUATION,  # metric, extra_metrics, final_samples, diversity, health thresholds, weights, ...
    "train.diffusion.sampler": EVALUATION,  # how a DiT is sampled, not how it learns
    "train.diffusion.sample_steps": EVALUATION,
    "train.diffusion.eval_nfe": EVALUATION,
    "train.diffusion.guidance": EVALUATION,
    # bookkeeping: a change retrains and re-scores nothing; it applies to steps trained from now on
    "eval.interval": BOOKKEEPING,
    "eval.num_samples": BOOKKEEPING,  # samples of the in-training evaluations
    "eval.grid_size": BOOKKEEPING,
    "eval.batch_size": BOOKKEEPING,  # memory, not the score
    "train.log_every": BOOKKEEPING,
    "train.checkpoint_every": BOOKKEEPING,
    "train.device": BOOKKEEPING,
    "train.compile": BOOKKEEPING,  # the same computation, compiled
    "train.grad_checkpoint": BOOKKEEPING,  # the same computation, activations recomputed
    "train.collapse_loss_d": BOOKKEEPING,  # early stops of diverging trials: monitoring, not learning
    "train.collapse_diversity": BOOKKEEPING,
    "train.collapse_patience": BOOKKEEPING,
}


def key_role(key: str) -> str:
    """'identity', or the NOT_IDENTITY group of a dotted config key (its most specific entry)."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        role = NOT_IDENTITY.get(".".join(parts[:end]))
        if role is not None:
            return role
    return "identity"


def param_text(value: Any) -> str:
    """A config value as the child run's MLflow param holds it (lists and mappings as JSON)."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def swept_keys(swept: dict[str, Any]) -> list[str]:
    """The dotted trial keys a grid point sets (linked sets and section mappings expanded)."""
    keys: list[str] = []
    for key, value in swept.items():
        if not isinstance(value, dict):
            keys.append(key)
        elif key.split(".")[0] in TRIAL_SECTIONS:  # `model: [{width: 96, heads: 4}, ...]`
            keys += [f"{key}.{k}" for k in value]
        else:  # a named linked set: its entries are dotted keys already
            keys += [str(k) for k in value]
    return keys


def _overlapping(key: str, others: list[str]) -> bool:
    return any(key == o or key.startswith(o + ".") or o.startswith(key + ".") for o in others)


def config_params(config: TrialConfig) -> dict[str, Any]:
    """A trial config as the dotted keys and values its child run's params hold."""
    return flatten(config.model_dump(mode="json"))


def identity_items(config: TrialConfig, swept: dict[str, Any] | None = None) -> dict[str, str]:
    """The dotted keys and values (as param text) a trial's id hashes: its identity keys, and every key its
    grid point sweeps whatever its group (two grid points are two trials: an isoFLOP study's budgets, a grid
    over `train.steps`)."""
    set_by_grid = swept_keys(swept or {})
    return {key: param_text(value) for key, value in sorted(config_params(config).items())
            if key_role(key) == "identity" or _overlapping(key, set_by_grid)}


def trial_hash(config: TrialConfig, swept: dict[str, Any] | None = None) -> str:
    """Stable id of a trial: a hash of `identity_items`, so the same trial keeps its id when its length or
    its bookkeeping changes."""
    canonical = json.dumps(identity_items(config, swept), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def legacy_trial_hash(config: TrialConfig) -> str:
    """The id gat-study gave a trial before identity keys existed: a hash of its whole config."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def evaluation_items(values: dict[str, Any]) -> dict[str, str]:
    """The evaluation keys (and values as param text) of a flattened trial config, or of a child run's
    params: the settings a finished trial is scored under."""
    return {k: param_text(v) for k, v in sorted(values.items()) if key_role(k) == EVALUATION}


@functools.cache
def _default_items() -> dict[str, str]:
    return {k: param_text(v) for k, v in config_params(TrialConfig()).items()}


def _matches(items: dict[str, str], recorded: dict[str, str]) -> bool:
    """Every item equal to its recorded value; a key not recorded (an option added to gat-study since)
    counts as equal when the item has that option's default."""
    defaults = _default_items()
    return all((recorded[key] if key in recorded else defaults.get(key)) == text for key, text in items.items())


def same_identity(trial: TrialLike, params: dict[str, str]) -> bool:
    """Whether a child run's params (the flattened config it was created with) hold this trial's identity."""
    return _matches(identity_items(trial.config, trial.swept), params)


def same_evaluation(trial: TrialLike, scored_under: dict[str, str]) -> bool:
    """Whether a finished trial scored under `scored_under` (evaluation items) needs no re-score for `trial`."""
    return _matches(evaluation_items(trial.params()), scored_under)

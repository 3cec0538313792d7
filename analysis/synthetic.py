"""Synthetic studies with a known ground truth, logged to MLflow by the README's run contract.

The analysis is only as trustworthy as its check against answers known in advance: these
helpers write a parent run and one child run per trial (tags, dotted params, metrics by
step, optional sample grids, optional `health` verdict and diversity metric) exactly as
`orchestrator.tracking` does, but from numbers chosen here, with nothing trained.  Used by
the tests; handy for trying `gat-study analyze`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from analysis.contract import (FLOP_CONVENTION, FLOPS_TAG, HEALTH_REASON_TAG, HEALTH_TAG, PARENT_TAG, ROLE_TAG,
                               STATUS_TAG, STUDY_TAG, TRIAL_ID_TAG)
from analysis.select import diversity_key


@dataclass
class SyntheticTrial:
    """One trial: its config (dotted keys), compute columns and metric values by step."""

    config: dict[str, Any]
    gflops_g: float
    params_g: float
    macs_per_sample_iter: float
    metrics: dict[str, dict[int, float]] = field(default_factory=dict)  # key -> step -> value
    status: str = "completed"
    reason: str = ""
    final_step: int | None = None
    sample: np.ndarray | None = None  # (H, W, 3) in [0, 1], logged as samples/final.png
    params: dict[str, Any] = field(default_factory=dict)  # extra run params (`sample_gflops`, ...), override defaults
    health: str | None = None  # the `health` tag (ok | collapsed | diverged); None: no tag, as in older stores
    health_reason: str = ""

    @property
    def name(self) -> str:
        return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(self.config.items())
                        if k.startswith(("model.width", "model.depth", "model.patch", "train.mng", "train.seed",
                                                         "train.flops_budget")))


def model_cost(width: int, depth: int, patch: int, resolution: int = 16) -> dict[str, float]:
    """A transformer's rough G cost: 12·depth·width² MACs per token, tokens = (resolution/patch)²."""
    tokens = (resolution // patch) ** 2
    params = 12 * depth * width ** 2 + 3 * patch * patch * width
    gmacs = params * tokens / 1e9
    return {"gflops_g": gmacs, "params_g": float(params), "macs_per_sample_iter": 6 * gmacs * 1e9}


def synthetic_trial(width: int, depth: int, patch: int, final_value: float, *, seed: int = 0, steps: int = 400,
                    interval: int = 100, batch_size: int = 32, resolution: int = 16, metric: str = "fd_classifier",
                    extra: dict[str, Any] | None = None, curve: Callable[[float], float] | None = None,
                    block_util: Sequence[float] | None = None, diverge_at: int | None = None,
                    sample: np.ndarray | None = None, diversity: float | None = None, health: str | None = None,
                    health_reason: str = "") -> SyntheticTrial:
    """A trial whose metric falls to `final_value` at the last step along `curve` (a multiplier of progress).

    `diverge_at` makes the losses non-finite from that step on, stops evaluations there and
    marks the trial diverged, like the trainer does.  `diversity` logs `diversity_<extractor>` at
    every evaluation, moving linearly from 0.5 at step 0 to that final value (a collapsing trial
    falls, a healthy one rises); `health` and `health_reason` are the trainer's verdict tags.
    """
    cost = model_cost(width, depth, patch, resolution)
    curve = curve or (lambda progress: 1.0 + 3.0 * (1.0 - progress) ** 2)
    config = {"dataset.name": "shapes", "dataset.resolution": resolution, "model.preset": None, "model.width": width,
              "model.depth": depth, "model.heads": 4, "model.patch_size": patch, "train.steps": steps,
              "train.batch_size": batch_size, "train.lr": 2e-4, "train.lr_rule": "width", "train.mng": "exp",
              "train.mng_levels": 4, "train.seed": seed, "train.vfm": None, "eval.metric": metric,
              "eval.interval": interval, **(extra or {})}
    # an optional section switched on (`train.vfm.weight` given) has no `train.vfm: None` any more
    config = {k: v for k, v in config.items() if not (v is None and any(c.startswith(k + ".") for c in config))}
    last = steps if diverge_at is None else diverge_at
    evals = [s for s in range(0, steps + 1, interval) if s < last] + ([steps] if diverge_at is None else [])
    rng = np.random.default_rng(seed + 1000 * width + patch)
    macs = cost["macs_per_sample_iter"] * batch_size
    metrics: dict[str, dict[int, float]] = {metric: {}, "eval_samples": {}, "train_flops": {}, "loss_d": {},
                                            "loss_g": {}}
    for s in evals:
        metrics[metric][s] = final_value * curve(s / steps)
        metrics["eval_samples"][s] = 1000.0 if s == steps else 500.0
    for s in range(0, last + 1, max(1, interval // 4)):
        metrics["train_flops"][s] = macs * s
        broken = diverge_at is not None and s >= diverge_at
        metrics["loss_d"][s] = float("nan") if broken else 1.2 + 0.1 * rng.standard_normal()
        metrics["loss_g"][s] = float("nan") if broken else 0.8 + 0.1 * rng.standard_normal()
    if block_util is not None:
        for i, u in enumerate(block_util):
            metrics[f"block_util_{i}"] = {s: u * (0.5 + 0.5 * s / steps) for s in evals}
    if diversity is not None:
        metrics[diversity_key(metric)] = {s: 0.5 + (diversity - 0.5) * s / steps
                                                                   for s in evals}
    status, reason = ("completed", "") if diverge_at is None else ("diverged", f"non-finite loss_d at step {diverge_at}")
    return SyntheticTrial(config=config, metrics=metrics, status=status, reason=reason, final_step=last,
                          sample=sample, health=health, health_reason=health_reason, **cost)


def family_trial(family: str, width: int, depth: int, patch: int, final_value: float, *, steps: int = 400,
                 interval: int = 100, batch_size: int = 32, resolution: int = 16, metric: str = "fd_classifier",
                 seed: int = 0, sample_steps: int = 8, eval_nfe: Sequence[int] = (1, 2, 4, 8), guidance: float = 1.0,
                 nfe_curve: Callable[[int], float] | None = None, curve: Callable[[float], float] | None = None,
                 extra: dict[str, Any] | None = None, diversity: float | None = None, health: str | None = None,
                 health_reason: str = "") -> SyntheticTrial:
    """A GAT (`family="gat"`) or DiT (`"dit"`) trial of a family comparison, with the family's compute columns.

    GAT: `sample_gflops` = one G forward.  DiT: training costs 3 forwards per sample-iteration
    instead of the GAN's 6, D costs nothing, `sample_gflops` = sample_steps x forward (x 2 with
    guidance), and the final step carries `<metric>_nfe<k>` = final_value x nfe_curve(k) (default
    (sample_steps / k)^0.5, so the k = sample_steps value is the final one) with `sample_gflops_nfe<k>`
    for every k in `eval_nfe`, like `DiffusionTrainer.final_evaluate`.  `diversity`, `health` and
    `health_reason` as in `synthetic_trial`.
    """
    if family not in ("gat", "dit"):
        raise ValueError(f"family: 'gat' or 'dit', not {family!r}")
    config = {"model.family": family, "train.diffusion.sample_steps": sample_steps,
              "train.diffusion.eval_nfe": list(eval_nfe), "train.diffusion.guidance": guidance, **(extra or {})}
    trial = synthetic_trial(width, depth, patch, final_value, seed=seed, steps=steps, interval=interval,
                            batch_size=batch_size, resolution=resolution, metric=metric, extra=config, curve=curve,
                            diversity=diversity, health=health, health_reason=health_reason)
    gflops = trial.gflops_g
    if family == "gat":
        trial.params = {"sample_gflops": gflops}
        return trial
    factor = 2 if guidance > 1.0 else 1
    trial.macs_per_sample_iter = 3 * gflops * 1e9
    flops = {s: trial.macs_per_sample_iter * batch_size * s for s in trial.metrics["train_flops"]}
    losses = trial.metrics.pop("loss_d")
    trial.metrics.pop("loss_g")
    evals = sorted(trial.metrics[metric])
    trial.metrics.update({"train_flops": flops, "loss_diffusion": {s: 0.1 + abs(v - 1.2) for s, v in losses.items()},
                          "sample_gflops": {s: gflops * sample_steps * factor for s in evals}})
    nfe_curve = nfe_curve or (lambda k: (sample_steps / k) ** 0.5)
    last = evals[-1]
    for k in eval_nfe:
        trial.metrics[f"{metric}_nfe{k}"] = {last: final_value * nfe_curve(k)}
        trial.metrics[f"sample_gflops_nfe{k}"] = {last: gflops * k * factor}
    trial.params = {"sample_gflops": gflops * sample_steps * factor, "gflops_d": 0.0, "params_d": 0.0}
    return trial


def power_law_trials(n: int, *, a: float = 5.0, b: float = 0.4, E: float = 0.0, noise: float = 0.05,
                     patches: Sequence[int] = (2,), seeds: Sequence[int] = (0,), rng_seed: int = 0,
                     min_width: int = 32, max_width: int = 512, depth: int = 4,
                     diversity: float | None = None, health: str | None = None) -> list[SyntheticTrial]:
    """`n` widths (geometric) x patches x seeds with final metric = E + a·gflops_g^-b · lognormal noise
    (b = 0: flat, no law; b < 0: the wrong sign); `diversity` and `health` as in `synthetic_trial`."""
    rng = np.random.default_rng(rng_seed)
    widths = np.unique(np.round(np.geomspace(min_width, max_width, n)).astype(int))
    trials = []
    for width in widths:
        for patch in patches:
            for seed in seeds:
                g = model_cost(int(width), depth, patch)["gflops_g"]
                value = (E + a * g ** -b) * float(np.exp(noise * rng.standard_normal()))
                trials.append(synthetic_trial(int(width), depth, patch, value, seed=seed, diversity=diversity,
                                              health=health))
    return trials


@dataclass(frozen=True)
class IsoflopTruth:
    """The law an `isoflop_trials` study follows: N_opt = k·C^a, metric_opt = m·C^-b (N = params_g)."""

    a: float
    b: float
    k: float
    m: float
    curvature: float

    def n_opt(self, budget: float | np.ndarray) -> float | np.ndarray:
        return self.k * np.asarray(budget, float) ** self.a

    def metric_opt(self, budget: float | np.ndarray) -> float | np.ndarray:
        return self.m * np.asarray(budget, float) ** -self.b

    def metric(self, size: float, budget: float) -> float:
        """The noiseless final metric of a model of `size` parameters trained with `budget` MACs."""
        return float(self.metric_opt(budget) * np.exp(self.curvature * np.log(size / self.n_opt(budget)) ** 2))


def isoflop_trials(budgets: Sequence[float], widths: Sequence[int], *, a: float = 0.5, b: float = 0.3,
                   m: float = 2e4, curvature: float = 0.25, noise: float = 0.03, seeds: Sequence[int] = (0,),
                   rng_seed: int = 0, depth: int = 4, patch: int = 2, batch_size: int = 32,
                   metric: str = "fd_classifier") -> tuple[list[SyntheticTrial], IsoflopTruth]:
    """An isoFLOP study: budgets x widths x seeds, each trial's steps from its budget (`train.flops_budget`), final
    metric = metric_opt(C)·exp(curvature·ln(N / N_opt(C))²)·lognormal(noise), N = params_g.

    k is chosen so that the middle budget (geometric mean) is best served by the geometric middle of the sizes.
    Returns the trials and the truth they follow."""
    rng = np.random.default_rng(rng_seed)
    sizes = {w: model_cost(int(w), depth, patch) for w in widths}
    mid_n = float(np.exp(np.mean([np.log(c["params_g"]) for c in sizes.values()])))
    mid_c = float(np.exp(np.mean(np.log(np.asarray(budgets, float)))))
    truth = IsoflopTruth(a=a, b=b, k=mid_n / mid_c ** a, m=m, curvature=curvature)
    trials = []
    for budget in budgets:
        for width, cost in sizes.items():
            steps = max(1, int(budget // (cost["macs_per_sample_iter"] * batch_size)))
            for seed in seeds:
                value = truth.metric(cost["params_g"], budget) * float(np.exp(noise * rng.standard_normal()))
                trial = synthetic_trial(int(width), depth, patch, value, seed=seed, steps=steps,
                                        interval=max(1, steps // 4), batch_size=batch_size, metric=metric,
                                        extra={"train.flops_budget": float(budget), "train.steps": None})
                trial.params = {"steps": steps}
                trials.append(trial)
    return trials, truth


def log_study(tracking_uri: str, name: str, trials: Sequence[SyntheticTrial], *, experiment: str | None = None,
              base_config: dict[str, Any] | None = None, parent_status: str = "completed",
              swept: Sequence[str] | None = None) -> str:
    """Write `trials` as study `name` (parent + child runs) to `tracking_uri`; returns the parent run id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment or name)
    exp_id = found.experiment_id if found else client.create_experiment(experiment or name)
    parent = client.create_run(exp_id, run_name=name, tags={ROLE_TAG: "study", STUDY_TAG: name,
                                                             "status": parent_status, "git_commit": "synthetic",
                                                             "git_dirty": "false"}).info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if base_config is not None:
            (folder / "resolved_study.json").write_text(json.dumps({"name": name, **base_config}))
            client.log_artifact(parent, str(folder / "resolved_study.json"), artifact_path="study")
        if swept is None:  # the grid keys: every key whose value differs between trials
            keys = {k for t in trials for k in t.config}
            swept = sorted(k for k in keys if len({json.dumps(t.config.get(k)) for t in trials}) > 1)
        for index, trial in enumerate(trials):
            tags = {ROLE_TAG: "trial", STUDY_TAG: name, PARENT_TAG: parent, TRIAL_ID_TAG: f"synth{index:05d}",
                    STATUS_TAG: trial.status, "final_step": str(trial.final_step), FLOPS_TAG: FLOP_CONVENTION}
            if trial.reason:
                tags["reason"] = trial.reason
            if trial.health is not None:
                tags.update({HEALTH_TAG: trial.health, HEALTH_REASON_TAG: trial.health_reason})
            run_id = client.create_run(exp_id, run_name=trial.name, tags=tags).info.run_id
            params = {**trial.config, "gflops_g": trial.gflops_g, "gflops_d": trial.gflops_g,
                      "params_g": trial.params_g, "params_d": trial.params_g,
                      "macs_per_sample_iter": trial.macs_per_sample_iter, "steps": trial.config.get("train.steps"),
                      "trial_index": index, "swept": list(swept), **trial.params}
            items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()]
            metrics = [Metric(key, float(v), 1_700_000_000_000 + step, step)
                       for key, values in trial.metrics.items() for step, v in values.items()]
            client.log_batch(run_id, params=items[:90], metrics=metrics[:800])  # MLflow: <= 100 params a batch
            for i in range(90, len(items), 90):
                client.log_batch(run_id, params=items[i:i + 90])
            for i in range(800, len(metrics), 900):
                client.log_batch(run_id, metrics=metrics[i:i + 900])
            if trial.sample is not None:
                from matplotlib import image as mpimg

                path = folder / f"{run_id}" / "final.png"
                path.parent.mkdir()
                mpimg.imsave(path, np.clip(trial.sample, 0, 1))
                client.log_artifact(run_id, str(path), artifact_path="samples")
            client.set_terminated(run_id, "FINISHED" if trial.status == "completed" else "FAILED")
    client.set_terminated(parent, "FINISHED")
    return parent

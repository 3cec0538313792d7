"""The training loop of every family: data -> `iteration()` per step -> evaluations -> checkpoints -> model file.

`train(config, workdir, report)` is all a caller needs.  It resumes from the
newest checkpoint in `workdir` (run it again after a crash and it continues),
continues a finished trial whose `train.steps` was raised from its final checkpoint,
reports progress through the `report` callback and never imports Ray or MLflow.
`rescore(config, workdir, report)` scores a finished trial's final model again under
new evaluation settings, without training.

Evaluations and sample grids leave the training random streams untouched, so a trial
trains the same steps whatever its evaluation interval and sample counts, and a trial
made longer continues exactly as one trained to the new length from the start.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from gat_core import checkpoint as ckpt
from gat_core.atomic import write_atomic
from gat_core.config import TrialConfig
from gat_core.distributed import DataParallel
from gat_core.families import make_trainer
from gat_core.health import TAIL_FRACTION, DivergenceCheck, Health, HealthCheck
from gat_core.trial import MODEL_FILE, TrialBase, resolve_device

RESULT_FILE = "result.json"


@dataclass
class TrainEvent:
    """What the trainer tells its caller; `kind` says why it speaks now."""

    # "persist" comes just before a checkpoint is written: the caller makes what it was told durable first, so a
    # restart from that checkpoint (which skips the steps before it) never leaves a gap in the caller's record
    kind: Literal["start", "progress", "eval", "persist", "checkpoint", "final"]
    step: int
    total_steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint_dir: Path | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    replaces: bool = False  # the metrics replace values reported at this step before (a re-scored final evaluation)


@dataclass
class TrainResult:
    """How a trial ended; `health` is the verdict on a completed one (`gat_core.health`)."""

    status: Literal["completed", "diverged"]
    step: int
    metrics: dict[str, float]
    reason: str = ""
    model_path: Path | None = None
    health: Health = "ok"
    health_reason: str = ""


Report = Callable[[TrainEvent], None]



def _mean_logs(sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
    return {k: float(v) / count for k, v in sums.items()}


def _read_result(result_file: Path) -> dict | None:
    """The result file of a finished trial (None while it is unfinished)."""
    return json.loads(result_file.read_text()) if result_file.exists() else None


def _as_result(saved: dict, workdir: Path) -> TrainResult:
    return TrainResult(status=saved["status"], step=saved["step"], metrics=saved["metrics"],
                       reason=saved.get("reason", ""), model_path=workdir / MODEL_FILE,
                       health=saved.get("health", "diverged" if saved["status"] == "diverged" else "ok"),
                       health_reason=saved.get("health_reason", saved.get("reason", "")))


def _rng_untouched(device: torch.device):
    """Run an evaluation without moving the training random streams (CPU, and the trial's GPU)."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _never_shorter(workdir: Path, trained: int, total: int) -> ValueError:
    return ValueError(f"train.steps: the trial in {workdir} has trained {trained} steps and is now asked for "
                      f"{total}: a trial is never shortened (its metrics at step {total} are in its history); "
                      f"set train.steps (or train.flops_budget) back to at least {trained}")


def train(cfg: TrialConfig, workdir: Path, report: Report | None = None, cache_dir: Path | None = None,
          resume_from: Path | None = None) -> TrainResult:
    """Run (or continue) one trial in `workdir`; returns how it ended.

    A finished trial (its result file exists) returns at once when it has its length (or diverged);
    a completed one asked for more steps continues from its final checkpoint (its loss_d tail,
    which the health verdict reads, carried over); one asked for fewer steps is a ValueError.
    Otherwise training continues from `resume_from` or the newest readable checkpoint in
    `workdir/checkpoints`.

    Data-parallel (a torch.distributed process group is set up): every worker calls this with the
    same arguments and gets the same sequence of events; the main worker (rank 0) alone evaluates,
    writes checkpoints, samples and the result, so the others' events carry no metrics or paths.
    """
    workdir = Path(workdir)
    report = report or (lambda event: None)
    result_file = workdir / RESULT_FILE
    dp, device = DataParallel.current(), resolve_device(cfg.train.device)
    saved = _read_result(result_file) if dp.is_main else None

    def finished(whether: bool) -> TrainResult | None:
        if not dp.any(whether, device):
            return None
        return _as_result(saved, workdir) if saved else TrainResult("completed", 0, {}, "finished on the main worker")

    done = finished(saved is not None and (saved["status"] != "completed" or saved["step"] == cfg.train.steps))
    if done:
        return done
    began = time.perf_counter()
    trainer = make_trainer(cfg, workdir, cache_dir)
    total = trainer.total_steps
    if done := finished(saved is not None and saved["step"] == total):  # a flops budget of the same length
        return done
    if dp.any(saved is not None and saved["step"] > total, device):
        raise _never_shorter(workdir, saved["step"] if saved else total + 1, total)
    carried: list[list[float]] = []
    if saved is not None:  # a completed trial made longer: it continues from its final checkpoint
        carried = [p for p in saved.get("loss_d_tail", []) if p[0] > total * (1 - TAIL_FRACTION)]
        result_file.unlink()
    state = ckpt.load(resume_from) if resume_from else ckpt.load_latest(workdir / "checkpoints")
    if state is not None:
        trainer.load_state_dict(state)
    if dp.any(trainer.step > total, device):
        raise _never_shorter(workdir, trainer.step, total)
    dp.check_same("the step to resume from", trainer.step, device)
    if dp.enabled:  # same weights everywhere, but each worker draws its own noise
        torch.manual_seed(dp.noise_seed(cfg.train.seed, trainer.step))
    main = dp.is_main
    accuracy = trainer.prepare_eval() if main else math.nan
    t, e = cfg.train, cfg.eval

    def evaluation(num_samples: int) -> dict[str, float]:
        if not main:
            return {}
        with _rng_untouched(trainer.device):
            return {**trainer.evaluate(num_samples), "train_flops": trainer.train_flops()}

    start = {"classifier_accuracy": accuracy, **({"resumed_from_step": float(trainer.step)} if trainer.step else {})}
    report(TrainEvent("start", trainer.step, total, start if main else {}))
    if trainer.step == 0:
        report(TrainEvent("eval", 0, total, evaluation(e.num_samples)))

    sums: dict[str, torch.Tensor] = {}
    count, tic = 0, time.perf_counter()
    divergence, health = DivergenceCheck.of(cfg), HealthCheck.of(cfg, total)
    tail = carried  # [step, loss_d] of the reports HealthCheck keeps, saved with the result for a later extension
    health.tail += [value for _, value in carried]
    while trainer.step < total:
        logs_now = (trainer.step + 1) % t.log_every == 0 or trainer.step + 1 == total
        before = trainer.probe_before() if logs_now else None
        logs = trainer.iteration()
        for k, v in logs.items():
            sums[k] = sums.get(k, 0) + v.detach().float()
        count += 1
        step = trainer.step
        if logs_now:
            metrics = {**_mean_logs(dp.average(sums), count), **trainer.probe_after(before)}
            elapsed = time.perf_counter() - tic
            metrics.update(train_flops=trainer.train_flops(), sec_per_step=elapsed / count, **trainer.learning_rates(),
                           macs_per_sec=trainer.cost.macs_per_sample_iter * t.batch_size * count / elapsed)
            reason = divergence.check(step, metrics)
            if reason:
                return _finish(trainer, report, "diverged", metrics, reason)
            health.observe(step, metrics)
            if "loss_d" in metrics and step > total * (1 - TAIL_FRACTION):
                tail.append([step, metrics["loss_d"]])
            report(TrainEvent("progress", step, total, metrics))
            sums, count, tic = {}, 0, time.perf_counter()
        if step % e.interval == 0 and step < total:
            with _rng_untouched(trainer.device):
                grid = {"samples": trainer.sample_grid(workdir / "samples" / f"step-{step:09d}.png")} if main else {}
            scores = evaluation(e.num_samples)
            reason = divergence.check_eval(step, scores)  # main worker's scores; every worker stops alike
            if dp.any(bool(reason), device):
                return _finish(trainer, report, "diverged", scores, reason or "collapse seen by the main worker")
            report(TrainEvent("eval", step, total, scores, artifacts=grid))
        if step % t.checkpoint_every == 0 and step < total:
            dp.check_in_sync(*trainer.networks(), device=device)
            report(TrainEvent("persist", step, total))
            if main:
                trainer.save_checkpoint()
            report(TrainEvent("checkpoint", step, total, checkpoint_dir=workdir / "checkpoints" if main else None))

    with _rng_untouched(trainer.device):  # trial_seconds: this attempt, setup and evaluations included
        metrics = {**trainer.final_evaluate(e.final_samples), "train_flops": trainer.train_flops(),
                   "trial_seconds": time.perf_counter() - began} if main else {}
    return _finish(trainer, report, "completed", metrics, verdict=health.verdict(metrics), tail=tail)


def _finish(trainer: TrialBase, report: Report, status: Literal["completed", "diverged"],
            metrics: dict[str, float], reason: str = "", verdict: tuple[Health, str] | None = None,
            tail: list[list[float]] | None = None) -> TrainResult:
    """Final checkpoint (what a longer run of the trial continues from, and what `rescore` scores), model
    file, sample grid and result marker; then the final event.

    `verdict` is the health of a completed trial; a diverged one is unhealthy for its `reason`; `tail` the
    [step, loss_d] reports of the verdict's window, kept for an extension or a re-score."""
    health, health_reason = verdict or ("diverged", reason)
    report(TrainEvent("persist", trainer.step, trainer.total_steps))  # every worker: the same events in order
    if not trainer.dp.is_main:
        report(TrainEvent("final", trainer.step, trainer.total_steps))
        return TrainResult(status=status, step=trainer.step, metrics={}, reason=reason)
    workdir = trainer.workdir
    trainer.save_checkpoint()
    model_path = trainer.save_model()
    with _rng_untouched(trainer.device):
        grid = trainer.sample_grid(workdir / "samples" / "final.png")
    report(TrainEvent("final", trainer.step, trainer.total_steps, metrics, checkpoint_dir=workdir / "checkpoints",
                      artifacts={"samples": grid, "model": model_path}))
    # written last: a crash before this point re-runs only the final evaluation and report
    _write_result(workdir, {"status": status, "step": trainer.step, "metrics": metrics, "reason": reason,
                            "health": health, "health_reason": health_reason, "loss_d_tail": tail or []})
    return TrainResult(status=status, step=trainer.step, metrics=metrics, reason=reason, model_path=model_path,
                       health=health, health_reason=health_reason)


def _write_result(workdir: Path, result: dict) -> None:
    """The result marker, written atomically (a re-score rewrites it)."""
    write_atomic(workdir / RESULT_FILE, json.dumps(result, indent=2))


def rescore(cfg: TrialConfig, workdir: Path, report: Report | None = None,
            cache_dir: Path | None = None) -> TrainResult:
    """Score a completed trial's model again under `cfg.eval` (another metric, more samples, other health
    thresholds, ...) without training: the final evaluation and health verdict of `train`, from the trial's
    final checkpoint, reported as a final event that `replaces` the values of the same step; the result file
    is rewritten.  The loss_d part of the verdict uses the tail saved with the result (a result saved
    without one keeps its earlier `collapsed` verdict).

    Data-parallel: the main worker scores; the others report an empty final event.
    """
    workdir = Path(workdir)
    report = report or (lambda event: None)
    dp = DataParallel.current()
    if not dp.is_main:
        report(TrainEvent("final", 0, 0))
        return TrainResult("completed", 0, {}, "scored on the main worker")
    saved = _read_result(workdir / RESULT_FILE)
    if saved is None or saved["status"] != "completed":
        raise ValueError(f"{workdir}: no completed trial to re-score (its {RESULT_FILE} is "
                         f"{'missing' if saved is None else saved['status']})")
    trainer = make_trainer(cfg, workdir, cache_dir)
    state = ckpt.load_latest(workdir / "checkpoints")
    if state is None or int(state["step"]) != saved["step"] or saved["step"] != trainer.total_steps:
        found = "none" if state is None else f"step {state['step']}"
        raise ValueError(f"{workdir}: cannot re-score: it finished at step {saved['step']}, its newest checkpoint "
                         f"is {found} and train.steps asks for {trainer.total_steps}")
    trainer.load_state_dict(state)
    with _rng_untouched(trainer.device):
        accuracy = trainer.prepare_eval()
        metrics = {**trainer.final_evaluate(cfg.eval.final_samples), "classifier_accuracy": accuracy,
                   "train_flops": trainer.train_flops()}
        grid = trainer.sample_grid(workdir / "samples" / "final.png")
    health = HealthCheck.of(cfg, trainer.total_steps)
    tail = saved.get("loss_d_tail")
    health.tail = [value for _, value in tail or []]
    verdict = health.verdict(metrics)
    if tail is None and verdict[0] == "ok" and saved.get("health") == "collapsed":
        verdict = (saved["health"], saved.get("health_reason", ""))
    report(TrainEvent("final", trainer.step, trainer.total_steps, metrics, artifacts={"samples": grid},
                      replaces=True))
    _write_result(workdir, {**saved, "metrics": metrics, "health": verdict[0], "health_reason": verdict[1]})
    return TrainResult(status="completed", step=trainer.step, metrics=metrics, model_path=workdir / MODEL_FILE,
                       health=verdict[0], health_reason=verdict[1])

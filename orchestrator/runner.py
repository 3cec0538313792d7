"""Run a study on Ray Tune: one Tune trial per grid point, each calling `gat_core.train`.

Resumption is keyed on the trial id (a hash of the trial's config): trials whose
MLflow child run says completed or diverged are not started again; the others
continue from their newest checkpoint, in their existing child run.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.plan import compute_columns
from orchestrator.progress import ProgressTable
from orchestrator.study import Study
from orchestrator.tracking import FINAL_STATUSES, StudyTracker, TrialLogger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialOutcome:
    trial_id: str
    name: str
    status: str
    step: int
    metric: float | None
    run_id: str
    workdir: Path


def _newest_checkpoint(*folders: Path) -> Path | None:
    from gat_core.checkpoint import list_checkpoints

    candidates = [p for folder in folders for p in list_checkpoints(folder)]
    return max(candidates, key=lambda p: p.name) if candidates else None


def run_trial(config: dict[str, Any], *, trials: dict[str, str], run_ids: dict[str, str], tracking_uri: str,
              out_dir: str, cpus: float) -> None:
    """Ray Tune function trainable: one trial from (re)start to its final report."""
    import torch
    from ray import tune

    from gat_core.config import TrialConfig
    from gat_core.train import TrainEvent, train

    torch.set_num_threads(max(1, int(cpus)))
    # a tracking server that is down must not stall training: fail fast, TrialLogger keeps and retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    trial_id = config["trial_id"]
    cfg = TrialConfig.model_validate_json(trials[trial_id])
    workdir = Path(out_dir) / "trials" / trial_id
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "worker.pid").write_text(str(os.getpid()))  # which process trains this trial now
    logger = TrialLogger(tracking_uri, run_ids[trial_id])
    import ray

    logger.start(node=ray.get_runtime_context().get_node_id())

    resume_from = None
    restored = tune.get_checkpoint()
    if restored is not None:  # Ray restarted this trial: its persisted checkpoint may be the newest
        with restored.as_directory() as folder:
            newest = _newest_checkpoint(Path(folder), workdir / "checkpoints")
            if newest is not None and newest.parent != workdir / "checkpoints":
                resume_from = workdir / "restored" / newest.name
                resume_from.parent.mkdir(parents=True, exist_ok=True)
                resume_from.write_bytes(newest.read_bytes())

    reported_final = False

    def report(event: TrainEvent) -> None:
        nonlocal reported_final
        reported_final = reported_final or event.kind == "final"
        if event.metrics:
            logger.log(event.step, event.metrics, always=event.kind == "start")
        for name, path in event.artifacts.items():
            if name == "samples":
                logger.artifact(path, "samples")
        if event.kind == "final":
            logger.flush()
            logger.artifact(event.artifacts["model"], "model")
        checkpoint = None
        if event.kind == "checkpoint" and event.checkpoint_dir is not None:
            logger.flush()  # metrics up to a checkpoint are never lost with the process
            checkpoint = tune.Checkpoint.from_directory(str(event.checkpoint_dir))
        tune.report({"step": event.step, "total_steps": event.total_steps, "kind": event.kind, **event.metrics},
                    checkpoint=checkpoint)

    try:
        result = train(cfg, workdir, report, cache_dir=Path(out_dir) / "cache", resume_from=resume_from)
    except Exception as exc:
        logger.finish("failed", -1, reason=f"{type(exc).__name__}: {exc}")
        raise
    if not reported_final:  # finished in an earlier attempt whose last writes may not have reached MLflow
        logger.log(result.step, result.metrics)
    logger.finish(result.status, result.step, result.reason)


def init_ray(address: str | None, dashboard: bool, num_cpus: int | None = None) -> None:
    """Start an embedded Ray bound to 127.0.0.1, or connect to the cluster at `address`."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune snapshots its state whenever a trial checkpoints (we keep one per trial): expected, not a problem
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    # A single-machine Ray on the loopback address: Ray's own switch for laptops (it otherwise advertises the
    # machine's public address).  Read at import time by Ray, so set it for this process and its children.
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
             log_to_driver=False, configure_logging=False)


def run_study(study: Study, *, address: str | None = None, tracking_uri: str | None = None,
              storage: str | None = None, dashboard: bool = False, num_cpus: int | None = None,
              quiet: bool = False) -> list[TrialOutcome]:
    """Run every unfinished trial of `study`; return the outcome of all trials."""
    cfg = study.config
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or cfg.tracking_uri
    tracker = StudyTracker(uri, cfg.experiment, artifact_root=out / "mlartifacts")
    parent_id = tracker.ensure_parent(study)
    existing = tracker.trial_runs(cfg.name)
    run_ids = {t.trial_id: tracker.ensure_child(study, t, parent_id, compute_columns(t), existing)
               for t in study.trials}
    finished = {tid for tid, run in existing.items() if run.data.tags.get("status") in FINAL_STATUSES}
    todo = [t for t in study.trials if t.trial_id not in finished]
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    say(f"study {cfg.name}: {len(study.trials)} trials, {len(study.trials) - len(todo)} already finished, "
        f"{len(todo)} to run; MLflow: {uri} (experiment {cfg.experiment})")

    if todo:
        _fit(study, todo, run_ids, uri, out, storage or str(out / "ray"), address, dashboard, num_cpus, quiet)
    outcomes = collect_outcomes(study, tracker)
    unfinished = [o for o in outcomes if o.status not in (*FINAL_STATUSES, "failed")]
    for o in unfinished:  # stopped by Ctrl-C or a lost driver: resumable, say so
        tracker.client.set_tag(o.run_id, "status", "interrupted")
        tracker.client.set_terminated(o.run_id, "KILLED")
    if unfinished:
        say(f"interrupted: {len(unfinished)} trials unfinished; run the same command again to resume them")
    status = ("interrupted" if unfinished else
              "failed" if any(o.status == "failed" for o in outcomes) else "completed")
    tracker.set_study_status(parent_id, status)
    return collect_outcomes(study, tracker) if unfinished else outcomes


def _fit(study: Study, todo: list, run_ids: dict[str, str], uri: str, out: Path, storage: str,
         address: str | None, dashboard: bool, num_cpus: int | None, quiet: bool) -> None:
    from ray import tune

    res = study.config.resources
    init_ray(address, dashboard, num_cpus)
    trainable = tune.with_parameters(
        run_trial, trials={t.trial_id: t.config.model_dump_json() for t in todo}, run_ids=run_ids,
        tracking_uri=uri, out_dir=str(out), cpus=res.cpus_per_trial)
    trainable = tune.with_resources(trainable, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
    names = {t.trial_id: t.name for t in todo}
    tuner = tune.Tuner(
        trainable,
        param_space={"trial_id": tune.grid_search([t.trial_id for t in todo])},
        # reused actors skip a process start and the torch import for every trial after the first wave
        tune_config=tune.TuneConfig(max_concurrent_trials=res.max_concurrent or 0, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{study.config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage,  # where Tune persists trial checkpoints: shared storage on a cluster
            failure_config=tune.FailureConfig(max_failures=res.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
            callbacks=[] if quiet else [ProgressTable(names)],
        ),
    )
    try:
        tuner.fit()  # Ctrl-C: Tune stops the trials and returns; MLflow says which ones finished
    except KeyboardInterrupt:
        pass


def collect_outcomes(study: Study, tracker: StudyTracker) -> list[TrialOutcome]:
    runs = tracker.trial_runs(study.config.name)
    metric = study.config.eval.metric
    outcomes = []
    for t in study.trials:
        run = runs.get(t.trial_id)
        tags = run.data.tags if run else {}
        outcomes.append(TrialOutcome(
            trial_id=t.trial_id, name=t.name, status=tags.get("status", "pending"),
            step=int(tags.get("final_step", tags.get("logged_through_step", 0)) or 0),
            metric=run.data.metrics.get(metric) if run else None, run_id=run.info.run_id if run else "",
            workdir=study.config.out / "trials" / t.trial_id))
    return outcomes

"""Run a study on Ray Tune: one Tune trial per grid point, each calling `gat_core.loop.train`.

Resumption is keyed on the trial id (a hash of what it learns from, `orchestrator.trial_identity`): trials
whose MLflow child run says completed or diverged are not started again; the others continue from their
newest checkpoint, in their existing child run.  A completed trial asked for more steps continues from its
final checkpoint, one with changed evaluation settings is re-scored (`trial_actions`), fewer steps refused.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import RunTag

from orchestrator.cluster import cluster_facts, default_concurrency, init_ray
from orchestrator.interrupt import sigterm_as_ctrl_c
from orchestrator.plan import compute_columns
from orchestrator.progress import ProgressTable
from orchestrator.study import Study, StudyError
from orchestrator.tracking import (EARLIER_ID_TAG, EVAL_TAG, FINAL_STATUSES, HEALTH_REASON_TAG, HEALTH_TAG,
                                   Publish, Reporter, StudyTracker, TrialLogger, machine_facts)
from orchestrator.trial_identity import config_params, evaluation_items, same_evaluation, same_identity

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
    diversity: float | None = None
    health: str = ""  # ok | collapsed | diverged once finished ("" before)
    health_reason: str = ""
    reason: str = ""  # why a failed or diverged trial ended
    gflops: float | None = None  # G forward MACs per image (DiT convention)
    train_flops: float | None = None  # training MACs spent so far


def is_permanent(exc: BaseException) -> bool:
    """Errors that a restart from the checkpoint cannot fix: an invalid config or data, a missing file, a
    checkpoint of another version.  Crashes, lost nodes and corrupt checkpoints are worth a retry."""
    from gat_core.checkpoint import IncompatibleCheckpoint

    return isinstance(exc, (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, IncompatibleCheckpoint))


def _newest_checkpoint(*folders: Path) -> Path | None:
    from gat_core.checkpoint import list_checkpoints

    candidates = [p for folder in folders for p in list_checkpoints(folder)]
    return max(candidates, key=lambda p: p.name) if candidates else None


def run_trial(config: dict[str, Any], *, trials: dict[str, str], run_ids: dict[str, str], tracking_uri: str,
              out_dir: str, cpus: float, rescore: frozenset[str] = frozenset(),
              env: dict[str, tuple[str, str]] | None = None) -> None:
    """Ray Tune function trainable: one single-worker trial from (re)start to its final report (or the
    re-scoring of a finished trial whose id is in `rescore`)."""
    from ray import tune

    def publish(metrics: dict[str, Any], folder: Path | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)) if folder else None)

    trial_id = config["trial_id"]
    _attempt(trial_id, trials[trial_id], run_ids[trial_id], tracking_uri=tracking_uri, out_dir=out_dir, cpus=cpus,
             restored=tune.get_checkpoint(), publish=publish, rescore=trial_id in rescore, env=env)


def run_trial_data_parallel(config: dict[str, Any], *, trials: dict[str, str], run_ids: dict[str, str],
                            tracking_uri: str, out_dir: str, cpus: float, gpus: float, workers: int,
                            max_failures: int, storage: str, local: bool,
                            rescore: frozenset[str] = frozenset(), env: dict[str, tuple[str, str]] | None = None) -> None:
    """Ray Tune function trainable of a multi-worker trial: a Ray Train TorchTrainer (gloo on CPU, NCCL on GPU)
    whose workers each run the trial on their slice of every batch; rank 0's reports reach Tune and MLflow.

    Ray Train restarts a failed worker group from the trial's newest persisted checkpoint.  On the embedded
    local Ray (`local`) the workers meet through a file and gloo stays on loopback: nothing listens outside.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.loopback_backend import LoopbackTorchConfig

    trial_id = config["trial_id"]
    per_worker = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    backend = "nccl" if gpus else "gloo"
    torch_config = (LoopbackTorchConfig(backend=backend, store_dir=str(Path(out_dir) / "trials" / trial_id / "rendezvous"))
                    if local else TorchConfig(backend=backend))
    trainer = TorchTrainer(
        _data_parallel_worker,
        train_loop_config={"trial_id": trial_id, "config_json": trials[trial_id], "run_id": run_ids[trial_id],
                           "tracking_uri": tracking_uri, "out_dir": out_dir, "cpus": cpus,
                           "rescore": trial_id in rescore, "env": env or {}},
        torch_config=torch_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=per_worker),
        run_config=RunConfig(name=f"trial-{trial_id}", storage_path=storage, callbacks=[TuneReportCallback()],
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    trainer.fit()


def _data_parallel_worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker of a data-parallel trial; the process group is already set up."""
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    def publish(metrics: dict[str, Any], folder: Path | None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)) if folder else None)

    cfg = json.loads(loop["config_json"])
    batch = cfg.get("train", {}).get("batch_size")
    _attempt(loop["trial_id"], loop["config_json"], loop["run_id"], tracking_uri=loop["tracking_uri"],
             out_dir=loop["out_dir"], cpus=loop["cpus"], restored=ray.train.get_checkpoint(), publish=publish,
             rank=rank, rescore=loop.get("rescore", False), env=loop.get("env"),
             tags={"workers": str(world), "effective_batch_size": str(batch),
                   "per_worker_batch_size": str(batch // world), "dp_backend": _dist_backend()})


def _dist_backend() -> str:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_initialized() else ""


def _attempt(trial_id: str, config_json: str, run_id: str, *, tracking_uri: str, out_dir: str, cpus: float,
             restored: Any, publish: Publish, rank: int = 0, tags: dict[str, str] | None = None,
             rescore: bool = False, env: dict[str, tuple[str, str]] | None = None) -> None:
    """One attempt of one trial (one worker's part of it when data-parallel): resume, train, log; or, with
    `rescore`, the final evaluation of a finished trial again under its (changed) evaluation settings.

    Rank 0 logs to MLflow; every worker publishes the same sequence of reports (Ray Train needs that).
    """
    import torch

    from gat_core.atomic import write_atomic
    from gat_core.config import TrialConfig
    from gat_core.loop import rescore as rescore_trial
    from gat_core.loop import train

    torch.set_num_threads(max(1, int(cpus)))
    for name, (given, absolute) in (env or {}).items():  # the driver's weight paths ($GAT_STUDY_*): weights_env
        if os.environ.get(name) in (None, given):  # a node's own setting wins
            os.environ[name] = absolute
    # a tracking server that is down must not stall training: fail fast, TrialLogger keeps and retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    cfg = TrialConfig.model_validate_json(config_json)
    workdir = Path(out_dir) / "trials" / trial_id
    workdir.mkdir(parents=True, exist_ok=True)
    # which process trains this trial now (each data-parallel worker writes its own)
    (workdir / ("worker.pid" if rank == 0 else f"worker-rank{rank}.pid")).write_text(str(os.getpid()))
    logger = None
    if rank == 0:
        import ray

        logger = TrialLogger(tracking_uri, run_id)
        logger.start(node=ray.get_runtime_context().get_node_id(), tags=tags)

    resume_from = None
    if restored is not None:  # Ray restarted this trial: its persisted checkpoint may be the newest
        with restored.as_directory() as folder:
            newest = _newest_checkpoint(Path(folder), workdir / "checkpoints")
            if newest is not None and newest.parent != workdir / "checkpoints":
                resume_from = workdir / "restored" / f"rank{rank}" / newest.name
                write_atomic(resume_from, newest.read_bytes())

    report = Reporter(logger, publish)

    try:
        if rescore:
            result = rescore_trial(cfg, workdir, report, cache_dir=Path(out_dir) / "cache")
        else:
            result = train(cfg, workdir, report, cache_dir=Path(out_dir) / "cache", resume_from=resume_from)
    except Exception as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]  # one line in MLflow and the summary
        if logger is not None:
            logger.finish("failed", -1, reason=reason)
        if is_permanent(exc):  # no restart can fix it: end the trial now instead of letting Ray retry it
            log.error("trial %s failed: %s", trial_id, reason)
            return
        raise
    if logger is None:
        return
    if not report.reported_final:  # finished in an earlier attempt whose last writes may not have reached MLflow
        logger.log(result.step, result.metrics)
    # the settings of the final evaluation, when this attempt ran it (a result saved earlier keeps its record)
    scored = {EVAL_TAG: json.dumps(evaluation_items(config_params(cfg)))} if report.reported_final else {}
    logger.finish(result.status, result.step, result.reason, health=(result.health, result.health_reason),
                  tags=scored)


@dataclass(frozen=True)
class TrialAction:
    """What `run` does with one trial, given its child run: `new` (no run yet), `resume` (unfinished),
    `extend` (completed at `trained` < `target` steps), `rescore` (completed at its length, scored under other
    evaluation settings), `done`, or `refused` (trained past `target`: a trial is never shortened)."""

    kind: str
    trained: int  # steps trained so far
    target: int  # steps the study asks for now
    why: str = ""


def trained_steps(tags: dict[str, str]) -> int:
    """Steps a child run has trained: its `final_step` once finished, else the last step it logged."""
    def number(key: str) -> int:
        text = tags.get(key) or ""
        return int(text) if text.lstrip("-").isdigit() else 0

    return max(number("final_step") if tags.get("status") in FINAL_STATUSES else 0, number("logged_through_step"))


def scored_under(run: Any) -> dict[str, str]:
    """The evaluation settings a finished child run was scored under: its `eval_settings` tag, else (a run
    finished by an earlier gat-study, or whose final writes were lost) its params."""
    try:
        recorded = json.loads(run.data.tags[EVAL_TAG])
        if isinstance(recorded, dict):
            return {str(k): str(v) for k, v in recorded.items()}
    except (KeyError, ValueError):
        pass
    return evaluation_items(run.data.params)


def trial_actions(study: Study, runs: dict[str, Any], steps: dict[str, int]) -> dict[str, TrialAction]:
    """trial_id -> TrialAction for every trial of `study`, from its child run in `runs` (trial_id -> MLflow run)
    and the steps it asks for (`steps`, trial_id -> train.steps or what train.flops_budget gives)."""
    actions = {}
    for t in study.trials:
        run, target = runs.get(t.trial_id), steps[t.trial_id]
        if run is None:
            actions[t.trial_id] = TrialAction("new", 0, target)
            continue
        tags = run.data.tags
        status, trained = tags.get("status"), trained_steps(tags)
        if trained > target:
            kind = "refused"
        elif status == "completed" and trained < target:
            kind = "extend"
        elif status == "completed" and not same_evaluation(t, scored_under(run)):
            kind = "rescore"
        else:
            kind = "done" if status in FINAL_STATUSES else "resume"
        why = (f"trial {t.trial_id} ({t.name}): has trained {trained} steps, but the study now asks for {target} "
               "(train.steps, or what train.flops_budget gives): a trial is never shortened; its metrics at every "
               "step it logged are in its MLflow run. Set the length back to at least "
               f"{trained}, or run the shorter study under another name") if kind == "refused" else ""
        actions[t.trial_id] = TrialAction(kind, trained, target, why)
    return actions


def start_order(trials: list, columns: dict[str, dict[str, float]], actions: dict[str, TrialAction]) -> list:
    """The order `run` hands trials to Tune, which starts them in that order: most training MACs left first
    (longest first), so that with fewer slots than trials a long trial does not start last (the quickstart's
    widest trains beside the three others, not after two of them); ties keep the grid's order."""
    def work_left(t: Any) -> float:
        a = actions[t.trial_id]
        steps = 0 if a.kind == "rescore" else max(a.target - a.trained, 0)
        return columns[t.trial_id]["macs_per_sample_iter"] * t.config.train.batch_size * steps
    return sorted(trials, key=lambda t: -work_left(t))


def adopt_earlier_runs(tracker: StudyTracker, study: Study, runs: dict[str, Any]) -> list[str]:
    """Give the child runs recorded under ids that name no trial of the study, but whose params hold a trial's
    identity, that trial's id: runs of gat-study before identity keys (which hashed the whole config, so a
    changed `train.steps` or interval made a new id), or runs whose bookkeeping changed since.  The run is
    re-tagged (`trial_id`, and `earlier_trial_id` with the old id) and its folder renamed, so it is resumed,
    extended or re-scored instead of trained again.  Of several candidates the one with the most steps not
    beyond the trial's length wins.  Returns one line per adoption, and one per run adopted by no trial."""
    current = {t.trial_id for t in study.trials}
    orphans = [run for tid, run in runs.items() if tid not in current]
    lines: list[str] = []
    folder = study.config.out / "trials"
    for trial in study.trials:
        if trial.trial_id in runs or not orphans:
            continue
        candidates = [r for r in orphans if same_identity(trial, r.data.params)]
        if not candidates:
            continue
        target = int(compute_columns(trial)["steps"])
        pick = max(candidates, key=lambda r: (trained_steps(r.data.tags) <= target, trained_steps(r.data.tags)))
        old = pick.data.tags["trial_id"]
        src, dst = folder / old, folder / trial.trial_id
        if src.exists() and dst.exists():
            lines.append(f"run {pick.info.run_id} (earlier id {old}) holds trial {trial.trial_id} ({trial.name}) but "
                         f"both {src} and {dst} exist; not adopted (move one away and run again)")
            continue
        if src.exists():
            src.rename(dst)
        tracker.client.log_batch(pick.info.run_id,
                                 tags=[RunTag("trial_id", trial.trial_id), RunTag(EARLIER_ID_TAG, old)])
        orphans.remove(pick)
        lines.append(f"adopted run {pick.info.run_id} of trial {trial.trial_id} ({trial.name}), recorded under the "
                     f"earlier id {old} at step {trained_steps(pick.data.tags)}")
    if orphans:
        shown = ", ".join(sorted(r.data.tags.get("trial_id", "?") for r in orphans)[:5])
        lines.append(f"{len(orphans)} child runs of this study are no trial of it now (removed grid points or "
                     f"changed identity keys; kept as they are): {shown}{' ...' if len(orphans) > 5 else ''}")
    return lines


def run_study(study: Study, *, address: str | None = None, tracking_uri: str | None = None,
              storage: str | None = None, dashboard: bool = False, num_cpus: int | None = None,
              quiet: bool = False) -> list[TrialOutcome]:
    """Run every unfinished trial of `study` (extending and re-scoring finished ones as `trial_actions`
    says); return the outcome of all trials.  A trial trained past the steps the study now asks for is a
    StudyError before anything runs."""
    cfg = study.config
    started = time.monotonic()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or cfg.tracking_uri
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    tracker = StudyTracker(uri, cfg.experiment, artifact_root=out / "mlartifacts")
    existing = tracker.trial_runs(cfg.name)
    if adopted := adopt_earlier_runs(tracker, study, existing):
        say("\n".join(f"study {cfg.name}: {line}" for line in adopted))
        existing = tracker.trial_runs(cfg.name)
    columns = {t.trial_id: compute_columns(t) for t in study.trials}
    actions = trial_actions(study, existing, {tid: int(c["steps"]) for tid, c in columns.items()})
    if refused := [a.why for a in actions.values() if a.kind == "refused"]:
        raise StudyError(refused)
    todo = start_order([t for t in study.trials if actions[t.trial_id].kind != "done"], columns, actions)
    if todo:  # a cluster that cannot be reached or refuses us fails here, before any run is created
        init_ray(address, dashboard, num_cpus)
    parent_id = tracker.ensure_parent(study)
    run_ids = {t.trial_id: tracker.ensure_child(study, t, parent_id, columns[t.trial_id], existing)
               for t in study.trials}
    kinds = [actions[t.trial_id].kind for t in study.trials]
    extend = [actions[t.trial_id] for t in todo if actions[t.trial_id].kind == "extend"]
    lengths = ", ".join(sorted({f"{a.trained} -> {a.target}" for a in extend}))
    say(f"study {cfg.name}: {len(study.trials)} trials, {kinds.count('done')} already finished, "
        f"{kinds.count('new') + kinds.count('resume')} to run"
        + (f", {len(extend)} to extend ({lengths} steps)" if extend else "")
        + (f", {kinds.count('rescore')} to re-score" if "rescore" in kinds else "")
        + f"; MLflow: {uri} (experiment {cfg.experiment})")

    if todo:
        rescore = frozenset(t.trial_id for t in todo if actions[t.trial_id].kind == "rescore")
        _fit(study, todo, run_ids, uri, out, storage or str(out / "ray"), address, quiet, rescore)
        tracker.record_session(parent_id, time.monotonic() - started, {**machine_facts(), **cluster_facts()})
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
         address: str | None, quiet: bool, rescore: frozenset[str] = frozenset()) -> None:
    from ray import tune

    from gat_core.weights import weights_env

    res = study.config.resources
    common = dict(trials={t.trial_id: t.config.model_dump_json() for t in todo}, run_ids=run_ids,
                  tracking_uri=uri, out_dir=str(out), cpus=res.cpus_per_trial, rescore=rescore, env=weights_env())
    if res.workers > 1:  # the Tune trial only drives its Ray Train workers, which hold the CPUs and GPUs
        trainable = tune.with_parameters(run_trial_data_parallel, **common, gpus=res.gpus_per_trial,
                                         workers=res.workers, max_failures=res.max_failures, storage=storage,
                                         local=address is None and not os.environ.get("RAY_ADDRESS"))
        trainable = tune.with_resources(trainable, {"cpu": 0, "memory": 1})
    else:
        trainable = tune.with_resources(tune.with_parameters(run_trial, **common),
                                        {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
    ids = {t.trial_id for t in todo}
    names = {t.trial_id: t.name for t in study.trials if t.trial_id in ids}  # the live table: the study's order
    tuner = tune.Tuner(
        trainable,
        param_space={"trial_id": tune.grid_search([t.trial_id for t in todo])},
        # reused actors skip a process start and the torch import for every trial after the first wave
        tune_config=tune.TuneConfig(max_concurrent_trials=res.max_concurrent or default_concurrency(res),
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{study.config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage,  # where Tune persists trial checkpoints: shared storage on a cluster
            failure_config=tune.FailureConfig(max_failures=res.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
            callbacks=[] if quiet else [ProgressTable(names, study.config.eval.metric,
                                                       study.config.eval.diversity_metric)],
        ),
    )
    try:
        with sigterm_as_ctrl_c():
            tuner.fit()  # Ctrl-C: Tune stops the trials and returns; MLflow says which ones finished
    except KeyboardInterrupt:
        pass


def collect_outcomes(study: Study, tracker: StudyTracker) -> list[TrialOutcome]:
    runs = tracker.trial_runs(study.config.name)
    metric, diversity = study.config.eval.metric, study.config.eval.diversity_metric
    outcomes = []
    for t in study.trials:
        run = runs.get(t.trial_id)
        tags = run.data.tags if run else {}
        status = tags.get("status", "pending")
        health = tags.get(HEALTH_TAG, "diverged" if status == "diverged" else "ok" if status == "completed" else "")
        outcomes.append(TrialOutcome(
            trial_id=t.trial_id, name=t.name, status=status,
            step=trained_steps(tags),
            metric=run.data.metrics.get(metric) if run else None, run_id=run.info.run_id if run else "",
            workdir=study.config.out / "trials" / t.trial_id,
            diversity=run.data.metrics.get(diversity) if run and diversity else None,
            health=health, health_reason=tags.get(HEALTH_REASON_TAG, tags.get("reason", "") if health == "diverged" else ""),
            reason=tags.get("reason", ""),
            gflops=float(run.data.params["gflops_g"]) if run and "gflops_g" in run.data.params else None,
            train_flops=run.data.metrics.get("train_flops") if run else None))
    return outcomes

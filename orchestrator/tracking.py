"""MLflow: one experiment per study, a parent run per study, one nested child run per trial.

The driver creates every run before any trial starts (so concurrent trials never
race to create them, and a rerun finds them by tag).  Trials only append to their
own child run, in batches, through `TrialLogger`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from analysis.contract import (EARLIER_ID_TAG, EVAL_TAG, FLOP_CONVENTION, FLOPS_TAG, GFLOPS_PARAM,  # noqa: F401
                               HEALTH_REASON_TAG, HEALTH_TAG, PARENT_TAG, ROLE_TAG, STATUS_TAG, STUDY_TAG,
                               TRAIN_FLOPS_METRIC, TRIAL_ID_TAG)
from gat_core.metrics.names import parse_metric
from orchestrator.study import Study, Trial
from orchestrator.trial_identity import swept_keys

if TYPE_CHECKING:
    from gat_core.loop import TrainEvent

log = logging.getLogger(__name__)

# The MLflow UI opens an experiment on the view its kind asks for: training runs, not GenAI traces
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # the UI's saved views of an experiment's runs page
FINAL_STATUSES = ("completed", "diverged")
PACKAGES = ("torch", "ray", "mlflow", "pydantic", "numpy", "scipy", "pandas", "diffusers", "timm", "gat-study")
_MAX_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch


def code_version() -> dict[str, str]:
    """Git commit and uncommitted diff of the source tree this package runs from."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD").strip() or "unknown"
    return {"commit": commit, "diff": git("diff", "HEAD") if commit != "unknown" else ""}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# Parent-run tags of where and how long a study ran (`StudyTracker.record_session`)
MACHINE_TAG_PREFIX = "machine."
WALL_TIME_TAG, LAST_WALL_TIME_TAG, SESSIONS_TAG = "wall_time_s", "last_run_wall_s", "run_sessions"


def machine_facts() -> dict[str, str]:
    """What the driver's machine is: OS, CPU model, logical CPUs, memory, CUDA GPUs (no host name, no
    environment): tags `machine.<key>` of the study's parent run."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts = {"os": platform.platform(), "cpu": cpu, "logical_cpus": str(os.cpu_count() or ""),
             "python": platform.python_version()}
    try:
        facts["memory_gb"] = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9:.1f}"
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        facts["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(count)) or "none"
    except Exception:  # no torch, or a broken CUDA set-up: the GPUs are simply not recorded
        pass
    return facts


def _params(values: dict[str, Any]) -> list[Param]:
    return [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in values.items()]


def study_view_id(study_name: str) -> str:
    """Id of the study's saved view of the MLflow UI (fixed, so a rerun updates it instead of adding copies)."""
    return f"gat-study-{study_name}"


# The training losses each model family logs (gat_core.objectives), charted after quality and diversity
LOSS_METRICS = {"gat": ("loss_g", "loss_d"), "dit": ("loss_diffusion",)}


def study_view(study: Study) -> dict[str, Any]:
    """A saved view of the UI's runs page, as its "Views" menu stores them: the study's trials (filtered by
    their tags: the UI shares no expanded state, and would otherwise fold them under the study's parent
    run), with the swept keys, the quality and diversity metrics and the health as columns, and
    `study_charts` in the chart view."""
    swept = sorted({key for trial in study.trials for key in swept_keys(trial.swept)})
    e = study.config.eval
    columns = ([f"params.`{key}`" for key in swept]
               + [f"metrics.`{m}`" for m in (e.metric, e.diversity_metric) if m]
               + [f"tags.`{HEALTH_TAG}`", "tags.`status`"])
    state = {"selectedColumns": columns, "runsHiddenMode": "SHOW_ALL", "orderByKey": f"metrics.`{e.metric}`",
             "orderByAsc": not parse_metric(e.metric).higher_is_better,
             "searchFilter": f"tags.`{ROLE_TAG}` = 'trial' and tags.`{STUDY_TAG}` = '{study.config.name}'",
             **study_charts(study)}
    return {"name": f"gat-study: {study.config.name} trials", "createdAt": int(time.time() * 1000),
            "state": json.dumps(state)}


def study_charts(study: Study) -> dict[str, Any]:
    """The chart view's part of a saved view (`compareRunCharts`, `compareRunSections` of MLflow's
    ExperimentPageUIState): a first section with the quality and diversity metrics vs step, then the
    training losses of the study's model families, then quality vs GFLOPs per image and vs training
    compute, one point per trial.  Without it the UI charts every metric alphabetically.  The UI adds a
    chart for each other metric to the section it names by the metric ("Model metrics", below the
    study's); `isAccordionReordered` keeps the sections in this order, `isReordered` puts charts a user
    adds to the study's section last.  Line charts follow the page's x axis (`globalLineChartConfig`: step)."""
    e = study.config.eval
    families = dict.fromkeys(t.config.model.family for t in study.trials)
    curves = list(dict.fromkeys([e.metric, *([e.diversity_metric] if e.diversity_metric else []),
                                 *(m for f in families for m in LOSS_METRICS.get(f, ()))]))
    section = f"gat-study-{study.config.name}"
    runs = max(10, len(study.trials))  # the UI charts only the first `runsCountToCompare` runs shown
    base = {"metricSectionId": section, "deleted": False, "isGenerated": False}
    charts: list[dict[str, Any]] = [
        {**base, "uuid": f"{section}-line-{m}", "type": "LINE", "runsCountToCompare": runs, "metricKey": m,
         "selectedMetricKeys": [m], "xAxisKey": "step", "selectedXAxisMetricKey": "", "xAxisScaleType": "linear",
         "scaleType": "linear", "lineSmoothness": 0, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True,
         "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False}
        for m in curves]
    for x_key, x_type in ((GFLOPS_PARAM, "PARAM"), (TRAIN_FLOPS_METRIC, "METRIC")):  # titled "x vs y" by the UI
        charts.append({**base, "uuid": f"{section}-scatter-{x_key}", "type": "SCATTER",
                       "runsCountToCompare": max(100, len(study.trials)),
                       "xaxis": {"key": x_key, "type": x_type}, "yaxis": {"key": e.metric, "type": "METRIC"}})
    sections = [{"uuid": section, "name": f"gat-study: {study.config.name}", "display": True, "isReordered": True,
                 "deleted": False, "isGenerated": False}]
    sections += [{"uuid": f"{section}-{key}", "name": name, "display": True, "isReordered": False, "deleted": False,
                  "isGenerated": True} for key, name in (("model", "Model metrics"), ("system", "System metrics"))]
    return {"compareRunCharts": charts, "compareRunSections": sections, "isAccordionReordered": True,
            "hideEmptyCharts": True,
            "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""}}


class TrackingUnavailable(ConnectionError):
    """The tracking server cannot be reached: raised before any training starts."""


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when an MLflow server does not answer its health check."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except requests.RequestException as exc:
        raise TrackingUnavailable(f"MLflow tracking server {uri} is not reachable ({type(exc).__name__}); start it "
                                  f"or pass another --tracking-uri. Nothing was trained.") from None


class StudyTracker:
    """Driver-side view of a study in MLflow."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None, read_only: bool = False) -> None:
        """`read_only`: look, never create (a missing experiment leaves `experiment_id` None)."""
        check_reachable(uri)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None and read_only:
            self.experiment_id = None
        elif found is None:
            location = artifact_root.resolve().as_uri() if artifact_root and not uri.startswith("http") else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location,
                                                               tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
        else:
            self.experiment_id = found.experiment_id
            if not read_only and found.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)

    def _search(self, filter_string: str) -> list:
        if self.experiment_id is None:
            return []
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=10000)

    def parent_run(self, study_name: str) -> str | None:
        runs = self._search(f"tags.`{ROLE_TAG}` = 'study' and tags.`{STUDY_TAG}` = '{study_name}'")
        return runs[0].info.run_id if runs else None

    def ensure_parent(self, study: Study) -> str:
        """The study's parent run, created on the first run with the study file, grid, code and versions."""
        run_id = self.parent_run(study.config.name)
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=study.config.name,
                                         tags={ROLE_TAG: "study", STUDY_TAG: study.config.name})
            run_id = run.info.run_id
        code = code_version()
        self.client.log_batch(run_id, tags=[RunTag("git_commit", code["commit"]), RunTag("status", "running"),
                                            RunTag("git_dirty", str(bool(code["diff"])).lower())])
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "study.yaml").write_text(Path(study.source).read_text())
            (folder / "resolved_study.json").write_text(study.config.model_dump_json(indent=2))
            grid = [{"trial_id": t.trial_id, "name": t.name, "swept": t.swept, "config": t.config.model_dump(mode="json")}
                    for t in study.trials]
            (folder / "trials.json").write_text(json.dumps(grid, indent=2))
            (folder / "environment.json").write_text(json.dumps(package_versions(), indent=2))
            if code["diff"]:
                (folder / "code.diff").write_text(code["diff"])
            self.client.log_artifacts(run_id, str(folder), artifact_path="study")
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG_PREFIX + study_view_id(study.config.name),
                                       json.dumps(study_view(study)))
        return run_id

    def trial_runs(self, study_name: str) -> dict[str, Any]:
        """trial_id -> MLflow run of every child run of the study."""
        runs = self._search(f"tags.`{ROLE_TAG}` = 'trial' and tags.`{STUDY_TAG}` = '{study_name}'")
        return {r.data.tags["trial_id"]: r for r in runs}

    def ensure_child(self, study: Study, trial: Trial, parent_id: str, cost: dict[str, float],
                     existing: dict[str, Any]) -> str:
        """The trial's child run: reused if it exists (one run per trial, ever), else created with its params."""
        if trial.trial_id in existing:
            return existing[trial.trial_id].info.run_id
        tags = {ROLE_TAG: "trial", STUDY_TAG: study.config.name, PARENT_TAG: parent_id, TRIAL_ID_TAG: trial.trial_id,
                STATUS_TAG: "pending", FLOPS_TAG: FLOP_CONVENTION}
        run = self.client.create_run(self.experiment_id, run_name=trial.name, tags=tags)
        params = {**trial.params(), **cost, "trial_index": trial.index, "swept": sorted(trial.swept)}
        items = _params(params)
        for i in range(0, len(items), 90):
            self.client.log_batch(run.info.run_id, params=items[i:i + 90])
        return run.info.run_id

    def record_session(self, run_id: str, wall_s: float, facts: dict[str, str]) -> None:
        """Add one `run` that trained something to the parent run: its wall time to `wall_time_s` (the sum over
        every such `run`, resumes included), `last_run_wall_s`, `run_sessions`, and `facts` (the machine and
        the Ray cluster it trained on) as `machine.<key>` tags (the latest session's)."""
        tags = self.client.get_run(run_id).data.tags
        try:
            total, sessions = float(tags.get(WALL_TIME_TAG, 0)), int(tags.get(SESSIONS_TAG, 0))
        except ValueError:
            total, sessions = 0.0, 0
        items = {WALL_TIME_TAG: f"{total + wall_s:.1f}", LAST_WALL_TIME_TAG: f"{wall_s:.1f}",
                 SESSIONS_TAG: str(sessions + 1), **{MACHINE_TAG_PREFIX + k: v for k, v in facts.items()}}
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in items.items()])

    def set_study_status(self, run_id: str, status: str) -> None:
        self.client.set_tag(run_id, "status", status)
        self.client.set_terminated(run_id, "FINISHED" if status == "completed" else "KILLED" if status == "interrupted" else "FAILED")


class TrialLogger:
    """Trial-side writer to one child run: batched metrics, retried on failure, never duplicated.

    Metrics are buffered and sent every `flush_seconds` (one `log_batch` instead of one call per
    value).  After a restart from a checkpoint, steps that were already logged are skipped, so a
    trial's step axis stays continuous and single-valued.  A tracking server that is down keeps
    the buffer until it answers again; training goes on.
    """

    def __init__(self, uri: str, run_id: str, flush_seconds: float = 5.0) -> None:
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self.buffer: list[Metric] = []
        self.last_flush = time.monotonic()
        tags = self.client.get_run(run_id).data.tags
        self.logged_through = int(tags.get("logged_through_step", -1))
        self.skip_through = self.logged_through  # steps an earlier attempt of this trial already logged
        self.pending_through = self.logged_through
        self.last_step, self.keys_at_last_step = -1, set()  # a key reported twice at one step is logged once

    def start(self, node: str = "", tags: dict[str, str] | None = None) -> None:
        self._tags({"status": "running", **({"ray_node": node} if node else {}), **(tags or {})})
        try:
            self.client.update_run(self.run_id, status="RUNNING")
        except Exception as exc:
            log.warning("MLflow run status update failed: %s", exc)

    def _tags(self, tags: dict[str, str]) -> bool:
        try:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            return True
        except Exception as exc:
            log.warning("MLflow tags %s not written: %s", sorted(tags), exc)
            return False

    def log(self, step: int, metrics: dict[str, float], always: bool = False) -> None:
        """Buffer metrics at `step`; steps an earlier attempt logged are skipped unless `always` (a trial's
        start, a re-scored final evaluation: MLflow's latest value of a key is its newest at the highest step)."""
        if step > self.skip_through or always:
            if step != self.last_step:
                self.last_step, self.keys_at_last_step = step, set()
            fresh = {k: v for k, v in metrics.items() if always or k not in self.keys_at_last_step}
            self.keys_at_last_step |= set(fresh)
            now = int(time.time() * 1000)
            self.buffer += [Metric(k, float(v), now, step) for k, v in fresh.items()]
            self.pending_through = max(self.pending_through, step)
        if time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush(complete=False)

    def flush(self, complete: bool = True) -> bool:
        """Send the buffer; keep it on failure (retried at the next flush).

        A flush by the clock (`complete=False`) holds back the newest step: more of it may still come (the
        evaluation that follows a step's losses), and a restart skips every step up to `logged_through_step`,
        so a step is sent, and marked, only once all of it is buffered.  The trainer's persist and final
        events, and `finish`, flush everything."""
        self.last_flush = time.monotonic()
        held: list[Metric] = []
        end = self.pending_through
        if not complete and self.buffer:
            end = max(m.step for m in self.buffer) - 1
            held = [m for m in self.buffer if m.step > end]
            self.buffer = [m for m in self.buffer if m.step <= end]
        try:
            while self.buffer:
                chunk, rest = self.buffer[:_MAX_BATCH], self.buffer[_MAX_BATCH:]
                # after this chunk every step before the rest's first is complete.  The tag travels in the
                # chunk's own log_batch (one transaction), so a failed write can leave neither metrics without
                # their tag (logged again after a restart) nor a tag without metrics
                through = rest[0].step - 1 if rest else end
                self.client.log_batch(self.run_id, metrics=chunk,
                                      tags=[RunTag("logged_through_step", str(max(through, self.logged_through)))])
                self.buffer, self.logged_through = rest, max(through, self.logged_through)
            return True
        except Exception as exc:  # server down, sqlite locked: try again later
            log.warning("MLflow logging failed (%s); %d metrics kept for retry", exc, len(self.buffer) + len(held))
            return False
        finally:
            self.buffer += held

    def artifact(self, path: Path, artifact_path: str | None = None) -> None:
        try:
            self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)
        except Exception as exc:
            log.warning("MLflow artifact upload of %s failed: %s", path, exc)

    def finish(self, status: str, step: int, reason: str = "", attempts: int = 6,
               health: tuple[str, str] | None = None, tags: dict[str, str] | None = None) -> None:
        """Flush everything and set the final status (and the `health` verdict with its reason, and `tags`),
        retrying for a while if the store is unavailable."""
        tags = {"status": status, "final_step": str(step), **({"reason": reason} if reason else {}),
                **(tags or {})}
        if health is not None:
            tags.update({HEALTH_TAG: health[0], HEALTH_REASON_TAG: health[1]})
        for attempt in range(attempts):
            if self.flush() and self._tags(tags):
                try:
                    self.client.set_terminated(self.run_id, "FINISHED" if status == "completed" else "FAILED")
                    return
                except Exception as exc:
                    log.warning("MLflow run termination failed: %s", exc)
            time.sleep(min(30, 2 ** attempt))
        raise ConnectionError(f"MLflow store unavailable: {len(self.buffer)} metrics and the final status "
                              f"{status!r} of run {self.run_id} could not be written")


Publish = Callable[[dict[str, Any], "Path | None"], None]


class Reporter:
    """The trainer's events to MLflow (rank 0's `logger`; None on the other data-parallel ranks) and to Ray
    (`publish`, every rank alike).  Before a checkpoint is written ("persist") the metrics so far are flushed: a
    restart resumes from the newest checkpoint and never re-logs the steps before it, so they must be stored."""

    def __init__(self, logger: TrialLogger | None, publish: Publish) -> None:
        self.logger, self.publish = logger, publish
        self.reported_final = False  # this attempt ran (and told MLflow) the final evaluation

    def __call__(self, event: TrainEvent) -> None:
        self.reported_final = self.reported_final or event.kind == "final"
        if self.logger is not None:
            if event.metrics:
                self.logger.log(event.step, event.metrics, always=event.kind == "start" or event.replaces)
            if "samples" in event.artifacts:
                self.logger.artifact(event.artifacts["samples"], "samples")
            if event.kind in ("persist", "final"):
                self.logger.flush()
            if "model" in event.artifacts:
                self.logger.artifact(event.artifacts["model"], "model")
        if event.kind != "persist":
            folder = event.checkpoint_dir if event.kind == "checkpoint" else None
            self.publish({"step": event.step, "total_steps": event.total_steps, "kind": event.kind, **event.metrics},
                         folder)

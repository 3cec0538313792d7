"""Read the child runs of one or more studies from MLflow into tidy pandas frames.

Only the run contract of the README is assumed (tags, dotted params, metrics by step),
so studies written by any tool that follows it can be analysed.  The tag names are
redefined here rather than imported from `orchestrator.tracking`, to keep this package
free of everything the training side pulls in.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Sequence
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from analysis.contract import (HEALTH_REASON_TAG, HEALTH_TAG, PARENT_TAG, ROLE_TAG, STUDY_TAG, TRIAL_SECTIONS,
                               flatten)
from analysis.errors import AnalysisError

COMPUTE_COLUMNS = ("gflops_g", "gflops_d", "params_g", "params_d", "macs_per_sample_iter")
BOOKKEEPING = ("trial_index", "swept", "steps")
_MLFLOW_STATUS = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "failed", "RUNNING": "running",
                  "SCHEDULED": "pending"}


@dataclass(frozen=True)
class StudyData:
    """Everything the analysis needs from MLflow, read once.

    `trials` has one row per child run: identity, status and health columns, every param under
    its dotted name (parsed to int/float/bool/None), the last finite value of every
    metric under its own name, the compute columns and the two family labels `size`
    (model size) and `patch`.  `history` is long: run_id, key, step, value.
    """

    tracking_uri: str
    studies: list[str]
    parents: dict[str, str]            # study -> parent run id (missing if the study has none)
    trials: pd.DataFrame
    history: pd.DataFrame              # per-step values of the curve keys only (see `wants_history`)
    base_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # study -> flattened base config
    metric_keys: list[str] = field(default_factory=list)  # every metric any child run logged
    notes: list[str] = field(default_factory=list)  # what the reader should know about what was loaded
    artifact_uris: dict[str, str] = field(default_factory=dict)  # run id -> its artifact root (from the search)


def parse_param(text: str) -> Any:
    """MLflow params are strings; turn them back into the values the study file had."""
    if text in ("None", "null"):
        return None
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


@contextlib.contextmanager
def quiet_artifacts() -> Iterator[None]:
    """No MLflow progress bar per downloaded file (one per trial would bury the CLI's output)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def open_client(tracking_uri: str) -> Any:
    """An MlflowClient, refusing a sqlite store that does not exist (MLflow would create an empty one)."""
    from mlflow.tracking import MlflowClient

    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        path = Path(unquote(tracking_uri[len("sqlite:///"):])) if tracking_uri.startswith("sqlite:///") else None
        if path is not None and not path.is_absolute():
            path = Path.cwd() / path
        if path is not None and not path.exists():
            raise AnalysisError(f"no MLflow store at {tracking_uri} (file {path} does not exist); "
                                f"pass --tracking-uri to point at the study's store")
    elif parsed.scheme in ("", "file"):
        folder = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(tracking_uri)
        if not folder.exists():
            raise AnalysisError(f"no MLflow store at {tracking_uri}; pass --tracking-uri to point at the study's store")
    return MlflowClient(tracking_uri=tracking_uri)


def _search_all(client: Any, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=5000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _experiments(client: Any) -> list:
    return list(client.search_experiments(max_results=50000))


def find_study_runs(client: Any, study: str) -> tuple[Any | None, list]:
    """(parent run or None, child runs) of `study`, the experiment name or the `gat_study.study` tag."""
    quoted = study.replace("'", "\\'")
    by_tag = f"tags.`{STUDY_TAG}` = '{quoted}'"
    experiment = client.get_experiment_by_name(study)
    if experiment is not None:
        ids = [experiment.experiment_id]
        children = _search_all(client, ids, f"tags.`{ROLE_TAG}` = 'trial' and {by_tag}")
        if not children:  # experiment named differently from the study inside it: take every trial run
            children = _search_all(client, ids, f"tags.`{ROLE_TAG}` = 'trial'")
    else:
        ids = [e.experiment_id for e in _experiments(client)]
        children = _search_all(client, ids, f"tags.`{ROLE_TAG}` = 'trial' and {by_tag}") if ids else []
    if experiment is None and not children:
        known = sorted(e.name for e in _experiments(client) if e.name != "Default")
        hint = f"; studies in this store: {', '.join(known)}" if known else "; this store has no studies"
        raise AnalysisError(f"unknown study {study!r}: no MLflow experiment or trial runs of that name{hint}")
    parents = _search_all(client, ids, f"tags.`{ROLE_TAG}` = 'study' and {by_tag}") if ids else []
    if not parents and children:
        parent_ids = {r.data.tags.get(PARENT_TAG) for r in children} - {None}
        parents = [client.get_run(pid) for pid in sorted(parent_ids)[:1]]
    return (parents[0] if parents else None), children


CURVE_KEYS = ("train_flops", "loss_d", "loss_g", "eval_samples", "out_change_g", "out_change_d")
QUALITY_PATTERN = re.compile(r"^(fd_|fid|kid|fvd|is$|inception|precision|recall)", re.I)
DIVERSITY_PREFIX = "diversity_"  # diversity_<extractor>: a collapse diagnostic beside the quality metric, not one


def wants_history(key: str, extra: Iterable[str] = ()) -> bool:
    """Per-step values are read for quality metrics, diversity and the curve keys only: the rest
    (block_util_<i>, lr, timings) is only needed at its last value, which the run search already gave."""
    return (key in CURVE_KEYS or bool(QUALITY_PATTERN.search(key)) or key.startswith(DIVERSITY_PREFIX)
            or key in set(extra))


def health_of(tags: dict[str, str], status: str) -> tuple[str, str]:
    """(health, reason) of a child run: its `health` tag, else `diverged` for a diverged status (with its
    `reason`), `ok` for a completed one (stores written before the tag existed), "" while unknown."""
    health = tags.get(HEALTH_TAG) or ("diverged" if status == "diverged" else "ok" if status == "completed" else "")
    reason = tags.get(HEALTH_REASON_TAG) or (tags.get("reason", "") if health == "diverged" else "")
    return health, reason


SQL_RUNS_PER_QUERY = 500      # run ids in one SQL `IN (...)`, under every database's bound-parameter limit
SERVER_RUNS_PER_REQUEST = 100  # what a tracking server's get-history-bulk accepts in one request
SERVER_VALUES_PER_REQUEST = 25000  # and the most values it returns: a full answer may have been cut short


HistoryRow = tuple[str, str, int, float, int]  # run_id, key, step, value, timestamp
HISTORY_COLUMNS = ["run_id", "key", "step", "value", "timestamp"]


def _one_by_one(client: Any, run_ids: Sequence[str], key: str) -> list[HistoryRow]:
    """One `get_metric_history` per run: the way every store answers (a file store, an older server)."""
    return [(run_id, key, int(m.step), float(m.value), int(m.timestamp))
            for run_id in run_ids for m in client.get_metric_history(run_id, key)]


def _from_sql(store: Any, run_ids: Sequence[str], key: str) -> list[HistoryRow]:
    """A database store (sqlite, postgres, ...): one query per `SQL_RUNS_PER_QUERY` runs, for the five columns
    of MLflow's own metrics model (`_sql_columns`), else through the store's get_metric_history_bulk, which
    builds an ORM object and an entity per value: 14 s instead of about 1 for 1,000 trials x 381 values."""
    batches = [list(run_ids[i:i + SQL_RUNS_PER_QUERY]) for i in range(0, len(run_ids), SQL_RUNS_PER_QUERY)]
    try:
        return _sql_columns(store, batches, key)
    except (ImportError, AttributeError):  # an MLflow without that model: its bulk API
        return [(m.run_id, key, int(m.step), float(m.value), int(m.timestamp))
                for batch in batches for m in store.get_metric_history_bulk(batch, key, max_results=2 ** 62)]


def _sql_columns(store: Any, batches: Sequence[list[str]], key: str) -> list[HistoryRow]:
    """The values of `key` for batches of runs as plain columns of MLflow's `SqlMetric` (NaN as its is_nan flag)."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    columns = (SqlMetric.run_uuid, SqlMetric.step, SqlMetric.value, SqlMetric.timestamp, SqlMetric.is_nan)
    nan = float("nan")
    with store.ManagedSessionMaker() as session:
        return [(run_id, key, int(step), nan if is_nan else float(value), int(timestamp))
                for batch in batches
                for run_id, step, value, timestamp, is_nan in
                session.execute(sa.select(*columns).where(SqlMetric.key == key, SqlMetric.run_uuid.in_(batch)))]


def _from_server(client: Any, store: Any, run_ids: Sequence[str], key: str) -> list[HistoryRow]:
    """A tracking server: its get-history-bulk endpoint (the one its UI charts from), `SERVER_RUNS_PER_REQUEST`
    runs a request; a batch whose answer may have been cut short is split, down to one run a request, and a
    single run with more values than one answer holds is read by the paginated `get_metric_history`."""
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    def fetch(batch: Sequence[str]) -> list[HistoryRow]:
        response = http_request(store.get_host_creds(), "/ajax-api/2.0/mlflow/metrics/get-history-bulk", "GET",
                                params={"run_id": list(batch), "metric_key": key,
                                        "max_results": SERVER_VALUES_PER_REQUEST})
        found = verify_rest_response(response, "get-history-bulk").json().get("metrics", [])
        if len(found) < SERVER_VALUES_PER_REQUEST:
            return [(m["run_id"], key, int(m.get("step", 0)), float(m["value"]), int(m.get("timestamp", 0)))
                    for m in found]
        if len(batch) == 1:
            return _one_by_one(client, batch, key)
        half = len(batch) // 2
        return fetch(batch[:half]) + fetch(batch[half:])

    return [row for i in range(0, len(run_ids), SERVER_RUNS_PER_REQUEST)
            for row in fetch(run_ids[i:i + SERVER_RUNS_PER_REQUEST])]


def read_histories(client: Any, wanted: dict[str, Sequence[str]]) -> pd.DataFrame:
    """Every value of the keys `wanted[run_id]` of each run: a frame of run_id, key, step, value, timestamp.

    Not one request per run per metric: a database store answers one query per key for hundreds of runs, a
    tracking server one request per key for up to 100 runs; any other store (or a server without the bulk
    endpoint) is read run by run.
    """
    by_key: dict[str, list[str]] = {}
    for run_id, keys in wanted.items():
        for key in keys:
            by_key.setdefault(key, []).append(run_id)
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    rows: list[HistoryRow] = []
    for key, run_ids in by_key.items():
        if hasattr(store, "get_metric_history_bulk"):
            rows += _from_sql(store, run_ids, key)
            continue
        if hasattr(store, "get_host_creds"):
            try:
                rows += _from_server(client, store, run_ids, key)
                continue
            except Exception:  # noqa: BLE001 - a server without the bulk endpoint: read run by run
                pass
        rows += _one_by_one(client, run_ids, key)
    return pd.DataFrame.from_records(rows, columns=HISTORY_COLUMNS)


def _last_finite(history: pd.DataFrame) -> pd.DataFrame:
    """Per run and key: the last finite value (the final evaluation for the quality metric)."""
    finite = history[np.isfinite(history["value"])]
    last = finite.sort_values(["run_id", "key", "step"]).groupby(["run_id", "key"]).tail(1)
    return last.pivot(index="run_id", columns="key", values="value")


def _typed(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """Param columns as numbers where every value is a number (ints kept exact with Int64)."""
    for col in columns:
        values = [v for v in frame[col] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            frame[col] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else v
                                   for v in frame[col]], dtype="Int64")
        elif values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    return frame


def _switch_from_optional_section(frame: pd.DataFrame, params: set[str]) -> None:
    """`train.vfm: null` in some trials and `train.vfm.*` in others: make `train.vfm` read off/on."""
    for col in sorted(params):
        children = [c for c in params if c.startswith(col + ".")]
        if children and frame[col].isna().any():
            on = frame[children].notna().any(axis=1)
            frame[col] = np.where(on, "on", "off")


def size_label(row: pd.Series) -> str:
    """The model-size family: the preset's size without its model family (`GAT-B/2` and `DiT-B/2`
    are both `B`, as in the DiT paper's figures, so GAT and DiT of one size share a colour and
    the family stays an ablation switch), or width and depth (`w64-d4`)."""
    preset = row.get("model.preset")
    if isinstance(preset, str) and preset:
        return preset.split("/")[0].split("-")[-1]
    width, depth = row.get("model.width"), row.get("model.depth")
    if pd.notna(width) and pd.notna(depth):
        return f"w{int(width)}-d{int(depth)}"
    if pd.notna(width):
        return f"w{int(width)}"
    return "unknown"


def trials_frame(client: Any, study: str, children: list, extra_keys: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, history) of one study's child runs; histories of `wants_history` keys and `extra_keys`.

    Final values are the last finite value of the history where it was read, else the run's
    latest value (MLflow's run.data.metrics).
    """
    rows, param_names, latest, wanted = [], set(), {}, {}
    for run in children:
        tags, info = run.data.tags, run.info
        params = {k: parse_param(v) for k, v in run.data.params.items()}
        param_names |= set(params)
        final_step = tags.get("final_step")
        status = tags.get("status") or _MLFLOW_STATUS.get(info.status, "unknown")
        health, health_reason = health_of(tags, status)
        rows.append({
            "study": tags.get(STUDY_TAG, study), "run_id": info.run_id, "run_name": info.run_name or info.run_id[:8],
            "trial_id": tags.get("trial_id", info.run_id[:10]),
            "status": status, "reason": tags.get("reason", ""), "health": health, "health_reason": health_reason,
            "final_step": int(final_step) if final_step not in (None, "") and final_step.lstrip("-").isdigit() else None,
            **params,
        })
        wanted[info.run_id] = sorted(k for k in run.data.metrics if wants_history(k, extra_keys))
        latest[info.run_id] = {k: v for k, v in run.data.metrics.items() if k not in wanted[info.run_id]}
    trials = pd.DataFrame(rows)
    history = read_histories(client, wanted)
    if len(history):  # one value per (run, key, step): the last one written
        history = (history.sort_values(["run_id", "key", "step", "timestamp"])
                   .drop_duplicates(["run_id", "key", "step"], keep="last").reset_index(drop=True))
    trials = _typed(trials, sorted(param_names))
    _switch_from_optional_section(trials, param_names)
    final = pd.DataFrame.from_dict(latest, orient="index")
    if len(history):
        final = _last_finite(history).combine_first(final) if len(final.columns) else _last_finite(history)
    if len(final.columns):
        clash = [c for c in final.columns if c in trials.columns]
        final = final.rename(columns={c: f"metric:{c}" for c in clash})
        trials = trials.join(final, on="run_id")
    for col in COMPUTE_COLUMNS:
        trials[col] = pd.to_numeric(trials[col], errors="coerce") if col in trials else np.nan
    if "train_flops" not in trials:
        trials["train_flops"] = np.nan
    batch = pd.to_numeric(trials.get("train.batch_size", pd.Series(np.nan, index=trials.index)), errors="coerce")
    steps = pd.to_numeric(trials["final_step"], errors="coerce")
    trials["train_flops"] = trials["train_flops"].fillna(trials["macs_per_sample_iter"] * batch * steps)
    trials["size"] = trials.apply(size_label, axis=1) if len(trials) else pd.Series(dtype=object)
    patch = trials["model.patch_size"] if "model.patch_size" in trials else pd.Series(pd.NA, index=trials.index)
    trials["patch"] = pd.array(patch, dtype="Int64")
    return trials, history


def download_run_artifact(data: StudyData, run_id: str, path: str, folder: Path) -> Path | None:
    """`path` of run `run_id` downloaded into `folder`, or None when the run has no such artifact (or its
    store cannot be reached).  From the artifact root the run search gave: one request per run (none for a
    local store), where the client's list_artifacts + download_artifacts looked the run up twice first."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    root = data.artifact_uris.get(run_id)
    try:
        with quiet_artifacts():
            if root is None:
                return Path(open_client(data.tracking_uri).download_artifacts(run_id, path, str(folder)))
            if urlparse(root).scheme in ("", "file") and not (Path(unquote(urlparse(root).path)) / path).exists():
                return None
            folder.mkdir(parents=True, exist_ok=True)
            return Path(get_artifact_repository(root).download_artifacts(path, str(folder)))
    except Exception:  # noqa: BLE001 - no such artifact, or an unreachable artifact store
        return None


def _base_config(client: Any, parent: Any) -> dict[str, Any]:
    """The study's base config (before the grid), flattened; {} when the parent has no resolved_study.json."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp, quiet_artifacts():
            path = client.download_artifacts(parent.info.run_id, "study/resolved_study.json", tmp)
            tree = json.loads(Path(path).read_text())
    except Exception:  # artifact missing or unreadable: the baseline falls back to a rule
        return {}
    return flatten({k: v for k, v in tree.items() if k in TRIAL_SECTIONS})


def load_studies(tracking_uri: str, studies: str | Sequence[str], extra_keys: Sequence[str] = (),
                 trial_ids: Collection[str] | None = None) -> StudyData:
    """All child runs of one or several studies, with the histories of their curve metrics.

    `extra_keys` adds metrics whose per-step values are wanted too (e.g. a --metric that is
    not a quality metric).  `trial_ids` keeps only those trials (the grid of the study file as it
    is now; runs of trials an edit of the file removed are left out, and a note says how many).
    Raises AnalysisError for an unknown study or one without trial runs.
    """
    names = [studies] if isinstance(studies, str) else list(studies)
    client = open_client(tracking_uri)
    frames, histories, parents, bases, logged, notes, artifact_uris = [], [], {}, {}, set(), [], {}
    for name in names:
        parent, children = find_study_runs(client, name)
        if not children:
            raise AnalysisError(f"study {name!r} has no trial runs (child runs tagged {ROLE_TAG}=trial) in {tracking_uri}")
        if trial_ids is not None:
            kept = [run for run in children if run.data.tags.get("trial_id") in trial_ids]
            if not kept:
                raise AnalysisError(f"none of the {len(trial_ids)} trials of study {name!r} as its file now stands has "
                                    f"run yet ({len(children)} runs are of trials no longer in the file); run it first, "
                                    "or give the study name instead of the file to analyse every run")
            if len(kept) < len(children):
                notes.append(f"{len(children) - len(kept)} runs of trials no longer in the study file are left out "
                             "(give the study name instead of the file to include them)")
            children = kept
        trials, history = trials_frame(client, name, children, extra_keys)
        logged |= {k for run in children for k in run.data.metrics}
        artifact_uris.update({run.info.run_id: run.info.artifact_uri for run in children if run.info.artifact_uri})
        frames.append(trials)
        histories.append(history)
        if parent is not None:
            parents[name] = parent.info.run_id
            bases[name] = _base_config(client, parent)
    trials = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    history = pd.concat(histories, ignore_index=True) if len(histories) > 1 else histories[0]
    order = trials.groupby("size")["params_g"].median().sort_values(kind="stable")
    trials["size_rank"] = trials["size"].map({s: i for i, s in enumerate(order.index)})
    trials = trials.sort_values(["size_rank", "patch", "run_name"], kind="stable").reset_index(drop=True)
    return StudyData(tracking_uri=tracking_uri, studies=names, parents=parents, trials=trials, history=history,
                     base_configs=bases, metric_keys=sorted(logged), notes=notes, artifact_uris=artifact_uris)

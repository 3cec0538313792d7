"""Where each trial of a study stands in its MLflow store, for `gat-study plan` (read-only: creates nothing).

States, from the tags the runner and `TrialLogger` write on a trial's child run (`trial_id`, `status`,
`final_step`, `logged_through_step`):
- new: no child run, or one that never logged a step;
- finished: completed at the configured steps N, or beyond them ("finished (at step k > N)": a shorter study
  than the trial ran; nothing to spend);
- extend (k -> N): completed at step k < N (a longer `train.steps` or `flops_budget` than it ran with);
- partial (at step k): started, not finished (running, interrupted, failed); it resumes from its newest checkpoint,
  which is at most `train.checkpoint_every` steps before k, so its remaining compute is a lower bound by that much;
- diverged (at step k): stopped by the divergence check; final, nothing more to spend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from orchestrator.study import Study


@dataclass(frozen=True)
class TrialState:
    kind: str          # new | finished | extend | partial | diverged | unknown
    step: int          # steps already trained (as MLflow records them)
    steps: int         # the configured steps N
    status: str = ""   # the run's `status` tag ("" without a run)
    run_id: str = ""

    @property
    def remaining_steps(self) -> int:
        return 0 if self.kind in ("finished", "diverged") else max(0, self.steps - self.step)

    @property
    def label(self) -> str:
        if self.kind == "extend":
            return f"extend ({self.step} -> {self.steps})"
        if self.kind == "finished" and self.step > self.steps:
            return f"finished (at step {self.step} > {self.steps})"
        if self.kind in ("partial", "diverged"):
            return f"{self.kind} (at step {self.step})"
        return self.kind


@dataclass(frozen=True)
class StoreView:
    uri: str
    found: bool        # a store with this study's runs was read
    note: str          # what was read, or why nothing was
    states: dict[str, TrialState]


def _local_store_path(uri: str) -> Path | None:
    """The file or folder a local store lives in (sqlite file, file:// or plain folder); None for servers."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    return None if "://" in uri else Path(uri)


def state_of(run, steps: int) -> TrialState:
    """A trial's state from its child run's tags (`run` None: new)."""
    if run is None:
        return TrialState("new", 0, steps)
    tags = run.data.tags
    status = tags.get("status", "pending")

    def tag_int(key: str) -> int:
        try:
            return int(tags.get(key, "") or 0)
        except ValueError:
            return 0

    if status in ("completed", "diverged"):
        step = max(tag_int("final_step"), tag_int("logged_through_step"), 0)
        kind = "diverged" if status == "diverged" else "finished" if step >= steps else "extend"
    else:  # failed runs write final_step -1: their progress is what they logged
        step = max(tag_int("logged_through_step"), 0)
        kind = "partial" if step > 0 else "new"
    return TrialState(kind, step, steps, status, run.info.run_id)


def read_states(study: Study, steps: dict[str, int], uri: str) -> StoreView:
    """Every trial's state in the store at `uri`; a store that does not exist means every trial is new (and is not
    created), one that cannot be read is reported and every trial counted as "unknown" (full compute)."""
    def every(kind: str) -> dict[str, TrialState]:
        return {t.trial_id: TrialState(kind, 0, steps[t.trial_id]) for t in study.trials}

    local = _local_store_path(uri)
    try:
        exists = local is None or local.exists()
    except OSError as exc:  # a path the OS refuses (too long, ...)
        return StoreView(uri, False, f"MLflow store {uri} cannot be read ({exc.strerror}); every trial counted in full",
                         every("unknown"))
    if not exists:
        return StoreView(uri, False, f"no MLflow store at {uri}: every trial is new", every("new"))
    try:
        from orchestrator.tracking import StudyTracker

        tracker = StudyTracker(uri, study.config.experiment, read_only=True)
        runs = tracker.trial_runs(study.config.name)
    except Exception as exc:  # server down, not an MLflow database, ...: the plan is still worth printing
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        return StoreView(uri, False, f"MLflow store {uri} cannot be read ({reason}); every trial counted in full",
                         every("unknown"))
    states = {t.trial_id: state_of(runs.get(t.trial_id), steps[t.trial_id]) for t in study.trials}
    known = sum(t.trial_id in runs for t in study.trials)
    return StoreView(uri, True, f"MLflow store {uri}: {known} of {len(study.trials)} trials have runs", states)

"""Wall time, GPU-hours and memory fit of a study's trials on a named accelerator (`gat-study plan --accelerator`).

Convention: the project counts MACs (1 multiply-accumulate = 1 "FLOP", DiT's convention); accelerator peaks are
true FLOP/s (2 FLOPs per multiply-add).  Wall time = 2 x training MACs / (peak FLOP/s x MFU x GPUs computing),
training only (evaluations, data loading and start-up are not counted), with data-parallel workers assumed to
scale perfectly.  A worker computes on at most one GPU (the trainer drives one device), or on its share of one when
`resources.gpus_per_trial` is a fraction; GPU-hours count the GPUs a trial holds.  A study with
`gpus_per_trial: 0` (a CPU study) is costed at one GPU per worker.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass

from gat_core.memory import MemoryEstimate
from orchestrator.accelerators import Accelerator, default_mfu
from orchestrator.study import ResourcesConfig

FIT_FRACTION = 0.9  # a trial fits when its estimate is at most this share of the memory it gets (CUDA context, slack)


@dataclass(frozen=True)
class TrialTime:
    dtype: str
    mfu: float
    peak_flop_per_s: float   # one GPU at `dtype`, dense, true FLOPs
    gpus: float              # GPUs the trial holds (workers x gpus_per_trial)
    flop_per_s: float        # what the trial sustains: GPUs computing x peak x MFU
    seconds: float           # the whole trial, training only
    remaining_seconds: float

    @property
    def gpu_hours(self) -> float:
        return self.seconds / 3600 * self.gpus

    @property
    def remaining_gpu_hours(self) -> float:
        return self.remaining_seconds / 3600 * self.gpus

    def as_dict(self) -> dict[str, float | str]:
        return {**asdict(self), "hours": self.seconds / 3600, "remaining_hours": self.remaining_seconds / 3600,
                "gpu_hours": self.gpu_hours, "remaining_gpu_hours": self.remaining_gpu_hours}


def gpus_per_worker(res: ResourcesConfig) -> float:
    """GPUs one worker holds (1 for a CPU study, costed as if each worker had a GPU)."""
    return res.gpus_per_trial or 1.0


def trial_time(train_macs: float, remaining_macs: float, res: ResourcesConfig, accelerator: Accelerator, dtype: str,
               mfu: float | None = None) -> TrialTime:
    """Seconds of training of one trial on `accelerator` at `dtype` and `mfu` (default: `default_mfu(dtype)`)."""
    mfu = default_mfu(dtype) if mfu is None else mfu
    peak = accelerator.peak_flops(dtype)
    held = gpus_per_worker(res)
    rate = res.workers * min(1.0, held) * peak * mfu
    return TrialTime(dtype=dtype, mfu=mfu, peak_flop_per_s=peak, gpus=res.workers * held, flop_per_s=rate,
                     seconds=2 * train_macs / rate, remaining_seconds=2 * remaining_macs / rate)


def memory_fit(memory: MemoryEstimate, res: ResourcesConfig, accelerator: Accelerator) -> dict[str, float | bool]:
    """Bytes a worker gets on `accelerator` (its share when GPUs are fractions) and whether the estimate fits."""
    available = accelerator.memory_bytes * min(1.0, gpus_per_worker(res))
    limit = FIT_FRACTION * available
    return {"available_bytes": available, "fits": memory.trial_peak <= limit, "fits_without_checkpointing":
            memory.peak(False) <= limit, "fits_with_checkpointing": memory.peak(True) <= limit}


def default_cluster_gpus(res: ResourcesConfig) -> int:
    """GPUs that run `max_concurrent` trials at once (one trial when the study does not say)."""
    return max(1, math.ceil(res.workers * gpus_per_worker(res) * (res.max_concurrent or 1) - 1e-9))


def concurrent_trials(res: ResourcesConfig, cluster_gpus: int) -> int:
    """Trials a cluster of `cluster_gpus` runs at once (capped by `max_concurrent`); ValueError if not one fits."""
    per_trial = res.workers * gpus_per_worker(res)
    slots = math.floor(cluster_gpus / per_trial + 1e-9)
    if slots < 1:
        raise ValueError(f"--gpus {cluster_gpus}: one trial holds {per_trial:g} GPUs (resources.workers x "
                         "resources.gpus_per_trial); give at least that many")
    return min(slots, res.max_concurrent) if res.max_concurrent else slots


def makespan(durations: list[float], slots: int) -> float:
    """Wall time of running `durations` in order, each starting on the first free one of `slots` (as Tune does)."""
    free = [0.0] * slots
    end = 0.0
    for d in durations:
        start = heapq.heappop(free)
        end = max(end, start + d)
        heapq.heappush(free, start + d)
    return end

"""`gat-study analyze` at scale: wall time for synthetic studies of 100, 300 and 1,000 trials x 100 logged steps.

Each study follows the README's run contract (written by `analysis.synthetic`, nothing trained):
widths x patch sizes 2 and 4 x seeds 0 and 1, a saturating law FD = 2 + 5 * gflops^-0.4 with 5 %
lognormal noise, every trial logging loss_d, loss_g and train_flops at each of 100 steps and the
quality metric and its diversity every 4 steps, with the `health` tag.  The sqlite stores are
built once and cached under bench/results/analysis_scale/ (building the 1,000-trial one takes
minutes); the command timed is the real CLI in a fresh process, so its imports count as a
researcher's would, with its CPU time beside the wall time (on a shared machine the wall time is
mostly the others' load).  Target: <= 30 s at 1,000 trials, growing no faster than linearly in
trials (the time per trial falls as the fixed start-up, imports and figures, is amortised).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, save

STORES = RESULTS / "analysis_scale"
TARGET_SECONDS = 30.0
STEPS, INTERVAL = 100, 4  # losses every step (101 points), metric and diversity every 4 (26 points)
E_TRUE, A_TRUE, B_TRUE = 2.0, 5.0, 0.4


def study_trials(n: int) -> list:
    """`n` trials (a multiple of 4): n/4 widths x patch 2, 4 x seed 0, 1 on a saturating law."""
    import numpy as np

    from analysis.synthetic import model_cost, synthetic_trial

    if n % 4:
        raise ValueError(f"--trials: a multiple of 4 (widths x 2 patches x 2 seeds), not {n}")
    rng = np.random.default_rng(n)
    trials = []
    for width in 32 + 4 * np.arange(n // 4):
        for patch in (2, 4):
            for seed in (0, 1):
                g = model_cost(int(width), 4, patch)["gflops_g"]
                value = (E_TRUE + A_TRUE * g ** -B_TRUE) * float(np.exp(0.05 * rng.standard_normal()))
                trials.append(synthetic_trial(int(width), 4, patch, value, seed=seed, steps=STEPS, interval=INTERVAL,
                                              diversity=0.8, health="ok"))
    return trials


def store_for(n: int) -> str:
    """The cached sqlite store of the n-trial study (built on first use); its tracking URI.  Its artifacts
    (the analysis that `analyze` logs on the parent run) stay in the same folder."""
    from mlflow.tracking import MlflowClient

    from analysis.synthetic import log_study

    folder = STORES / f"t{n}"
    db = folder / "mlflow.db"
    if not (folder / "done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        start = time.perf_counter()
        MlflowClient(f"sqlite:///{db}").create_experiment(f"scale-{n}",
                                                          artifact_location=(folder / "artifacts").as_uri())
        log_study(f"sqlite:///{db}", f"scale-{n}", study_trials(n))
        (folder / "done").write_text(f"{time.perf_counter() - start:.1f} s to build\n")
        print(f"built {db} in {time.perf_counter() - start:.0f} s", flush=True)
    return f"sqlite:///{db}"


def time_analyze(n: int, bootstrap: int) -> dict:
    """Seconds of `gat-study analyze scale-<n>` in a fresh process (imports included), and its summary line."""
    uri = store_for(n)
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "orchestrator.cli", "analyze", f"scale-{n}", "--tracking-uri", uri,
                   "--out", out, "--bootstrap", str(bootstrap)]
        before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"analyze scale-{n} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    headline = next((line.strip() for line in done.stdout.splitlines() if "gflops_g^-b" in line and "all" in line), "")
    return {"trials": n, "seconds": seconds, "seconds_per_trial": seconds / n, "cpu_seconds": cpu,
            "cpu_seconds_per_trial": cpu / n, "load_average": os.getloadavg(), "headline": headline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, nargs="*", default=[100, 300, 1000])
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples per fit (the CLI's default)")
    parser.add_argument("--build-only", action="store_true", help="build the cached stores and stop")
    args = parser.parse_args()
    for n in args.trials:
        store_for(n)
    if args.build_only:
        return
    runs = []
    for n in args.trials:
        runs.append(time_analyze(n, args.bootstrap))
        r = runs[-1]
        print(f"{n:>5} trials: {r['seconds']:.1f} s wall ({1000 * r['seconds_per_trial']:.1f} ms per trial), "
              f"{r['cpu_seconds']:.1f} s CPU ({1000 * r['cpu_seconds_per_trial']:.1f} ms per trial), "
              f"load average {r['load_average'][0]:.1f}", flush=True)
    largest = max(runs, key=lambda r: r["trials"])
    smallest = min(runs, key=lambda r: r["trials"])
    save("analysis_scale", {
        "steps_logged": STEPS, "bootstrap": args.bootstrap, "runs": runs,
        "seconds_at_largest": largest["seconds"], "cpu_seconds_at_largest": largest["cpu_seconds"],
        "trials_at_largest": largest["trials"],
        # time per trial at the largest study / at the smallest: 1 is linear, below 1 the fixed start-up amortised
        "per_trial_ratio": largest["seconds_per_trial"] / smallest["seconds_per_trial"],
        "cpu_per_trial_ratio": largest["cpu_seconds_per_trial"] / smallest["cpu_seconds_per_trial"],
        "target_seconds": TARGET_SECONDS,
    })


if __name__ == "__main__":
    main()

"""Run every benchmark in turn (on a quiet machine) and write BENCHMARKS.md from their results."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.common import RESULTS

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ["orchestration", "mlflow_overhead", "mfu", "sampling_throughput", "fid_speed", "analysis_scale"]


def _row(name: str, r: dict) -> tuple[str, str, str, str]:
    """(what, measured, target, verdict) of one result file."""
    if name == "orchestration":
        return ("study wall time / ideal (4 trials, 2 at a time)",
                f"{r['ratio']:.3f} ({r['wall_seconds']:.0f} s vs {r['ideal_seconds']:.0f} s)", "<= 1.10",
                "met" if r["ratio"] <= 1.10 else "not met")
    if name == "mlflow_overhead":
        return ("MLflow logging added to the step time", f"{100 * r['overhead']:+.2f} %", "<= 2 %",
                "met" if r["overhead"] <= 0.02 else "not met")
    if name == "mfu":
        return ("MFU of a full GAT iteration, official recipe (augmentation on), fp32 (width 256, depth 8, 64 tokens, "
                "batch 64)",
                f"{r['mfu_fp32']:.2f} ({r['achieved_flops_fp32'] / 1e9:.0f} of {r['matmul_peak_fp32'] / 1e9:.0f} GFLOP/s); "
                + (f"without augmentation {r['mfu_fp32_noaug']:.2f} ({r['noaug_speedup']:.2f}x faster); "
                   if "mfu_fp32_noaug" in r else "")
                + (f"with compiled blocks {r['mfu_fp32_compile']:.2f}; " if "mfu_fp32_compile" in r else "")
                + f"bf16 autocast speed-up {r['bf16_speedup']:.2f}x", ">= 0.60",
                "met" if r["mfu_fp32"] >= 0.60 else "not met")
    if name == "sampling_throughput":
        ratio = r.get("ratio_median", r.get("ratio"))
        return ("GAT images/s / DiT images/s at 50 steps (same width, depth, patch)", f"{ratio:.1f}", ">= 40",
                "met" if ratio >= 40 else "not met")
    if name == "fid_speed":
        ok = r["ratio_pipeline"] <= 1.0 and r["ratio_frechet_2048"] <= 0.25
        return ("Inception features + stats + FD vs torch-fidelity; 2048-d FD vs scipy sqrtm route",
                f"{r['ratio_pipeline']:.2f}; {r['ratio_frechet_2048']:.3f}", "<= 1.0; <= 0.25", "met" if ok else "not met")
    if name == "analysis_scale":
        runs = {run["trials"]: run for run in r["runs"]}
        largest = runs[max(runs)]
        each = ", ".join(f"{n}: {runs[n]['seconds']:.0f} s ({runs[n]['cpu_seconds']:.0f} s CPU)" for n in sorted(runs))
        return (f"`gat-study analyze` of a synthetic sqlite study, {max(runs)} trials x {r['steps_logged']} logged steps "
                f"(wall; CPU of the process)", f"{largest['seconds']:.0f} s ({largest['cpu_seconds']:.0f} s CPU); {each}",
                f"<= {r['target_seconds']:.0f} s", "met" if largest["seconds"] <= r["target_seconds"] else "not met")
    rows = {k: v for k, v in r.items() if k.startswith("ratio")}
    return (name, ", ".join(f"{k} {v:.3f}" for k, v in rows.items()), str(r.get("target", "-")), "see result file")


def render() -> str:
    lines = ["# Benchmarks", "",
             "Ratios against a reference measured in the same run (never absolute timings in tests).",
             "Regenerate with `make bench` on a quiet machine; each result file is in `bench/results/`.", "",
             "| benchmark | measured | target | | date | machine |", "|---|---|---|---|---|---|"]
    for name in BENCHES:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        what, measured, target, verdict = _row(name, r)
        m = r["machine"]
        lines.append(f"| {what} | {measured} | {target} | {verdict} | {m['date']} | {m['cpu']}, {m['cores']} cores, "
                     f"torch {m['torch']}, {m['threads']} threads |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=BENCHES)
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if not args.render_only:
        for name in args.only:
            print(f"== {name}", flush=True)
            subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=ROOT, check=False)
    notes = ROOT / "bench" / "NOTES.md"
    text = render() + ("\n" + notes.read_text() if notes.exists() else "")
    (ROOT / "BENCHMARKS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

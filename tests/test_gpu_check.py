"""`bench/gpu_check.py --dry`: every step of the GPU check runs on a CPU, so that it is known to work
when a GPU appears (the dry numbers test the plumbing; they are not GPU measurements).

The dry run is a real subprocess: real trainers on VAE latents, a real 2-trial study through the
`gat-study run` CLI on a local Ray with its sqlite MLflow store, a real Inception in the weights file's
format, and a nested `pytest -m gpu` (whose tests skip without CUDA).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.gpu_check import STEPS, largest_batch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("gpu-check") / "dry.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert out.exists(), proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_every_section_is_written_and_every_step_ran(dry):
    proc, result = dry
    failed = {name: result[name].get("error") for name in STEPS if not result[name]["ok"]}
    assert not failed and proc.returncode == 0, (failed, proc.stderr[-3000:])
    assert {"environment", "targets", *STEPS} <= set(result)
    env = result["environment"]
    assert env["dry"] is True and env["device"] == "cpu"
    assert env["torch"] == torch.__version__ and env["date"] and "gpu" in env and "torch_cuda" in env
    assert all(result[name]["seconds"] >= 0 for name in STEPS)


def test_the_dry_study_completed_both_trials_in_mlflow(dry):
    study = dry[1]["study"]
    assert study["returncode"] == 0, study["output_tail"]
    assert study["resources"]["gpus_per_trial"] == 0 and study["device"] == "cpu"
    assert study["all_completed"] and study["completed"] == 2
    assert [t["status"] for t in study["trials"]] == ["completed", "completed"]
    assert all(t["mlflow_status"] == "FINISHED" and t["final_step"] == "4" for t in study["trials"])


def test_mfu_and_xl_sections_hold_measurements(dry):
    result = dry[1]
    peak = result["matmul_peak"]["flops_per_second"]
    assert peak > 0 and result["matmul_peak"]["dtype"] == "bfloat16"
    mfu = result["mfu_gat_b2"]
    assert mfu["latent_shape"] == [4, 8, 8] and mfu["recipe"]["augment"] and mfu["recipe"]["penalty"] == "approx"
    # FlopCounterMode on the eager trainer agrees with the analytic count of the same iteration
    assert mfu["flops_per_iteration"] == pytest.approx(mfu["analytic_flops_per_iteration"], rel=1e-2)
    for variant in ("eager", "compiled"):
        v = mfu[variant]
        assert v["sec_per_iteration"] > 0
        assert v["mfu"] == pytest.approx(mfu["flops_per_iteration"] / v["sec_per_iteration"] / peak)
        assert len(v["warmup_seconds"]) >= 1
    xl = result["xl_batch"]
    for setting in ("without_checkpointing", "with_checkpointing"):
        search = xl[setting]
        assert search["largest_batch"] == 4 and search["stopped_by"] == "cap"  # a CPU never runs out at these sizes
        assert [t["batch"] for t in search["tried"]] == [2, 4]
        assert search["at_largest"]["sec_per_iteration"] > 0


def test_fid_comparison_and_gpu_tests_ran(dry):
    result = dry[1]
    fid = result["fid"]
    assert fid["fid_cpu"] > 0 and fid["relative_difference"] <= fid["tolerance"] == 1e-4
    tests = result["gpu_tests"]
    assert tests["collected"] >= 3 and tests["failed"] == 0 and tests["errors"] == 0
    if not torch.cuda.is_available():
        assert tests["skipped"] == tests["collected"] and any("CUDA" in r for r in tests["skip_reasons"])


def test_targets_are_evaluated_and_marked_dry(dry):
    targets = dry[1]["targets"]
    assert {"gat_b2_bf16_compiled_mfu", "study_completes", "fid_gpu_equals_cpu", "gpu_tests_pass"} <= set(targets)
    assert targets["study_completes"]["met"] is True and targets["fid_gpu_equals_cpu"]["met"] is True
    assert targets["gat_b2_bf16_compiled_mfu"]["value"] > 0
    assert "dry" in targets["note"]


def test_largest_batch_stops_at_the_first_out_of_memory():
    """The search logic against a memory limit (a CUDA OOM above batch 32), cleanup after every attempt."""
    cleanups = []

    def fit(batch: int) -> dict:
        if batch > 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"sec_per_iteration": batch / 100}

    search = largest_batch(fit, 4, 1024, seconds=60, cleanup=lambda: cleanups.append(True))
    assert search["largest_batch"] == 32 and search["stopped_by"] == "out of memory"
    assert [(t["batch"], t["fits"]) for t in search["tried"]] == [(4, True), (8, True), (16, True), (32, True),
                                                                  (64, False)]
    assert "out of memory" in search["tried"][-1]["error"] and search["at_largest"]["sec_per_iteration"] == 0.32
    assert len(cleanups) == 5  # after each of the five attempts, the failed one included


def test_largest_batch_respects_the_cap_and_lets_other_errors_through():
    assert largest_batch(lambda b: {}, 8, 40, seconds=60)["tried"][-1]["batch"] == 32

    def broken(batch: int) -> dict:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        largest_batch(broken, 8, 64, seconds=60)

"""GPU check: one command that proves the GPU path of gat-study and measures it, into one JSON file.

    python -m bench.gpu_check --out gpu_check.json          # on one H100/H200-class GPU, < 8 min
    python -m bench.gpu_check --out dry.json --dry          # every step on the CPU, tiny sizes (the test suite)

Steps, in the order they run, each recording its result or its error (a failing step never loses the
others; the file is rewritten after every step, so even a run killed half-way leaves what it measured):

1. `matmul_peak`: dense bf16 matmul FLOP/s (8192^2 products, `bench.common.matmul_peak`): the reference.
2. `mfu_gat_b2`: a full GAT-B/2 training iteration (`GANTrainer.iteration`: D step with approximated R1/R2,
   G step, MNG K=4, the official DiffAugment policy, EMA) at batch 64 under bf16 autocast, on 32x32x4
   latents (the paper's ImageNet-256 setting; 1000 classes; seeded shapes encoded by a small random VAE,
   as the tests do: the latents' values do not change the cost), eager and with every block compiled
   (`train.compile`).  FLOPs are counted by FlopCounterMode on the eager trainer (2 per MAC); MFU is
   counted FLOPs / second / the peak of step 1.  Compilation happens in the warm-up iterations, with a cold
   Inductor cache, and is reported apart; the two variants take turns in the timed rounds.
3. `study`: a 2-trial study on the one GPU with `resources.gpus_per_trial: 0.5` run by the real CLI
   (`gat-study run` in a subprocess on a generated study file), then its MLflow store is read: both
   trial runs completed, and whether they overlapped in time.
4. `fid`: FID between two fixed image sets (seeded built-in shapes), Inception features computed on the GPU
   and on the CPU, relative difference (target <= 1e-4).  The real Inception weights cannot be downloaded
   here: the network is a randomly initialised one in the exact format of torch-fidelity's weights file
   (`write_random_inception_weights`), re-drawn until its features vary across images, loaded through the
   same code path as the real file.  On CUDA the same is also measured with TF32 convolutions off.
5. `gpu_tests`: `pytest -m gpu` (the tests that need CUDA), pass/fail/skip counts from its JUnit report.
6. `xl_batch`: the largest batch of GAT-XL/2 that fits, without and with gradient checkpointing: a
   doubling search from 16, capped at 512 (`--xl-cap`), each size run twice (warm-up, then timed); the
   first `torch.cuda.OutOfMemoryError` ends a search and its memory is freed.  One trainer per setting
   (building XL takes longer than an iteration): its batch sampler is replaced at each size.  It runs last
   and starts no larger batch once the budget (`--budget`, 420 s) is spent: the whole check stays < 8 min.

`targets` evaluates GAT-B/2 bf16 compiled MFU >= 0.40, the study completes, FID equal, gpu tests pass.

`--dry` runs every step on the CPU in about two minutes (plus Ray's start-up): tiny G/D instead of B/2 and
XL/2 on 8x8x4 latents, bf16 autocast on the CPU, 512^2 matmuls, blocks compiled with the `eager` Dynamo
backend (a cold Inductor compile takes minutes on two cores; on a GPU the default Inductor runs), the
study with `gpus_per_trial: 0` on CPUs, FID CPU (channels-last) against CPU (contiguous), and the gpu
tests (skipped without CUDA).  Dry numbers are plumbing, not measurements: its `targets` say so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.common import machine, matmul_peak
from gat_core.atomic import write_atomic

ROOT = Path(__file__).resolve().parent.parent
# in the order they run: the XL search is last, as it alone can stretch to fill what is left of the budget
STEPS = ("matmul_peak", "mfu_gat_b2", "study", "fid", "gpu_tests", "xl_batch")
MFU_TARGET, FID_TOLERANCE = 0.40, 1e-4


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the dry run."""

    device: str
    peak_n: int
    peak_seconds: float
    image_resolution: int  # pixels before the x2 VAE: latents are half this size, 4 channels
    num_classes: int
    data_size: int
    mfu_model: dict[str, Any]
    mfu_batch: int
    mfu_warmup: int
    mfu_compile_warmup: int
    mfu_rounds: int
    compile_backend: str | None  # None: torch.compile's default (Inductor)
    xl_model: dict[str, Any]
    xl_start: int
    xl_cap: int
    budget: float  # seconds for the whole check: no larger XL batch is started after it (less a reserve)
    fid_images: int
    study_train: dict[str, Any]
    study_model: dict[str, Any]
    study_resources: dict[str, Any]
    study_num_cpus: int
    study_timeout: float
    gpu_test_paths: tuple[str, ...]
    pytest_timeout: float
    notes: list[str] = field(default_factory=list)


GPU = Sizes(
    device="cuda", peak_n=8192, peak_seconds=3.0, image_resolution=64, num_classes=1000, data_size=1024,
    mfu_model={"preset": "GAT-B/2"}, mfu_batch=64, mfu_warmup=3, mfu_compile_warmup=3, mfu_rounds=8,
    compile_backend=None, xl_model={"preset": "GAT-XL/2"}, xl_start=16, xl_cap=512, budget=420.0,
    fid_images=200,
    study_train={"steps": 30, "batch_size": 32, "log_every": 10, "checkpoint_every": 15, "device": "cuda"},
    study_model={"width": 64, "depth": 4, "heads": 4, "patch_size": 2},
    study_resources={"cpus_per_trial": 2, "gpus_per_trial": 0.5, "max_concurrent": 2, "max_failures": 0},
    study_num_cpus=8, study_timeout=300.0, gpu_test_paths=("tests",), pytest_timeout=240.0)

DRY = Sizes(
    device="cpu", peak_n=512, peak_seconds=0.3, image_resolution=16, num_classes=10, data_size=64,
    mfu_model={"width": 32, "depth": 4, "heads": 2, "patch_size": 2}, mfu_batch=8, mfu_warmup=1,
    mfu_compile_warmup=2, mfu_rounds=1, compile_backend="eager",
    xl_model={"width": 48, "depth": 4, "heads": 2, "patch_size": 2}, xl_start=2, xl_cap=4, budget=1800.0,
    fid_images=4,
    study_train={"steps": 4, "batch_size": 8, "log_every": 2, "checkpoint_every": 2, "device": "cpu"},
    study_model={"width": 32, "depth": 4, "heads": 2, "patch_size": 2},
    study_resources={"cpus_per_trial": 1, "gpus_per_trial": 0, "max_concurrent": 2, "max_failures": 0},
    study_num_cpus=2, study_timeout=420.0, gpu_test_paths=("tests/test_gpu.py",), pytest_timeout=240.0,
    notes=["dry run: CPU, tiny sizes; the numbers test the plumbing and are not GPU measurements"])


# --- helpers ------------------------------------------------------------------------------------

def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    """Seconds of `fn()`, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def peak_memory_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def reset_peak_memory(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


@contextmanager
def compile_backend(backend: str | None) -> Iterator[None]:
    """`nn.Module.compile()` (what `train.compile` calls) with `backend` unless the caller names one."""
    import torch

    if backend is None:
        yield
        return
    original = torch.nn.Module.compile

    def compile_with(self, *args, **kwargs):
        kwargs.setdefault("backend", backend)
        return original(self, *args, **kwargs)

    torch.nn.Module.compile = compile_with
    try:
        yield
    finally:
        torch.nn.Module.compile = original


def write_tiny_vae(folder: Path) -> Path:
    """A randomly initialised AutoencoderKL, downsampling x2, 4 latent channels (the tests' tiny VAE)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16))
    vae.save_pretrained(folder)
    return folder


class Context:
    """What steps share: the sizes, a scratch folder, the measured peak and the encoded latents (made once)."""

    def __init__(self, sizes: Sizes, tmp: Path, reserve: float = 30.0) -> None:
        self.sizes, self.tmp = sizes, tmp
        self.deadline = time.perf_counter() + sizes.budget - reserve  # the last attempt may run past it
        self.peak: float | None = None
        self._latents: Path | None = None

    def latents(self) -> Path:
        """Seeded shapes encoded by `gat_core.latents.encode_dataset` to [4, R/2, R/2] latents."""
        if self._latents is None:
            from gat_core.config import DataConfig
            from gat_core.data import load_dataset
            from gat_core.latents import encode_dataset

            s = self.sizes
            data = load_dataset(DataConfig(name="shapes", resolution=s.image_resolution, size=s.data_size,
                                           num_classes=s.num_classes, seed=0))
            out = self.tmp / "latents"
            encode_dataset(data, write_tiny_vae(self.tmp / "tiny-vae"), out, batch_size=256, device=s.device)
            self._latents = out
        return self._latents


def gan_trial(ctx: Context, model: dict[str, Any], batch: int, *, compile_blocks: bool = False,
              grad_checkpoint: bool = False):
    """The official recipe in latent space under bf16 autocast."""
    from gat_core.config import OFFICIAL_AUGMENT, TrialConfig

    return TrialConfig.model_validate({
        "dataset": {"name": "shapes", "latents": str(ctx.latents())},
        "model": model,
        "train": {"steps": 10, "batch_size": batch, "precision": "bf16", "device": ctx.sizes.device,
                  "compile": compile_blocks, "grad_checkpoint": grad_checkpoint, "augment": list(OFFICIAL_AUGMENT),
                  "penalty": "approx", "mng": "exp", "mng_levels": 4, "ema": 0.999}})


# --- steps --------------------------------------------------------------------------------------

def step_matmul_peak(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    ctx.peak = matmul_peak("bfloat16", n=s.peak_n, seconds=s.peak_seconds, device=s.device)
    return {"dtype": "bfloat16", "n": s.peak_n, "device": s.device, "flops_per_second": ctx.peak}


def step_mfu(ctx: Context) -> dict[str, Any]:
    import torch

    from gat_core.flop_counter import count_flops
    from gat_core.gan_trainer import GANTrainer

    s = ctx.sizes
    if ctx.peak is None:
        raise RuntimeError("no matmul peak: the matmul_peak step failed or did not run")
    with compile_backend(s.compile_backend):
        eager = GANTrainer(gan_trial(ctx, s.mfu_model, s.mfu_batch), ctx.tmp / "mfu-eager")
        compiled = GANTrainer(gan_trial(ctx, s.mfu_model, s.mfu_batch, compile_blocks=True), ctx.tmp / "mfu-compiled")
        trainers = {"eager": eager, "compiled": compiled}
        warmup = {"eager": [timed(eager.iteration, s.device) for _ in range(s.mfu_warmup)]}
        flops = count_flops(eager.iteration)  # one model, counted eagerly: it applies to both variants
        warmup["compiled"] = [timed(compiled.iteration, s.device) for _ in range(s.mfu_compile_warmup)]
        seconds: dict[str, list[float]] = {name: [] for name in trainers}
        reset_peak_memory(s.device)
        for _ in range(s.mfu_rounds):  # turns: a change of clock or load hits both alike
            for name, trainer in trainers.items():
                seconds[name].append(timed(trainer.iteration, s.device))
    peak_after = matmul_peak("bfloat16", n=s.peak_n, seconds=s.peak_seconds, device=s.device)
    out: dict[str, Any] = {
        "model": s.mfu_model, "batch": s.mfu_batch,
        "tokens": (eager.cfg.dataset.model_resolution // eager.cfg.model.patch_size) ** 2,
        "latent_shape": [eager.cfg.dataset.model_channels, eager.cfg.dataset.model_resolution,
                         eager.cfg.dataset.model_resolution],
        "num_classes": eager.dataset.num_classes, "precision": "bf16 autocast",
        "recipe": {"augment": eager.cfg.train.augment, "penalty": eager.cfg.train.penalty,
                   "mng_levels": eager.cfg.train.levels, "ema": eager.cfg.train.ema},
        "compile_backend": s.compile_backend or "inductor (torch.compile default)",
        "flops_per_iteration": flops, "analytic_flops_per_iteration": 2 * eager.cost.macs_per_sample_iter * s.mfu_batch,
        "matmul_peak": ctx.peak, "matmul_peak_after": peak_after, "rounds": s.mfu_rounds,
        "peak_memory_gib_both": peak_memory_gib(s.device),
    }
    for name in trainers:
        sec = statistics.median(seconds[name])
        out[name] = {"sec_per_iteration": sec, "sec_per_iteration_all": seconds[name], "warmup_seconds": warmup[name],
                     "achieved_flops": flops / sec, "mfu": flops / sec / ctx.peak}
    out["compile_speedup"] = statistics.median(a / b for a, b in zip(seconds["eager"], seconds["compiled"]))
    del trainers, eager, compiled
    free_memory(s.device)
    torch._dynamo.reset()
    return out


def largest_batch(fit: Callable[[int], dict[str, Any]], start: int, cap: int, seconds: float,
                  cleanup: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Doubling search for the largest batch `fit` runs at: start, 2 start, ... up to `cap`.

    The first torch.cuda.OutOfMemoryError ends it; `cleanup` runs after every attempt, outside the
    handler (the exception's frames hold the failed attempt's tensors until the handler is left).
    No attempt starts after `seconds`."""
    import torch

    tried: list[dict[str, Any]] = []
    began, batch, stopped = time.perf_counter(), start, "cap"
    while batch <= cap:
        if time.perf_counter() - began > seconds:
            stopped = "time"
            break
        oom = None
        try:
            tried.append({"batch": batch, "fits": True, **fit(batch)})
        except torch.cuda.OutOfMemoryError as exc:
            oom = str(exc).splitlines()[0][:300] if str(exc) else "CUDA out of memory"
        cleanup()
        if oom is not None:
            tried.append({"batch": batch, "fits": False, "error": oom})
            stopped = "out of memory"
            break
        batch *= 2
    fits = [t for t in tried if t["fits"]]
    return {"largest_batch": fits[-1]["batch"] if fits else None, "at_largest": fits[-1] if fits else None,
            "stopped_by": stopped, "cap": cap, "tried": tried}


def step_xl(ctx: Context) -> dict[str, Any]:
    from gat_core.latents import LatentSampler
    from gat_core.gan_trainer import GANTrainer

    s = ctx.sizes
    out: dict[str, Any] = {"model": s.xl_model, "precision": "bf16 autocast", "matmul_peak": ctx.peak}
    for name, checkpointing in (("without_checkpointing", False), ("with_checkpointing", True)):
        # the first search gets half of what is left, the second the rest
        seconds = (ctx.deadline - time.perf_counter()) / (2 if not checkpointing else 1)
        trainer = GANTrainer(gan_trial(ctx, s.xl_model, s.xl_start, grad_checkpoint=checkpointing),
                          ctx.tmp / f"xl-{name}")
        macs = trainer.cost.macs_per_sample_iter
        out["params"] = sum(p.numel() for p in [*trainer.G.parameters(), *trainer.D.parameters()])

        def fit(batch: int) -> dict[str, Any]:
            trainer.sampler = LatentSampler(trainer.latent, batch, seed=0, device=trainer.device)
            reset_peak_memory(s.device)
            first = timed(trainer.iteration, s.device)  # allocations at this size happen here
            sec = timed(trainer.iteration, s.device)
            return {"sec_per_iteration": sec, "first_iteration_seconds": first, "samples_per_second": batch / sec,
                    "peak_memory_gib": peak_memory_gib(s.device),
                    "mfu_analytic": 2 * macs * batch / sec / ctx.peak if ctx.peak else None}

        def cleanup() -> None:
            trainer.opt_g.zero_grad(set_to_none=True)
            trainer.opt_d.zero_grad(set_to_none=True)
            free_memory(s.device)

        out[name] = largest_batch(fit, s.xl_start, s.xl_cap, seconds, cleanup)
        del trainer, fit, cleanup
        free_memory(s.device)
    return out


def _cli() -> list[str]:
    """The installed `gat-study` beside this interpreter, else the same entry point as a module."""
    script = shutil.which("gat-study", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "orchestrator.cli"]


def study_spec(ctx: Context, out: Path) -> dict[str, Any]:
    s = ctx.sizes
    return {
        "name": "gpu-check",
        "output_dir": str(out),
        "dataset": {"name": "shapes", "resolution": 16 if s.device == "cuda" else 8, "size": 512},
        "model": s.study_model,
        "train": s.study_train,
        "eval": {"interval": s.study_train["steps"] // 2, "num_samples": 64, "final_samples": 64, "batch_size": 64,
                 "classifier_epochs": 1, "grid_size": 4},
        "resources": s.study_resources,
        "grid": {"train.seed": [0, 1]},
    }


def step_study(ctx: Context) -> dict[str, Any]:
    from orchestrator.tracking import StudyTracker

    s = ctx.sizes
    folder = ctx.tmp / "study"
    folder.mkdir()
    spec = study_spec(ctx, folder / "out")
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    command = [*_cli(), "run", str(path), "--num-cpus", str(s.study_num_cpus)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=s.study_timeout)
    wall = time.perf_counter() - began
    uri = f"sqlite:///{folder / 'out' / 'mlflow.db'}"
    runs = StudyTracker(uri, spec["name"], read_only=True).trial_runs(spec["name"])
    trials = []
    for run in runs.values():
        m = run.data.metrics
        trials.append({"trial_id": run.data.tags.get("trial_id"), "status": run.data.tags.get("status"),
                       "mlflow_status": run.info.status, "final_step": run.data.tags.get("final_step"),
                       "start_ms": run.info.start_time, "end_ms": run.info.end_time,
                       "sec_per_step": m.get("sec_per_step"), "fd_classifier": m.get("fd_classifier")})
    completed = [t for t in trials if t["status"] == "completed" and t["mlflow_status"] == "FINISHED"]
    overlap = None
    if len(trials) == 2 and all(t["start_ms"] and t["end_ms"] for t in trials):
        a, b = trials
        overlap = max(0, min(a["end_ms"], b["end_ms"]) - max(a["start_ms"], b["start_ms"])) / 1000
    return {"command": " ".join(command[-4:]), "returncode": proc.returncode, "wall_seconds": wall,
            "resources": spec["resources"], "device": spec["train"]["device"], "trials": trials,
            "completed": len(completed), "all_completed": len(trials) == 2 and len(completed) == 2,
            "overlap_seconds": overlap, "output_tail": (proc.stdout + proc.stderr)[-2000:]}


def varied_inception(path: Path, probe) -> tuple[Path, int]:
    """A random Inception in the real file's format whose features vary across images (the tests' recipe)."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from bench.common import write_random_inception_weights

    for seed in range(5):
        write_random_inception_weights(path, seed=seed)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        with torch.no_grad():
            feats = net(probe)[0]
        if feats.std(0).mean() > 1e-3 * feats.abs().mean() and feats.abs().mean() > 1e-3:
            return path, seed
    raise RuntimeError("could not draw an Inception whose features vary across images")


def fid_on(weights: Path, sets, device: str, channels_last: bool = True) -> float:
    """FID of the two image sets, features on `device`, statistics and distance in float64 on the CPU."""
    from gat_core.metrics import RunningStats, frechet_distance
    from gat_core.metrics.extractors import InceptionExtractor

    extractor = InceptionExtractor(weights, device=device, chunk=50, channels_last=channels_last)
    stats = []
    for images in sets:
        st = RunningStats(extractor.dim)
        st.update(extractor.features(images))
        stats.append(st)
    return frechet_distance(stats[0].mean, stats[0].cov, stats[1].mean, stats[1].cov)


def fixed_images(n: int):
    """Two different fixed sets: seeded shapes, and other shapes with their colour channels rotated."""
    from gat_core.config import DataConfig
    from gat_core.data import load_dataset, quantize_uint8

    data = load_dataset(DataConfig(name="shapes", resolution=32, size=max(2 * n, 16), seed=0))
    return quantize_uint8(data.images[:n]), quantize_uint8(data.images[n:2 * n].roll(1, dims=1))


def compare_fid(weights: Path, n: int, device: str) -> dict[str, Any]:
    """FID with features on `device` against FID with features on the CPU (contiguous when `device` is the CPU)."""
    import torch

    sets = fixed_images(n)
    on_cpu = device == "cpu"
    reference = fid_on(weights, sets, "cpu", channels_last=not on_cpu)
    tested = fid_on(weights, sets, device)
    out: dict[str, Any] = {
        "images_per_set": n, "device": device, "fid_device": tested, "fid_cpu": reference,
        "reference": "CPU, contiguous memory format" if on_cpu else "CPU",
        "relative_difference": abs(tested - reference) / max(abs(reference), 1e-30)}
    if device.startswith("cuda"):
        out["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            no_tf32 = fid_on(weights, sets, device)
        out["fid_device_no_tf32"] = no_tf32
        out["relative_difference_no_tf32"] = abs(no_tf32 - reference) / max(abs(reference), 1e-30)
    return out


def step_fid(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    probe = fixed_images(4)[0]
    weights, seed = varied_inception(ctx.tmp / "inception" / "weights-inception-2015-12-05-6726825d.pth", probe)
    out = compare_fid(weights, s.fid_images, s.device)
    return {"weights": "randomly initialised, torch-fidelity's file format (the real file cannot be downloaded)",
            "weights_seed": seed, "tolerance": FID_TOLERANCE, **out}


def junit_counts(path: Path) -> dict[str, Any]:
    """passed/failed/errors/skipped of a pytest JUnit XML report, with failed names and skip reasons."""
    root = ET.parse(path).getroot()
    cases = list(root.iter("testcase"))
    failed = [c for c in cases if c.find("failure") is not None]
    errors = [c for c in cases if c.find("error") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    name = lambda c: f"{c.get('classname')}::{c.get('name')}"  # noqa: E731
    return {"collected": len(cases), "passed": len(cases) - len(failed) - len(errors) - len(skipped),
            "failed": len(failed), "errors": len(errors), "skipped": len(skipped),
            "failed_tests": [name(c) for c in failed + errors],
            "skip_reasons": sorted({c.find("skipped").get("message", "") for c in skipped})}


def step_gpu_tests(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    report = ctx.tmp / "gpu-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
               *s.gpu_test_paths]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=s.pytest_timeout)
    counts = junit_counts(report) if report.exists() else {"collected": 0}
    return {"command": "pytest -m gpu " + " ".join(s.gpu_test_paths), "returncode": proc.returncode, **counts,
            "output_tail": (proc.stdout + proc.stderr)[-2000:]}


# --- the run ------------------------------------------------------------------------------------

def environment(sizes: Sizes, dry: bool) -> dict[str, Any]:
    import torch

    env = {**machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dry": dry, "device": sizes.device,
           "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_memory_gib=props.total_memory / 2**30,
                   compute_capability=f"{props.major}.{props.minor}")
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                           timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def targets(results: dict[str, Any], dry: bool) -> dict[str, Any]:
    mfu = (results.get("mfu_gat_b2") or {}).get("compiled", {}).get("mfu")
    study = (results.get("study") or {}).get("all_completed")
    fid = (results.get("fid") or {}).get("relative_difference")
    tests = results.get("gpu_tests") or {}
    tests_ok = tests.get("ok") and tests.get("failed") == 0 and tests.get("errors") == 0 and tests.get("passed", 0) > 0
    out = {
        "gat_b2_bf16_compiled_mfu": {"target": f">= {MFU_TARGET}", "value": mfu,
                                     "met": mfu is not None and mfu >= MFU_TARGET},
        "study_completes": {"target": "2 of 2 trials completed", "value": study, "met": bool(study)},
        "fid_gpu_equals_cpu": {"target": f"relative difference <= {FID_TOLERANCE}", "value": fid,
                               "met": fid is not None and fid <= FID_TOLERANCE},
        "gpu_tests_pass": {"target": "every gpu test passes", "value": {k: tests.get(k) for k in
                                                                        ("passed", "failed", "errors", "skipped")},
                           "met": bool(tests_ok)},
    }
    if dry:
        out["note"] = "dry run on the CPU: these values test the plumbing; the GPU targets apply to a GPU run"
    return out


def run_step(name: str, fn: Callable[[Context], dict[str, Any]], ctx: Context) -> dict[str, Any]:
    began = time.perf_counter()
    print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
    try:
        result = {"ok": True, **fn(ctx)}
    except Exception as exc:  # one failing step must not lose the others
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000],
                  "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = time.perf_counter() - began
    print(f"[gpu_check] {name}: {'ok' if result['ok'] else result['error']} ({result['seconds']:.1f} s)",
          file=sys.stderr, flush=True)
    return result


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str))


FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "matmul_peak": step_matmul_peak, "mfu_gat_b2": step_mfu, "xl_batch": step_xl, "study": step_study,
    "fid": step_fid, "gpu_tests": step_gpu_tests}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--dry", action="store_true", help="every step on the CPU at tiny sizes (no GPU needed)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--xl-cap", type=int, help="largest GAT-XL/2 batch tried (default 512; dry 4)")
    parser.add_argument("--budget", type=float, help="seconds for the whole check (default 420): the XL search "
                        "starts no larger batch once it is spent, less 30 s")
    args = parser.parse_args(argv)
    chosen = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(chosen) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown step(s) {', '.join(unknown)}; expected some of {', '.join(STEPS)}")
    sizes = DRY if args.dry else GPU
    changes = {k: v for k, v in (("xl_cap", args.xl_cap), ("budget", args.budget)) if v}
    sizes = Sizes(**{**sizes.__dict__, **changes})

    import torch

    if not args.dry and not torch.cuda.is_available():
        print("[gpu_check] no CUDA device: the GPU steps will fail; use --dry to check the plumbing on a CPU",
              file=sys.stderr)
    began = time.perf_counter()
    results: dict[str, Any] = {"check": "bench/gpu_check.py", "environment": environment(sizes, args.dry),
                               "notes": sizes.notes}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")  # cold compile: its full cost shows
        ctx = Context(sizes, Path(tmp))
        for name in STEPS:
            results[name] = run_step(name, FUNCTIONS[name], ctx) if name in chosen else {"ok": None, "skipped": True}
            results["targets"] = targets(results, args.dry)
            results["total_seconds"] = time.perf_counter() - began
            write_json(args.out, results)
    print(json.dumps(results["targets"], indent=2))
    return 0 if all(results[n]["ok"] for n in chosen) else 1


if __name__ == "__main__":
    sys.exit(main())

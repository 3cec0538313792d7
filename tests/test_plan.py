"""`gat-study plan`: trial states from a real MLflow store, compute still to spend, costs on named accelerators
(wall time, GPU-hours, memory), and the warnings about studies that cannot say anything."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from orchestrator.accelerators import ACCELERATORS, MEASURED_MFU, lookup
from orchestrator.cli import main
from orchestrator.study import load_study
from tests.helpers import tiny_study, write_study

ROOT = Path(__file__).resolve().parent.parent


def plan_json(capsys, path: Path, *args: str) -> dict:
    assert main(["plan", str(path), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def study_file(tmp_path: Path, name: str = "plan", grid: dict | None = None, **sections) -> Path:
    spec = tiny_study(name, tmp_path / "out")
    for section, values in sections.items():
        spec[section] = {**spec.get(section, {}), **values}
    spec["grid"] = grid if grid is not None else {"model.width": [32, 48, 64]}
    return write_study(tmp_path / f"{name}.yaml", spec)


# --- states from the store ---------------------------------------------------------------------------------------

def test_without_a_store_every_trial_is_new_and_nothing_is_created(tmp_path, capsys):
    path = study_file(tmp_path)
    plan = plan_json(capsys, path)
    assert [t["state"] for t in plan["trials"]] == ["new"] * 3
    assert all(t["remaining_train_macs"] == t["train_flops"] for t in plan["trials"])
    assert plan["total_remaining_train_macs"] == plan["total_train_flops"]
    assert plan["store"]["found"] is False and "no MLflow store" in plan["store"]["note"]
    assert not (tmp_path / "out").exists()  # read-only: no folder, no database


def test_an_unreachable_store_is_reported_and_every_trial_counted_in_full(tmp_path, capsys):
    plan = plan_json(capsys, study_file(tmp_path), "--tracking-uri", "http://127.0.0.1:9")
    assert {t["state"] for t in plan["trials"]} == {"unknown"}
    assert "cannot be read" in plan["store"]["note"] and "127.0.0.1:9" in plan["store"]["note"]
    assert plan["total_remaining_train_macs"] == plan["total_train_flops"]


def _write_runs(study, cases: dict[int, tuple[str, list[int], int | None]]) -> None:
    """Child runs written by the project's own tracking writer: trial index -> (status, logged steps, final step)."""
    from orchestrator.plan import compute_columns
    from orchestrator.tracking import StudyTracker, TrialLogger

    uri = study.config.tracking_uri
    study.config.out.mkdir(parents=True, exist_ok=True)
    tracker = StudyTracker(uri, study.config.experiment, artifact_root=study.config.out / "mlartifacts")
    parent = tracker.ensure_parent(study)
    existing = tracker.trial_runs(study.config.name)
    for index, (status, logged, final) in cases.items():
        trial = study.trials[index]
        run_id = tracker.ensure_child(study, trial, parent, compute_columns(trial), existing)
        logger = TrialLogger(uri, run_id, flush_seconds=0)
        logger.start()
        for step in logged:
            logger.log(step, {"loss_d": 1.0, "train_flops": 1.0})
        assert logger.flush()
        if final is not None:
            logger.finish(status, final, attempts=1)
        else:
            tracker.client.set_tag(run_id, "status", status)


def test_states_and_remaining_compute_from_the_runs_the_runner_writes(tmp_path, capsys):
    path = study_file(tmp_path, "states", grid={"train.seed": [0, 1, 2, 3, 4, 5, 6]}, train={"steps": 12})
    study = load_study(path)
    _write_runs(study, {
        0: ("completed", [2, 4, 6], 6),     # trained to 6 of the 12 steps now asked for
        1: ("interrupted", [2, 4], None),
        2: ("failed", [2, 4], -1),          # the runner's failed trials write final_step -1
        3: ("diverged", [2, 4], 5),
        4: ("completed", [2, 4, 6, 8, 10, 12], 12),
        6: ("completed", [2, 4, 6, 8, 10, 12, 14], 14),  # a longer study than this one
    })                                      # trial 5: no run
    plan = plan_json(capsys, path)
    trials = plan["trials"]
    assert [t["state"] for t in trials] == ["extend (6 -> 12)", "partial (at step 4)", "partial (at step 4)",
                                            "diverged (at step 5)", "finished", "new", "finished (at step 14 > 12)"]
    assert [t["remaining_steps"] for t in trials] == [6, 8, 8, 0, 0, 12, 0]
    per_step = trials[0]["macs_per_sample_iter"] * 8  # batch 8
    assert [t["remaining_train_macs"] for t in trials] == [per_step * n for n in (6, 8, 8, 0, 0, 12, 0)]
    assert plan["total_remaining_train_macs"] == per_step * 34
    assert plan["total_train_flops"] == per_step * 12 * 7  # the total is the configured steps, whatever is done
    assert plan["store"]["found"] is True and "6 of 7 trials have runs" in plan["store"]["note"]
    assert any("trained past the steps the study now asks for" in w and "14 > 12" in w and "`run` refuses" in w
               for w in plan["warnings"])
    assert main(["plan", str(path)]) == 0
    text = capsys.readouterr().out
    assert "extend (6 -> 12)" in text and "still to spend" in text


@pytest.fixture(scope="module")
def ran(tmp_path_factory, ray_session):
    """A tiny two-trial study run to its 6 steps through the real CLI, on a real local Ray and sqlite store."""
    tmp = tmp_path_factory.mktemp("plan-run")
    path = study_file(tmp, "planrun", grid={"model.width": [32, 48]})
    assert main(["run", str(path)]) == 0
    return path, tmp / "out" / "mlflow.db"


def test_finished_trials_have_nothing_left_and_plan_writes_nothing(ran, capsys):
    path, db = ran
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    plan = plan_json(capsys, path)
    assert [t["state"] for t in plan["trials"]] == ["finished", "finished"]
    assert [t["steps_done"] for t in plan["trials"]] == [6, 6]
    assert plan["total_remaining_train_macs"] == 0 and plan["total_train_flops"] > 0
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_more_steps_on_a_finished_study_are_an_extension(ran, capsys):
    path, _ = ran
    plan = plan_json(capsys, path, "--set", "train.steps=10")
    assert [t["state"] for t in plan["trials"]] == ["extend (6 -> 10)"] * 2, "train.steps must not be trial identity"
    assert all(t["remaining_train_macs"] == t["macs_per_sample_iter"] * 8 * 4 for t in plan["trials"])


# --- the accelerator table -----------------------------------------------------------------------------------------

def test_the_table_holds_the_common_data_centre_gpus_with_their_sources():
    for name in ("A100-40GB", "A100-80GB", "H100-SXM", "H100-PCIe", "H200", "L40S", "A10G", "V100", "T4"):
        acc = ACCELERATORS[name]
        assert acc.fp32_tflops > 0 and acc.memory_gb >= 16 and ("datasheet" in acc.source)
        if acc.bf16_tflops is not None:
            assert acc.bf16_tflops >= 2 * acc.fp32_tflops * 0.99 and acc.tf32_tflops < acc.bf16_tflops
    assert lookup("h100").name == "H100-SXM" and lookup("A100").name == "A100-80GB" and lookup("h100 pcie").name == "H100-PCIe"
    assert ACCELERATORS["H100-SXM"].peak_flops("bf16") == 989.5e12  # 1,979 TFLOPS "with sparsity", halved
    assert ACCELERATORS["H200"].memory_gb == 141 and ACCELERATORS["A100-40GB"].memory_gb == 40


def test_an_unknown_accelerator_names_every_choice(tmp_path, capsys):
    assert main(["plan", str(study_file(tmp_path)), "--accelerator", "TPUv9"]) == 2
    err = capsys.readouterr().err
    assert "TPUv9" in err and all(name in err for name in ACCELERATORS)


def test_a_gpu_without_bf16_says_which_dtype_it_has(tmp_path, capsys):
    path = study_file(tmp_path)
    assert main(["plan", str(path), "--accelerator", "V100"]) == 2
    assert "no bf16" in capsys.readouterr().err
    plan = plan_json(capsys, path, "--accelerator", "V100", "--dtype", "fp32")
    assert plan["trials"][0]["cost"]["peak_flop_per_s"] == 15.7e12


def test_the_default_mfu_is_what_bench_measured():
    """The defaults are the numbers BENCHMARKS.md records for bench/mfu.py (its results/ folder is not in git)."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| MFU of a full GAT iteration"))
    assert row.split("|")[2].strip().startswith(f"{MEASURED_MFU['fp32']:.2f} (")
    assert f"({MEASURED_MFU['bf16']:.2f} of the bf16 matmul peak)" in text


# --- wall time and GPU-hours -------------------------------------------------------------------------------------

def test_wall_time_and_gpu_hours_against_a_hand_computation(tmp_path, capsys):
    path = study_file(tmp_path, train={"steps": 100_000}, eval={"interval": 1000},
                      resources={"gpus_per_trial": 1, "max_concurrent": 2})
    plan = plan_json(capsys, path, "--accelerator", "H100", "--mfu", "0.5", "--gpus", "2")
    macs = [t["train_flops"] for t in plan["trials"]]
    seconds = [2 * m / (989.5e12 * 0.5) for m in macs]  # 2 FLOPs per MAC, dense bf16 peak x MFU, one GPU each
    for trial, s in zip(plan["trials"], seconds):
        assert trial["cost"]["dtype"] == "bf16" and trial["cost"]["seconds"] == pytest.approx(s)
        assert trial["cost"]["gpu_hours"] == pytest.approx(s / 3600)
    # two at a time in grid order: trials 0 and 1 start, trial 2 takes the slot trial 0 frees
    assert seconds[0] < seconds[1]
    cost = plan["study_cost"]
    assert cost["concurrent_trials"] == 2 and cost["gpus"] == 2
    assert cost["wall_hours"] == pytest.approx(max(seconds[1], seconds[0] + seconds[2]) / 3600)
    assert cost["gpu_hours"] == pytest.approx(sum(seconds) / 3600)
    assert cost["remaining_wall_hours"] == pytest.approx(cost["wall_hours"])

    one_gpu = plan_json(capsys, path, "--accelerator", "H100", "--mfu", "0.5", "--gpus", "1")["study_cost"]
    assert one_gpu["concurrent_trials"] == 1 and one_gpu["wall_hours"] == pytest.approx(sum(seconds) / 3600)
    fp32 = plan_json(capsys, path, "--accelerator", "H100", "--dtype", "fp32")["trials"][0]["cost"]
    assert fp32["mfu"] == MEASURED_MFU["fp32"] and fp32["seconds"] == pytest.approx(2 * macs[0] / (67e12 * 0.74))


def test_data_parallel_and_fractional_gpus(tmp_path, capsys):
    path = study_file(tmp_path, train={"steps": 100_000}, resources={"workers": 2, "gpus_per_trial": 0.5,
                                                                     "max_concurrent": 4})
    plan = plan_json(capsys, path, "--accelerator", "A100-40GB", "--mfu", "0.4", "--gpus", "3")
    trial = plan["trials"][0]
    # two workers, each on half a GPU: one GPU's worth of compute, one GPU held; half an A100's memory per worker
    assert trial["cost"]["gpus"] == 1 and trial["cost"]["seconds"] == pytest.approx(
        2 * trial["train_flops"] / (312e12 * 0.4))
    assert trial["memory"]["available_bytes"] == 20e9 and trial["memory"]["batch_per_worker"] == 4
    assert plan["study_cost"]["concurrent_trials"] == 3  # 3 GPUs hold 3 such trials; max_concurrent allows 4
    default = plan_json(capsys, path, "--accelerator", "A100-40GB")["study_cost"]
    assert default["gpus"] == 4 and default["gpus_default"] is True


def test_costing_flags_need_an_accelerator_and_a_sane_mfu(tmp_path, capsys):
    path = study_file(tmp_path)
    assert main(["plan", str(path), "--mfu", "0.3"]) == 2
    assert "--accelerator" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", str(path), "--accelerator", "H100", "--mfu", "1.5"])


# --- memory --------------------------------------------------------------------------------------------------------

def _trial_config(family: str, width: int, depth: int, resolution: int, patch: int, batch: int, precision: str,
                  checkpoint: bool = False, **train):
    from gat_core.config import TrialConfig

    return TrialConfig.model_validate({
        "dataset": {"name": "shapes", "resolution": resolution, "size": 64},
        "model": {"family": family, "width": width, "depth": depth, "heads": 4, "patch_size": patch},
        "train": {"steps": 10, "batch_size": batch, "precision": precision, "device": "cpu",
                  "grad_checkpoint": checkpoint, **train}})


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _adam_bytes(opt) -> int:
    return sum(_nbytes([s["exp_avg"], s["exp_avg_sq"]]) for s in opt.state.values())


def test_weights_gradients_adam_and_ema_memory_are_exact(tmp_path, tiny_dinov2):
    from gat_core.diffusion_trainer import DiffusionTrainer
    from gat_core.memory import memory_estimate
    from gat_core.gan_trainer import GANTrainer

    vfm = {"weights": str(tiny_dinov2), "model": "vit_small_patch14_dinov2", "image_size": 56, "hidden_dim": 32}
    for cfg in (_trial_config("gat", 32, 4, 8, 2, 8, "fp32"), _trial_config("gat", 32, 4, 16, 2, 8, "fp32", vfm=vfm)):
        trainer = GANTrainer(cfg, tmp_path / f"gat-{cfg.train.vfm is not None}")
        trainer.iteration()  # every gradient and AdamW moment now exists
        est = memory_estimate(cfg, trainer.dataset.num_classes, "fp32")
        trainable = [*trainer.G.parameters(), *trainer.D.parameters(),
                     *(trainer.repa_head.parameters() if trainer.repa_head else [])]
        assert est.parameters == sum(p.numel() for p in trainable)
        assert est.weights == _nbytes(trainable) and est.ema == _nbytes(trainer.G_ema.parameters())
        assert est.gradients == _nbytes(p.grad for p in trainable)
        assert est.optimizer == _adam_bytes(trainer.opt_g) + _adam_bytes(trainer.opt_d)
        assert est.teacher == (_nbytes(trainer.teacher.parameters()) if trainer.teacher else 0)

    cfg = _trial_config("dit", 32, 4, 8, 2, 8, "fp32")
    trainer = DiffusionTrainer(cfg, tmp_path / "dit")
    trainer.iteration()
    est = memory_estimate(cfg, trainer.dataset.num_classes, "fp32")
    params = list(trainer.model.parameters())
    assert (est.weights, est.ema, est.gradients, est.optimizer) == (
        _nbytes(params), _nbytes(trainer.ema.parameters()), _nbytes(p.grad for p in params), _adam_bytes(trainer.opt))


def _saved_bytes(fn, params) -> int:
    """Distinct storages autograd saves for backward while `fn` runs, parameters excluded."""
    import torch

    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _measured_steps(cfg, workdir: Path) -> dict[str, int]:
    """What the D step and the G step of `GANTrainer.iteration` (or the DiT step) save for backward."""
    import torch

    from gat_core.objectives.diffusion import diffusion_loss
    from gat_core.objectives.gan import discriminator_loss, generator_loss

    if cfg.model.family == "dit":
        from gat_core.diffusion_trainer import DiffusionTrainer

        tr = DiffusionTrainer(cfg, workdir)
        x0, labels = tr.sampler.next()
        tr.model.train()

        def step():
            with tr.autocast():
                diffusion_loss(tr.model, x0, labels, tr.diff.objective, tr.diff.num_train_timesteps, tr.scheduler)
        return {"step": _saved_bytes(step, list(tr.model.parameters()))}
    from gat_core.gan_trainer import GANTrainer

    tr, t = GANTrainer(cfg, workdir), cfg.train
    real, labels = tr.sampler.next()
    z = torch.randn(real.shape[0], tr.G.z_dim)
    with torch.no_grad(), tr.autocast():
        fake = tr.G.forward_levels(tr.G.style(z, labels))
    params = [*tr.G.parameters(), *tr.D.parameters()]
    tr.D.requires_grad_(True)

    def d_step():
        with tr.autocast():
            discriminator_loss(tr.judge, real, fake, labels, t.r1_gamma, t.r2_gamma)
    d = _saved_bytes(d_step, params)
    tr.D.requires_grad_(False)

    def g_step():
        with tr.autocast():
            generator_loss(tr.judge, real, tr.G.forward_levels(tr.G.style(z, labels)), labels)
    return {"d_step": d, "g_step": _saved_bytes(g_step, params)}


@pytest.mark.parametrize("family,width,depth,resolution,batch,precision,checkpoint", [
    ("gat", 48, 4, 16, 5, "fp32", False), ("gat", 48, 4, 16, 5, "bf16", False), ("dit", 48, 4, 16, 5, "bf16", False),
    ("gat", 64, 4, 32, 4, "fp32", True), ("dit", 64, 4, 32, 4, "bf16", True)])
def test_the_activation_estimate_matches_what_autograd_saves(tmp_path, monkeypatch, family, width, depth, resolution,
                                                             batch, precision, checkpoint):
    """Sizes other than the ones the factors were measured at (width 80, 64 tokens, batch 6).  The estimate is a
    GPU's, whose bf16 attention saves bf16 tensors: on this CPU the layers' attention runs in fp32 under bf16
    autocast (a CPU speed choice) and would save fp32 copies, so it is measured with SDPA as a GPU calls it."""
    import torch.nn.functional as F

    import gat_core.models.layers
    from gat_core.memory import step_activations

    monkeypatch.setattr(gat_core.models.layers, "attention", F.scaled_dot_product_attention)
    cfg = _trial_config(family, width, depth, resolution, 2, batch, precision, checkpoint)
    measured = _measured_steps(cfg, tmp_path)
    estimate = step_activations(cfg, batch, precision, checkpoint, 10)
    for step, value in measured.items():
        assert estimate[step] == pytest.approx(value, rel=0.1), step


def test_memory_in_the_plan_and_whether_it_fits(tmp_path, capsys):
    big = study_file(tmp_path, grid={}, model={"preset": "GAT-XL/2"}, train={"batch_size": 256},
                     dataset={"resolution": 64})
    trial = plan_json(capsys, big, "--accelerator", "T4", "--dtype", "fp32")["trials"][0]
    memory = trial["memory"]
    assert memory["states_bytes"] == (memory["weights_bytes"] + memory["ema_bytes"] + memory["gradients_bytes"]
                                      + memory["optimizer_bytes"] + memory["teacher_bytes"])
    assert memory["optimizer_bytes"] == 2 * memory["weights_bytes"]  # AdamW: two fp32 moments per parameter
    assert memory["activations_checkpointed_bytes"] < memory["activations_bytes"] / 5
    assert memory["peak_bytes"] > 16e9 and memory["fits"] is False and memory["available_bytes"] == 16e9
    small = plan_json(capsys, study_file(tmp_path, "small"), "--accelerator", "T4", "--dtype", "fp32")
    assert all(t["memory"]["fits"] for t in small["trials"])


# --- warnings ------------------------------------------------------------------------------------------------------

def _warnings(capsys, path: Path) -> list[str]:
    return plan_json(capsys, path)["warnings"]


def test_a_well_formed_study_has_no_warnings(tmp_path, capsys):
    assert _warnings(capsys, study_file(tmp_path)) == []


def test_an_evaluation_interval_longer_than_the_trial_is_a_warning(tmp_path, capsys):
    warnings = _warnings(capsys, study_file(tmp_path, eval={"interval": 6}))
    assert len(warnings) == 1 and "eval.interval 6 >= their 6 steps" in warnings[0]
    assert main(["plan", str(study_file(tmp_path, eval={"interval": 10}))]) == 0
    assert "warning: 3 of 3 trials evaluate only at step 0 and at the end" in capsys.readouterr().out


def test_a_budget_that_leaves_a_handful_of_steps_is_a_warning(tmp_path, capsys):
    from orchestrator.plan import MIN_BUDGET_STEPS

    path = study_file(tmp_path, train={"steps": None, "flops_budget": 1e10}, eval={"interval": 1})
    plan = plan_json(capsys, path)
    starved = [t for t in plan["trials"] if t["steps"] < MIN_BUDGET_STEPS]
    assert starved and len([w for w in plan["warnings"] if "flops_budget" in w]) == len(starved)
    assert all(f"leaves {t['steps']} steps" in " ".join(plan["warnings"]) for t in starved)
    tiny = _warnings(capsys, study_file(tmp_path, "tiny", train={"steps": None, "flops_budget": 1e3}, eval={"interval": 1}))
    assert any("less than one iteration" in w for w in tiny)


def test_fewer_than_three_compute_values_is_a_warning(tmp_path, capsys):
    two = _warnings(capsys, study_file(tmp_path, grid={"model.width": [32, 48]}))
    assert len(two) == 1 and "only 2 training-compute and 2 model-size" in two[0] and "at least 3" in two[0]
    seeds = _warnings(capsys, study_file(tmp_path, "seeds", grid={"train.seed": [0, 1, 2]}))
    assert len(seeds) == 1 and "only 1 training-compute and 1 model-size" in seeds[0]
    steps = _warnings(capsys, study_file(tmp_path, "steps", grid={"train.steps": [6, 12, 24]}))
    assert len(steps) == 1 and "model-size" in steps[0] and "training-compute" not in steps[0]


def _isoflop_file(tmp_path: Path, name: str, budgets: list[float], widths: list[int]) -> Path:
    spec = tiny_study(name, tmp_path / "out")
    spec["train"] = {k: v for k, v in spec["train"].items() if k != "steps"}
    spec["eval"]["interval"] = 1
    spec["isoflop"] = {"budgets": budgets, "sizes": {"model.width": widths}}
    spec.pop("grid", None)
    return write_study(tmp_path / f"{name}.yaml", spec)


def test_an_isoflop_study_of_two_budgets_is_a_warning_though_its_steps_differ(tmp_path, capsys):
    # Each trial's steps are its budget rounded down to whole iterations, so the 6 trials of 2 budgets have 6
    # slightly different training computes: still 2 points for the laws of compute
    two = plan_json(capsys, _isoflop_file(tmp_path, "iso2", [4e11, 8e11], [16, 24, 32]))
    assert len({t["train_flops"] for t in two["trials"]}) == 6
    assert all(t["steps"] >= 50 for t in two["trials"])  # no starved-budget warning in the way
    assert len(two["warnings"]) == 2, two["warnings"]
    assert "only 2 training-compute value" in two["warnings"][0] and "model-size" not in two["warnings"][0]
    assert "isoflop: 2 budgets x 3 sizes" in two["warnings"][1] and "add budgets" in two["warnings"][1]
    assert _warnings(capsys, _isoflop_file(tmp_path, "iso3", [4e11, 8e11, 1.6e12], [16, 24, 32])) == []


# --- the JSON ------------------------------------------------------------------------------------------------------

def test_json_carries_the_same_numbers_with_units(tmp_path, capsys):
    path = study_file(tmp_path)
    plan = plan_json(capsys, path, "--accelerator", "H100")
    assert {"study", "trials", "total_train_flops", "total_remaining_train_macs", "flops_convention", "store",
            "accelerator", "study_cost", "warnings", "units"} <= set(plan)
    trial = plan["trials"][0]
    assert {"state", "state_kind", "steps_done", "remaining_steps", "remaining_train_macs", "cost", "memory"} <= set(trial)
    assert {"dtype", "mfu", "peak_flop_per_s", "gpus", "flop_per_s", "seconds", "remaining_seconds", "hours",
            "gpu_hours", "remaining_gpu_hours"} <= set(trial["cost"])
    assert {"parameters", "weights_bytes", "ema_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes",
            "activations_checkpointed_bytes", "peak_bytes", "trial_peak_bytes", "available_bytes", "fits"} <= set(
        trial["memory"])
    assert {"gpus", "concurrent_trials", "wall_hours", "remaining_wall_hours", "gpu_hours"} <= set(plan["study_cost"])
    assert plan["accelerator"]["name"] == "H100-SXM" and "2 FLOPs per MAC" in plan["accelerator"]["wall_time_convention"]
    assert "MAC" in plan["units"]["train_flops"] and "bytes" in plan["units"]["memory.*_bytes"]
    # the text shows the same hours the JSON carries
    assert main(["plan", str(path), "--accelerator", "H100"]) == 0
    text = capsys.readouterr().out
    assert "on H100-SXM (80 GB; dense bf16 989.5 TFLOP/s" in text and "GPU-hours" in text
    assert math.isclose(plan["study_cost"]["gpu_hours"], sum(t["cost"]["gpu_hours"] for t in plan["trials"]))

"""Pins the exact numbers of a seeded tiny GAN trial and a tiny DiT trial (per-step losses, every evaluation,
the final metrics) and of `gat-study eval` on their model files, so a restructuring of the trainers or the
sampler is proven to change no result: the literals below were recorded on CPU before the restructure
(see EXPECTED) and are compared exactly (floats as written by repr; float64 metric values to 1e-12 relative)
on the CPU family they were recorded on, and within a tolerance of another CPU's rounding elsewhere
(RECORDED_CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gat_core.config import TrialConfig
from gat_core.loop import train
from orchestrator.eval_cmd import evaluate_checkpoint
from tests.helpers import tiny_study

TIMING = ("sec_per_step", "macs_per_sec", "trial_seconds")  # wall-clock columns: not reproducible


def pin_config(family: str) -> TrialConfig:
    spec = tiny_study("pin", Path("unused"), steps=6, device="cpu", precision="fp32")
    spec["eval"].update(extra_metrics=["kid_classifier"])
    if family == "gat":
        spec["eval"]["truncation"] = 0.7
    else:
        spec["model"]["family"] = "dit"
        spec["train"].update(beta1=0.9, diffusion={"sample_steps": 2, "eval_nfe": [1, 2]})
    return TrialConfig.model_validate({k: spec[k] for k in ("dataset", "model", "train", "eval")})


def run_pin(family: str, tmp: Path) -> dict:
    """(kind, step, metrics without timing) of every event that carries results (not the bare "persist" cue
    before a checkpoint: tests/test_resume_record.py), and the eval command's scores of the model file."""
    events: list = []
    result = train(pin_config(family), tmp / family, events.append, cache_dir=tmp / "cache")
    record = [(e.kind, e.step, {k: v for k, v in sorted(e.metrics.items()) if k not in TIMING}) for e in events
              if e.kind != "persist"]
    scored = evaluate_checkpoint(result.model_path, ["fd_classifier"], 64, 64, tmp / "cache",
                                 **({"nfe": 1} if family == "dit" else {}))
    return {"events": record, "eval_cmd": dict(sorted(scored.items())), "status": result.status,
            "health": result.health}


# Recorded from commit 4cb9282 (before the trainer/sampler restructure of issue 14), CPU, fp32.
EXPECTED: dict[str, dict] = {'gat': {'events': [('start', 0, {'classifier_accuracy': 0.19607843137254902}),
                        ('eval',
                         0,
                         {'block_util_0': 0.015975918620824814,
                          'block_util_1': 0.012809965759515762,
                          'block_util_2': 0.007890395820140839,
                          'block_util_3': 0.00852594431489706,
                          'diversity_pixels': 0.000826935964568236,
                          'eval_samples': 64.0,
                          'eval_truncation': 0.7,
                          'fd_classifier': 3.130783432450063,
                          'train_flops': 0.0}),
                        ('progress',
                         2,
                         {'logit_fake': 0.01933552883565426,
                          'logit_real': 0.02528034709393978,
                          'loss_d': 0.6906278729438782,
                          'loss_g': 0.8422150611877441,
                          'lr_d': 0.0048000000000000004,
                          'lr_g': 0.0048000000000000004,
                          'out_change_d': 2.207064628601074,
                          'out_change_g': 0.33755624294281006,
                          'r1': 0.0005745182279497385,
                          'r2': 0.00014290133549366146,
                          'train_flops': 292696064.0}),
                        ('eval',
                         3,
                         {'block_util_0': 0.016047045588493347,
                          'block_util_1': 0.012897898443043232,
                          'block_util_2': 0.007946321740746498,
                          'block_util_3': 0.00852339155972004,
                          'diversity_pixels': 0.0007715011898305151,
                          'eval_samples': 64.0,
                          'eval_truncation': 0.7,
                          'fd_classifier': 3.1301364733327937,
                          'train_flops': 439044096.0}),
                        ('checkpoint', 3, {}),
                        ('progress',
                         4,
                         {'logit_fake': 0.12726649641990662,
                          'logit_real': 0.13482360541820526,
                          'loss_d': 0.6906906366348267,
                          'loss_g': 0.9034953117370605,
                          'lr_d': 0.0048000000000000004,
                          'lr_g': 0.0048000000000000004,
                          'out_change_d': 0.5973888039588928,
                          'out_change_g': 0.582189679145813,
                          'r1': 0.0007719566347077489,
                          'r2': 0.00013825646601617336,
                          'train_flops': 585392128.0}),
                        ('progress',
                         6,
                         {'logit_fake': 0.2229703664779663,
                          'logit_real': 0.5384258031845093,
                          'loss_d': 0.5692932605743408,
                          'loss_g': 0.8593533039093018,
                          'lr_d': 0.0048000000000000004,
                          'lr_g': 0.0048000000000000004,
                          'out_change_d': 1.014739751815796,
                          'out_change_g': 0.5101499557495117,
                          'r1': 0.0051041413098573685,
                          'r2': 0.0007343490142375231,
                          'train_flops': 878088192.0}),
                        ('final',
                         6,
                         {'block_util_0': 0.016127748414874077,
                          'block_util_1': 0.013011018745601177,
                          'block_util_2': 0.008022098802030087,
                          'block_util_3': 0.00850722473114729,
                          'diversity_pixels': 0.0008604387368246039,
                          'eval_samples': 64.0,
                          'eval_truncation': 0.7,
                          'fd_classifier': 3.129345965959083,
                          'kid_classifier': 0.07457649085863198,
                          'kid_classifier_std': 0.0016300241615606482,
                          'train_flops': 878088192.0})],
             'eval_cmd': {'eval_samples': 64.0,
                          'eval_truncation': 0.7,
                          'fd_classifier': 3.1284965705751886,
                          'step': 6.0},
             'status': 'completed',
             'health': 'collapsed'},
     'dit': {'events': [('start', 0, {'classifier_accuracy': 0.19607843137254902}),
                        ('eval',
                         0,
                         {'diversity_pixels': 4.454739833096334,
                          'eval_samples': 64.0,
                          'fd_classifier': 0.4563879370491122,
                          'sample_gflops': 0.00187392,
                          'sample_nfe': 2.0,
                          'train_flops': 0.0}),
                        ('progress',
                         2,
                         {'loss_diffusion': 1.3171327114105225,
                          'lr': 0.0048000000000000004,
                          'train_flops': 44744704.0}),
                        ('eval',
                         3,
                         {'diversity_pixels': 4.4578168566383845,
                          'eval_samples': 64.0,
                          'fd_classifier': 0.45608216159284903,
                          'sample_gflops': 0.00187392,
                          'sample_nfe': 2.0,
                          'train_flops': 67117056.0}),
                        ('checkpoint', 3, {}),
                        ('progress',
                         4,
                         {'loss_diffusion': 1.0139086246490479,
                          'lr': 0.0048000000000000004,
                          'train_flops': 89489408.0}),
                        ('progress',
                         6,
                         {'loss_diffusion': 0.9323312044143677,
                          'lr': 0.0048000000000000004,
                          'train_flops': 134234112.0}),
                        ('final',
                         6,
                         {'diversity_pixels': 4.4639712042412025,
                          'eval_samples': 64.0,
                          'fd_classifier': 0.4552475511407788,
                          'fd_classifier_nfe1': 0.5517150511862527,
                          'fd_classifier_nfe2': 0.4552475511407788,
                          'kid_classifier': 0.009471138264205314,
                          'kid_classifier_std': 0.00027395299705251,
                          'sample_gflops': 0.00187392,
                          'sample_gflops_nfe1': 0.00093696,
                          'sample_gflops_nfe2': 0.00187392,
                          'sample_nfe': 2.0,
                          'train_flops': 134234112.0})],
             'eval_cmd': {'eval_samples': 64.0, 'fd_classifier': 0.5233714454974847, 'step': 6.0},
             'status': 'completed',
             # 'ok' when recorded; 'diverged' since eval.health_max_diversity (1.2): a 6-step DiT samples noise
             'health': 'diverged'}}


# The literals are exact on the CPU family they were recorded on.  Another CPU's BLAS and vector kernels sum in
# another order: on an Intel Xeon (AMX) the same code gave 32 GAT and 12 DiT numbers different in the last
# digits, at most 2.8e-4 relative (a logit of 0.2) over the 6 steps, against changes of percents from any
# change of behaviour.  There they are compared to REL / ABS.  Within the family, another generation's
# LAPACK kernels (an EPYC with AVX-512 against the recording one) moved 7 float64 Frechet distances by at most
# 8.5e-16 relative and nothing else: there every float is compared to FLOAT64_REL, far below a float32's last
# digit (1e-7), so the training numbers are still held exact.
RECORDED_CPU = "AMD EPYC"
REL, ABS = 1e-3, 1e-9  # relative: a logged lr of 5e-3 off by 1 % must not pass on its absolute size
FLOAT64_REL = 1e-12


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def assert_close_structure(got, expected, where: str = "", rel: float = REL, abs_: float = ABS) -> None:
    """Equal structure, keys, strings and counts; floats within rel / abs_."""
    assert type(got) is type(expected) or {type(got), type(expected)} <= {int, float}, where
    if isinstance(expected, dict):
        assert list(got) == list(expected), where
        for key in expected:
            assert_close_structure(got[key], expected[key], f"{where}.{key}", rel, abs_)
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_close_structure(g, e, f"{where}[{i}]", rel, abs_)
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=rel, abs=abs_), where
    else:
        assert got == expected, where


@pytest.mark.parametrize("family", ["gat", "dit"])
def test_a_seeded_tiny_trial_gives_the_recorded_numbers(tmp_path, family):
    got = run_pin(family, tmp_path)
    if cpu_model().startswith(RECORDED_CPU):  # bit for bit but the float64 rounding of the metrics' LAPACK
        assert_close_structure(got, EXPECTED[family], rel=FLOAT64_REL, abs_=0.0)
    else:
        assert_close_structure(got, EXPECTED[family])

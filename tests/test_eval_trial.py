"""Evaluation config, checks before a study runs, in-training/final evaluation, and `gat-study eval` / `ref-stats`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from gat_core.config import DataConfig, EvalConfig, TrialConfig
from gat_core.data import sample_labels
from gat_core.metrics import RunningStats, frechet_distance
from gat_core.metrics.names import parse_metric
from gat_core.gan_trainer import GANTrainer
from gat_core.loop import TrainEvent, train
from gat_core.weights import DINOV2_ENV, INCEPTION_ENV, missing_weights
from orchestrator.eval_cmd import evaluate_checkpoint, reference_stats_cmd
from orchestrator.study import StudyError, load_study

EXTRA = ["kid_classifier", "precision_classifier", "recall_classifier", "fd_inf_classifier"]


# --- names and config -----------------------------------------------------------------------------

def test_metric_names_say_their_extractor() -> None:
    assert (parse_metric("fid").kind, parse_metric("fid").extractor) == ("fd", "inception")
    assert (parse_metric("fd_dinov2").kind, parse_metric("fd_dinov2").extractor) == ("fd", "dinov2")
    assert (parse_metric("fd_inf_classifier").kind, parse_metric("fid_inf").extractor) == ("fd_inf", "inception")
    assert parse_metric("kid_inception").per_sample and parse_metric("recall_dinov2").higher_is_better
    for bad, hint in [("fd_inception", "'fid'"), ("kid", "unknown"), ("fid_dinov2", "unknown"), ("fd_vgg", "unknown")]:
        with pytest.raises(ValueError, match=hint):
            parse_metric(bad)


def test_eval_config_defaults_and_validation() -> None:
    e = EvalConfig()
    assert e.metric == "fd_classifier" and e.extra_metrics == [] and e.truncation == 0.0
    assert e.inception_weights is None and e.dinov2_weights is None and e.reference_stats is None
    e = EvalConfig(metric="fid", extra_metrics=["kid_inception", "fid", "kid_inception"])
    assert e.final_metrics == ["fid", "diversity_pixels", "kid_inception"]  # diversity beside the metric
    with pytest.raises(ValidationError, match="fd_inception"):
        EvalConfig(metric="fd_inception")
    with pytest.raises(ValidationError, match="unknown metric"):
        EvalConfig(extra_metrics=["ssim"])
    with pytest.raises(ValidationError):
        EvalConfig(truncation=1.5)


def test_missing_metric_weights_reject_the_study_before_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.delenv(DINOV2_ENV, raising=False)
    assert missing_weights(TrialConfig()) == []  # the default metric needs no download
    cfg = TrialConfig(eval=EvalConfig(metric="fid", extra_metrics=["fd_dinov2"], reference_stats=tmp_path / "no.npz"))
    problems = missing_weights(cfg)
    assert len(problems) == 3
    assert "eval.inception_weights" in problems[0] and "weights-inception-2015-12-05-6726825d.pth" in problems[0]
    assert INCEPTION_ENV in problems[0] and "eval.dinov2_weights" in problems[1]
    assert "eval.reference_stats" in problems[2] and "no.npz" in problems[2]
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"x")
    monkeypatch.setenv(INCEPTION_ENV, str(weights))
    assert missing_weights(TrialConfig(eval=EvalConfig(metric="fid"))) == []
    monkeypatch.delenv(INCEPTION_ENV)
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\noutput_dir: {tmp_path}\ntrain: {{steps: 2}}\neval: {{metric: fid}}\n")
    with pytest.raises(StudyError, match=r"eval.inception_weights: no weights file given \(eval.inception_weights and \$GAT_STUDY_INCEPTION_WEIGHTS unset\)"):
        load_study(study)


# --- evaluation in a trial --------------------------------------------------------------------------

def tiny(tmp_path: Path, family: str = "gat", **eval_cfg: object) -> TrialConfig:
    return TrialConfig.model_validate({
        "dataset": {"name": "shapes", "resolution": 8, "size": 256},
        "model": {"family": family, "width": 32, "depth": 2, "heads": 2, "patch_size": 2},
        "train": {"steps": 4, "batch_size": 8, "log_every": 2, "checkpoint_every": 4, "mng": "off", "device": "cpu",
                  **({"diffusion": {"sample_steps": 2, "eval_nfe": [1, 2]}} if family == "dit" else {})},
        "eval": {"interval": 2, "num_samples": 32, "final_samples": 64, "batch_size": 32, "classifier_epochs": 1,
                 "grid_size": 2, **eval_cfg}})


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("gan")
    cfg = tiny(tmp, extra_metrics=EXTRA, truncation=0.5)
    events: list[TrainEvent] = []
    result = train(cfg, tmp / "trial", events.append, cache_dir=tmp / "cache")
    return {"cfg": cfg, "events": events, "result": result, "cache": tmp / "cache", "tmp": tmp}


def test_in_training_evals_score_the_primary_metric_final_adds_the_extras(gan_run: dict) -> None:
    evals = [e for e in gan_run["events"] if e.kind == "eval"]
    assert [e.step for e in evals] == [0, 2]
    for e in evals:
        assert set(e.metrics) >= {"fd_classifier", "eval_samples", "eval_truncation"}
        assert not set(e.metrics) & {*EXTRA, "kid_classifier_std"}
        assert e.metrics["eval_samples"] == 32 and e.metrics["eval_truncation"] == 0.5
    final = gan_run["result"].metrics
    assert gan_run["result"].status == "completed"
    assert final["eval_samples"] == 64 and final["eval_truncation"] == 0.5
    for name in ["fd_classifier", *EXTRA, "kid_classifier_std"]:
        assert math.isfinite(final[name]), name
    assert 0 <= final["precision_classifier"] <= 1 and 0 <= final["recall_classifier"] <= 1
    start = next(e for e in gan_run["events"] if e.kind == "start")
    assert 0 < start.metrics["classifier_accuracy"] <= 1


def test_default_metric_value_unchanged(tmp_path: Path) -> None:
    """The default `fd_classifier` is the Fréchet distance of the features of the same samples, computed by hand."""
    trainer = GANTrainer(tiny(tmp_path), tmp_path / "t", cache_dir=tmp_path / "cache")
    trainer.prepare_eval()
    torch.manual_seed(5)
    value = trainer.quality(64)
    ref = trainer.evaluator.references["classifier"].stats
    torch.manual_seed(5)
    extractor, labels_rng = trainer.evaluator.extractors["classifier"], torch.Generator().manual_seed(1234)
    stats = RunningStats(extractor.dim)
    with torch.no_grad():
        for _ in range(2):  # 64 samples, 32 at a time, labels drawn as the evaluator draws them
            labels = sample_labels(trainer.dataset.num_classes, 32, labels_rng)
            stats.update(extractor.features(trainer.generate(labels).clamp(-1, 1)))
    old = frechet_distance(stats.mean, stats.cov, ref.mean, ref.cov)
    assert value == pytest.approx(old, rel=1e-9)
    torch.manual_seed(5)
    out = trainer.evaluate(64)
    assert out["fd_classifier"] == pytest.approx(value, rel=1e-9) and out["eval_samples"] == 64.0
    assert out["eval_truncation"] == 0.0 and "kid_classifier" not in out


def test_truncation_needs_a_gan(tmp_path: Path) -> None:
    from gat_core.diffusion_trainer import DiffusionTrainer

    trainer = DiffusionTrainer(tiny(tmp_path, "dit", truncation=0.5), tmp_path / "t", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="eval.truncation"):
        trainer.prepare_eval()


# --- gat-study eval / ref-stats ---------------------------------------------------------------------

def test_evaluate_gan_model_file(gan_run: dict) -> None:
    model = gan_run["result"].model_path
    metrics = ["fd_classifier", "kid_classifier", "precision_classifier"]
    a = evaluate_checkpoint(model, metrics, 64, 32, gan_run["cache"])
    b = evaluate_checkpoint(model, metrics, 64, 32, gan_run["cache"])
    assert a == b  # seeded labels and noise
    assert set(a) == {*metrics, "kid_classifier_std", "eval_samples", "eval_truncation", "step"}
    assert a["eval_samples"] == 64 and a["step"] == 4 and a["eval_truncation"] == 0.5  # the trial's psi
    untruncated = evaluate_checkpoint(model, ["fd_classifier"], 64, 32, gan_run["cache"], truncation=0.0)
    assert untruncated["eval_truncation"] == 0.0 and untruncated["fd_classifier"] != a["fd_classifier"]
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_checkpoint(model, ["is"], 64, 32, gan_run["cache"])


def test_ref_stats_command_and_reuse_as_reference(gan_run: dict, tmp_path: Path) -> None:
    cfg: TrialConfig = gan_run["cfg"]
    out = reference_stats_cmd(cfg.dataset, "classifier", tmp_path / "shapes8-classifier.npz", gan_run["cache"],
                              classifier_epochs=cfg.eval.classifier_epochs)
    with np.load(out) as f:
        assert {"mu", "sigma", "n"} <= set(f.files) and f["mu"].shape == (128,) and int(f["n"]) == 256
    model = gan_run["result"].model_path
    own = evaluate_checkpoint(model, ["fd_classifier"], 64, 32, gan_run["cache"])
    with_file = evaluate_checkpoint(model, ["fd_classifier"], 64, 32, gan_run["cache"], reference_stats=out)
    assert with_file["fd_classifier"] == pytest.approx(own["fd_classifier"], rel=1e-9)
    shifted = tmp_path / "shifted.npz"
    stats = RunningStats.load(out)
    np.savez(shifted, mu=stats.mean + 1.0, sigma=stats.cov)
    far = evaluate_checkpoint(model, ["fd_classifier"], 64, 32, gan_run["cache"], reference_stats=shifted)
    assert far["fd_classifier"] > own["fd_classifier"]
    assert frechet_distance(stats.mean, stats.cov, stats.mean + 1.0, stats.cov) == pytest.approx(128.0)


def test_evaluate_dit_model_file(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "dit")
    result = train(cfg, tmp_path / "trial", cache_dir=tmp_path / "cache")
    assert {"fd_classifier", "fd_classifier_nfe1", "eval_samples"} <= set(result.metrics)
    scores = evaluate_checkpoint(result.model_path, ["fd_classifier"], 32, 32, tmp_path / "cache", nfe=1)
    assert math.isfinite(scores["fd_classifier"]) and "eval_truncation" not in scores
    with pytest.raises(ValueError, match="GAN"):
        evaluate_checkpoint(result.model_path, ["fd_classifier"], 32, 32, tmp_path / "cache", truncation=0.5)


def test_not_a_model_file(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="no trial config"):
        evaluate_checkpoint(path, ["fd_classifier"], 8, 8, tmp_path)
    with pytest.raises(ValueError, match="not found"):
        evaluate_checkpoint(tmp_path / "missing.pt", ["fd_classifier"], 8, 8, tmp_path)
    with pytest.raises(ValueError, match="extractor"):
        reference_stats_cmd(DataConfig(), "vgg", tmp_path / "o.npz", tmp_path)


def test_cli_subcommands(gan_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`add_parsers` registers `eval` and `ref-stats` on any argparse subparsers (what cli.py wires in)."""
    import argparse
    import json

    from orchestrator.eval_cmd import add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command", required=True))
    model, cache = str(gan_run["result"].model_path), str(gan_run["cache"])
    args = parser.parse_args(["eval", model, "--metric", "fd_classifier", "--metric", "recall_classifier",
                              "--num-samples", "48", "--batch-size", "16", "--cache-dir", cache])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "fd_classifier" in out and "recall_classifier" in out and "(48 samples)" in out
    args = parser.parse_args(["eval", model, "--metric", "fd_classifier", "--num-samples", "16", "--json",
                              "--cache-dir", cache])
    assert args.func(args) == 0 and json.loads(capsys.readouterr().out)["eval_samples"] == 16
    args = parser.parse_args(["ref-stats", "shapes", "--extractor", "classifier", "--resolution", "8", "--size", "256",
                              "--classifier-epochs", "1", "--out", str(tmp_path / "r.npz"), "--cache-dir", cache])
    assert args.func(args) == 0 and (tmp_path / "r.npz").exists() and "eval.reference_stats" in capsys.readouterr().out

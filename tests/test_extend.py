"""The life of a study: a trial's id is what it learns from, so a study run again with more steps continues
its finished trials in their MLflow runs, bookkeeping changes retrain nothing, evaluation changes re-score
the saved models, a shorter length is refused, and runs recorded under the earlier whole-config ids are
adopted.  Real local Ray, real sqlite MLflow store, real checkpoints."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gat_core.config import TrialConfig
from gat_core.loop import rescore, train
from orchestrator.cli import main
from orchestrator.runner import run_study, trial_actions
from orchestrator.study import StudyError, flatten, load_study
from orchestrator.trial_identity import (NOT_IDENTITY, evaluation_items, identity_items, key_role, legacy_trial_hash,
                                         same_evaluation, same_identity, trial_hash)
from orchestrator.tracking import EARLIER_ID_TAG, EVAL_TAG, ROLE_TAG
from tests.helpers import tiny_study, write_study

ROOT = Path(__file__).resolve().parent.parent


def trial_config(eval: dict | None = None, family: str = "gat", **train: object) -> TrialConfig:
    spec = tiny_study("unit", Path("unused"), **train)
    spec["eval"].update(eval or {})
    if family == "dit":
        spec["model"]["family"] = "dit"
        spec["train"].update(beta1=0.9, diffusion={"sample_steps": 2, "eval_nfe": [1, 2]})
    return TrialConfig.model_validate({k: spec[k] for k in ("dataset", "model", "train", "eval")})


# --- identity --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    {"train.steps": 600}, {"train.log_every": 7}, {"train.checkpoint_every": 50}, {"eval.interval": 11},
    {"eval.num_samples": 500}, {"eval.final_samples": 5000}, {"eval.metric": "kid_classifier"},
    {"eval.extra_metrics": ["precision_classifier"]}, {"train.device": "cuda:1"}, {"train.compile": True},
    {"train.grad_checkpoint": True}, {"train.collapse_loss_d": 0.01}, {"train.diffusion.sample_steps": 8},
    {"train.diffusion.eval_nfe": [1, 4]}, {"eval.health_min_diversity": None},
])
def test_length_evaluation_and_bookkeeping_keep_the_id(change):
    tree = trial_config().model_dump(mode="json")
    for key, value in change.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[leaf] = value
    assert trial_hash(TrialConfig.model_validate(tree)) == trial_hash(trial_config())


@pytest.mark.parametrize("change", [
    {"seed": 1}, {"lr": 1e-4}, {"batch_size": 16}, {"ema": 0.99}, {"ema_warmup": True}, {"mng": "off"},
    {"r1_gamma": 1.0}, {"augment": []}, {"precision": "fp32"}, {"beta2": 0.9},
])
def test_what_a_trial_learns_from_changes_the_id(change):
    assert trial_hash(trial_config(**change)) != trial_hash(trial_config())


def test_model_and_data_are_identity_and_a_flops_budget_is_a_length():
    base = trial_config().model_dump(mode="json")
    for section, key, value in (("model", "width", 48), ("dataset", "size", 256), ("dataset", "seed", 3)):
        tree = copy.deepcopy(base)
        tree[section][key] = value
        assert trial_hash(TrialConfig.model_validate(tree)) != trial_hash(trial_config())
    budget = copy.deepcopy(base)
    budget["train"].update(steps=None, flops_budget=1e9)
    assert trial_hash(TrialConfig.model_validate(budget)) == trial_hash(trial_config())


def test_key_roles_are_one_table():
    assert key_role("train.steps") == key_role("train.flops_budget") == "length"
    assert key_role("eval.metric") == key_role("eval.final_samples") == key_role("eval.reference_stats") == "evaluation"
    assert key_role("eval.interval") == key_role("train.log_every") == key_role("eval.batch_size") == "bookkeeping"
    assert key_role("train.diffusion.objective") == key_role("train.diffusion.class_dropout") == "identity"
    assert key_role("train.diffusion.sampler") == "evaluation"
    every = flatten(trial_config().model_dump(mode="json"))
    assert all(key_role(k) != "identity" for k in every if k.startswith("eval."))
    items = identity_items(trial_config())
    assert "train.steps" not in items and "eval.metric" not in items and items["train.seed"] == "0"
    assert set(items) == {k for k in every if key_role(k) == "identity"}


def test_swept_keys_are_always_identity(tmp_path):
    """Two grid points are two trials, even when they differ in a length (an isoFLOP study's budgets)."""
    spec = tiny_study("swept", tmp_path / "out")
    spec["grid"] = {"train.steps": [4, 8]}
    study = load_study(write_study(tmp_path / "s.yaml", spec))
    assert len({t.trial_id for t in study.trials}) == 2
    assert "train.steps" in identity_items(study.trials[0].config, study.trials[0].swept)


def test_evaluation_items_are_the_final_evaluation_settings(tmp_path):
    base = flatten(trial_config().model_dump(mode="json"))
    items = evaluation_items
    assert items({**base, "eval.interval": 1, "eval.num_samples": 9, "train.steps": 99}) == items(base)
    assert items({**base, "eval.final_samples": 99})["eval.final_samples"] == "99"
    assert items(base)["eval.extra_metrics"] == "[]" and "train.diffusion.eval_nfe" in items(base)
    as_params = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in base.items()}
    assert items(as_params) == items(base)  # a child run's params give the same settings
    (trial,) = load_study(write_study(tmp_path / "s.yaml", tiny_study("ev", tmp_path / "out"))).trials
    scored = items(trial.params())
    assert same_evaluation(trial, scored) and not same_evaluation(trial, {**scored, "eval.final_samples": "9"})
    assert same_evaluation(trial, {k: v for k, v in scored.items() if k != "eval.truncation"})  # default 0.0


def test_an_earlier_run_is_recognised_by_its_params(tmp_path):
    spec = tiny_study("legacy", tmp_path / "out")
    (trial,) = load_study(write_study(tmp_path / "s.yaml", spec)).trials
    params = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in trial.params().items()}
    assert same_identity(trial, {**params, "train.steps": "999", "eval.interval": "1"})
    assert not same_identity(trial, {**params, "train.lr": "0.1"})
    assert same_identity(trial, {k: v for k, v in params.items() if k != "train.r1_gamma"})  # default value
    assert not same_identity(trial, {k: v for k, v in params.items() if k != "model.width"})  # 32 is no default
    assert legacy_trial_hash(trial.config) != trial.trial_id


def test_readme_names_every_key_that_is_not_identity():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Extending and growing a study"):]
    section = section[:section.index("\n## ")]
    assert all(f"`{key}`" in section for key in NOT_IDENTITY), [k for k in NOT_IDENTITY if f"`{k}`" not in section]


# --- the trainer: extension is exact, re-scoring trains nothing, shortening is refused ----------------------

@pytest.mark.parametrize("family", ["gat", "dit"])
def test_a_trial_made_longer_trains_as_one_trained_that_long_from_the_start(tmp_path, family):
    """6 steps, then 12 in the same folder: the steps after 6 are those of a 12-step trial from scratch
    (evaluations do not touch the training random streams); then a re-score and a refused shortening."""
    cache, loss = tmp_path / "cache", "loss_d" if family == "gat" else "loss_diffusion"

    def config(steps: int, **eval: object) -> TrialConfig:
        return trial_config(eval, family, steps=steps, device="cpu")

    events: list = []
    train(config(6), tmp_path / "ext", events.append, cache_dir=cache)
    first_end = len(events)
    longer = train(config(12), tmp_path / "ext", events.append, cache_dir=cache)
    scratch: list = []
    direct = train(config(12), tmp_path / "scratch", scratch.append, cache_dir=cache)

    assert events[first_end].kind == "start" and events[first_end].metrics["resumed_from_step"] == 6
    progress = [(e.step, e.metrics[loss]) for e in events if e.kind == "progress"]
    assert [s for s, _ in progress] == [2, 4, 6, 8, 10, 12]
    assert progress == [(e.step, pytest.approx(e.metrics[loss], rel=1e-6)) for e in scratch if e.kind == "progress"]
    assert longer.step == 12 and longer.metrics["fd_classifier"] == pytest.approx(direct.metrics["fd_classifier"],
                                                                                rel=1e-5)
    assert json.loads((tmp_path / "ext" / "result.json").read_text())["step"] == 12

    checkpoints = sorted((tmp_path / "ext" / "checkpoints").glob("*.pt"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    rescored: list = []
    again = rescore(config(12, final_samples=96), tmp_path / "ext", rescored.append, cache_dir=cache)
    assert [(e.kind, e.step, e.replaces) for e in rescored] == [("final", 12, True)]
    assert again.metrics["eval_samples"] == 96 and again.step == 12
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "ext" / "checkpoints").glob("*.pt"))] == stamps
    assert json.loads((tmp_path / "ext" / "result.json").read_text())["metrics"]["eval_samples"] == 96

    with pytest.raises(ValueError, match="has trained 12 steps and is now asked for 6"):
        train(config(6), tmp_path / "ext", cache_dir=cache)


# --- a study's life on Ray and MLflow ------------------------------------------------------------------------

def children(client: MlflowClient, experiment: str) -> dict[str, object]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial'")
    return {r.data.tags["trial_id"]: r for r in runs}


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def stamped_history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float, int]]:
    """(step, value, the time MLflow stored it): a step trained again would be logged again, later."""
    return [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)]


def checkpoint_stamps(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted((out / "trials").glob("*/checkpoints/*.pt"))}


@pytest.fixture(scope="module")
def grown(tmp_path_factory, ray_session):
    """A two-seed study run to 6 steps; its file, store and the state after that first run."""
    tmp = tmp_path_factory.mktemp("grow")
    spec = tiny_study("grow", tmp / "out")
    spec["grid"] = {"train.seed": [0, 1]}
    path = write_study(tmp / "study.yaml", spec)
    study = load_study(path)
    run_study(study, quiet=True)
    client = MlflowClient(study.config.tracking_uri)
    runs = children(client, "grow")
    before = {tid: history(client, r.info.run_id, "loss_d") for tid, r in runs.items()}
    logged = {tid: stamped_history(client, r.info.run_id, "loss_d") for tid, r in runs.items()}
    return {"spec": spec, "path": path, "study": study, "client": client, "runs": runs, "loss_d_at_6": before,
            "loss_d_logged_at_6": logged, "checkpoints_at_6": checkpoint_stamps(study.config.out)}


def rerun(grown: dict, change: dict | None = None):
    if change:
        for section, values in change.items():
            grown["spec"][section] = {**grown["spec"].get(section, {}), **values} if section != "grid" else values
        write_study(grown["path"], grown["spec"])
    study = load_study(grown["path"])
    return study, run_study(study, quiet=True)


def test_raising_steps_continues_each_trial_in_its_run(grown):
    client, first = grown["client"], grown["study"]
    assert {o.step for o in run_study(first, quiet=True)} == {6}  # the same file again: nothing to do
    study, outcomes = rerun(grown, {"train": {"steps": 12}})
    assert [t.trial_id for t in study.trials] == [t.trial_id for t in first.trials]
    after = checkpoint_stamps(first.config.out)
    assert all(after[name] == stamp for name, stamp in grown["checkpoints_at_6"].items() if name in after)
    assert len(after) >= len(grown["checkpoints_at_6"]) and set(after) != set(grown["checkpoints_at_6"])
    assert [(o.status, o.step) for o in outcomes] == [("completed", 12), ("completed", 12)]
    runs = children(client, "grow")
    assert {tid: r.info.run_id for tid, r in runs.items()} == {tid: r.info.run_id for tid, r in grown["runs"].items()}
    for tid, run in runs.items():
        run_id = run.info.run_id
        loss_d = history(client, run_id, "loss_d")
        assert [s for s, _ in loss_d] == [2, 4, 6, 8, 10, 12]
        assert loss_d[:3] == grown["loss_d_at_6"][tid]  # the first 6 steps are the first run's
        assert [s for s, _ in history(client, run_id, "fd_classifier")] == [0, 3, 6, 9, 12]
        for key in run.data.metrics:  # no step logged twice, whatever the metric
            steps = Counter(s for s, _ in history(client, run_id, key))
            assert max(steps.values()) == 1, (key, steps)
        assert history(client, run_id, "resumed_from_step") == [(6, 6.0)]  # trained steps 7..12 only
        # Extending costs the new steps only, not a run from scratch to 12: steps 1..6 are the first run's
        # records, stored when it ran (not trained and logged again), and its checkpoints were not rewritten
        assert [m for m in stamped_history(client, run_id, "loss_d") if m[0] <= 6] == grown["loss_d_logged_at_6"][tid]
        tags = run.data.tags
        assert tags["status"] == "completed" and tags["final_step"] == "12" and run.info.status == "FINISHED"
        assert tags["logged_through_step"] == "12" and tags["health"] in ("ok", "collapsed", "diverged")
        macs = float(run.data.params["macs_per_sample_iter"])
        assert run.data.metrics["train_flops"] == pytest.approx(macs * 8 * 12)
        assert json.loads((study.config.out / "trials" / tid / "result.json").read_text())["step"] == 12
    grown["loss_d_at_12"] = {tid: history(client, r.info.run_id, "loss_d") for tid, r in runs.items()}


def test_bookkeeping_changes_retrain_nothing_and_a_new_seed_is_added(grown):
    out, client = grown["study"].config.out, grown["client"]
    stamps = checkpoint_stamps(out)
    study, outcomes = rerun(grown, {"eval": {"interval": 4}, "train": {"log_every": 3, "checkpoint_every": 5},
                                    "grid": {"train.seed": [0, 1, 2]}})
    old = [t.trial_id for t in grown["study"].trials]
    assert [t.trial_id for t in study.trials][:2] == old
    assert [o.status for o in outcomes] == ["completed"] * 3
    runs = children(client, "grow")
    assert len(runs) == 3
    for tid in old:
        assert history(client, runs[tid].info.run_id, "loss_d") == grown["loss_d_at_12"][tid]
        assert runs[tid].info.run_id == grown["runs"][tid].info.run_id
    assert {k: v for k, v in checkpoint_stamps(out).items() if k.split("/")[1] in old} == stamps
    new = study.trials[2].trial_id
    assert [s for s, _ in history(client, runs[new].info.run_id, "loss_d")] == [3, 6, 9, 12]


def test_lowering_steps_is_refused_naming_the_trials(grown, capfd):
    client = grown["client"]
    before = {tid: r.data.tags for tid, r in children(client, "grow").items()}
    spec = grown["spec"]
    spec["train"]["steps"] = 6
    write_study(grown["path"], spec)
    assert main(["run", str(grown["path"])]) == 2
    err = capfd.readouterr().err
    for trial in load_study(grown["path"]).trials:
        assert f"trial {trial.trial_id} ({trial.name}): has trained 12 steps, but the study now asks for 6" in err
    assert {tid: r.data.tags for tid, r in children(client, "grow").items()} == before
    with pytest.raises(StudyError):
        run_study(load_study(grown["path"]), quiet=True)
    spec["train"]["steps"] = 12
    write_study(grown["path"], spec)


def test_an_evaluation_change_rescores_without_training(grown):
    client, out = grown["client"], grown["study"].config.out
    stamps = checkpoint_stamps(out)
    before = children(client, "grow")
    trained = {tid: history(client, r.info.run_id, "loss_d") for tid, r in before.items()}
    study, outcomes = rerun(grown, {"eval": {"final_samples": 96, "extra_metrics": ["kid_classifier"]}})
    assert [(o.status, o.step) for o in outcomes] == [("completed", 12)] * 3
    runs = children(client, "grow")
    for trial in study.trials:
        run, old = runs[trial.trial_id], before[trial.trial_id]
        run_id = run.info.run_id
        assert history(client, run_id, "loss_d") == trained[trial.trial_id]  # not one training step
        assert run.data.tags["logged_through_step"] == old.data.tags["logged_through_step"] == "12"
        assert history(client, run_id, "eval_samples")[-1] == (12, 96.0)
        assert run.data.metrics["eval_samples"] == 96  # the run's latest value is the re-score
        assert [s for s, _ in history(client, run_id, "kid_classifier")] == [12]
        assert run.data.tags[EVAL_TAG] != old.data.tags[EVAL_TAG]
        assert json.loads(run.data.tags[EVAL_TAG]) == evaluation_items(trial.params())
        assert run.data.tags["status"] == "completed" and run.data.tags["final_step"] == "12"
    assert checkpoint_stamps(out) == stamps  # nothing trained, nothing checkpointed
    counts = {tid: len(history(client, r.info.run_id, "eval_samples")) for tid, r in runs.items()}
    study, _ = rerun(grown)  # scored under these settings now: nothing to do
    assert {tid: len(history(client, r.info.run_id, "eval_samples")) for tid, r in
            children(client, "grow").items()} == counts


def test_runs_recorded_under_the_earlier_ids_are_adopted(grown):
    """A store written before identity keys: trial_id tags (and folders) are hashes of the whole config."""
    client, study = grown["client"], load_study(grown["path"])
    out = study.config.out / "trials"
    trial = study.trials[0]
    run = children(client, "grow")[trial.trial_id]
    old = legacy_trial_hash(trial.config)
    client.set_tag(run.info.run_id, "trial_id", old)
    client.delete_tag(run.info.run_id, EVAL_TAG)  # the earlier version wrote none
    (out / trial.trial_id).rename(out / old)
    loss_d = history(client, run.info.run_id, "loss_d")
    actions = trial_actions(study, children(client, "grow"), {t.trial_id: 12 for t in study.trials})
    assert actions[trial.trial_id].kind == "new"  # without adoption it would train again from step 0

    _, outcomes = rerun(grown)
    runs = children(client, "grow")
    assert len(runs) == 3 and runs[trial.trial_id].info.run_id == run.info.run_id
    assert runs[trial.trial_id].data.tags[EARLIER_ID_TAG] == old
    assert (out / trial.trial_id / "result.json").exists() and not (out / old).exists()
    assert history(client, run.info.run_id, "loss_d") == loss_d  # adopted, not retrained
    # its params (the config it was created with) give its evaluation settings: re-scored under today's
    assert json.loads(runs[trial.trial_id].data.tags[EVAL_TAG]) == evaluation_items(trial.params())
    assert outcomes[0].status == "completed" and outcomes[0].step == 12

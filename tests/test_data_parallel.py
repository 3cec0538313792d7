"""Data-parallel trials: gradient averaging (exact, two gloo processes), the whole `train()` on two
workers without Ray, and a two-worker study on a real local Ray (Ray Train) against one worker."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mlflow.tracking import MlflowClient

from gat_core.config import TrialConfig
from gat_core.distributed import DataParallel
from orchestrator.study import StudyError, load_study
from tests.helpers import kill_and_finish, listening, ray_pids, tiny_study, write_study

WORLD = 2


def _init(rank: int, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)


def _toy_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1))


def _toy_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=gen), torch.randn(8, 1, generator=gen)


def _gradient_worker(rank: int, store: str, out: str) -> None:
    _init(rank, store)
    dp = DataParallel.current()
    net = _toy_net()
    x, y = _toy_batch()
    loss = (net(dp.shard(x)) - dp.shard(y)).square().mean()
    loss.backward()
    dp.average_gradients(net.parameters())
    torch.save([p.grad for p in net.parameters()], Path(out) / f"grads{rank}.pt")
    dp.check_in_sync(net)  # same weights: passes
    if rank == 1:
        with torch.no_grad():
            net[0].bias.add_(1e-3)
    try:
        dp.check_in_sync(net)
        (Path(out) / f"drift{rank}.txt").write_text("not detected")
    except RuntimeError as exc:
        (Path(out) / f"drift{rank}.txt").write_text(str(exc))
    dist.destroy_process_group()


def test_averaged_gradients_equal_the_full_batch_gradient(tmp_path):
    mp.spawn(_gradient_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD)
    net = _toy_net()
    x, y = _toy_batch()
    (net(x) - y).square().mean().backward()
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"grads{rank}.pt", weights_only=True)
        for got, want in zip(grads, (p.grad for p in net.parameters())):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        assert "weights differ" in (tmp_path / f"drift{rank}.txt").read_text()


def test_shards_are_contiguous_and_the_batch_must_split():
    items = torch.arange(8)
    assert DataParallel(0, 2).shard(items).tolist() == [0, 1, 2, 3]
    assert DataParallel(1, 2).shard(items).tolist() == [4, 5, 6, 7]
    assert DataParallel().shard(items) is items
    with pytest.raises(ValueError, match=r"train.batch_size: 9 .* 2 data-parallel workers \(resources.workers\)"):
        DataParallel(0, 2).local_batch(9)


def test_study_rejects_a_batch_that_does_not_split(tmp_path):
    spec = tiny_study("split", tmp_path / "out")  # batch 8
    spec["resources"]["workers"] = 3
    with pytest.raises(StudyError, match=r"train.batch_size: 8 does not split over resources.workers = 3"):
        load_study(write_study(tmp_path / "study.yaml", spec))


def _trial_config(family: str) -> TrialConfig:
    spec = tiny_study("unused", Path("unused"), steps=6, batch_size=8, log_every=2, checkpoint_every=3)
    if family == "dit":
        spec["model"]["family"] = "dit"
        spec["train"].update(beta1=0.9, diffusion={"sample_steps": 2})
    return TrialConfig.model_validate({k: spec[k] for k in ("dataset", "model", "train", "eval")})


def _train_worker(rank: int, store: str, workdir: str, family: str) -> None:
    from gat_core.loop import train

    _init(rank, store)
    events = []
    result = train(_trial_config(family), Path(workdir), lambda e: events.append(
        {"kind": e.kind, "step": e.step, "metrics": sorted(e.metrics), "loss_d": e.metrics.get("loss_d"),
         "loss_diffusion": e.metrics.get("loss_diffusion"),
         "checkpoint": e.checkpoint_dir is not None}))
    Path(workdir, f"events{rank}.json").write_text(json.dumps({"events": events, "status": result.status}))
    dist.destroy_process_group()


@pytest.mark.parametrize("family", ["gat", "dit"])
def test_train_runs_data_parallel_with_one_writer(tmp_path, family):
    workdir = tmp_path / "trial"
    mp.spawn(_train_worker, args=(str(tmp_path / "store"), str(workdir), family), nprocs=WORLD)
    main, other = (json.loads((workdir / f"events{r}.json").read_text()) for r in range(WORLD))
    assert main["status"] == other["status"] == "completed"
    # the same reports in the same order on every worker (Ray Train's report is a barrier)
    assert [(e["kind"], e["step"]) for e in main["events"]] == [(e["kind"], e["step"]) for e in other["events"]]
    # the main worker alone evaluates and checkpoints; the losses are averaged, so all workers log the same
    assert all(not e["metrics"] and not e["checkpoint"] for e in other["events"] if e["kind"] != "progress")
    progress = [[e for e in w["events"] if e["kind"] == "progress"] for w in (main, other)]
    assert [e["step"] for e in progress[0]] == [2, 4, 6]
    loss = "loss_d" if family == "gat" else "loss_diffusion"
    assert all(loss in e["metrics"] for e in progress[0])
    assert [e[loss] for e in progress[0]] == [e[loss] for e in progress[1]]
    assert any(e["kind"] == "checkpoint" and e["checkpoint"] for e in main["events"])
    assert json.loads((workdir / "result.json").read_text())["step"] == 6
    assert (workdir / "final_model.pt").exists()


def _curve(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory, ray_session):
    """The same trial (effective batch 32) on one worker and on two data-parallel workers."""
    from orchestrator.runner import run_study

    results = {}
    for workers in (1, 2):
        watcher = SocketWatcher() if workers == 2 else None
        tmp = tmp_path_factory.mktemp(f"workers{workers}")
        spec = tiny_study(f"dp{workers}", tmp / "out", steps=30, batch_size=32, log_every=5, checkpoint_every=15,
                          lr=5e-5)
        spec["eval"]["interval"] = 30
        spec["resources"]["workers"] = workers
        study = load_study(write_study(tmp / "study.yaml", spec))
        results[workers] = (study, run_study(study, quiet=True), watcher.stop() if watcher else [])
    return results


class SocketWatcher(threading.Thread):
    """Polls `ss` for the listening sockets of Ray's processes (Ray Train workers among them) while it runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: set[tuple[str, str]] = set()
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.seen.update(listening(ray_pids()))

    def stop(self) -> list[tuple[str, str]]:
        self.done.set()
        self.join()
        return sorted(self.seen)


def test_two_worker_trial_matches_the_single_worker_curve(two_studies):
    curves = {}
    for workers, (study, outcomes, _) in two_studies.items():
        assert [o.status for o in outcomes] == ["completed"]
        client = MlflowClient(study.config.tracking_uri)
        exp = client.get_experiment_by_name(study.config.experiment)
        runs = client.search_runs([exp.experiment_id], filter_string="tags.`gat_study.role` = 'trial'")
        assert len(runs) == 1  # one MLflow run per trial, however many workers
        run = runs[0]
        curves[workers] = {key: _curve(client, run.info.run_id, key) for key in ("loss_d", "loss_g")}
        if workers == 2:
            tags = run.data.tags
            assert (tags["workers"], tags["effective_batch_size"], tags["per_worker_batch_size"]) == ("2", "32", "16")
            assert tags["dp_backend"] == "gloo"
    for key, tolerance in (("loss_d", 0.1), ("loss_g", 0.2)):
        single, parallel = curves[1][key], curves[2][key]
        assert [s for s, _ in single] == [s for s, _ in parallel] == [5, 10, 15, 20, 25, 30]
        for (step, a), (_, b) in zip(single, parallel):
            # the same data, weights and optimiser steps; only the noise draws (z, MNG, penalties) differ
            limit = tolerance if key == "loss_d" else tolerance * abs(a)
            assert abs(a - b) <= limit, f"{key} at step {step}: one worker {a:.4f}, two workers {b:.4f}"


def test_data_parallel_workers_listen_only_on_loopback(two_studies):
    """The process-group rendezvous and gloo stay off the network on the embedded Ray."""
    sockets = two_studies[2][2]
    assert any("RayTrainWo" in owner for _, owner in sockets), "no Ray Train worker seen: the check would be vacuous"
    exposed = [s for s in sockets if not s[0].rsplit(":", 1)[0].strip("[]").endswith("127.0.0.1")]
    assert not exposed, exposed


@pytest.mark.slow
def test_killed_data_parallel_worker_resumes_the_trial(tmp_path):
    """SIGKILL of the second worker: Ray Train restarts both from the checkpoint; one run, continuous steps."""
    run = kill_and_finish(tmp_path, "dpcrash", "worker-rank1.pid", workers=2)
    assert run.data.tags["workers"] == "2"


def test_multi_worker_trials_at_once_default_to_what_the_cluster_holds(ray_session):
    from orchestrator.cluster import default_concurrency
    from orchestrator.study import ResourcesConfig

    assert default_concurrency(ResourcesConfig(workers=1)) == 0  # Tune places single-worker trials itself
    assert default_concurrency(ResourcesConfig(workers=2, cpus_per_trial=1)) == 1  # 2 CPUs: one trial of 2 x 1
    assert default_concurrency(ResourcesConfig(workers=2, cpus_per_trial=0.5)) == 2
    assert default_concurrency(ResourcesConfig(workers=2, gpus_per_trial=1)) == 1  # no GPU here: at least one

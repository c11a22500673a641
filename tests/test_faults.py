"""What ranks must agree on, checked on a real two-process ``torch.distributed`` group (gloo, as inside Ray Train
workers) without Ray: BatchNorm statistics that really differ between ranks are checkpointed as their cross-rank
mean; each rank's random state is saved and comes back to that rank; sampled paths that differ stop the run
naming the rank. Also the search driver that ``tests/test_distributed.py`` SIGKILLs (run as
``python -m tests.test_faults``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from orchestrator import tracking
from orchestrator.faults import Faults
from orchestrator.ray_train import ClusterSpec
from orchestrator.runs import tracked_run
from orchestrator.search import load_config, resolve_latency, run_search
from orchestrator.search.jobs import RanksDiverged, check_consistency, run_distributed_search
from orchestrator.search.state import (alpha_fingerprint, init_state, load_state_dict, path_fingerprint,
                                       state_dict)
from orchestrator.train.checkpoint import seed_rank
from orchestrator.train.runtime import DistComm, Runtime, bn_buffers
from tests.conftest import ROOT
from tests.servers import free_port

TINY = ROOT / "configs" / "tiny.yaml"
# tests/test_distributed.py's OVERRIDES: 38 steps, checkpoints at 20 and 38
DRIVER_OVERRIDES = ("epochs=2", "weight.batch_size=64", "arch.batch_size=64", "checkpoint_every=20", "log_every=1")


# ---- two ranks on gloo, in spawned processes ----------------------------------------------------------------------

def _bn_names(model: torch.nn.Module) -> list[str]:
    """State-dict keys of the BN running statistics, in ``bn_buffers`` order."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            names += [f"{name}.running_mean", f"{name}.running_var"]
    return names


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    """One rank: a warm-up of the tiny search on this rank's share of the digits, then its checkpoint, a restore
    into a fresh state, and a consistency check with paths that differ on rank 1."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rt = Runtime(comm=DistComm())
        cfg = load_config(TINY, ("weight.batch_size=64",))  # 19 steps of 32 images per rank
        seed_rank(cfg.seed, rank)  # as a Train worker on a fresh start
        got: dict = {}

        def checkpoint(state) -> None:
            got["per_rank"] = rt.comm.gather([b.detach().clone() for b in bn_buffers(state.supernet)])
            got["saved"] = state_dict(state)  # collective: averages BN statistics, gathers every rank's RNG
            got["names"] = _bn_names(state.supernet)
            got["spe"] = state.steps_per_epoch

        def check(state) -> None:  # the check search_worker runs, on the paths this rank really sampled
            check_consistency(rt.comm, alpha_fingerprint(state), path_fingerprint(state.paths), state.step)
            got.setdefault("checked", []).append(state.step)

        # the warm-up, one checkpoint; every step checked: ranks sampling with one seed agree
        run_search(cfg, rt=rt, checkpoint=checkpoint, after_step=check, warmup_only=True)
        saved = got["saved"]
        # a resumed rank: another random state first, then the checkpoint restores this rank's own
        torch.manual_seed(1000 + rank)
        fresh = init_state(cfg, resolve_latency(cfg), got["spe"], rt)
        load_state_dict(fresh, saved)
        restored_own = torch.get_rng_state().equal(saved["rng"][rank]["cpu"])
        restored_all = rt.comm.gather(restored_own)
        # rank 1 samples its paths with another seed (the only difference): its gradients then belong to other
        # candidates, and the run must stop on every rank alike, naming rank 1, not abort in gloo
        other = load_config(TINY, ("weight.batch_size=64", f"seed={cfg.seed + rank}"))
        seed_rank(cfg.seed, rank)
        got["at"] = []
        try:
            run_search(other, rt=rt, after_step=lambda s: got["at"].append(s.step), warmup_only=True)
            diverged = None
        except RanksDiverged as e:
            diverged = str(e)
        if rank == 0:
            torch.save({"per_rank": got["per_rank"], "saved_bn": [saved["model"][k] for k in got["names"]],
                        "names": got["names"], "rng": [r["cpu"] for r in saved["rng"]],
                        "restored": restored_all, "diverged": diverged, "checked": got["checked"],
                        "diverged_after": got["at"]}, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What rank 0 saw in a two-rank gloo group running ``_rank_main`` (10 to 20 s on 2 cores)."""
    out = tmp_path_factory.mktemp("gloo") / "rank0.pt"
    mp.spawn(_rank_main, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


@pytest.mark.slow
def test_checkpointed_bn_statistics_are_the_mean_over_ranks(two_ranks):
    per_rank, saved = two_ranks["per_rank"], two_ranks["saved_bn"]
    assert len(per_rank) == 2 and len(saved) == len(per_rank[0]) == len(two_ranks["names"]) > 0
    # the ranks saw different images, so their running statistics really differ
    spread = max(float((a - b).abs().max()) for a, b in zip(per_rank[0], per_rank[1]))
    assert spread > 1e-3, spread
    for name, mine, other, got in zip(two_ranks["names"], per_rank[0], per_rank[1], saved):
        assert torch.allclose(got, (mine + other) / 2, rtol=0, atol=1e-6), name


@pytest.mark.slow
def test_each_rank_saves_and_restores_its_own_random_state(two_ranks):
    rng = two_ranks["rng"]
    assert len(rng) == 2 and not rng[0].equal(rng[1])  # one state per rank, and they differ
    assert two_ranks["restored"] == [True, True]  # after load_state_dict each rank holds its own saved state


@pytest.mark.slow
def test_ranks_that_sampled_different_paths_are_named(two_ranks):
    # with one seed every step of the warm-up passed the check of α and paths (19 steps)
    assert two_ranks["checked"][:19] == list(range(1, 20))
    # with another seed on rank 1 the first step's gradient reduction already differs: stopped there, on both
    # ranks (rank 0 reports it), naming rank 1
    msg = two_ranks["diverged"]
    assert msg is not None and "\n" not in msg
    assert two_ranks["diverged_after"] == []
    assert msg.startswith("ranks reduce different tensors: rank(s) [1] hold "), msg


# ---- the MLflow run of a run folder, and rank 0's metric sink (no Ray) ------------------------------------------------

def test_an_unfinished_run_is_reopened_and_a_finished_one_is_not(tmp_path):
    """The same run folder continues its MLflow run while that run is not FINISHED (a killed driver leaves it RUNNING;
    a resumed sweep marks it KILLED); once finished, a new run starts. Search and retrain share this."""
    uri, storage = f"sqlite:///{tmp_path}/m.db", str(tmp_path / "runs")
    create = lambda: tracking.create_run(uri, "exp", "r")  # noqa: E731
    first, reopened = tracked_run(storage, "r", uri, "exp", create)
    assert not reopened
    assert tracked_run(storage, "r", uri, "exp", create) == (first, True)  # left RUNNING: continued
    tracking.end_run(uri, first, "KILLED")
    assert tracked_run(storage, "r", uri, "exp", create) == (first, True)
    assert tracking.client(uri).get_run(first).data.tags["nas.driver_restarts"] == "2"
    assert tracking.client(uri).get_run(first).info.status == "RUNNING"
    tracking.end_run(uri, first)
    second, reopened = tracked_run(storage, "r", uri, "exp", create)
    assert second != first and not reopened  # a finished run is never reopened
    other, _ = tracked_run(storage, "r", uri, "another-exp", lambda: tracking.create_run(uri, "another-exp", "r"))
    assert other not in (first, second)  # nor one of another experiment
    assert len(tracking.find_runs(uri, "exp")) == 2


def test_metric_sink_keeps_points_an_absent_server_did_not_take_without_waiting(tmp_path):
    sink = tracking.MetricSink(f"http://127.0.0.1:{free_port()}", "no-run", timeout_s=2.0, backoff_s=30.0)
    t0 = time.monotonic()
    assert not sink.log({"loss": 1.0, "acc": 0.5}, step=1)  # nothing listens: refused at once
    assert not sink.log({"loss": 0.9}, step=2)  # in back-off: not even tried
    assert time.monotonic() - t0 < 5
    assert [(k, v, s) for k, v, _, s in sink.pending] == [("loss", 1.0, 1), ("acc", 0.5, 1), ("loss", 0.9, 2)]
    assert sink.deferred == 2 and sink.failures == 1
    # a store that answers takes what was kept, in order, with the original steps and timestamps
    uri = f"sqlite:///{tmp_path}/m.db"
    run_id = tracking.create_run(uri, "exp", "r")
    sink.uri, sink.run_id = uri, run_id
    kept = list(sink.pending)
    assert sink.flush(force=True) and sink.pending == [] and sink.failures == 0
    history = tracking.client(uri).get_metric_history(run_id, "loss")
    assert [(m.step, m.value, m.timestamp) for m in history] == [(s, v, ts) for k, v, ts, s in kept if k == "loss"]
    bounded = tracking.MetricSink(f"http://127.0.0.1:{free_port()}", "no-run", max_pending=3)
    for step in range(3):
        bounded.log({"a": 1.0, "b": 2.0}, step=step)
    assert len(bounded.pending) == 3 and bounded.dropped == 3 and bounded.pending[0][3] == 1  # the oldest went


# ---- the driver that tests/test_distributed.py kills ----------------------------------------------------------------

def _drive(argv: list[str]) -> None:
    """A search driver as ``nas search --workers 2 --resume`` runs it, with a pause to strike at (``--pause STEP``): joins
    Ray at RAY_ADDRESS and prints one JSON line about the result."""
    p = argparse.ArgumentParser()
    for opt in ("--name", "--storage", "--tracking-uri", "--experiment"):
        p.add_argument(opt, required=True)
    p.add_argument("--pause", type=int, action="append", default=[])
    p.add_argument("--set", action="append", default=[], help="more config overrides (e.g. the data)")
    a = p.parse_args(argv)
    spec = ClusterSpec(num_workers=2, storage_path=a.storage, name=a.name, tracking_uri=a.tracking_uri,
                       experiment=a.experiment, resume=True)  # as `--resume`: the same command continues the run
    res = run_distributed_search(load_config(TINY, (*DRIVER_OVERRIDES, *a.set)), spec,
                                 faults=Faults(pause_at_steps=tuple(a.pause)))
    print(json.dumps({"run_id": res.run_id, "resumed_from_step": res.search["resumed_from_step"],
                      "arch": res.search["arch"], "alpha_fingerprint": res.search["alpha_fingerprint"]}))


if __name__ == "__main__":
    _drive(sys.argv[1:])

"""Data-parallel search on Ray Train over a real two-node cluster (``ray.cluster_utils.Cluster``), checkpoints on a
real S3-compatible server, and the faults it survives: a killed worker, a removed node, a killed driver, an MLflow
server that goes away and comes back, a rank that diverges; and the checks that run before any worker starts.

Faults that must strike at a known step use ``Faults.pause_at_steps``: the search stands still there (every
checkpoint before it committed) until the test has done its damage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator import tracking
from orchestrator.faults import Faults
from orchestrator.ray_train import ClusterSpec, load_state_uri
from orchestrator.search.jobs import RanksDiverged, SearchJob, run_distributed_search
from orchestrator.search import load_config
from tests.conftest import ROOT, assert_one_line_error, run_nas
from tests.servers import local_two_node_cluster
from tests.test_faults import DRIVER_OVERRIDES
from tests.test_safe_loading import _tampered

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TINY = ROOT / "configs" / "tiny.yaml"
# 38 weight steps of a global batch of 64 (steps cost about the same at 32 or 64 images); checkpoints at 20 and 38.
# The driver that the driver-kill test SIGKILLs runs the same, so that its α compares with ``s3_search``'s.
OVERRIDES = DRIVER_OVERRIDES


def data_overrides(folder) -> tuple[str, ...]:
    """The search reads the digits as JPEG files, decoded and augmented by one loader process per rank: the faults
    below are survived on the real data path, resumes exact through it."""
    return ("data.kind=imagefolder", f"data.uri={folder}", "data.workers=1")


@pytest.fixture(scope="module")
def overrides(digits_jpegs) -> tuple[str, ...]:
    return (*OVERRIDES, *data_overrides(digits_jpegs))


@pytest.fixture(scope="module")
def two_node_cluster(s3_server):
    """Head and one more node, one CPU each, so that the two Train workers land on different nodes."""
    with local_two_node_cluster(s3_server.env()) as cluster:  # raylets and workers reach the S3 server
        yield cluster


@pytest.fixture(scope="module")
def s3_search(two_node_cluster, s3_server, tmp_path_factory, overrides):
    """One uninterrupted 2-worker search with checkpoints in a bucket of the S3 server."""
    bucket = s3_server.new_bucket()
    tracking = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    cfg = load_config(TINY, overrides)
    spec = ClusterSpec(num_workers=2, cpus_per_worker=1.0, storage_path=f"s3://{bucket}/runs", name="s3-run",
                       tracking_uri=tracking, experiment="dist-test")
    return run_distributed_search(cfg, spec, consistency_every=1), bucket, tracking


def test_two_workers_keep_alpha_identical_and_checkpoint_to_s3(s3_search, s3_server):
    res, bucket, tracking = s3_search
    search = res.search
    # every consistency check and every checkpoint saw the same α fingerprint on both ranks
    checks = search["consistency_checks"]
    assert len(checks) >= 38
    assert all(len(fps) == 2 and fps[0] == fps[1] for _, fps in checks)
    assert checks[-1][1][0] == search["alpha_fingerprint"]
    assert search["rank_fingerprints"] == [search["alpha_fingerprint"]] * 2
    assert search["rank_archs"] == [search["arch"]] * 2
    # the checkpoints are objects in the S3 bucket, each with the per-rank fingerprints of its step
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    states = [k for k in keys if k.endswith("search_state.pt")]
    assert states, keys
    for key in [k for k in keys if k.endswith("alpha_fingerprints.json")]:
        body = json.loads(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())
        assert len(body["ranks"]) == 2 and len(set(body["ranks"])) == 1
    assert res.checkpoint_path and "s3-run" in res.checkpoint_path


def test_search_is_recorded_once_in_mlflow(s3_search):
    from mlflow import MlflowClient

    res, _, tracking = s3_search
    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name("dist-test")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [res.run_id]
    run = runs[0]
    assert run.data.tags["nas.arch"] == res.search["arch"]
    assert run.data.tags["nas.space"] == "tiny"
    assert run.data.params["search.space"] == "tiny"
    history = client.get_metric_history(res.run_id, "loss")
    assert len(history) >= 20 and len({m.step for m in history}) == len(history)  # logged once per step
    artifacts = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"arch.txt", "alpha.csv", "net.config", "result.json"} <= artifacts


def test_killed_worker_is_replaced_and_search_resumes(s3_search, tmp_path, overrides):
    baseline = s3_search[0].search
    cfg = load_config(TINY, overrides)
    spec = ClusterSpec(num_workers=2, storage_path=str(tmp_path / "runs"), name="killed", tracking_uri=f"sqlite:///{tmp_path}/m.db",
                       experiment="dist-kill", max_failures=2)
    res = run_distributed_search(cfg, spec, faults=Faults(kill_at_step=30))
    assert res.search["restored"] is True  # the final worker group started from a checkpoint
    assert res.search["resumed_from_step"] == 20  # the last checkpoint before the kill at step 30
    # the fault fired exactly once: its marker in the run's storage names the first kill
    marker = json.loads((tmp_path / "runs" / "killed" / "fault-injected.json").read_text())
    assert marker == {"rank": 1, "step": 30}
    # resuming replays exactly: the same α bits and architecture as the uninterrupted search
    assert res.search["alpha_fingerprint"] == baseline["alpha_fingerprint"]
    assert res.search["arch"] == baseline["arch"]
    # each rank restored its own random state: the final checkpoints hold, rank by rank, the states of the
    # uninterrupted run, and the two ranks' states differ (each rank is seeded from (seed, rank) on a fresh start)
    resumed, uninterrupted = load_state_uri(res.state_uri)["rng"], load_state_uri(s3_search[0].state_uri)["rng"]
    assert len(resumed) == len(uninterrupted) == 2
    assert not resumed[0]["cpu"].equal(resumed[1]["cpu"])
    assert all(a["cpu"].equal(b["cpu"]) for a, b in zip(resumed, uninterrupted))


def test_too_few_resources_is_refused_before_training(two_node_cluster, tmp_path):
    cfg = load_config(TINY)
    spec = ClusterSpec(num_workers=4, storage_path=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    with pytest.raises(ValueError, match=r"cluster has 2 CPU in all, but 4 workers x 1 CPU need 4"):
        run_distributed_search(cfg, spec)


def test_gpu_on_a_cluster_without_gpus_is_refused_in_one_line(two_node_cluster, tmp_path):
    """`--gpu` asks every worker for a GPU: on this CPU-only cluster, search, retrain and sweep refuse in one line
    before anything starts or is written (unless `--allow-autoscale` says the cluster starts GPU nodes)."""
    env = {"RAY_ADDRESS": two_node_cluster.address}
    runs, db = tmp_path / "runs", tmp_path / "m.db"
    where = ("--storage", str(runs), "--tracking-uri", f"sqlite:///{db}")
    search = run_nas("search", "--config", str(TINY), "--workers", "2", "--gpu", *where, env=env)
    assert_one_line_error(search, "cluster has 0 GPU in all, but 2 workers x 1 GPU need 2")
    retrain = run_nas("retrain", "--arch", "tiny:k3e3.zero/k5e6.zero", "--config",
                      str(ROOT / "configs" / "retrain-digits.yaml"), "--workers", "2", "--gpu", *where, env=env)
    assert_one_line_error(retrain, "0 GPU in all")
    assert not runs.exists() and not db.exists()


def test_resume_of_a_run_folder_of_another_space_or_config_is_refused(s3_search, s3_server, overrides):
    """The same --name and storage as ``s3_search`` (a finished run with checkpoints in S3), run again with a
    search of another space, then with one whose target differs: each is refused in one line before any worker
    starts, and the run folder and its MLflow record are left as they were."""
    from mlflow import MlflowClient

    res, bucket, tracking_uri = s3_search
    s3 = s3_server.client()

    def folder() -> dict[str, str]:
        return {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/s3-run/")["Contents"]}

    before = folder()
    spec = ClusterSpec(num_workers=2, storage_path=f"s3://{bucket}/runs", name="s3-run", tracking_uri=tracking_uri,
                       experiment="dist-other", max_failures=0, resume=True)  # `--resume`: a resume is intended
    other_space = load_config(ROOT / "configs" / "demo.yaml")
    assert other_space.search_space.name != "tiny"
    with pytest.raises(ValueError, match=r"^run 's3-run' in s3://\S+ holds a checkpoint of space 'tiny' ") as err:
        run_distributed_search(other_space, spec)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^run 's3-run' in s3://\S+ was started with another config \(differs in "
                                         r"target\); refusing to resume it") as err:
        run_distributed_search(load_config(TINY, (*overrides, "target=0.2")), spec)
    assert "\n" not in str(err.value)
    assert folder() == before  # nothing written, the meta of the tiny search kept
    meta = json.loads(s3.get_object(Bucket=bucket, Key="runs/s3-run/search-meta.json")["Body"].read())
    assert meta["space"] == "tiny"
    client = MlflowClient(tracking_uri=tracking_uri)
    assert client.get_experiment_by_name("dist-other") is None  # no run opened for either
    assert client.get_run(res.run_id).info.status == "FINISHED"


def test_unreachable_storage_or_tracking_fail_before_training(s3_server, tmp_path):
    env = s3_server.env()
    proc = run_nas("search", "--config", str(TINY), "--workers", "2", "--storage", "s3://no-such-bucket-here/runs",
                   "--tracking-uri", f"sqlite:///{tmp_path}/m.db", env=env)
    assert_one_line_error(proc, "storage path s3://no-such-bucket-here/runs is not writable")
    proc = run_nas("search", "--config", str(TINY), "--workers", "2", "--storage", str(tmp_path / "runs"),
                   "--tracking-uri", "http://127.0.0.1:9", env=env)
    assert_one_line_error(proc, "MLflow tracking server http://127.0.0.1:9 is unreachable")
    assert not (tmp_path / "runs").exists()


def test_resume_from_a_tampered_checkpoint_in_storage_is_refused(s3_search, s3_server, tmp_path, overrides):
    """Ray Train hands the workers the run's latest checkpoint; a payload planted there never runs. The payload goes
    into a copy of ``s3_search``'s run folder, so the module's other tests see the run as it finished."""
    res, bucket, tracking = s3_search
    s3 = s3_server.client()
    for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/s3-run/")["Contents"]:
        if not o["Key"].endswith("/mlflow-run.json"):  # the copy gets its own MLflow run
            s3.copy_object(Bucket=bucket, CopySource={"Bucket": bucket, "Key": o["Key"]},
                           Key=o["Key"].replace("runs/s3-run/", "runs/tampered/", 1))
    latest = res.checkpoint_path.split(f"{bucket}/runs/s3-run/", 1)[1]
    key = f"runs/tampered/{latest}/search_state.pt"
    original = s3.get_object(Bucket=bucket, Key=key.replace("runs/tampered/", "runs/s3-run/", 1))["Body"].read()
    sentinel = tmp_path / "sentinel"
    s3.put_object(Bucket=bucket, Key=key, Body=_tampered(tmp_path / "evil.pt", sentinel, "torch").read_bytes())
    spec = ClusterSpec(num_workers=2, storage_path=f"s3://{bucket}/runs", name="tampered", tracking_uri=tracking,
                       experiment="dist-tampered", max_failures=0, resume=True)
    with pytest.raises(RuntimeError, match="refused") as err:
        run_distributed_search(load_config(TINY, overrides), spec, consistency_every=1)
    assert "\n" not in str(err.value)
    assert not sentinel.exists()
    # the uninterrupted run's own checkpoint is untouched
    assert s3.get_object(Bucket=bucket, Key=key.replace("runs/tampered/", "runs/s3-run/", 1))["Body"].read() == original


# ---- more faults, each at a known step --------------------------------------------------------------------------

SHORT = ("epochs=2", "weight.batch_size=64", "arch.batch_size=64", "log_every=2")  # 38 steps, a checkpoint at the end


def _wait_for(probe, what: str, timeout: float = 300, driver: threading.Thread | None = None,
              proc: subprocess.Popen | None = None):
    """Poll ``probe`` until it returns something truthy; fail early if the driver already ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        if driver is not None and not driver.is_alive():
            raise AssertionError(f"the search ended before {what}")
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver exited with {proc.returncode} before {what}")
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    """Run a driver call in a thread of the test process (the test acts on the cluster meanwhile)."""
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 (re-raised by the test)
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _joined(thread: threading.Thread, box: dict, timeout: float = 400):
    thread.join(timeout)
    assert not thread.is_alive(), "the search did not finish"
    if "error" in box:
        raise box["error"]
    return box["result"]


def _s3_json(s3, bucket: str, key: str) -> dict | None:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def test_node_removed_mid_search_resumes_from_its_last_checkpoint(two_node_cluster, s3_search, s3_server, tmp_path,
                                                                 overrides):
    """A node with a worker on it is removed at step 30 of a search with checkpoints on S3; a new node joins; the
    search resumes from step 20, the last checkpoint, and ends on exactly the uninterrupted run's α."""
    import ray

    baseline = s3_search[0].search
    bucket = s3_server.new_bucket()
    s3 = s3_server.client()
    spec = ClusterSpec(num_workers=2, storage_path=f"s3://{bucket}/runs", name="node-loss", experiment="dist-node",
                       tracking_uri=f"sqlite:///{tmp_path}/m.db", max_failures=2)
    driver, box = _in_thread(lambda: run_distributed_search(load_config(TINY, overrides), spec,
                                                            faults=Faults(pause_at_steps=(30,))))
    paused = _wait_for(lambda: _s3_json(s3, bucket, "runs/node-loss/paused-30.json"), "the pause at step 30",
                       driver=driver)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    steps = [_s3_json(s3, bucket, k)["step"] for k in keys if k.endswith("alpha_fingerprints.json")]
    assert max(steps) == 20  # the last checkpoint written before the fault
    victim = next(iter(two_node_cluster.worker_nodes))
    gone = victim.node_id
    assert gone in paused["nodes"]  # a worker of this search runs on the node that goes
    two_node_cluster.remove_node(victim)
    try:
        # the node is really gone: none of its processes is alive, and Ray lists it dead
        assert not victim.any_processes_alive()
        _wait_for(lambda: any(n["NodeID"] == gone and not n["Alive"] for n in ray.nodes()),
                  "Ray to list the node dead", timeout=60)
    finally:
        new = two_node_cluster.add_node(num_cpus=1)  # the module's later tests get their two nodes back
        two_node_cluster.wait_for_nodes()
    res = _joined(driver, box)
    assert res.search["restored"] is True
    assert res.search["resumed_from_step"] == 20
    assert gone not in res.search["rank_nodes"] and new.node_id in res.search["rank_nodes"]
    assert res.search["alpha_fingerprint"] == baseline["alpha_fingerprint"]
    assert res.search["arch"] == baseline["arch"]


def test_diverged_rank_fails_the_run_loudly_and_is_not_retried(two_node_cluster, tmp_path):
    """Rank 1 moves its α once at step 10; the check at step 10 stops the run with one line naming rank 1. The
    divergence is injected once per run, so a retried worker group would have finished: it was not retried."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    spec = ClusterSpec(num_workers=2, storage_path=str(tmp_path / "runs"), name="diverged", tracking_uri=uri,
                       experiment="dist-diverged", max_failures=2)
    with pytest.raises(RanksDiverged) as err:
        run_distributed_search(load_config(TINY, SHORT), spec, consistency_every=5, faults=Faults(diverge_at_step=10))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("search 'diverged' failed: architecture parameters diverged across ranks at step 10: "
                          "rank(s) [1] differ from rank 0"), msg
    assert json.loads((tmp_path / "runs" / "diverged" / "divergence-injected.json").read_text()) == {"step": 10}
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dist-diverged").experiment_id])
    assert run.info.status == "FAILED" and "rank(s) [1]" in run.data.tags["nas.failure"]


def test_killed_driver_resumes_and_continues_its_mlflow_run(two_node_cluster, s3_search, tmp_path, digits_jpegs):
    """The driver process is SIGKILLed while its search stands at step 30; the same command resumes from the
    checkpoint at step 20, continues the same MLflow run, every curve point recorded once, and ends on exactly the
    uninterrupted run's α and architecture (``s3_search``: the same config, data and world size)."""
    from mlflow import MlflowClient

    storage, uri = tmp_path / "runs", f"sqlite:///{tmp_path}/m.db"
    cmd = [sys.executable, "-m", "tests.test_faults", "--name", "driver-kill", "--storage", str(storage),
           "--tracking-uri", uri, "--experiment", "dist-driver", "--pause", "30",
           *(f"--set={o}" for o in data_overrides(digits_jpegs))]
    env = {**os.environ, "RAY_ADDRESS": two_node_cluster.address}
    with open(tmp_path / "first.log", "wb") as out:
        first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(lambda: (storage / "driver-kill" / "paused-30.json").exists(), "the pause at step 30", proc=first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    run_id = json.loads((storage / "driver-kill" / "mlflow-run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # left open by the killed driver
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-4000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    assert out["resumed_from_step"] == 20 and out["run_id"] == run_id
    baseline = s3_search[0].search
    assert out["alpha_fingerprint"] == baseline["alpha_fingerprint"] and out["arch"] == baseline["arch"]
    (run,) = client.search_runs([client.get_experiment_by_name("dist-driver").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.tags["nas.driver_restarts"] == "1" and run.data.tags["nas.arch"] == out["arch"]
    # the first driver recorded steps 1..29, the second replayed 21..38 and recorded only what was missing
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == list(range(1, 39))


def test_tracking_server_outage_mid_search_is_buffered_and_flushed(two_node_cluster, mlflow_server, tmp_path):
    """The MLflow server is killed after step 6 and started again at step 26: the search never waits on it, and the
    points logged meanwhile reach it afterwards, with their own steps; the run records how many came late."""
    from mlflow import MlflowClient

    server = mlflow_server.control  # the session's server: killed and restarted on the same port and store
    spec = ClusterSpec(num_workers=2, storage_path=str(tmp_path / "runs"), name="outage", experiment="dist-outage",
                       tracking_uri=server.tracking_uri)
    run_dir = tmp_path / "runs" / "outage"
    driver, box = _in_thread(lambda: run_distributed_search(load_config(TINY, SHORT), spec,
                                                            faults=Faults(pause_at_steps=(6, 26))))
    try:
        _wait_for(lambda: (run_dir / "paused-6.json").exists(), "the pause at step 6", driver=driver)
        server.stop()
        (run_dir / "release-6").write_bytes(b"")
        _wait_for(lambda: (run_dir / "paused-26.json").exists(), "the pause at step 26", driver=driver)
    finally:
        back = time.time()
        if not server.running:
            server.start()
        (run_dir / "release-26").write_bytes(b"")
    res = _joined(driver, box)
    client = MlflowClient(tracking_uri=server.tracking_uri)
    run = client.get_run(res.run_id)
    history = client.get_metric_history(res.run_id, "loss")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in history) == list(range(2, 39, 2))  # every point once, the outage's included
    assert tracking.logged_steps(server.tracking_uri, res.run_id, "loss") == set(range(2, 39, 2))  # over HTTP
    late = [m for m in history if 6 <= m.step < 26]
    assert len(late) == 10 and all(m.timestamp < back * 1000 for m in late)  # logged in the outage, sent later
    tracked = res.search["tracking"]
    assert tracked["unsent"] == [] and tracked["dropped_metrics"] == 0
    assert run.data.metrics["tracking_deferred_points"] >= 10
    assert tracked["seconds"] < 10  # rank 0 never stood waiting for the absent server

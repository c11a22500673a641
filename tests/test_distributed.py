"""Data-parallel search on Ray Train over a real two-node cluster (``ray.cluster_utils.Cluster``), checkpoints on a
real S3-compatible server, a killed worker, and the checks that run before any worker starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.distributed import RunSpec, check_existing_run, run_distributed_search
from orchestrator.search import load_config
from tests.conftest import ROOT, assert_one_line_error, run_nas

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TINY = ROOT / "configs" / "tiny.yaml"
OVERRIDES = ("checkpoint_every=40", "log_every=5")


@pytest.fixture(scope="module")
def two_node_cluster(s3_server):
    """Head and one more node, one CPU each, so that the two Train workers land on different nodes."""
    import ray
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in s3_server.env()}
    os.environ.update(s3_server.env())  # raylets and workers inherit it, to reach the S3 server
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def s3_search(two_node_cluster, s3_server, tmp_path_factory):
    """One uninterrupted 2-worker search with checkpoints in a bucket of the S3 server."""
    bucket = s3_server.new_bucket()
    tracking = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    cfg = load_config(TINY, OVERRIDES)
    spec = RunSpec(num_workers=2, cpus_per_worker=1.0, storage_path=f"s3://{bucket}/runs", name="s3-run",
                   tracking_uri=tracking, experiment="dist-test", consistency_every=5)
    return run_distributed_search(cfg, spec), bucket, tracking


def test_two_workers_keep_alpha_identical_and_checkpoint_to_s3(s3_search, s3_server):
    res, bucket, tracking = s3_search
    search = res.search
    # every consistency check and every checkpoint saw the same α fingerprint on both ranks
    checks = search["consistency_checks"]
    assert len(checks) >= 30
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


def test_killed_worker_is_replaced_and_search_resumes(s3_search, tmp_path):
    baseline = s3_search[0].search
    cfg = load_config(TINY, OVERRIDES)
    spec = RunSpec(num_workers=2, storage_path=str(tmp_path / "runs"), name="killed", tracking_uri=f"sqlite:///{tmp_path}/m.db",
                   experiment="dist-kill", inject_failure_at_step=60, max_failures=2)
    res = run_distributed_search(cfg, spec)
    assert res.search["restored"] is True  # the final worker group started from a checkpoint
    assert res.search["resumed_from_step"] == 40  # the last checkpoint before the kill at step 60
    # the fault fired exactly once: its marker in the run's storage names the first kill
    marker = json.loads((tmp_path / "runs" / "killed" / "fault-injected.json").read_text())
    assert marker == {"rank": 1, "step": 60}
    # resuming replays exactly: the same α bits and architecture as the uninterrupted search
    assert res.search["alpha_fingerprint"] == baseline["alpha_fingerprint"]
    assert res.search["arch"] == baseline["arch"]


def test_too_few_resources_is_refused_before_training(two_node_cluster, tmp_path):
    cfg = load_config(TINY)
    spec = RunSpec(num_workers=4, storage_path=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    with pytest.raises(ValueError, match=r"cluster has 2 CPU in all, but 4 workers x 1 CPU need 4"):
        run_distributed_search(cfg, spec)


def test_checkpoint_of_another_space_is_refused(tmp_path):
    check_existing_run(str(tmp_path), "run", load_config(TINY))
    check_existing_run(str(tmp_path), "run", load_config(TINY))  # the same search resumes
    other = load_config(ROOT / "configs" / "demo.yaml")
    with pytest.raises(ValueError, match="holds a checkpoint of space 'tiny'"):
        check_existing_run(str(tmp_path), "run", other)
    assert json.loads((Path(tmp_path) / "run" / "search-meta.json").read_text())["space"] == "tiny"


def test_unreachable_storage_or_tracking_fail_before_training(s3_server, tmp_path):
    env = s3_server.env()
    proc = run_nas("search", "--config", str(TINY), "--workers", "2", "--storage", "s3://no-such-bucket-here/runs",
                   "--tracking-uri", f"sqlite:///{tmp_path}/m.db", env=env)
    assert_one_line_error(proc, "storage path s3://no-such-bucket-here/runs is not writable")
    proc = run_nas("search", "--config", str(TINY), "--workers", "2", "--storage", str(tmp_path / "runs"),
                   "--tracking-uri", "http://127.0.0.1:9", env=env)
    assert_one_line_error(proc, "MLflow tracking server http://127.0.0.1:9 is unreachable")
    assert not (tmp_path / "runs").exists()


def test_resume_from_a_tampered_checkpoint_in_storage_is_refused(s3_search, s3_server, tmp_path):
    """Ray Train hands the workers the run's latest checkpoint; a payload planted there never runs."""
    from tests.test_safe_loading import _tampered

    res, bucket, tracking = s3_search
    key = res.checkpoint_path.split(f"{bucket}/", 1)[1] + "/search_state.pt"
    sentinel = tmp_path / "sentinel"
    s3_server.client().put_object(Bucket=bucket, Key=key,
                                  Body=_tampered(tmp_path / "evil.pt", sentinel, "torch").read_bytes())
    spec = RunSpec(num_workers=2, storage_path=f"s3://{bucket}/runs", name="s3-run", tracking_uri=tracking,
                   experiment="dist-test", consistency_every=5, max_failures=0)
    with pytest.raises(RuntimeError, match="refused") as err:
        run_distributed_search(load_config(TINY, OVERRIDES), spec)
    assert "\n" not in str(err.value)
    assert not sentinel.exists()

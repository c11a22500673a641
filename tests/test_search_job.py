"""`ray job submit` of workloads/search.py to a cluster started with `ray start` (a head and one more node), as the
README says; the search is then found in a real MLflow server whose artifacts live on an S3-compatible server."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_submitted_search_is_found_in_mlflow(ray_cli_cluster, mlflow_server, s3_server):
    from mlflow import MlflowClient

    bucket = s3_server.new_bucket()
    runtime_env = {"env_vars": {**s3_server.env(), "MLFLOW_TRACKING_URI": mlflow_server.tracking_uri}}
    proc = ray_cli_cluster.run(
        "job", "submit", "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env), "--",
        "python", "workloads/search.py", "--config", "configs/tiny.yaml", "--set", "epochs=2",
        "--workers", "2", "--cpus-per-worker", "1", "--storage", f"s3://{bucket}/runs", "--name", "job-run",
        "--experiment", "job-test", timeout=480,
    )
    assert "succeeded" in proc.stdout.lower() or "SUCCEEDED" in proc.stdout, proc.stdout[-3000:]
    # the driver's summary line; Ray's forwarded worker output (a progress bar's last redraw has no newline) may
    # precede it on the same line of the job's log
    arch_lines = re.findall(r"(?:^|\])arch: (\S+)$", proc.stdout, flags=re.M)
    assert arch_lines, proc.stdout[-3000:]
    arch = arch_lines[-1]

    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    exp = client.get_experiment_by_name("job-test")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["nas.arch"] == arch
    assert client.get_metric_history(run.info.run_id, "loss")
    arch_txt = client.download_artifacts(run.info.run_id, "arch.txt")
    assert open(arch_txt).read().strip() == arch
    # the checkpoints went to S3, and MLflow's artifacts to the server's own bucket
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.endswith("search_state.pt") for k in keys)

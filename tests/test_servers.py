"""The shared server fixtures work: a two-node cluster started with the `ray` CLI, with token auth, and an MLflow
server that stores artifacts in S3 (moto). `ray job submit` against them is tested in test_search_job.py."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest

from tests.servers import _alive_nodes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_cluster_has_two_nodes_and_isolated_auth(ray_cli_cluster):
    nodes = _alive_nodes(ray_cli_cluster.dashboard_url, ray_cli_cluster.env)
    assert len(nodes) == 2
    assert any("worker_node" in (n.get("resources_total") or {}) for n in nodes)
    assert ray_cli_cluster.env["RAY_AUTH_MODE"] == "token" and ray_cli_cluster.env["RAY_AUTH_TOKEN"]
    # Without the token the Jobs API refuses: token auth really is on.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{ray_cli_cluster.dashboard_url}/api/jobs/", timeout=5)
    assert e.value.code in (401, 403)


def test_mlflow_server_stores_artifacts_in_s3(mlflow_server, s3_server, tmp_path, monkeypatch):
    import mlflow

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)  # clients need no S3 credentials: the server proxies artifacts
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    exp_id = client.create_experiment(f"servers-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp_id)
    f = tmp_path / "metrics.json"
    f.write_text('{"acc": 0.5}')
    client.log_artifact(run.info.run_id, str(f), artifact_path="out")
    client.log_metric(run.info.run_id, "acc", 0.5)
    client.set_terminated(run.info.run_id)

    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied, not a direct s3:// URI
    body = s3_server.client().get_object(
        Bucket=mlflow_server.s3_bucket,
        Key=f"{mlflow_server.s3_prefix}/{exp_id}/{run.info.run_id}/artifacts/out/metrics.json")["Body"].read()
    assert json.loads(body) == {"acc": 0.5}
    got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="out/metrics.json",
                                              tracking_uri=mlflow_server.tracking_uri, dst_path=str(tmp_path / "dl"))
    assert json.loads(open(got).read()) == {"acc": 0.5}


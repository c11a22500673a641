"""The shared server fixtures work as the operator guide says: a two-node cluster started with the `ray` CLI takes
`ray job submit --working-dir`, and an MLflow server stores artifacts in S3 (moto), also when a Ray task on the
second node logs them."""

from __future__ import annotations

import json
import textwrap
import uuid

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

JOB_SCRIPT = textwrap.dedent('''
    import json, os
    import ray

    ray.init()  # inside a job: connects to the cluster that runs it
    alive = [n for n in ray.nodes() if n["Alive"]]

    @ray.remote(num_cpus=0, resources={"worker_node": 1})
    def on_worker_node(tag):
        out = {"node_id": ray.get_runtime_context().get_node_id(), "cwd_has_script": os.path.exists("script.py")}
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri:  # log a run with an artifact from the second node, as Train rank 0 will
            import mlflow
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment("servers-smoke")
            with mlflow.start_run(run_name=tag) as run:
                mlflow.log_param("tag", tag)
                mlflow.log_text("hello from the worker node", "notes/hello.txt")
                out["run_id"] = run.info.run_id
        return out

    res = ray.get(on_worker_node.remote(os.environ["SMOKE_TAG"]))
    head = ray.get_runtime_context().get_node_id()
    print("RESULT " + json.dumps({"nodes": len(alive), "driver_node": head, **res}))
''')


def _result_line(output: str) -> dict:
    lines = [ln for ln in output.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no RESULT line in job output:\n{output[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_cluster_has_two_nodes_and_isolated_auth(ray_cli_cluster):
    from tests.servers import _alive_nodes

    nodes = _alive_nodes(ray_cli_cluster.dashboard_url, ray_cli_cluster.env)
    assert len(nodes) == 2
    assert any("worker_node" in (n.get("resources_total") or {}) for n in nodes)
    assert ray_cli_cluster.env["RAY_AUTH_MODE"] == "token" and ray_cli_cluster.env["RAY_AUTH_TOKEN"]
    # Without the token the Jobs API refuses: token auth really is on.
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{ray_cli_cluster.dashboard_url}/api/jobs/", timeout=5)
    assert e.value.code in (401, 403)


def test_job_submit_with_working_dir_reaches_both_nodes_and_mlflow(ray_cli_cluster, mlflow_server, s3_server,
                                                                   tmp_path):
    (tmp_path / "script.py").write_text(JOB_SCRIPT)
    tag = f"smoke-{uuid.uuid4().hex[:8]}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": mlflow_server.tracking_uri, "SMOKE_TAG": tag}}
    # Exactly the guide's local command: RAY_API_SERVER_ADDRESS names the dashboard; the entrypoint follows `--`.
    cp = ray_cli_cluster.run("job", "submit", "--working-dir", str(tmp_path),
                             "--runtime-env-json", json.dumps(runtime_env), "--", "python", "script.py",
                             extra_env={"RAY_API_SERVER_ADDRESS": ray_cli_cluster.dashboard_url}, timeout=180)
    out = cp.stdout + cp.stderr
    assert "succeeded" in out.lower(), out[-4000:]
    res = _result_line(out)
    assert res["nodes"] == 2
    assert res["cwd_has_script"] is True  # the working dir reached the second node too
    assert res["node_id"] != res["driver_node"]  # the task ran on the worker node, the driver on the head

    # The run exists on the server and its artifact is in the S3 bucket, under the server's prefix.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    run = client.get_run(res["run_id"])
    assert run.data.params["tag"] == tag
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(
        Bucket=mlflow_server.s3_bucket, Prefix=mlflow_server.s3_prefix).get("Contents", [])]
    assert any(k.endswith(f"{res['run_id']}/artifacts/notes/hello.txt") for k in keys), keys


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


def test_mlflow_server_local_keeps_artifacts_on_disk(mlflow_server_local, tmp_path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server_local.tracking_uri)
    run = client.create_run(client.create_experiment(f"local-{uuid.uuid4().hex[:8]}"))
    f = tmp_path / "note.txt"
    f.write_text("local")
    client.log_artifact(run.info.run_id, str(f))
    assert mlflow_server_local.s3_bucket is None
    root = mlflow_server_local.artifacts_destination.removeprefix("file://")
    hits = list(__import__("pathlib").Path(root).rglob("note.txt"))
    assert len(hits) == 1 and hits[0].read_text() == "local"

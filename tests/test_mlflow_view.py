"""What a user opens in MLflow (issue 24): links to the model-training view, the experiment kind, comparable values
on retrain runs, fronts as tables, and the retrained nets as registered MLflow models loaded by their URI.

A real ``mlflow server`` on loopback; the retrain's own recording (``RetrainJob.finish``) on trained-looking
weights, without Ray (the sweep test in ``test_sweep.py`` covers the same records from a real sweep)."""

from __future__ import annotations

import json
import os
import random
import re
import urllib.request
from pathlib import Path

import pytest
import torch

from orchestrator import mlflow_links, registry, tracking
from orchestrator.network import build_net
from orchestrator.retrain.config import retrain_config_from_dict
from orchestrator.retrain.jobs import RetrainJob
from orchestrator.runs import RunInfo
from orchestrator.spaces import get_space
from orchestrator.state_io import load_state, state_bytes
from orchestrator.sweep.report import compare_fronts
from tests.conftest import run_nas

UI_BUILD = Path(__import__("mlflow").__file__).parent / "server" / "js" / "build"


def test_the_installed_mlflow_ui_knows_the_switch_and_the_kind():
    """The parameter and the tag value the links rely on are the installed MLflow UI's own."""
    text = "".join(p.read_text(errors="ignore") for p in (UI_BUILD / "static" / "js").glob("*.js"))
    assert 'get("workflowType")' in text and 'MACHINE_LEARNING="machine_learning"' in text
    assert f'"{mlflow_links.MODEL_DEVELOPMENT}"' in text and mlflow_links.EXPERIMENT_KIND_TAG == "mlflow.experimentKind"


def test_links_open_the_model_training_view(mlflow_server_local, tmp_path):
    uri = mlflow_server_local.tracking_uri
    exp_id = tracking.experiment_id(uri, "links-test")
    assert tracking.client(uri).get_experiment(exp_id).tags[mlflow_links.EXPERIMENT_KIND_TAG] == \
        "custom_model_development"
    run_id = tracking.create_run(uri, "links-test", "r")
    line = mlflow_links.where_to_look(uri, run_id=run_id)
    url = line.split()[-1]
    assert url == f"{uri}/#/experiments/{exp_id}?workflowType=machine_learning"
    with urllib.request.urlopen(url.split("#")[0], timeout=10) as r:  # the server serves the UI the link opens
        assert r.status == 200
    mlflow_links.describe_run(uri, run_id, "a sweep")
    note = tracking.client(uri).get_run(run_id).data.tags["mlflow.note.content"]
    assert f"#/experiments/{exp_id}?workflowType=machine_learning" in note
    # a SQLite store: how to open it, and the URL `mlflow ui` will serve
    db = f"sqlite:///{tmp_path / 'm.db'}"
    sid = tracking.create_run(db, "local", "r")
    local = mlflow_links.where_to_look(db, run_id=sid)
    assert f"mlflow ui --backend-store-uri {db}" in local
    assert re.search(r"http://127\.0\.0\.1:5000/#/experiments/\d+\?workflowType=machine_learning$", local)


def _retrain_run(uri: str, experiment: str, arch: str, seed: int, latency: float) -> tuple[str, dict]:
    """A retrain run recorded by ``RetrainJob.finish`` (the code every retrain runs), with weights of its own."""
    cfg = retrain_config_from_dict({"epochs": 1})
    job = RetrainJob(arch, cfg, extra_metrics={"measured_latency": latency, "predicted_latency": latency})
    torch.manual_seed(seed)
    net = build_net(arch)
    with torch.no_grad():  # BN statistics away from their initial values, so that loading them matters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
    run_id = tracking.create_run(uri, experiment, f"retrain-{seed}", tags={
        "nas.kind": "retrain", "nas.arch": arch, "nas.hardware": "flops", "nas.latency_unit": "MMAC",
        "nas.target": f"{latency:g}", "nas.search_run_id": f"search-{seed}", "nas.point": "search"})
    out = {"state_bytes": state_bytes(weights), "history": [{"val_accuracy": 0.5 + 0.1 * seed, "val_images": 100}],
           "device": "cpu", "seconds": {"train": 1.0}, "resumed_from_step": 0, "steps_per_epoch": 1}
    job.finish(out, RunInfo(run_id, uri, f"retrain-{seed}", None, None, 1.0, 1.0, {}))
    tracking.end_run(uri, run_id)
    mlflow_links.log_comparable(uri, run_id, hardware="flops", unit="MMAC", latency_source="measured",
                                measured=latency, predicted=latency, top1=0.5 + 0.1 * seed, budget=latency)
    return run_id, weights


@pytest.mark.timeout(600)
def test_front_nets_are_registered_and_load_by_uri(mlflow_server_local, tmp_path, monkeypatch):
    import mlflow.pytorch

    uri, name = mlflow_server_local.tracking_uri, "registry-test"
    space = get_space("tiny")
    rng = random.Random(3)
    archs = [space.random_arch(rng).encode() for _ in range(2)]
    # two non-dominated nets (faster but less accurate, slower and more accurate)
    (r0, w0), (r1, _) = _retrain_run(uri, name, archs[0], 0, 1.0), _retrain_run(uri, name, archs[1], 1, 2.0)
    c = tracking.client(uri)
    for rid in (r0, r1):  # each retrain run carries the comparable values under the same names
        run = c.get_run(rid)
        assert {"latency", "top1", "budget", "measured_latency", "predicted_latency"} <= set(run.data.metrics)
        assert run.data.params["hardware"] == "flops" and run.data.params["latency_source"] == "measured"
        assert {"model", "net.onnx"} <= {a.path for a in c.list_artifacts(rid)}
    rep = compare_fronts(uri, [name], tmp_path / "p")
    uris = registry.register_front(uri, name, rep.summary)["flops"]
    assert len(uris) == 2 and registry.register_front(uri, name, rep.summary)["flops"] == uris  # not twice
    versions = c.search_model_versions(f"name = '{name}-flops'")
    by_run = {v.run_id: v for v in versions}
    assert set(by_run) == {r0, r1}
    tags = by_run[r0].tags
    assert tags["nas.arch"] == archs[0] and tags["nas.hardware"] == "flops" and tags["nas.latency_unit"] == "MMAC"
    assert float(tags["nas.latency"]) == 1.0 and float(tags["nas.top1"]) == pytest.approx(0.5)
    assert tags["nas.budget"] == "1" and tags["nas.search_run_id"] == "search-0"
    # the fronts as MLflow tables on the run
    mlflow_links.log_front_tables(uri, r1, rep.summary, name)
    table = json.loads(Path(c.download_artifacts(r1, "pareto/front-flops.json", str(tmp_path))).read_text())
    assert "latency" in table["columns"] and len(table["data"]) == 2

    # load by its models:/ URI, as the README shows; nothing unpickled (MLflow refuses pickle unless allowed)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    v0 = by_run[r0].version
    model = mlflow.pytorch.load_model(f"models:/{name}-flops/{v0}")
    own = build_net(archs[0]).eval()
    own.load_state_dict(load_state(state_bytes(w0), "weights"))
    x = torch.randn(5, 3, space.resolution, space.resolution)
    with torch.no_grad():
        got, want = model(x), own(x)
    assert got.shape == (5, space.num_classes)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # nas pareto names them
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = run_nas("pareto", "--experiment", name, "--out", str(tmp_path / "q"), "--tracking-uri", uri, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"models:/{name}-flops/{v0}" in proc.stdout and f"registered model {name}-flops" in proc.stdout

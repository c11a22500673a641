"""One-process runs, as most small teams start on one GPU machine: recorded in MLflow like Ray runs (when a tracking
URI is given or ``MLFLOW_TRACKING_URI`` is set), resumable bit for bit, and strict about flags that would do nothing.
Everything runs through the installed ``nas`` command against a real ``mlflow server`` on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, assert_one_line_error, run_nas
from tests.servers import mlflow_server_local  # noqa: F401  (the fixture)

TINY = ROOT / "configs" / "tiny.yaml"
RETRAIN = ROOT / "configs" / "retrain-digits.yaml"
ARCH = "tiny:k3e3.zero/k5e6.k7e3"
SEARCH_ARTIFACTS = {"arch.txt", "alpha.csv", "net.config", "result.json", "latency_model.json"}
RETRAIN_ARTIFACTS = {"arch.txt", "net.config", "net.onnx", "retrain.json"}


@pytest.mark.slow
def test_one_process_search_and_retrain_are_recorded_in_mlflow(mlflow_server_local, tmp_path):  # noqa: F811
    from mlflow import MlflowClient

    uri = mlflow_server_local.tracking_uri
    out = tmp_path / "search"
    proc = run_nas("search", "--config", str(TINY), "--set", "epochs=3", "--out", str(out), "--quiet",
                   "--device", "cpu", "--tracking-uri", uri, "--experiment", "one-process", "--name", "s1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "s1"
    assert run.data.params["search.space"] == "tiny" and run.data.params["run.mode"] == "one process"
    assert run.data.tags["nas.kind"] == "search" and run.data.tags["nas.arch"] == result["arch"]
    m = run.data.metrics
    assert m["val_images"] == result["val_images"] > 0 and m["val_accuracy"] == result["valid_accuracy"]
    assert m["exact_latency"] == result["exact_latency"] and m["worker_seconds"] > 0
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= SEARCH_ARTIFACTS
    curve = client.get_metric_history(run.info.run_id, "loss")
    assert [p.step for p in curve] == result["curves"]["step"]  # every curve point, once

    rout = tmp_path / "retrain"
    proc = run_nas("retrain", "--arch", result["arch"], "--config", str(RETRAIN), "--set", "epochs=2",
                   "--out", str(rout), "--quiet", "--device", "cpu", "--tracking-uri", uri,
                   "--experiment", "one-process", "--search-run-id", run.info.run_id)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((rout / "retrain.json").read_text())
    rrun = client.get_run(record["run_id"])
    assert rrun.info.status == "FINISHED" and rrun.data.tags["mlflow.parentRunId"] == run.info.run_id
    assert rrun.data.tags["nas.search_run_id"] == run.info.run_id and rrun.data.params["retrain.epochs"] == "2"
    assert rrun.data.metrics["val_accuracy"] == record["val_accuracy"]
    assert rrun.data.metrics["val_images"] == record["val_images"] > 0
    assert [p.step for p in client.get_metric_history(rrun.info.run_id, "train_loss")] == [1, 2]
    assert {a.path for a in client.list_artifacts(rrun.info.run_id)} >= RETRAIN_ARTIFACTS
    assert record["resumed_from_step"] == 0


def test_unrecorded_one_process_run_refuses_flags_that_would_do_nothing(tmp_path):
    env = {"MLFLOW_TRACKING_URI": ""}
    for args, needle in [(("--name", "x"), "--name names the run's MLflow record"),
                         (("--gpu",), "--gpu (in one process: --device cuda) does not apply"),
                         (("--storage", "s3://b/p"), "--storage (in one process: --out) does not apply"),
                         (("--workers", "2", "--device", "cpu"), "--device (on Ray: --gpu) does not apply"),
                         (("--resume", "--overwrite"), "--resume and --overwrite exclude each other")]:
        out = tmp_path / "out"
        proc = run_nas("search", "--config", str(TINY), "--out", str(out), *args, env=env)
        assert_one_line_error(proc, needle)
        assert not out.exists()


def _retrain_cmd(out: Path, *extra: str) -> list[str]:
    return [str(Path(sys.executable).parent / "nas"), "retrain", "--arch", ARCH, "--config", str(RETRAIN),
            "--set", "epochs=4", "--out", str(out), "--quiet", "--device", "cpu", *extra]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "net.pt", weights_only=True)


@pytest.mark.slow
def test_one_process_retrain_killed_resumes_bit_identical(tmp_path):
    """SIGKILL mid-run, once its first epoch's checkpoint is written; the same command with --resume continues from it
    and ends with the same weights and the same per-epoch figures as an uninterrupted run."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert subprocess.run(_retrain_cmd(whole), env=env, capture_output=True, timeout=600).returncode == 0
    proc = subprocess.Popen(_retrain_cmd(cut, "--resume"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (cut / "retrain_state.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "net.pt").exists() and (cut / "retrain_state.pt").exists()
    again = subprocess.run(_retrain_cmd(cut, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    first, second = (json.loads((d / "retrain.json").read_text()) for d in (whole, cut))
    spe, resumed = second["steps_per_epoch"], second["resumed_from_step"]
    assert first["resumed_from_step"] == 0 and 0 < resumed < 4 * spe and resumed % spe == 0  # an epoch's checkpoint
    a, b = _weights(whole), _weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first["history"] == second["history"]  # every epoch's loss, top-1 and learning rate
    assert first["val_accuracy"] == second["val_accuracy"] and first["val_images"] == second["val_images"]
    assert not (cut / "retrain_state.pt").exists()  # removed once net.pt holds the weights

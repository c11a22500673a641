"""Sweeps end to end on the tiny space against a real MLflow server (SQLite backend, artifacts on moto S3): a driver
killed mid-sweep (its storage on moto S3), pickle payloads planted in that storage, then resumed without repeating
finished trials and without running the payloads; runs, nesting, lineage tags, artifacts and Pareto plots;
``nas pareto`` reading them back; and the refusals that come before any compute."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml  # noqa: TID253
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from orchestrator.latency.kit import write_kit
from orchestrator.mlflow_links import experiment_url, run_url
from orchestrator.registry import registered_name
from orchestrator.spaces import TINY as TINY_SPACE
from orchestrator.sweep import load_sweep
from orchestrator.sweep.config import TrialPoint, draw_points, front_budgets, hardware_info
from orchestrator.sweep.runner import SweepInterrupted, _check_finished, _recorded_points, check_all_ran
from tests.conftest import ROOT, assert_one_line_error, run_nas
from tests.servers import _pids_mentioning, _stop_group
from tests.test_safe_loading import Payload

TINY = ROOT / "configs" / "tiny.yaml"
TARGETS = [0.08, 0.14]
FRONT = [0.07]  # an extra budget: each trial also derives and retrains its best net under it


def write_sweep(path: Path, name: str, storage: Path, tracking: str, grid=None, **extra) -> Path:
    cfg = {"name": name, "search": str(TINY), "overrides": ["epochs=3", "warmup_epochs=1", "log_every=10"],
           "grid": [{"hardware": "flops", "targets": TARGETS, "front": FRONT}] if grid is None else grid,
           "workers_per_trial": 1, "cpus_per_worker": 0.5, "max_concurrent_trials": 1, "storage": str(storage),
           "tracking_uri": tracking, "retrain": {"epochs": 2, "lr": 0.05, "batch_size": 32}, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---- refusals before any compute ----------------------------------------------------------------------------------

def test_empty_grid_is_one_line_error(tmp_path):
    cfg = write_sweep(tmp_path / "s.yaml", "empty", tmp_path / "runs", f"sqlite:///{tmp_path}/m.db", grid=[])
    assert_one_line_error(run_nas("sweep", "--config", str(cfg)), "grid: empty")


def test_unreachable_target_is_refused_before_compute(tmp_path):
    grid = [{"hardware": "flops", "targets": [0.01, 0.1]}]
    cfg = write_sweep(tmp_path / "s.yaml", "unreachable", tmp_path / "runs", f"sqlite:///{tmp_path}/m.db", grid=grid)
    t0 = time.time()
    proc = run_nas("sweep", "--config", str(cfg))
    assert_one_line_error(proc, "target 0.01 MMAC", "'flops'", "below the fastest network", "tiny")
    assert time.time() - t0 < 60
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()  # nothing started, nothing written


@pytest.mark.slow
def test_pareto_of_unknown_experiment_is_one_line_error(mlflow_server, tmp_path):
    proc = run_nas("pareto", "--experiment", "no-such-sweep", "--out", str(tmp_path / "p"),
                   "--tracking-uri", mlflow_server.tracking_uri)
    assert_one_line_error(proc, "unknown MLflow experiment 'no-such-sweep'")
    assert not (tmp_path / "p").exists()
    missing = run_nas("pareto", "--experiment", "x", "--out", str(tmp_path / "p"),
                      "--tracking-uri", f"sqlite:///{tmp_path}/none.db")
    assert_one_line_error(missing, "no MLflow store at")
    assert not (tmp_path / "none.db").exists()


def test_sweep_config_is_typed(tmp_path):
    cfg = write_sweep(tmp_path / "s.yaml", "typed", tmp_path / "runs", "sqlite:///x.db",
                      grid=[{"hardware": "flops", "targets": {"uniform": [0.07, 0.2], "samples": 2}}])
    s = load_sweep(cfg)
    assert s.grid[0].distribution == "uniform" and s.grid[0].samples == 2 and s.max_concurrent_trials == 1
    with pytest.raises(ValueError, match="workers_per_trial: expected int"):
        load_sweep(cfg, ["workers_per_trial=two"])
    with pytest.raises(ValueError, match=r"retrain.epochs: must be at least 1"):
        load_sweep(cfg, ["retrain.epochs=0"])


def test_front_relative_budgets_are_placed_in_the_reachable_range(tmp_path):
    """``front_relative`` positions become budgets in the hardware's unit, as ``relative`` targets do; giving both
    ``front`` and ``front_relative``, or a position outside (0, 1], is refused on load."""
    grid = [{"hardware": "flops", "relative": [0.5], "front_relative": [0.2, 0.8]}]
    sweep = load_sweep(write_sweep(tmp_path / "s.yaml", "fr", tmp_path / "runs", "sqlite:///x.db", grid=grid))
    info = hardware_info(sweep)["flops"]
    lo, hi = info.bounds
    budgets = front_budgets(sweep.grid[0], info)
    assert budgets == (round(lo + 0.2 * (hi - lo), 6), round(lo + 0.8 * (hi - lo), 6)) and lo < budgets[0] < hi
    for bad, says in (({"front": [0.1]}, "give front or front_relative, not both"),
                      ({"front_relative": [1.5]}, r"front_relative: positions must be distinct and in \(0, 1\]")):
        with pytest.raises(ValueError, match=says):
            load_sweep(write_sweep(tmp_path / "b.yaml", "fr", tmp_path / "runs", "sqlite:///x.db",
                                   grid=[{**grid[0], **bad}]))


@pytest.mark.slow
def test_resume_refuses_a_record_of_another_config_or_with_other_points(tmp_path):
    """The sweep's JSON record is checked before anything runs: a sweep started with another config, or a record
    whose points are not its grid's, is refused in one line; nothing else is written to its storage."""
    cfg = write_sweep(tmp_path / "s.yaml", "rec", tmp_path / "runs", f"sqlite:///{tmp_path}/m.db")
    stored = json.loads(json.dumps(load_sweep(cfg).to_dict()))
    record = tmp_path / "runs" / "rec" / "sweep-meta.json"
    record.parent.mkdir(parents=True)
    for config, points, says in (
            ({**stored, "max_concurrent_trials": 2}, [], "was started with another config"),
            (stored, [{"hardware": "flops", "target": 0.5, "seed": 1}], "holds other points than its grid")):
        record.write_text(json.dumps({"config": config, "parent_run_id": "0" * 32, "warmups": {},
                                      "points": points, "finished": {}}))
        assert_one_line_error(run_nas("sweep", "--config", str(cfg), "--num-cpus", "1"), "sweep 'rec'", says,
                              "refusing to resume it")
    assert sorted(p.name for p in (tmp_path / "runs" / "rec").iterdir()) == ["sweep-meta.json"]


def test_a_sampled_grid_is_drawn_once_and_its_record_checked_on_resume(tmp_path):
    """A sampled grid's targets are drawn by the driver (distinct, in range, per hardware and seed) and recorded, so
    a resume runs the same points; a recorded point outside the grid, or a finished point that is not one of the
    points or lacks its report's values, is refused."""
    grid = [{"hardware": "flops", "targets": {"loguniform": [0.07, 0.2], "samples": 3}}]
    sweep = load_sweep(write_sweep(tmp_path / "s.yaml", "drawn", tmp_path / "runs", "sqlite:///x.db", grid=grid,
                                   seeds=[1, 2]))
    points = draw_points(sweep, [1, 2], random.Random(0))
    assert len(points) == 6 and len({p.key for p in points}) == 6 and {p.seed for p in points} == {1, 2}
    assert all(0.07 <= p.target <= 0.2 for p in points)
    meta = {"config": sweep.to_dict(), "parent_run_id": "0" * 32, "points": [dataclasses.asdict(p) for p in points]}
    assert _recorded_points(sweep, json.loads(json.dumps(meta)), [], [1, 2]) == points
    report = {"hardware": "flops", "unit": "MMAC", "arch": "tiny:x", "target": points[0].target,
              "measured_latency": 0.1, "search_worker_seconds": 9.0, "measure_seconds": 0.5, "val_accuracy": None}
    _check_finished(sweep, {"finished": {points[0].key: report}}, points)
    for bad in ({"nope": report}, {points[0].key: {**report, "measured_latency": "0.1"}}):
        with pytest.raises(ValueError, match="holds a finished point that is not one of its points or has no report"):
            _check_finished(sweep, {"finished": bad}, points)
    meta["points"][0]["target"] = 0.5
    with pytest.raises(ValueError, match="holds a point outside the grid: flops-t0.5-s"):
        _recorded_points(sweep, meta, [], [1, 2])
    narrow = sweep.replace(grid=(dataclasses.replace(sweep.grid[0], low=0.1, high=0.100001, samples=5),))
    with pytest.raises(ValueError, match=r"too narrow for 5 distinct targets"):
        draw_points(narrow, [1], random.Random(0))


# ---- the whole pipeline, interrupted and resumed --------------------------------------------------------------

def _runs(client, exp_id: str, kind: str):
    return client.search_runs([exp_id], filter_string=f"tags.`nas.kind` = '{kind}'")


def _start(cfg: Path, env: dict, log: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "nas"
    with open(log, "wb") as out:
        return subprocess.Popen([str(exe), "sweep", "--config", str(cfg)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


# What an attacker with write access to the sweep's storage would plant for a driver that restores Tune's state:
# the Tuner, the experiment state (JSON whose cloudpickle blobs Tune expands on restore) and any other pickle.
TUNE_STATE = "tune/experiment_state-2026-01-01_00-00-00.json"
PLANTED = ("tune/tuner.pkl", "tune/trainable.pkl", "tune/experiment_state-2026-01-01_00-00-00.pkl", TUNE_STATE)


def plant_payloads(s3, bucket: str, prefix: str, sentinel: Path) -> list[str]:
    """Overwrite every ``*.pkl`` and ``experiment_state*`` object under ``prefix`` and plant Tune's own state files
    (``PLANTED``), each carrying a payload that writes ``sentinel`` when unpickled. Returns the keys written."""
    blob = pickle.dumps(Payload(sentinel))
    state = json.dumps({"runner_data": {"_type": "CLOUDPICKLE_FALLBACK", "value": blob.hex()},
                        "trial_data": [[{"_type": "CLOUDPICKLE_FALLBACK", "value": blob.hex()}, "{}"]]}).encode()
    found = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", [])]
    keys = sorted({k for k in found if k.endswith(".pkl") or "experiment_state" in k}
                  | {f"{prefix}/{rel}" for rel in PLANTED})
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=state if k.endswith(".json") else blob)
    return keys


def unpickle_planted(s3, bucket: str, key: str) -> None:
    """What a restore of Tune's state does with a planted object: ``pickle.loads`` it, or the blobs of its JSON."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    if not key.endswith(".json"):
        pickle.loads(body)
        return
    def expand(obj):
        if isinstance(obj, dict):
            if obj.get("_type") == "CLOUDPICKLE_FALLBACK":
                return pickle.loads(bytes.fromhex(obj["value"]))
            return {k: expand(v) for k, v in obj.items()}
        return [expand(v) for v in obj] if isinstance(obj, list) else obj
    expand(json.loads(body))


def test_planted_payloads_run_when_unpickled(s3_server, tmp_path):
    """Positive control: every object ``plant_payloads`` writes runs its payload when unpickled, so the sentinel's
    absence after a resume means the resume unpickled none of them."""
    s3 = s3_server.client()
    bucket = s3_server.new_bucket()
    s3.put_object(Bucket=bucket, Key="sweeps/s/tune/run_abc/params.pkl", Body=pickle.dumps({"lr": 0.1}))
    s3.put_object(Bucket=bucket, Key="sweeps/s/sweep-meta.json", Body=b"{}")
    sentinel = tmp_path / "sentinel"
    keys = plant_payloads(s3, bucket, "sweeps/s", sentinel)
    assert "sweeps/s/tune/run_abc/params.pkl" in keys and "sweeps/s/sweep-meta.json" not in keys
    assert {f"sweeps/s/{rel}" for rel in PLANTED} <= set(keys)
    for k in keys:
        sentinel.unlink(missing_ok=True)
        unpickle_planted(s3, bucket, k)
        assert sentinel.read_text() == "pwned", k


@dataclasses.dataclass(frozen=True)
class ResumedSweep:
    name: str
    server: object  # the MLflow server
    first_retrain: str  # the first trial's retrain run, finished before the driver was killed
    out: str  # the resumed command's stdout
    bucket: str  # the sweep's storage: s3://bucket/sweeps/<name>
    planted: tuple[str, ...]  # the payload objects planted before the resume
    sentinel: Path  # written by any payload that runs
    err: str = ""  # the resumed command's stderr (progress lines, warnings)
    first: str = ""  # the first (killed) command's console: stdout and stderr, not a terminal


@pytest.fixture(scope="module")
def resumed_sweep(mlflow_server, s3_server, tmp_path_factory):
    """A 2-trial sweep, its storage on S3, whose driver (and its private Ray) is SIGKILLed under default settings
    once the first trial has finished and been recorded; pickle payloads planted in its storage; then the same
    command again."""
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("sweep")
    name = "sweep-test"
    bucket = s3_server.new_bucket()
    cfg = write_sweep(tmp / "sweep.yaml", name, f"s3://{bucket}/sweeps", mlflow_server.tracking_uri)
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, **s3_server.env(), "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    s3 = s3_server.client()

    def recorded() -> dict:
        try:
            return json.loads(s3.get_object(Bucket=bucket, Key=f"sweeps/{name}/sweep-meta.json")["Body"].read())
        except s3.exceptions.NoSuchKey:
            return {}

    proc = _start(cfg, env, tmp / "first.log")
    first_retrain = None
    try:
        deadline = time.monotonic() + 480  # the warm-up, a search and a retrain (its model exported) on 2 cores
        while time.monotonic() < deadline and proc.poll() is None:
            exp = client.get_experiment_by_name(name)
            if exp is not None and recorded().get("finished"):
                done = [r for r in _runs(client, exp.experiment_id, "retrain") if r.info.status == "FINISHED"
                        and r.data.tags.get("nas.point") == "search"]
                searches = _runs(client, exp.experiment_id, "search")
                if done and len(searches) >= 2:  # trial 1 finished and recorded, trial 2 under way: kill now
                    first_retrain = done[0].info.run_id
                    break
            time.sleep(1)
        assert first_retrain, f"first trial did not finish in time:\n{(tmp / 'first.log').read_text()[-3000:]}"
        # a crash, under default settings: SIGKILL, no SIGTERM first (Ray would turn that into a clean exit)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        _stop_group(proc, grace=0.1, marker=ray_tmp)  # whatever outlived the kill, or the driver after a failure
    sentinel = tmp / "sentinel"
    planted = plant_payloads(s3_server.client(), bucket, f"sweeps/{name}", sentinel)
    second = subprocess.run([str(Path(sys.executable).parent / "nas"), "sweep", "--config", str(cfg)], env=env,
                            capture_output=True, text=True, timeout=300)
    for pid in _pids_mentioning(ray_tmp):  # anything of the killed driver's Ray that outlived its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-4000:]
    return ResumedSweep(name, mlflow_server, first_retrain, second.stdout, bucket, tuple(planted), sentinel,
                        second.stderr, (tmp / "first.log").read_text(errors="replace"))


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_resumed_sweep_records_lineage_artifacts_and_fronts(resumed_sweep, s3_server, tmp_path):
    from mlflow import MlflowClient

    name, server, first_retrain, out = resumed_sweep.name, resumed_sweep.server, resumed_sweep.first_retrain, \
        resumed_sweep.out
    assert "(resumed)" in out and "2 trial(s) finished, 0 failed" in out
    client = MlflowClient(tracking_uri=server.tracking_uri)
    exp = client.get_experiment_by_name(name)
    (parent,) = _runs(client, exp.experiment_id, "sweep")
    assert parent.info.status == "FINISHED"
    pid = parent.info.run_id
    assert len(_runs(client, exp.experiment_id, "warmup")) == 1  # warm-up paid once, not again on resume
    searches = [r for r in _runs(client, exp.experiment_id, "search") if r.info.status == "FINISHED"]
    finished = [r for r in _runs(client, exp.experiment_id, "retrain") if r.info.status == "FINISHED"]
    retrains = [r for r in finished if r.data.tags["nas.point"] == "search"]
    fronts = [r for r in finished if r.data.tags["nas.point"] == "front"]
    # one finished search and one retrain per target: the finished trial was not repeated
    assert sorted(float(r.data.tags["nas.target"]) for r in searches) == TARGETS
    assert sorted(float(r.data.tags["nas.target"]) for r in retrains) == TARGETS
    # each search also gave a net under the extra budget (unless it was its own net), with its lineage
    assert fronts and len(fronts) <= len(searches)
    for f in fronts:
        assert f.data.tags["nas.front_budget"] == "0.07" and f.data.tags["nas.search_run_id"] in {
            s.info.run_id for s in searches} and f.data.tags["mlflow.parentRunId"] == f.data.tags["nas.search_run_id"]
        assert f.data.metrics["predicted_latency"] <= 0.07 and f.data.metrics["cost.search_other_worker_s"] == 0
        assert f.data.metrics["cost.retraining_worker_s"] > 0
    assert first_retrain in {r.info.run_id for r in retrains}
    by_id = {r.info.run_id: r for r in searches}
    warm = _runs(client, exp.experiment_id, "warmup")[0].info.run_id
    for s in searches:
        assert s.data.tags["mlflow.parentRunId"] == pid and s.data.tags["nas.sweep_run_id"] == pid
        assert s.data.tags["nas.warmup_run_id"] == warm and s.data.tags["nas.warm_start"].endswith("search_state.pt")
        assert s.data.params["search.hardware"] == "flops" and s.data.params["search.space"] == "tiny"
        assert len(client.get_metric_history(s.info.run_id, "loss")) >= 2  # metrics over time
        arts = {a.path for a in client.list_artifacts(s.info.run_id)}
        assert {"arch.txt", "net.config", "alpha.csv", "latency.json"} <= arts
    for s in searches:  # under derive: budget the search's own net fits its target too (predicted latency)
        assert s.data.metrics["predicted_within_budget"] == 1.0
    for r in retrains:
        tags = r.data.tags
        search = by_id[tags["nas.search_run_id"]]  # lineage: each retrain points at its finished search
        assert tags["mlflow.parentRunId"] == search.info.run_id
        assert tags["nas.arch"] == search.data.tags["nas.arch"] and tags["nas.hardware"] == "flops"
        assert tags["nas.sweep_run_id"] == pid and tags["nas.latency_unit"] == "MMAC"
        m = r.data.metrics
        assert 0 < m["val_accuracy"] <= 1 and m["measured_latency"] > 0 and m["point_worker_seconds"] > 0
        assert "point_gpu_seconds" in m and m["point_gpu_seconds"] == 0  # no GPU here: no GPU-seconds
        parts = [m[f"cost.{p}_worker_s"] for p in ("warmup", "weight_steps", "arch_steps", "search_other",
                                                   "measurement", "retraining")]
        assert all(p >= 0 for p in parts) and m["cost.warmup_worker_s"] > 0 and m["cost.arch_steps_worker_s"] > 0
        assert abs(sum(parts) - m["point_worker_seconds"]) < 1e-6 * m["point_worker_seconds"]
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"net.onnx", "net.config", "arch.txt", "latency.json"} <= arts
        lat = json.loads(Path(client.download_artifacts(r.info.run_id, "latency.json", str(tmp_path))).read_text())
        assert lat["method"] == "macs" and lat["provenance"]["space"] == "tiny"
    pareto = {a.path for a in client.list_artifacts(pid, "pareto")}
    assert {"pareto/pareto-flops.png", "pareto/pareto.json"} <= pareto
    # the artifacts live in the server's S3 bucket
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=server.s3_bucket).get("Contents", [])]
    assert any(k.endswith("pareto-flops.png") for k in keys) and any(k.endswith("net.onnx") for k in keys)

    proc = run_nas("pareto", "--experiment", name, "--out", str(tmp_path / "p"),
                   "--tracking-uri", server.tracking_uri)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p" / "pareto-flops.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "p" / "pareto.json").read_text())
    series = summary["hardware"]["flops"]["series"][name]
    assert len(series["points"]) == 2 + len(fronts) and series["front"] and series["hypervolume"] > 0
    assert sum(p["point"] == "front" for p in series["points"]) == len(fronts)

    # MLflow opens on the sweep's runs (issue 24): the link printed and in the parent's description, the kind tag
    url = f"{server.tracking_uri}/#/experiments/{exp.experiment_id}?workflowType=machine_learning"
    assert f"open in mlflow: {url}" in out and url in parent.data.tags["mlflow.note.content"]
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    for r in finished:  # every retrain run carries the comparable values under the same names
        run = client.get_run(r.info.run_id)
        assert {"latency", "top1", "budget", "measured_latency", "predicted_latency"} <= set(run.data.metrics)
        assert run.data.params["hardware"] == "flops" and run.data.params["latency_unit"] == "MMAC"
        assert run.data.params["latency_source"] == "counted" and "model" in {  # flops: MACs counted
            a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"pareto/front-flops.json", "pareto/points-flops.json"} <= {
        a.path for a in client.list_artifacts(pid, "pareto")}
    versions = client.search_model_versions(f"name = '{name}-flops'")
    assert {v.run_id for v in versions} == {p["run_id"] for p in series["front"]}
    assert all(v.tags["nas.hardware"] == "flops" and v.tags["nas.search_run_id"] for v in versions)
    assert all(f"models:/{name}-flops/{v.version}" in out and f"models:/{name}-flops/{v.version}" in proc.stdout
               for v in versions)


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_sweep_console_shows_progress_lines_and_no_internal_messages(resumed_sweep):
    """In a log (no terminal): the warm-up's progress is one final line, not a bar redrawn; one line per trial as it
    starts and finishes, with the counts and the best per hardware; no MLflow "View run" lines (the tracking server
    is http), no thread tracebacks of Ray's internals."""
    r = resumed_sweep
    first = r.first
    warm = re.findall(r"warm-up: (\d+)/(\d+) steps in \d\d:\d\d", first)
    assert len(warm) == 1 and warm[0][0] == warm[0][1], first[-3000:]
    assert "%|" not in first and "step/s]" not in first, first[-3000:]  # no tqdm bar in a log
    assert re.search(rf"sweep {r.name}: 0/2 trials done, 1 running, 0 failed \| started flops target", first)
    assert re.search(rf"sweep {r.name}: 1/2 trials done, \d running, 0 failed \| finished flops target [\d.]+ seed "
                     rf"\d+: [\d.e-]+ MMAC measured \((within|over) target\), top-1 [\d.]+( \(\+1 front net\))? \| best flops: ",
                     first)
    # the resume counts the recorded trial; its one remaining trial starts and finishes
    assert re.search(rf"sweep {r.name}: 1/2 trials done, 1 running, 0 failed \| started flops target", r.err), r.err
    assert re.search(rf"sweep {r.name}: 2/2 trials done, 0 running, 0 failed \| finished flops target .* \| best "
                     rf"flops: ", r.err), r.err
    for text in (first, r.out, r.err):
        assert "View run" not in text and "View experiment" not in text
        assert "Exception in thread" not in text and "Found multiple active Ray instances" not in text
    assert "?workflowType=machine_learning" in r.out  # the project's own link


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_resumed_sweep_never_unpickles_its_storage(resumed_sweep, s3_server):
    """Pickle payloads planted in the sweep's storage (Tune's tuner.pkl and experiment state where a Tune restore
    reads them, and every pickle there) never run: the resume reads only the sweep's JSON record, skips the point
    recorded as finished, and runs the other on a fresh Tuner."""
    from mlflow import MlflowClient

    r = resumed_sweep
    assert f"sweeps/{r.name}/tune/tuner.pkl" in r.planted
    assert not r.sentinel.exists(), "a payload planted in the sweep's storage ran in the resumed driver"
    assert "(resumed)" in r.out and "2 trial(s) finished, 0 failed" in r.out
    client = MlflowClient(tracking_uri=r.server.tracking_uri)
    exp = client.get_experiment_by_name(r.name)
    first_key = client.get_run(r.first_retrain).data.tags["nas.trial"]
    # the point finished before the kill was not run again: one search and one retrain for it, in all
    assert len([s for s in _runs(client, exp.experiment_id, "search") if s.data.tags["nas.trial"] == first_key]) == 1
    assert len([s for s in _runs(client, exp.experiment_id, "retrain") if s.data.tags["nas.trial"] == first_key
                and s.data.tags["nas.point"] == "search"]) == 1
    # the sweep's record: plain JSON in storage and on the parent run, every point finished with its report
    s3 = s3_server.client()
    record = json.loads(s3.get_object(Bucket=r.bucket, Key=f"sweeps/{r.name}/sweep-meta.json")["Body"].read())
    assert sorted(p["target"] for p in record["points"]) == TARGETS and first_key in record["finished"]
    assert sorted(t["target"] for t in record["finished"].values()) == TARGETS
    assert record["finished"][first_key]["retrain_run_id"] == r.first_retrain
    (parent,) = _runs(client, exp.experiment_id, "sweep")
    with tempfile.TemporaryDirectory() as d:
        copy = json.loads(Path(client.download_artifacts(parent.info.run_id, "sweep-record.json", d)).read_text())
    assert copy["finished"] == record["finished"] and copy["parent_run_id"] == parent.info.run_id
    # Tune's own state was never written to the sweep's storage: what lies there under tune/ is what was planted
    tune_keys = {o["Key"] for o in s3.list_objects_v2(Bucket=r.bucket, Prefix=f"sweeps/{r.name}/tune").get(
        "Contents", [])}
    assert tune_keys == {f"sweeps/{r.name}/{rel}" for rel in PLANTED}


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (`make test` installs it), driven by Playwright
SCREENSHOTS = Path(os.environ.get("NAS_TEST_SCREENSHOTS", ROOT / "test-artifacts" / "browser"))
UI_WAIT_MS = 60_000  # each wait on the UI: a cold page load of MLflow's UI on a busy 2-core machine


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_mlflow_ui_in_a_browser_shows_the_sweep(resumed_sweep, tmp_path):
    """The MLflow UI of the real sweep, in Chromium: the printed link opens the experiment on its runs table (the
    model-training view, not MLflow 3's GenAI overview); each retrain run's page shows its ``latency`` and ``top1``
    with the values MLflow's API holds; the sweep's run page shows its Pareto plot (the PNG loaded, at its size);
    the registered model ``<sweep>-flops`` lists every version, each with its net's arch. Screenshots of each page
    go to ``test-artifacts/browser/`` (or $NAS_TEST_SCREENSHOTS)."""
    from mlflow import MlflowClient

    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `make test` installs it "
                    "(apt-get install --no-install-recommends chromium)")
    r, server = resumed_sweep, resumed_sweep.server.tracking_uri
    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name(r.name)
    eid = exp.experiment_id
    (parent,) = _runs(client, eid, "sweep")
    all_runs = client.search_runs([eid], max_results=1000)
    retrains = [x for x in _runs(client, eid, "retrain") if x.info.status == "FINISHED"]
    assert retrains and all({"latency", "top1"} <= set(x.data.metrics) for x in retrains)
    model = registered_name(r.name, "flops")
    versions = client.search_model_versions(f"name = '{model}'")
    assert versions and {v.run_id for v in versions} <= {x.info.run_id for x in retrains}
    plot = Image.open(client.download_artifacts(parent.info.run_id, "pareto/pareto-flops.png", str(tmp_path)))
    (link,) = re.findall(r"open in mlflow: (\S+)", r.out)  # the link the sweep printed
    assert link == experiment_url(server, eid)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    print(f"browser screenshots: {SCREENSHOTS}")
    expect.set_options(timeout=UI_WAIT_MS)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        context.set_default_timeout(UI_WAIT_MS)
        context.set_default_navigation_timeout(2 * UI_WAIT_MS)

        def open_page(url: str):  # a fresh page per view: nothing of the last view is left on it
            page = context.new_page()
            page.goto(url)
            return page

        try:
            # 1. the printed link opens the experiment on its runs table, every run of the sweep counted
            page = open_page(link)
            row = page.get_by_role("row").filter(has=page.get_by_role("link", name=parent.info.run_name, exact=True))
            expect(row).to_be_visible()
            expect(row.get_by_role("link", name=parent.info.run_name, exact=True)).to_have_attribute(
                "href", re.compile(f"/runs/{parent.info.run_id}$"))
            expect(page.get_by_text(f"{len(all_runs)} matching runs", exact=True)).to_be_visible()
            page.screenshot(path=SCREENSHOTS / "1-experiment-runs.png", full_page=True)
            page.close()

            # 2. each retrain run's page shows latency and top1, with the values MLflow holds
            for x in retrains:
                page = open_page(run_url(server, eid, x.info.run_id))
                expect(page.get_by_role("heading", name=x.info.run_name, exact=True)).to_be_visible()
                for metric in ("latency", "top1"):
                    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=metric, exact=True))
                    expect(row).to_be_visible()
                    shown = row.get_by_role("cell").nth(1).inner_text().strip()
                    assert float(shown) == pytest.approx(x.data.metrics[metric], rel=1e-6), (x.info.run_name, metric)
                row.scroll_into_view_if_needed()
                page.screenshot(path=SCREENSHOTS / f"2-retrain-{x.info.run_name}.png")
                page.close()

            # 3. the Pareto plot on the sweep's run page: listed among its artifacts and shown, the PNG loaded whole
            page = open_page(run_url(server, eid, parent.info.run_id).replace(
                "?", "/artifacts/pareto/pareto-flops.png?", 1))
            expect(page.get_by_role("heading", name=parent.info.run_name, exact=True)).to_be_visible()
            node = page.locator('[data-testid="artifact-tree-node"][artifact-name="pareto-flops.png"]')
            expect(node).to_be_visible()
            img = page.locator('img[alt="pareto/pareto-flops.png"]')
            expect(img).to_be_visible()
            page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle())
            assert img.evaluate("el => [el.naturalWidth, el.naturalHeight]") == list(plot.size)
            page.screenshot(path=SCREENSHOTS / "3-sweep-run-pareto.png", full_page=True)
            page.close()

            # 4. the registered model lists the front's nets: every version, with its net's arch
            page = open_page(f"{server}/#/models/{model}")
            expect(page.get_by_role("heading", name=model, exact=True)).to_be_visible()
            for v in versions:
                row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {v.version}",
                                                                          exact=True))
                expect(row).to_be_visible()
                expect(row).to_contain_text(v.tags["nas.arch"])
            expect(page.get_by_role("link", name=re.compile(r"^Version \d+$"))).to_have_count(len(versions))
            page.screenshot(path=SCREENSHOTS / "4-registered-model.png", full_page=True)
            page.close()
        finally:
            browser.close()


@pytest.mark.slow
def test_a_real_sweep_folder_refuses_another_space_or_config(resumed_sweep, s3_server, tmp_path):
    """The folder of a real sweep (``resumed_sweep``'s, on S3), run again under its name and storage with a search
    of another space, then with another grid: each refused in one line, and nothing in its storage changes."""
    name, bucket = resumed_sweep.name, resumed_sweep.bucket
    s3 = s3_server.client()

    def folder() -> dict[str, str]:
        return {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"sweeps/{name}/")["Contents"]}

    before = folder()
    env = s3_server.env()
    storage, uri = f"s3://{bucket}/sweeps", resumed_sweep.server.tracking_uri
    for changed in ({"search": str(ROOT / "configs" / "demo.yaml"),  # another space (demo's, not tiny)
                     "grid": [{"hardware": "flops", "targets": [1.0, 2.0]}]},  # within its reach
                    {"grid": [{"hardware": "flops", "targets": [0.09, 0.14], "front": FRONT}]}):
        cfg = write_sweep(tmp_path / "again.yaml", name, storage, uri, **changed)
        assert_one_line_error(run_nas("sweep", "--config", str(cfg), env=env), f"sweep {name!r}",
                              "was started with another config", "refusing to resume it")
    assert folder() == before


def test_retrain_refuses_bad_input_before_ray(tmp_path):
    recipe = ROOT / "configs" / "retrain-digits.yaml"
    assert_one_line_error(run_nas("retrain", "--arch", "tiny:bogus", "--config", str(recipe)), "unknown op token")
    assert_one_line_error(run_nas("retrain", "--arch", "tiny:k3e3.zero/k5e6.zero", "--config", str(recipe),
                                  "--set", "lr=-1"), "retrain.lr: must be positive")


@pytest.mark.slow
def test_sweep_over_a_kit_device_records_predicted_latency(mlflow_server, tmp_path):
    """A grid entry on a kit device (a table fitted from a kit measured with ONNX Runtime): the trial's derived net
    gets the table's prediction, never a cluster node's timing, and MLflow says so (``nas.latency_source``)."""
    from mlflow import MlflowClient

    kit = tmp_path / "kit"
    write_kit(TINY_SPACE, "onnx", kit, networks=6, validate=3)
    runner = subprocess.run([sys.executable, str(kit / "run_kit.py"), "--runtime", "onnxruntime", "--min-rounds",
                             "4", "--max-rounds", "4"], capture_output=True, text=True, timeout=300)
    assert runner.returncode == 0, runner.stderr
    table = tmp_path / "edge-ort.parquet"
    imported = run_nas("latency", "import", "--kit", str(kit), "--results", str(kit / "results.csv"),
                       "--hardware", "edge-ort", "--out", str(table))
    assert imported.returncode == 0, imported.stderr
    grid = [{"hardware": "edge-ort", "runtime": "onnxruntime", "table": str(table), "relative": [0.6]}]
    cfg = write_sweep(tmp_path / "s.yaml", "sweep-kit", tmp_path / "runs", mlflow_server.tracking_uri, grid=grid,
                      retrain=None, shared_warmup=False)
    proc = run_nas("sweep", "--config", str(cfg), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    exp = client.get_experiment_by_name("sweep-kit")
    (search,) = _runs(client, exp.experiment_id, "search")
    tags, metrics = search.data.tags, search.data.metrics
    assert tags["nas.latency_source"] == "predicted" and tags["nas.runtime"] == "onnxruntime"
    latency = json.loads(Path(client.download_artifacts(search.info.run_id, "latency.json", str(tmp_path))).read_text())
    assert latency["latency_source"] == "predicted" and latency["method"] == "table-estimate"
    assert latency["node"] == {} and metrics["measured_latency"] == pytest.approx(latency["predicted"])


def test_a_sweep_whose_points_did_not_all_run_is_refused_as_interrupted():
    """Tune catches a Ctrl-C and returns as if the sweep had ended: points neither finished nor failed make the sweep
    an error (exit non-zero, "run the same command to resume"), not a success with the points that ran."""
    points = [TrialPoint("flops", t, 0) for t in (0.1, 0.2, 0.3)]
    done = {points[0].key: {}}
    check_all_ran("s", points, {p.key: {} for p in points}, [])  # all finished
    check_all_ran("s", points, done, ["trial 2 failed", "trial 3 failed"])  # the rest failed: reported as failures
    with pytest.raises(SweepInterrupted, match=r"sweep s stopped with 1 of 3 point\(s\) not run to the end .*resume"):
        check_all_ran("s", points, done, ["trial 2 failed"])

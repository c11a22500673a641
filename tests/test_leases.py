"""One live run per folder (``orchestrator/lease.py``): a run holds a lease on its ``--out`` or storage folder; a
second run is refused with one line naming the holder; a stale lease is taken over and the take-over recorded (at
once when the holder's pid is dead on this host, else after the heartbeat timeout); a fresh run refuses a folder that
holds a checkpoint unless ``--resume`` or ``--overwrite``; ``--name`` is one safe path segment.

Real parts only: ``nas`` processes (one stopped with SIGSTOP while it holds its folder, then SIGKILLed), competing
processes racing for one lease, a moto S3 server on loopback for the S3 lease, a SQLite MLflow store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator import tracking
from orchestrator.lease import LEASE_FILE, LeaseHeld, acquire_lease, check_run_name
from orchestrator.ray_train import ClusterSpec
from orchestrator.runs import check_fresh_run
from orchestrator.sweep.config import load_sweep
from orchestrator.sweep.runner import sweep_cluster
from tests.conftest import ROOT, assert_one_line_error, run_nas, run_nas_inprocess

TINY = ROOT / "configs" / "tiny.yaml"
HOST = socket.gethostname()


def _nas(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "nas"), *args]


def _lease(folder: Path) -> dict:
    return json.loads((folder / LEASE_FILE).read_text())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _other_host_lease(heartbeat: float) -> dict:
    return {"host": "other-host.example", "pid": 4242, "started": heartbeat, "started_at": "earlier",
            "heartbeat": heartbeat, "heartbeat_at": "earlier", "what": "search", "token": "theirs"}


# ---- one process: a live holder refuses a second run; killed, its lease is taken over at once ---------------------

@pytest.mark.slow
@pytest.mark.timeout(900)
def test_second_run_is_refused_and_a_killed_runs_lease_is_taken_over_at_once(tmp_path):
    """A search holds its ``--out``; a second search on it (even with ``--resume``) is refused with one line naming
    the holder's pid and host, and writes nothing. The first is SIGKILLed; the same command with ``--resume``
    takes the dead pid's lease over at once (no timeout wait: the timeout is set to 10 minutes), resumes from the
    checkpoint and records the take-over in result.json and as the MLflow tag ``nas.lease_takeover``. A fresh run
    on the folder, which still holds the checkpoint, is then refused naming the folder and both flags."""
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/m.db"
    env = {**os.environ, "NAS_LEASE_TIMEOUT_S": "600", "MLFLOW_TRACKING_URI": ""}
    args = ("search", "--config", str(TINY), "--set", "checkpoint_every=10", "--out", str(out), "--quiet",
            "--device", "cpu", "--tracking-uri", uri, "--experiment", "leases", "--name", "held")
    first = subprocess.Popen(_nas(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 400
        while not (out / "checkpoint.pt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, f"the first run ended before it could be stopped: {first.stderr.read()[-2000:]}"
        os.kill(first.pid, signal.SIGSTOP)  # alive and holding its folder, but writing nothing while we look
        held = _lease(out)
        assert (held["host"], held["pid"]) == (HOST, first.pid)
        before = _snapshot(out)
        second = subprocess.run(_nas(*args, "--resume"), env=env, capture_output=True, text=True, timeout=300)
        assert_one_line_error(second, f"{out} is in use by another run: pid {first.pid} on {HOST}")
        assert _snapshot(out) == before  # nothing written, the holder's lease untouched
    finally:
        first.kill()
        first.wait()
    t0 = time.time()
    again = subprocess.run(_nas(*args, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"took over the lease of pid {first.pid} on {HOST}" in again.stderr  # logged (a warning, on the console)
    result = json.loads((out / "result.json").read_text())
    took = result["lease_takeover"]
    assert (took["host"], took["pid"]) == (HOST, first.pid)
    assert took["reason"] == f"pid {first.pid} is no longer running on {HOST}"
    assert result["resumed_from_step"] >= 10 and time.time() - t0 < 600
    run = tracking.client(uri).get_run(result["run_id"])
    assert run.data.tags["nas.lease_takeover"] == (f"took over the lease of pid {first.pid} on {HOST}: "
                                                   f"pid {first.pid} is no longer running on {HOST}")
    assert not (out / LEASE_FILE).exists()  # released at the end
    fresh = subprocess.run(_nas(*args), env=env, capture_output=True, text=True, timeout=300)
    assert_one_line_error(fresh, f"{out} holds the checkpoint of an earlier search", "--resume", "--overwrite")
    assert json.loads((out / "result.json").read_text()) == result and not (out / LEASE_FILE).exists()


# ---- the lease itself: atomic, renewed, taken over after the timeout ---------------------------------------------

_RACER = """
import sys, time
from orchestrator.lease import LeaseHeld, acquire_lease
try:
    lease = acquire_lease(sys.argv[1], "search")
except LeaseHeld as e:
    print("refused", e)
else:
    print("held")
    time.sleep(3)
    lease.release()
"""


def test_competing_processes_one_takes_the_lease(tmp_path):
    """Six processes started at once on one folder: exactly one holds it, the others are refused naming it."""
    folder = tmp_path / "runs" / "r"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(folder)], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(6)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["held"] + ["refused"] * 5, outs
    winner = procs[[o.split()[0] for o in outs].index("held")].pid
    assert all(f"pid {winner} on {HOST}" in o for o in outs if o.startswith("refused"))
    assert not (tmp_path / "runs").exists()  # the holder released it, and the folders it made are gone


def test_heartbeat_renews_and_another_hosts_lease_is_taken_over_after_the_timeout(tmp_path, monkeypatch):
    folder = tmp_path / "r"
    lease = acquire_lease(str(folder), "search", timeout=0.4)
    first = _lease(folder)["heartbeat"]
    time.sleep(0.5)
    assert _lease(folder)["heartbeat"] > first  # renewed by the lease's thread
    assert _lease(folder)["token"] == lease.record["token"]
    lease.release()
    assert not (folder / LEASE_FILE).exists()

    # another host's lease with a fresh heartbeat is live: refused, naming it
    monkeypatch.setenv("NAS_LEASE_TIMEOUT_S", "2")
    folder.mkdir()
    (folder / LEASE_FILE).write_text(json.dumps(_other_host_lease(time.time())))
    with pytest.raises(LeaseHeld, match="in use by another run: pid 4242 on other-host.example"):
        acquire_lease(str(folder), "search")
    time.sleep(2.5)  # no heartbeat for longer than the timeout: stale
    lease = acquire_lease(str(folder), "search")
    try:
        assert lease.takeover["host"] == "other-host.example" and lease.takeover["pid"] == 4242
        assert lease.takeover["reason"].startswith("its last heartbeat is ")
        assert lease.takeover["reason"].endswith("s old (timeout 2 s)")
        rec = _lease(folder)
        assert (rec["host"], rec["pid"]) == (HOST, os.getpid()) and rec["taken_over"] == lease.takeover
    finally:
        lease.release()


def test_another_hosts_live_lease_refuses_a_cli_run_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LEASE_FILE).write_text(json.dumps(_other_host_lease(time.time() + 3600)))
    before = _snapshot(out)
    proc = run_nas("search", "--config", str(TINY), "--out", str(out), "--device", "cpu",
                   env={"MLFLOW_TRACKING_URI": "", "NAS_LEASE_TIMEOUT_S": "5"})
    assert_one_line_error(proc, f"{out} is in use by another run: pid 4242 on other-host.example",
                          "refusing to start a second search on it")
    assert _snapshot(out) == before


def test_dead_pid_on_this_host_is_taken_over_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_LEASE_TIMEOUT_S", "3600")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / LEASE_FILE).write_text(json.dumps({**_other_host_lease(time.time()), "host": HOST, "pid": gone.pid}))
    with acquire_lease(str(folder), "retrain") as lease:
        assert lease.takeover["reason"] == f"pid {gone.pid} is no longer running on {HOST}"
        assert _lease(folder)["taken_over"]["pid"] == gone.pid


# ---- S3: conditional puts on a moto server ------------------------------------------------------------------------

def test_s3_lease_with_conditional_puts(s3_server, monkeypatch):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    bucket = s3_server.new_bucket()
    s3 = s3_server.client()
    folder, key = f"s3://{bucket}/runs/r", "runs/r/nas-lease.json"

    # two threads race for the free lease: the conditional put lets exactly one in
    got: list = []
    barrier = threading.Barrier(2)

    def race() -> None:
        barrier.wait()
        try:
            got.append(acquire_lease(folder, "search", timeout=0.6))
        except LeaseHeld as e:
            got.append(e)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    leases = [g for g in got if not isinstance(g, LeaseHeld)]
    refused = [g for g in got if isinstance(g, LeaseHeld)]
    assert len(leases) == 1 and len(refused) == 1, got
    assert f"in use by another run: pid {os.getpid()} on {HOST}" in str(refused[0])
    lease = leases[0]
    rec = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert rec["token"] == lease.record["token"]
    time.sleep(0.8)  # renewed with IfMatch on the etag it last wrote
    assert json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())["heartbeat"] > rec["heartbeat"]
    lease.release()
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="runs/r/")

    # another host's lease: refused while its heartbeat is fresh, taken over once it is older than the timeout
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(_other_host_lease(time.time())).encode())
    with pytest.raises(LeaseHeld, match="pid 4242 on other-host.example"):
        acquire_lease(folder, "search", timeout=1.5)
    time.sleep(2.0)
    with acquire_lease(folder, "search", timeout=1.5) as lease:
        assert lease.takeover["host"] == "other-host.example"
        rec = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert rec["pid"] == os.getpid() and rec["taken_over"]["pid"] == 4242
        # a renewal after someone else rewrote the lease fails: the run knows it lost its folder
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(_other_host_lease(time.time())).encode())
        deadline = time.time() + 10
        while not lease.lost and time.time() < deadline:
            time.sleep(0.1)
        assert lease.lost
    assert json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())["pid"] == 4242  # theirs, not deleted


def test_ray_search_refused_on_an_s3_folder_another_host_holds(s3_server, tmp_path):
    """Before Ray starts or anything is written: the lease object on S3 names its holder."""
    bucket = s3_server.new_bucket()
    s3 = s3_server.client()
    s3.put_object(Bucket=bucket, Key="runs/r/nas-lease.json",
                  Body=json.dumps(_other_host_lease(time.time() + 3600)).encode())
    proc = run_nas("search", "--config", str(TINY), "--workers", "2", "--storage", f"s3://{bucket}/runs",
                   "--name", "r", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", env=s3_server.env())
    assert_one_line_error(proc, f"s3://{bucket}/runs/r is in use by another run: pid 4242 on other-host.example")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "runs/r/nas-lease.json" in keys and not any(k.startswith("runs/r/") and "lease" not in k for k in keys)


# ---- fresh runs over checkpoints, names -------------------------------------------------------------------------

def test_fresh_ray_run_refuses_a_folder_with_a_checkpoint(tmp_path):
    """A Ray run folder holding Ray Train's ``checkpoint_*``: a fresh run is refused with one line naming the folder
    and the two flags, before Ray starts; ``--overwrite`` removes everything there but the lease."""
    runs = tmp_path / "runs"
    ckpt = runs / "r" / "checkpoint_2026-12-06_00-00-00.000000"
    ckpt.mkdir(parents=True)
    (ckpt / "search_state.pt").write_bytes(b"state")
    (runs / "r" / "search-meta.json").write_text("{}")
    proc = run_nas("search", "--config", str(TINY), "--workers", "2", "--storage", str(runs), "--name", "r",
                   "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert_one_line_error(proc, f"run 'r' in {runs} holds the checkpoint of an earlier search", "--resume",
                          "--overwrite")
    assert sorted(p.name for p in (runs / "r").iterdir()) == [ckpt.name, "search-meta.json"]
    check_fresh_run(str(runs), "r", "search", resume=True, overwrite=False)  # a resume keeps it
    assert ckpt.exists()
    with acquire_lease(str(runs / "r"), "search"):
        check_fresh_run(str(runs), "r", "search", resume=False, overwrite=True)
        assert [p.name for p in (runs / "r").iterdir()] == [LEASE_FILE]


def test_a_sweeps_runs_resume_when_the_sweep_is_run_again():
    """A sweep's runs resume when the sweep is run again (the sweep's own resume-by-rerunning)."""
    assert sweep_cluster(load_sweep(ROOT / "configs" / "sweep-tiny.yaml")).resume


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "", "a\x01b", " a"])
def test_unsafe_name_is_refused_in_one_line(name, tmp_path, capsys):
    runs = tmp_path / "runs"
    proc = run_nas_inprocess(capsys, "search", "--config", str(TINY), "--workers", "2", "--storage", str(runs),
                             "--name", name, "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert_one_line_error(proc, "--name", "must be")
    out = tmp_path / "out"
    proc = run_nas_inprocess(capsys, "retrain", "--arch", "tiny:k3e3.zero/k5e6.zero", "--config",
                             str(ROOT / "configs" / "retrain-digits.yaml"), "--out", str(out), "--name", name,
                             "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert_one_line_error(proc, "--name", "must be")
    assert not runs.exists() and not out.exists() and not (tmp_path / "m.db").exists()
    with pytest.raises(ValueError, match="must be"):
        ClusterSpec(name=name)
    with pytest.raises(ValueError, match="must be"):
        check_run_name(name)


def test_safe_names_pass():
    for name in ("run-1", "search-tiny-flops-t0.12-s0", "a.b_c", "x..y"):
        assert check_run_name(name) == name


# ---- a concurrent sweep start ---------------------------------------------------------------------------------------

def test_concurrent_sweep_start_is_refused_before_it_touches_the_live_sweeps_runs(tmp_path):
    """A live sweep (its lease held by this process, its meta and a RUNNING child run in MLflow, as a sweep leaves
    them mid-run): a second start of the same sweep is refused naming the holder, and the child run stays RUNNING
    (without the lease the start would resume the sweep and mark it KILLED)."""
    import yaml

    uri, runs = f"sqlite:///{tmp_path}/m.db", tmp_path / "runs"
    cfg_path = tmp_path / "sweep.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": "live", "search": str(TINY), "overrides": ["epochs=2"], "grid": [{"hardware": "flops",
                                                                                  "targets": [0.1]}],
        "workers_per_trial": 1, "cpus_per_worker": 0.5, "storage": str(runs), "tracking_uri": uri}))
    sweep = load_sweep(cfg_path)
    parent = tracking.create_run(uri, "live", "sweep-live", tags={"nas.kind": "sweep", "nas.sweep": "live"})
    child = tracking.create_run(uri, "live", "search-x", tags={"nas.sweep_run_id": parent},
                                parent_run_id=parent)
    (runs / "live").mkdir(parents=True)
    (runs / "live" / "sweep-meta.json").write_text(json.dumps({"config": sweep.to_dict(), "parent_run_id": parent,
                                                                "warmups": {}}))
    with acquire_lease(str(runs / "live"), "sweep"):
        proc = run_nas("sweep", "--config", str(cfg_path))
        assert_one_line_error(proc, f"{runs / 'live'} is in use by another run: pid {os.getpid()} on {HOST}",
                              "second sweep")
    client = tracking.client(uri)
    assert client.get_run(child).info.status == "RUNNING" and client.get_run(parent).info.status == "RUNNING"

"""Where runs are recorded when nothing says so, also from inside a Ray job, whose working copy is temporary."""

from __future__ import annotations

import os

from orchestrator import tracking


def test_default_store_is_sqlite_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"


def test_inside_a_ray_job_the_default_store_outlives_the_job(tmp_path, monkeypatch):
    job_dir = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_x"
    job_dir.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(job_dir)
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path}/home/.nas/mlflow.db"


def test_runs_are_recorded_after_the_working_directory_vanished(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    (tmp_path / "store").mkdir()
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(gone)
    os.rmdir(gone)  # as when a second Ray node on the machine re-extracts the job's package
    run_id = tracking.create_run(uri, "exp", "run", params={"a": 1})
    tracking.end_run(uri, run_id)
    run = tracking.client(uri).get_run(run_id)
    assert run.data.params == {"a": "1"}
    assert run.info.artifact_uri.startswith((tmp_path / "store" / "mlartifacts").as_uri())

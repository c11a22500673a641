"""Credentials in a tracking URI stay secret (issue 22): masked in everything the project writes or prints, while
the URI itself works against a real ``mlflow server`` behind MLflow's basic-auth app and a real PostgreSQL.

The end-to-end tests run the installed ``nas`` command with a password in the tracking URI and then grep every
place it could land: stdout and stderr, every file of the run's folder (``--out``, a sweep's storage with Tune's
own files), Ray's session logs, and every parameter, tag and artifact of every MLflow run of the experiment."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml  # noqa: TID253

from orchestrator import redact as rd
from orchestrator import tracking
from tests.conftest import ROOT
from tests.servers import _pids_mentioning, _stop_group, start_mlflow_server, start_postgres

TINY = ROOT / "configs" / "tiny.yaml"
NAS = Path(sys.executable).parent / "nas"
USER = "nasadmin"
PASSWORD = f"Pw-{secrets.token_hex(10)}"  # distinctive: a grep for it finds nothing but a leak


# ---- the redaction function ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, secret, kept", [
    ("http://nas:S3cr3t-pw@127.0.0.1:5000", "S3cr3t-pw", "http://nas:***@127.0.0.1:5000"),
    ("https://nas:S3cr3t-pw@mlflow.example.com/", "S3cr3t-pw", "https://nas:***@mlflow.example.com/"),
    ("postgresql://mlflow:S3cr3t@db/mlflow", "S3cr3t", "postgresql://mlflow:***@db/mlflow"),
    ("postgresql+psycopg2://mlflow:p@ss@db:5432/mlflow?sslmode=require", "p@ss",
     "postgresql+psycopg2://mlflow:***@db:5432/mlflow?sslmode=require"),
    ("mysql+pymysql://root:hunter2@10.0.0.5/mlflow", "hunter2", "mysql+pymysql://root:***@10.0.0.5/mlflow"),
    ("https://ghp_tokenvalue123@git.example.com/x", "ghp_tokenvalue123", "https://***@git.example.com/x"),
    ("https://h/api?token=abc123&x=1", "abc123", "https://h/api?token=***&x=1"),
    ("https://h/?access_token=abc123", "abc123", "https://h/?access_token=***"),
    ("https://h/?password=abc123&user=u", "abc123", "https://h/?password=***&user=u"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F2026"
     "&X-Amz-Signature=deadbeef01&X-Amz-Security-Token=FQoGZXIvYXdz", "deadbeef01",
     "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Signature=***"
     "&X-Amz-Security-Token=***"),
    ("host=db user=mlflow password=S3cr3t dbname=mlflow", "S3cr3t", "host=db user=mlflow password=*** dbname=mlflow"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc", "eyJhbGciOiJIUzI1NiJ9", "Authorization: Bearer ***"),
    ("MLflow tracking server http://u:pw9876@h:1 is unreachable", "pw9876",
     "MLflow tracking server http://u:***@h:1 is unreachable"),
])
def test_redact_masks_credentials_in_uris_and_keys(text, secret, kept):
    assert rd.redact(text) == kept
    assert secret not in rd.redact(text)
    assert rd.has_credentials(text)


@pytest.mark.parametrize("text", ["http://127.0.0.1:5000", "sqlite:////tmp/mlflow.db", "s3://bucket/prefix",
                                  "file:///data/a@b.png", "design=3 author=me", "target 0.12 (flops)",
                                  "postgresql://db/mlflow"])
def test_redact_leaves_text_without_credentials_alone(text):
    assert rd.redact(text) == text and not rd.has_credentials(text)


def test_redact_obj_and_strip_credentials():
    cfg = {"tracking_uri": "http://u:pw1@h:5000", "grid": [{"uri": "https://h/?token=t1"}], "n": 3}
    assert rd.redact_obj(cfg) == {"tracking_uri": "http://u:***@h:5000", "grid": [{"uri": "https://h/?token=***"}],
                                  "n": 3}
    assert rd.strip_credentials("http://n%40s:S3%2Fc@127.0.0.1:5000/x") == ("http://127.0.0.1:5000/x", ("n@s", "S3/c"))
    assert rd.strip_credentials("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", None)


def test_log_records_of_the_project_and_mlflow_are_masked():
    """Messages, arguments, exceptions: whichever logger (the project's, MLflow's, a third party's) and handler."""
    uri = f"http://{USER}:{PASSWORD}@127.0.0.1:5000"
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    # once mlflow is imported (by an earlier test, say) its logger stops propagating, at WARNING: let this test's
    # record reach the handler above whatever ran before
    mlflow_logger = logging.getLogger("mlflow")
    mlflow_was = (mlflow_logger.propagate, mlflow_logger.level)
    mlflow_logger.propagate, mlflow_logger.level = True, logging.INFO
    try:
        rd.install()
        rd.install()  # idempotent
        logging.getLogger("orchestrator.tracking").warning("tracking store %s did not answer", uri)
        logging.getLogger("mlflow.utils.rest_utils").info(f"API request to {uri}/api/2.0/mlflow/runs/create failed")
        logging.getLogger("somelib").info("dsn %s", {"uri": uri.replace("http", "postgresql")})
        try:
            raise ValueError(f"cannot reach {uri}")
        except ValueError:
            logging.getLogger("orchestrator.x").exception("failed")
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        mlflow_logger.propagate, mlflow_logger.level = mlflow_was
    text = buf.getvalue()
    assert PASSWORD not in text, text
    assert text.count(f"{USER}:***@127.0.0.1:5000") == 4 and "Traceback" in text

    alone = io.StringIO()  # the filter on its own, on a handler that sees records made before install()
    h = logging.StreamHandler(alone)
    h.addFilter(rd.RedactingFilter())
    rec = logging.LogRecord("x", logging.WARNING, __file__, 1, "at %s", (uri,), None)
    h.handle(rec)
    assert PASSWORD not in alone.getvalue() and "***" in alone.getvalue()


# ---- a real MLflow server behind basic auth ------------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """``mlflow server --app-name basic-auth`` on loopback, local artifacts; admin ``USER`` / ``PASSWORD``."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-auth"), basic_auth=(USER, PASSWORD)) as server:
        yield server


def _with_creds(server, user: str = USER, password: str = PASSWORD) -> str:
    return server.tracking_uri.replace("http://", f"http://{quote(user, safe='')}:{quote(password, safe='')}@")


def _leaks(root: Path, secret: str) -> list[str]:
    """Files under ``root`` whose bytes hold ``secret`` (as it is, or percent-encoded)."""
    needles = {secret.encode(), quote(secret, safe="").encode()}
    found = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            try:
                data = p.read_bytes()
            except OSError:
                continue
            if any(n in data for n in needles):
                found.append(str(p))
    return found


def _mlflow_leaks(uri: str, experiments: list[str], secret: str, tmp: Path) -> tuple[list[str], int]:
    """Every parameter, tag and artifact of every run of ``experiments`` that holds ``secret``; and the number of
    runs read."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    leaks, n = [], 0
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        assert exp is not None, name
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            n += 1
            rid = run.info.run_id
            leaks += [f"{rid} param {k}" for k, v in run.data.params.items() if secret in v]
            leaks += [f"{rid} tag {k}" for k, v in run.data.tags.items() if secret in v]
            dst = tmp / "artifacts" / rid
            dst.mkdir(parents=True)
            if client.list_artifacts(rid):
                client.download_artifacts(rid, "", str(dst))
            leaks += _leaks(dst, secret)
    return leaks, n


@pytest.mark.slow
def test_preflight_accepts_a_uri_with_credentials_and_names_a_refusal_without_them(auth_server):
    good = _with_creds(auth_server)
    tracking.check_tracking_uri(good)  # was: "unreachable: [Errno -2] Name or service not known"
    with pytest.raises(ValueError, match="refused the credentials in the URI") as e:
        tracking.check_tracking_uri(_with_creds(auth_server, password="wrong-" + PASSWORD))
    assert PASSWORD not in str(e.value) and f"{USER}:***@" in str(e.value)
    with pytest.raises(ValueError, match="requires credentials"):
        tracking.check_tracking_uri(auth_server.tracking_uri)


def _run(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    full.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(NAS), *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_password_absent_from_a_one_process_search(auth_server, tmp_path):
    uri = _with_creds(auth_server)
    work = tmp_path / "work"
    work.mkdir()
    proc = _run(["-v", "search", "--config", str(TINY), "--set", "epochs=2", "--out", "out", "--device", "cpu",
                 "--tracking-uri", uri, "--experiment", "secret-search", "--name", "s1"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert PASSWORD not in console and quote(PASSWORD, safe="") not in console
    assert f"at http://{USER}:***@127.0.0.1:" in proc.stdout  # the run is still named, with its server
    assert (work / "out" / "result.json").is_file() and (work / "out" / "mlflow-run.json").is_file()
    assert _leaks(work, PASSWORD) == []  # --out: result.json, mlflow-run.json, the checkpoint
    leaks, n = _mlflow_leaks(uri, ["secret-search"], PASSWORD, tmp_path)
    assert n == 1 and leaks == []
    assert _leaks(Path(auth_server.artifacts_destination.removeprefix("file://")), PASSWORD) == []

    # a wrong password: one line, masked, before --out exists
    bad = _run(["search", "--config", str(TINY), "--out", "out2", "--device", "cpu",
                "--tracking-uri", _with_creds(auth_server, password="x" + PASSWORD)], cwd=work)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "refused the credentials" in bad.stderr
    assert PASSWORD not in bad.stdout + bad.stderr and not (work / "out2").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_password_absent_from_a_sweep(auth_server, tmp_path):
    uri = _with_creds(auth_server)
    work, storage = tmp_path / "work", tmp_path / "runs"
    work.mkdir()
    cfg = tmp_path / "sweep.yaml"  # the user's own file holds the URI; it is outside everything grepped
    cfg.write_text(yaml.safe_dump({
        "name": "secret-sweep", "search": str(TINY), "overrides": ["epochs=2", "warmup_epochs=1", "log_every=10"],
        "grid": [{"hardware": "flops", "targets": [0.14]}], "workers_per_trial": 1, "cpus_per_worker": 0.5,
        "max_concurrent_trials": 1, "storage": str(storage), "tracking_uri": uri,
        "retrain": {"epochs": 1, "lr": 0.05, "batch_size": 32}}))
    ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths live under it
    env = {"RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    exe_env = {**os.environ, **env}
    exe_env.pop("RAY_ADDRESS", None)
    exe_env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([str(NAS), "-v", "sweep", "--config", str(cfg)], cwd=work, env=exe_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=840)
        ray_leaks = _leaks(Path(ray_tmp), PASSWORD)  # Ray's session logs: the driver's, the workers', GCS's
    finally:
        if proc.poll() is None:
            _stop_group(proc, grace=0.1, marker=ray_tmp)
        for pid in _pids_mentioning(ray_tmp):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-4000:]
    assert "1 trial(s) finished, 0 failed" in out
    assert PASSWORD not in out + err and quote(PASSWORD, safe="") not in out + err
    assert ray_leaks == []
    files = [p for p in storage.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"sweep-meta.json", "mlflow-run.json", "retrain-meta.json"} <= names, names  # the sweep's and its runs'
    assert not {"params.json", "tuner.pkl"} & names  # Tune's state lives in the driver's private folder, not here
    assert _leaks(storage, PASSWORD) == [] and _leaks(work, PASSWORD) == []
    leaks, n = _mlflow_leaks(uri, ["secret-sweep"], PASSWORD, tmp_path)
    assert n >= 4 and leaks == []  # the sweep, its warm-up, the trial's search and retrain
    assert _leaks(Path(auth_server.artifacts_destination.removeprefix("file://")), PASSWORD) == []


# ---- a real PostgreSQL backend -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(600)
def test_postgresql_uri_with_password_records_a_search_and_is_never_written(tmp_path):
    with start_postgres() as pg:
        pg.create_database("mlflow")
        uri = pg.uri("mlflow")
        work = tmp_path / "work"
        work.mkdir()
        proc = _run(["-v", "search", "--config", str(TINY), "--set", "epochs=2", "--out", "out", "--device", "cpu",
                     "--tracking-uri", uri, "--experiment", "pg-search", "--name", "s1"], cwd=work)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert pg.password not in proc.stdout + proc.stderr
        assert f"at postgresql://{pg.user}:***@127.0.0.1:{pg.port}/mlflow" in proc.stdout
        assert _leaks(work, pg.password) == []  # --out, and MLflow's artifacts beside it (./mlruns)
        leaks, n = _mlflow_leaks(uri, ["pg-search"], pg.password, tmp_path)
        assert n == 1 and leaks == []

"""Real servers for tests, on loopback: an S3-compatible server (moto). Each fixture stops only what it started."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.ray_session import free_port  # one helper for the library and the tests


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # "127.0.0.1:PORT"
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region)

    def env(self) -> dict[str, str]:
        """Environment for processes (Ray workers, CLIs) that should reach this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_ENDPOINT_URL": self.url,
                "AWS_ENDPOINT_URL_S3": self.url}

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server in a thread of the test process, on an ephemeral loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"{host}:{port}")
    finally:
        server.stop()


def write_digits_jpegs(root, resolution: int = 32):
    """scikit-learn's digits (1,797 real images, 10 classes) as an ImageFolder of JPEG files at ``resolution`` px:
    the same split sizes as the embedded digits, read through the file and loader-process path instead."""
    from sklearn.datasets import load_digits

    root = Path(root)
    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        folder = root / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(img * 16, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).resize((resolution, resolution), Image.BILINEAR).convert("RGB").save(
            folder / f"{i:04d}.jpg", format="JPEG", quality=92)
    return root


@pytest.fixture(scope="session")
def digits_jpegs(tmp_path_factory):
    return write_digits_jpegs(tmp_path_factory.mktemp("digits-jpeg") / "train")


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point this test's process at the S3 server through the standard AWS variables."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server


# --------------------------------------------------------------------------------------------------------------
# Subprocess servers: an MLflow tracking server and a two-node Ray cluster started with the `ray` CLI.
#
# Each server runs in its own session (start_new_session=True), so its process group holds everything it
# spawned; teardown signals that group (and, for Ray, any process whose command line names the cluster's
# private temp dir) and nothing else. Never `ray stop`: it stops every Ray process on the machine.
# --------------------------------------------------------------------------------------------------------------

VENV_BIN = Path(sys.executable).parent  # `mlflow`, `ray` and `python` of the interpreter running the tests


def _base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    # A stray RAY_ADDRESS / tracking URI of the calling shell must not leak into a server or a CLI.
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _pids_mentioning(marker: str) -> list[int]:
    """PIDs (other than ours) whose command line contains ``marker`` (a path unique to one server)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _stop_group(proc: subprocess.Popen, grace: float = 15.0, marker: str | None = None) -> None:
    """SIGTERM the process (it shuts down what it started), then SIGKILL its process group and, if given,
    any leftover process whose command line names ``marker``. Only touches processes this fixture started."""
    pgid = proc.pid  # start_new_session=True: the leader's pid is the group id
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + 5
    leftovers = _pids_mentioning(marker) if marker else []
    while time.monotonic() < deadline and (proc.poll() is None or any(_alive(p) for p in leftovers)):
        time.sleep(0.2)
    for kill in (lambda: os.killpg(pgid, signal.SIGKILL), *[
            (lambda p=p: os.kill(p, signal.SIGKILL)) for p in (_pids_mentioning(marker) if marker else [])]):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering {url}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s:\n{_tail(log)}")


# ---- MLflow -------------------------------------------------------------------------------------------------

class RestartableMlflowServer:
    """An ``mlflow server`` process on 127.0.0.1 that a test can kill and start again on the same port and store (a
    tracking outage in the middle of a run). ``start_mlflow_server`` runs one; its ``MlflowServer.control`` is this."""

    def __init__(self, workdir: Path, artifacts_destination: str | None = None, backend_store_uri: str | None = None,
                 env: dict[str, str] | None = None, timeout: float = 90.0,
                 basic_auth: tuple[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.timeout, self.env = free_port(), timeout, dict(env or {})
        self.backend = backend_store_uri or f"sqlite:///{(self.workdir / 'mlflow.db').resolve()}"
        self.artifacts = artifacts_destination or (self.workdir / "artifacts").resolve().as_uri()
        self.log = self.workdir / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None
        self.cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", self.backend,
                    "--artifacts-destination", self.artifacts, "--host", "127.0.0.1", "--port", str(self.port),
                    "--workers", "1"]
        if basic_auth is not None:
            # MLflow's own basic-auth app, as on the cluster: its user store beside the backend, the admin user and
            # password from the environment (never argv), a static secret for its CSRF protection
            user, password = basic_auth
            ini = self.workdir / "basic_auth.ini"
            ini.write_text("[mlflow]\ndefault_permission = READ\n"
                           f"database_uri = sqlite:///{(self.workdir / 'basic_auth.db').resolve()}\n"
                           f"admin_username = {user}\n"
                           "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
            self.env.update({"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
                             "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)})
            self.cmd += ["--app-name", "basic-auth"]

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers /health (about 12 to 20 s)."""
        with open(self.log, "ab") as out:
            # No MLflow server jobs: they start about ten huey consumer processes per server, which compete with
            # the tests' Ray workers for the machine's 2 cores, and nothing here uses them.
            env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(self.env or {})}
            self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, env=_base_env(env), stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        _wait_http(f"{self.tracking_uri}/health", self.proc, self.log, self.timeout, "mlflow server")

    def stop(self, grace: float = 0.0) -> None:
        """Stop the server's whole process group: SIGKILL at once (a crash) unless ``grace`` seconds are given for
        a SIGTERM first; then wait until the port refuses connections."""
        if self.proc is not None:
            if grace > 0:
                _stop_group(self.proc, grace=grace)
            else:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # start_new_session=True: the leader's pid is the group
                except (ProcessLookupError, PermissionError):
                    pass
                self.proc.wait(timeout=10)
            self.proc = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                return
            time.sleep(0.1)


@dataclass(frozen=True)
class MlflowServer:
    tracking_uri: str  # "http://127.0.0.1:PORT": what clients (and Ray workers) set as MLFLOW_TRACKING_URI
    artifacts_destination: str  # "s3://bucket/prefix" or "file:///abs/dir": where the server stores artifacts
    backend_store_uri: str  # "sqlite:////abs/mlflow.db"
    log_path: Path  # the server's stdout+stderr
    control: RestartableMlflowServer | None = None  # its process: stop() and start() it for an outage

    @property
    def s3_bucket(self) -> str | None:
        """The artifact bucket when artifacts go to S3, else None."""
        return self.artifacts_destination[5:].split("/", 1)[0] if self.artifacts_destination.startswith("s3://") else None

    @property
    def s3_prefix(self) -> str:
        """The key prefix under ``s3_bucket`` ("" for the bucket root or local artifacts)."""
        if not self.artifacts_destination.startswith("s3://"):
            return ""
        rest = self.artifacts_destination[5:].split("/", 1)
        return rest[1].strip("/") if len(rest) > 1 else ""

    def env(self) -> dict[str, str]:
        """Environment for clients: only the tracking URI (the server proxies artifacts; clients need no S3 keys)."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri}


@contextmanager
def start_mlflow_server(workdir: Path, artifacts_destination: str | None = None,
                        backend_store_uri: str | None = None, env: dict[str, str] | None = None,
                        timeout: float = 90.0, basic_auth: tuple[str, str] | None = None):
    """Run ``mlflow server`` on 127.0.0.1 (free port) until the block exits, whatever state a test left it in.

    ``artifacts_destination`` defaults to ``file://<workdir>/artifacts``; ``backend_store_uri`` to SQLite in
    ``workdir``. ``env`` is added to the server's environment (S3 credentials, MLFLOW_S3_ENDPOINT_URL).
    ``basic_auth`` (user, password) serves MLflow's basic-auth app (``--app-name basic-auth``) with that admin user:
    clients then need ``http://user:password@127.0.0.1:PORT`` (``tracking_uri`` stays without credentials)."""
    proc = RestartableMlflowServer(workdir, artifacts_destination, backend_store_uri, env, timeout, basic_auth)
    proc.start()
    try:
        yield MlflowServer(proc.tracking_uri, proc.artifacts, proc.backend, proc.log, proc)
    finally:
        proc.stop(grace=10)


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """An MLflow server: SQLite backend in a tmp dir, artifacts proxied to ``s3://<new bucket>/mlflow`` on the
    moto server (``s3_server``). Yields ``MlflowServer`` (``tracking_uri``, ``s3_bucket``, ``s3_prefix``, ...).
    Start-up about 12 s; session scope."""
    bucket = s3_server.new_bucket()
    env = {**s3_server.env(), "MLFLOW_S3_ENDPOINT_URL": s3_server.url}
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-s3"), f"s3://{bucket}/mlflow", env=env) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server_local(tmp_path_factory):
    """An MLflow server with SQLite backend and local artifacts (``file://<tmp>/artifacts``); no S3 needed."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-local")) as server:
        yield server


# ---- Ray, two nodes, via the CLI ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RayCliCluster:
    gcs_address: str  # "127.0.0.1:PORT": for `ray start --address`, `ray.init(address=...)`
    dashboard_url: str  # "http://127.0.0.1:PORT": RAY_API_SERVER_ADDRESS for `ray job submit`
    temp_dir: Path  # the cluster's private --temp-dir (logs under session_latest/logs)
    env: dict  # full environment for `ray` CLI calls and driver subprocesses: RAY_AUTH_MODE, RAY_AUTH_TOKEN,
    #            RAY_ADDRESS (gcs), RAY_API_SERVER_ADDRESS (dashboard), PATH with the venv's bin first

    @property
    def auth_env(self) -> dict[str, str]:
        """Only the auth variables (RAY_AUTH_MODE, and RAY_AUTH_TOKEN in token mode): set them (monkeypatch.setenv)
        before an in-process ``ray.init(address=cluster.gcs_address)``."""
        return {k: self.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN") if k in self.env}

    def run(self, *args: str, timeout: float = 120, check: bool = True, cwd=None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``ray <args>`` (e.g. ``"job", "submit", ...``) against this cluster; returns the completed
        process with text stdout/stderr."""
        env = {**self.env, **(extra_env or {})}
        cp = subprocess.run([str(VENV_BIN / "ray"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
        if check and cp.returncode != 0:
            raise AssertionError(f"ray {' '.join(args)} exited {cp.returncode}\n"
                                 f"stdout:\n{cp.stdout[-4000:]}\nstderr:\n{cp.stderr[-4000:]}")
        return cp


def _ray_node_ports(head: bool) -> list[str]:
    """Explicit free ports for every listener whose default is fixed, so that this cluster never collides
    with another on the machine (another engineer's `ray start`, a second node here)."""
    ports = ["--dashboard-agent-listen-port", str(free_port()),
             "--dashboard-agent-grpc-port", str(free_port()),
             "--runtime-env-agent-port", str(free_port()),
             "--metrics-export-port", str(free_port())]
    if head:
        ports += ["--ray-client-server-port", str(free_port())]
    return ports


def _auth_headers(env: dict[str, str]) -> dict[str, str]:
    token = env.get("RAY_AUTH_TOKEN") if env.get("RAY_AUTH_MODE") == "token" else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def _alive_nodes(dashboard_url: str, env: dict[str, str]) -> list[dict]:
    """Alive nodes as the dashboard's State API lists them (HTTP; no driver needed)."""
    req = urllib.request.Request(f"{dashboard_url}/api/v0/nodes?limit=100&detail=false",
                                 headers=_auth_headers(env))
    with urllib.request.urlopen(req, timeout=5) as r:
        body = json.loads(r.read())
    return [n for n in body["data"]["result"]["result"] if n.get("state") == "ALIVE"]


def _wait_nodes(env: dict[str, str], dashboard_url: str, n: int, procs, logs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        for p, log in zip(procs, logs):
            if p.poll() is not None:
                raise RuntimeError(f"ray start exited with {p.returncode}:\n{_tail(log)}")
        try:
            nodes = _alive_nodes(dashboard_url, env)
            last = len(nodes)
            if len(nodes) >= n:
                return
        except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
            last = e
        time.sleep(0.5)
    raise RuntimeError(f"cluster at {dashboard_url} did not reach {n} alive nodes in {timeout:.0f} s (last: {last})\n"
                       + "\n".join(_tail(log, 2000) for log in logs))


@contextmanager
def start_ray_cli_cluster(head_cpus: int = 2, worker_cpus: int = 1, auth_mode: str = "token",
                          object_store_mb: int = 512, timeout: float = 120.0):
    """A head (``ray start --head --block``) and a second node (``ray start --address=... --block``,
    resource ``worker_node: 1``) as subprocesses of this process, with a private ``--temp-dir``.

    ``auth_mode`` is ``token`` (a fresh random token passed as RAY_AUTH_TOKEN; ~/.ray/auth_token is neither read
    nor written) or ``disabled``. ``object_store_mb`` caps each node's object store (the machine is shared).
    Every command against the cluster must use ``RayCliCluster.env``: Ray
    rejects a peer whose RAY_AUTH_MODE differs (InvalidAuthToken)."""
    # Short path: Ray's Unix sockets live under the temp dir (108-byte limit on socket paths).
    temp_dir = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    logs_dir = temp_dir / "cli-logs"
    logs_dir.mkdir()
    extra = {"RAY_AUTH_MODE": auth_mode, "RAY_USAGE_STATS_ENABLED": "0"}
    if auth_mode == "token":
        extra["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    env = _base_env(extra)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    gcs_port, dash_port = free_port(), free_port()
    gcs = f"127.0.0.1:{gcs_port}"
    ray = str(VENV_BIN / "ray")
    head_cmd = [ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
                f"--num-cpus={head_cpus}", "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash_port}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                f"--object-store-memory={object_store_mb << 20}", *_ray_node_ports(head=True), "--block"]
    worker_cmd = [ray, "start", f"--address={gcs}", "--node-ip-address=127.0.0.1", f"--num-cpus={worker_cpus}",
                  "--num-gpus=0", '--resources={"worker_node": 1}', f"--temp-dir={temp_dir}",
                  "--disable-usage-stats", f"--object-store-memory={object_store_mb << 20}",
                  *_ray_node_ports(head=False), "--block"]
    procs: list[subprocess.Popen] = []
    logs = [logs_dir / "head.log", logs_dir / "worker.log"]
    try:
        for cmd, log in zip((head_cmd, worker_cmd), logs):
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True))
            if cmd is head_cmd:
                _wait_http(f"http://127.0.0.1:{dash_port}/api/gcs_healthz", procs[0], log, timeout, "ray head")
        _wait_nodes(env, f"http://127.0.0.1:{dash_port}", 2, procs, logs, timeout)
        dashboard = f"http://127.0.0.1:{dash_port}"
        # For clients only (not for the `ray start` processes above): drivers and `ray job` find the cluster.
        client_env = {**env, "RAY_ADDRESS": gcs, "RAY_API_SERVER_ADDRESS": dashboard}
        yield RayCliCluster(gcs, dashboard, temp_dir, client_env)
    finally:
        for p in reversed(procs):  # the worker node first, then the head
            _stop_group(p, grace=20, marker=str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cli_cluster():
    """Two Ray nodes started with the CLI: head (2 CPUs, dashboard) + worker (1 CPU, ``worker_node: 1``), token
    auth. Yields ``RayCliCluster`` (gcs_address, dashboard_url, temp_dir, env, run(...)). About 15 s to start."""
    with start_ray_cli_cluster() as cluster:
        yield cluster


# ---- Ray: a local two-node cluster -----------------------------------------------------------------------------

@contextmanager
def local_two_node_cluster(env: dict[str, str]):
    """A head and one more node (``ray.cluster_utils.Cluster``, one CPU each, so two Train workers land on
    different nodes), with ``env`` (e.g. S3 credentials and endpoint) in the environment their raylets and workers
    inherit; this process joins it. Stops both nodes and restores the environment afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
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


# ---- PostgreSQL ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    data_dir: Path

    def uri(self, database: str, driver: str = "postgresql") -> str:
        """A SQLAlchemy URI with the password in it, as MLflow takes it (``postgresql://user:pass@host:port/db``)."""
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


@contextmanager
def start_postgres(user: str = "nas", password: str | None = None, timeout: float = 60.0):
    """A real PostgreSQL server (``initdb`` + ``pg_ctl`` of the machine) on 127.0.0.1 with password (SCRAM)
    authentication, until the block exits. PostgreSQL refuses to run as root: as root it runs as ``nobody``.
    Skips the test when the binaries or psycopg are missing."""
    pytest.importorskip("psycopg")
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    password = password or f"Pg-{secrets.token_hex(8)}"
    # its own folder in /tmp: as ``nobody`` it cannot enter pytest's tmp folders (mode 700, root's)
    root = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        os.chown(root, 65534, 65534)
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")  # initdb reads the password from a file: never argv
    if as_user:
        os.chown(pwfile, 65534, 65534)
    data, port = root / "data", free_port()
    subprocess.run([*as_user, "initdb", "-D", str(data), "-U", user, f"--pwfile={pwfile}", "-A", "scram-sha-256"],
                   check=True, capture_output=True, timeout=timeout)
    pwfile.unlink()
    ctl = [*as_user, "pg_ctl", "-D", str(data), "-l", str(root / "server.log")]
    subprocess.run([*ctl, "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "-w", "start"], check=True,
                   capture_output=True, timeout=timeout)
    try:
        yield PostgresServer("127.0.0.1", port, user, password, data)
    finally:
        subprocess.run([*ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=timeout)
        shutil.rmtree(root, ignore_errors=True)

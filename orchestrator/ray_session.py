"""Joining or starting Ray for a command: the one place that decides which cluster a driver talks to, and what of
Ray's own chatter reaches the user's console (progress and results do; Ray's internal messages go to its logs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator

from orchestrator.latency.hardware import local_profiles, node_resources

# Ray's internal messages that carry nothing a user can act on. Worker output matching this never reaches the
# driver's console (it stays in the session's log files under /tmp/ray/session_latest/logs).
RAY_NOISE = "|".join([
    r"State API may be temporarily unavailable",  # Train's placement-group cleaner without a dashboard
    r"constructor arguments in the object store and max_restarts",  # core_worker.cc, Train's preemption watcher
    r"Setting up process group for",
    r"Reporting training result \d+",
    r"Checkpoint successfully created at",
    r"Requesting resources:|Attempting to start training worker group|Started training worker group",
    r"world_rank=\d+, local_rank=\d+",
    r"To visualize your results with TensorBoard",
    r"Found multiple active Ray instances",  # another user's local Ray on the same machine
    r"PYTHON worker processes have been started on node",  # the raylet's worker start-up notice
])


def quiet_ray_env() -> None:
    """Environment that keeps Ray's internal messages off the console; call before Ray is imported (the CLI and
    the demo do). A user's own settings of these variables win."""
    os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", RAY_NOISE)
    # Tune's CSV/JSON/TensorBoard result loggers: MLflow is the record; they only add hints and invalid-value warnings
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Tune's new console reporter prints its experiment box and results path whatever the run's verbosity; the
    # classic one honours verbose=0 (a sweep prints its own summary)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # MLflow's INFO lines (creating a SQLite store's tables) are internal too; its warnings still show
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)


# What every Ray worker of the project's jobs gets (``worker_env``), whatever cluster it runs on; a user's own
# settings of these variables win.
WORKER_ENV = {
    # MLflow prints "View run <name> at: <url>" and "View experiment at: <url>" to stdout when a run ends against a
    # tracking server (``TrackingServiceClient._log_url``); the project prints its own links (``mlflow_links``,
    # which open the model-training view)
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # Ray Train's print patch sends each ``print`` of a Train worker both to stdout and to its logger's console
    # handler, two lines forwarded to the driver: rank 0's progress bar (``tqdm_ray``) is sent that way, and the
    # second copy of its closing state made the driver draw the finished bar again, for the rest of the run
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


def worker_env(api_server: str | None = None) -> dict[str, str]:
    """The ``env_vars`` of the runtime env a driver joins Ray with: ``WORKER_ENV`` as this process has them (a
    user's value wins), and ``RAY_API_SERVER_ADDRESS`` where the driver starts its private cluster: Ray Train's
    placement-group cleaner (an actor) asks the State API for the dashboard's address, and on a machine that runs
    several Ray instances it found none ("Found multiple active Ray instances", a thread's traceback on the
    console). Inside a Ray job, variables that the job's own runtime env sets are left to it (Ray refuses a
    conflicting ``ray.init(runtime_env=...)``)."""
    env = {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}
    if api_server:
        env["RAY_API_SERVER_ADDRESS"] = api_server
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        taken = set(((job.get("runtime_env") or {}).get("env_vars") or {}))
    except (ValueError, AttributeError):
        taken = set()
    return {k: v for k, v in env.items() if k not in taken}


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Join ``address`` (or ``RAY_ADDRESS``, as inside a Ray job), else start a private local Ray whose node offers
    this machine's hardware (``hw:<name>``), never silently attaching to another user's local cluster. Shuts down
    only a connection this call made; inside an existing session it does nothing."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    logging.getLogger("ray").setLevel(logging.ERROR)  # before init: its notices (token auth) print during init
    # Ray's LoggingConfig below sets the driver's level to WARNING, and a local cluster's token-auth notice (auth
    # is on, as it should be) is a warning: keep that one logger quiet.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    quiet = dict(logging_level=logging.ERROR,  # the driver's own Ray logger: e.g. the token-auth notice
                 logging_config=ray.LoggingConfig(log_level="WARNING"))  # workers: no INFO chatter of Ray Train
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)  # Ray's LoggingConfig reconfigures the driver's root logger
    if address:
        ray.init(address=address, runtime_env={"env_vars": worker_env()}, **quiet)
    else:
        # The dashboard (loopback only) serves Ray's State API, which Ray Train's placement-group cleaner polls:
        # without it the cleaner cannot tell whether a run's controller is alive.
        # A port of its own: on Ray's default 8265 it would fail to start beside another local Ray's dashboard, and
        # the State API calls of this cluster would then reach that other cluster (which knows none of our actors).
        port = free_port()
        ray.init(address="local", num_cpus=num_cpus, resources=node_resources(local_profiles()),
                 include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                 runtime_env={"env_vars": worker_env(f"http://127.0.0.1:{port}")}, **quiet)
    # ...and the command's own logging (progress lines, the demo's summary) stays as the command set it up
    root.setLevel(level)
    root.handlers[:] = handlers
    try:
        yield
    finally:
        ray.shutdown()

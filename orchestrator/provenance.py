"""What every artifact records about where it came from: versions, machine, code revision, time."""

from __future__ import annotations

import datetime as _dt
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import torch


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    """The project's commit, when run from a checkout (a container image has none)."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance() -> dict:
    """Versions and machine facts, so any artifact can be traced back and rebuilt."""
    return {
        "orchestrator": _version("orchestrator"),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "ray": _version("ray"),
        "mlflow": _version("mlflow"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "git": git_revision(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }

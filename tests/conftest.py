"""Shared fixtures: the reference data beside the project, and real servers on loopback started on demand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "proxylessnas"

pytest_plugins = ["tests.servers"]


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data not found at {REFERENCE} (../shared/reference/proxylessnas beside the project)")
    return REFERENCE


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads():
    """Tests run on 2 cores beside Ray workers: keep torch to one thread in the test process."""
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield

"""Shared fixtures: the reference data beside the project, and real servers on loopback started on demand."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "proxylessnas"

pytest_plugins = ["tests.servers"]

# Ray Train's controller polls its workers every 2 s by default: a finished run, a failed worker and a registered
# checkpoint are each seen up to 2 s late. The tests start some forty Train runs; they poll at 0.5 s (inherited by
# every Ray cluster, driver and CLI the tests start). Runs outside the tests keep Ray's default.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reverse", action="store_true",
                     help="run the collected tests in reverse order (a test that needs another's leftovers fails)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--reverse"):
        items.reverse()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data not found at {REFERENCE} (../shared/reference/proxylessnas beside the project)")
    return REFERENCE


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads():
    """Tests run on 2 cores beside Ray workers: keep torch to one thread in the test process."""
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield


def run_nas(*args: str, env: dict | None = None, timeout: float = 300):
    """Run the installed ``nas`` console command in a subprocess, as a user would."""
    exe = Path(sys.executable).parent / "nas"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def assert_one_line_error(proc, *fragments: str) -> None:
    """A user error: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]


def run_nas_inprocess(capsys, *args: str):
    """Run ``nas`` through ``orchestrator.cli.main`` in this process (no interpreter start-up): for the many
    bad-input cases; ``run_nas`` keeps covering the installed command itself."""
    capsys.readouterr()
    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["nas", *args], code, out.out, out.err)


def net_config_counts(cfg: dict, resolution: int = 224) -> tuple[int, int]:
    """Parameters and multiply-accumulates of an official ``net.config``, counted by hand from its JSON alone (no
    project code): the official layers' shapes (``MBInvertedConvLayer``: a 1x1 expansion to round(in × expand)
    channels unless expand is 1, a k×k depthwise conv with the stride, a 1x1 projection; every conv bias-free and
    followed by BN, 2 parameters per channel; ``ZeroLayer`` blocks add nothing; "same" padding), the classifier
    with its bias. MACs are the convolutions' and the classifier's multiplications."""
    params = macs = 0

    def conv(cin: int, cout: int, k: int, stride: int, side: int, groups: int = 1) -> int:
        nonlocal params, macs
        out = math.ceil(side / stride)
        params += cin // groups * cout * k * k + 2 * cout
        macs += cin // groups * cout * k * k * out * out
        return out

    first = cfg["first_conv"]
    side = conv(first["in_channels"], first["out_channels"], first["kernel_size"], first["stride"], resolution)
    for block in cfg["blocks"]:
        m = block["mobile_inverted_conv"]
        if m["name"] == "ZeroLayer":
            continue
        mid = round(m["in_channels"] * m["expand_ratio"])
        if m["expand_ratio"] != 1:
            conv(m["in_channels"], mid, 1, 1, side)
        side = conv(mid, mid, m["kernel_size"], m["stride"], side, groups=mid)
        conv(mid, m["out_channels"], 1, 1, side)
    mix = cfg["feature_mix_layer"]
    conv(mix["in_channels"], mix["out_channels"], 1, 1, side)
    fc = cfg["classifier"]
    params += fc["in_features"] * fc["out_features"] + (fc["out_features"] if fc["bias"] else 0)
    macs += fc["in_features"] * fc["out_features"]
    return params, macs

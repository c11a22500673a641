"""The console: a finished progress bar is drawn once and never again (Ray's driver-side ``tqdm_ray`` manager, driven
in-process with the states rank 0's bar sends), one final line in a log, the sweep's progress lines, and the
environment that keeps MLflow's and Ray Train's own output off the console in every worker."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest
import torch

from orchestrator import console
from orchestrator.ray_session import WORKER_ENV, worker_env
from orchestrator.ray_train import RankZeroBar
from orchestrator.sweep.runner import SweepProgress
from orchestrator.train.loop import Schedule, run_loop
from orchestrator.train.runtime import Runtime


@dataclass
class _State:
    rt: Runtime = field(default_factory=Runtime)
    step: int = 0
    window: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def _step(state: _State, fail_at: int | None = None):
    def step(clock):
        if state.step == fail_at:
            raise RuntimeError("a worker failed")
        state.step += 1
        return {"loss": torch.tensor(1.0)}

    return step


@pytest.fixture
def manager(monkeypatch):
    """A fresh driver-side ``tqdm_ray`` manager (Ray's own), which the bars of this process report to directly
    (outside a Ray worker ``tqdm_ray`` sends its states to the manager in-process, not as lines on stdout); it does
    not patch ``print`` for the rest of the session."""
    tqdm_ray = pytest.importorskip("ray.experimental.tqdm_ray")
    monkeypatch.setenv("RAY_TQDM_PATCH_PRINT", "0")
    monkeypatch.setattr(tqdm_ray, "_manager", None)
    return tqdm_ray.instance()


def _open_bars(manager) -> list[str]:
    return [b.state["desc"] for g in manager.bar_groups.values() for b in g.bars_by_uuid.values()]


def test_a_closed_bar_is_not_drawn_again_by_the_driver(manager):
    """The driver draws a bar until its closing state arrives, and draws it anew for any state of it that arrives
    after that (Ray 2.60: a second closing state allocates a new bar that is never closed, redrawn around every later
    line). Rank 0's bar sends its closing state once, also when closed twice, and the loop closes it when a step
    fails."""
    state = _State()
    run_loop(state, _step(state), Schedule(end=5, log_every=2), row=lambda m: dict(m), progress=RankZeroBar,
             desc="warm-up", postfix=lambda r: {"loss": "1.000"})
    assert state.step == 5 and _open_bars(manager) == []

    bar = RankZeroBar(5, 0, "twice")
    assert _open_bars(manager) == ["twice"]
    bar.close()
    bar.close()
    assert _open_bars(manager) == []

    # Ray's manager itself: a closing state that arrives twice leaves a bar drawn (what a second forwarded copy of
    # the worker's line did), so a single copy of each line matters (``ray_session.WORKER_ENV``)
    from ray.experimental.tqdm_ray import tqdm

    raw = tqdm(desc="raw", total=2)
    raw.refresh()  # its first state: the driver draws it
    raw.close()
    raw.close()
    assert _open_bars(manager) == ["raw"]
    manager.bar_groups.clear()

    failing = _State()
    with pytest.raises(RuntimeError, match="a worker failed"):
        run_loop(failing, _step(failing, fail_at=3), Schedule(end=5, log_every=2), row=lambda m: dict(m),
                 progress=RankZeroBar, desc="search")
    assert _open_bars(manager) == []


def test_a_bar_in_a_log_is_one_final_line(caplog):
    """stderr is not a terminal under pytest: ``progress=True`` logs one line when the loop ends, none per step."""
    assert not console.is_terminal()
    state = _State()
    with caplog.at_level(logging.INFO, logger=console.PROGRESS_LOGGER):
        run_loop(state, _step(state), Schedule(end=7, log_every=3), row=lambda m: dict(m), progress=True,
                 desc="retrain", postfix=lambda r: {"val": "0.500"})
    lines = [r.getMessage() for r in caplog.records if r.name == console.PROGRESS_LOGGER]
    assert len(lines) == 1 and lines[0].startswith("retrain: 7/7 steps in 00:0") and lines[0].endswith(" val=0.500")
    caplog.clear()
    failing = _State()
    with caplog.at_level(logging.INFO, logger=console.PROGRESS_LOGGER), pytest.raises(RuntimeError):
        run_loop(failing, _step(failing, fail_at=2), Schedule(end=7, log_every=3), row=lambda m: dict(m),
                 progress=True, desc="search")
    assert [r.getMessage().split(" steps")[0] for r in caplog.records] == ["search: 2/7"]


def test_sweep_progress_lines_count_trials_and_keep_the_best_within_target(caplog):
    """One line per start, finish and failure: done/running/failed of all, the finished trial, and per hardware the
    finished trial with the highest top-1 among those within their target (a resumed sweep's count too)."""
    resumed = {"flops-a": {"hardware": "flops", "target": 0.1, "measured_latency": 0.09, "unit": "MMAC",
                           "val_accuracy": 0.8}}
    p = SweepProgress("demo", 4, resumed)
    pts = [{"hardware": "flops", "target": 0.2, "seed": 1}, {"hardware": "flops", "target": 0.05, "seed": 1},
           {"hardware": "cpu", "target": 3.0, "seed": 1}]
    with caplog.at_level(logging.INFO, logger=console.PROGRESS_LOGGER):
        for i, pt in enumerate(pts):
            p.started(str(i), pt)
        p.finished("0", pts[0], {"hardware": "flops", "target": 0.2, "measured_latency": 0.15, "unit": "MMAC",
                                 "val_accuracy": 0.9, "front_points": 2})
        p.finished("1", pts[1], {"hardware": "flops", "target": 0.05, "measured_latency": 0.06, "unit": "MMAC",
                                 "val_accuracy": 0.95})  # over its target: not the best, however accurate
        p.errored("2", pts[2])
    lines = [r.getMessage() for r in caplog.records]
    assert lines[2] == "sweep demo: 1/4 trials done, 3 running, 0 failed | started cpu target 3 seed 1"
    assert lines[3] == ("sweep demo: 2/4 trials done, 2 running, 0 failed | finished flops target 0.2 seed 1: "
                        "0.15 MMAC measured (within target), top-1 0.900 (+2 front nets) | best flops: 0.15 MMAC @ top-1 "
                        "0.900")
    assert lines[4].startswith("sweep demo: 3/4 trials done, 1 running, 0 failed | finished flops target 0.05 seed 1:"
                               " 0.06 MMAC measured (over target), top-1 0.950 | best flops: 0.15 MMAC")
    assert lines[5] == "sweep demo: 3/4 trials done, 0 running, 1 failed | failed cpu target 3 seed 1"


def test_workers_get_the_quiet_environment(monkeypatch):
    """Every worker of a job gets MLflow's URL printing and Ray Train's print patch off (a user's own value wins),
    and the private cluster's dashboard as the State API's address; a Ray job's own runtime env keeps its keys
    (Ray refuses a conflicting ``ray.init(runtime_env=...)``)."""
    for k in WORKER_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    env = worker_env("http://127.0.0.1:1234")
    assert env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true" and env["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
    assert env["RAY_API_SERVER_ADDRESS"] == "http://127.0.0.1:1234"
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       '{"runtime_env": {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "1"}}}')
    env = worker_env()
    assert env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "false" and "RAY_TRAIN_ENABLE_PRINT_PATCH" not in env
    assert "RAY_API_SERVER_ADDRESS" not in env

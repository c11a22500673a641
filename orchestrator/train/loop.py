"""The one training loop of search, warm-up and retrain: feeds and per-rank batch sizing, the clock and its phase
timings, progress, and the periodic work (curve rows, evaluation, checkpoints, the hooks a Ray worker adds).

What a run trains is its step function: ``step(clock)`` reads its batches, takes its step (which advances
``state.step``), laps the clock for each of its phases and returns the step's metrics. The search's step is a weight
step plus its architecture steps; a retrain's is one SGD step of the standalone net. Everything else is here, the
same for both. Nothing here knows about Ray: a Ray Train worker passes its hooks (checkpoint reports, consistency
checks, fault injection), one process passes its own or none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from orchestrator.console import FinalLine, is_terminal
from orchestrator.data.feed import Feed
from orchestrator.data.source import DataSpec
from orchestrator.train.core import Metrics, metrics_window, read_window
from orchestrator.train.runtime import Runtime

__all__ = ["LoopState", "Clock", "Schedule", "Hooks", "local_batch", "rank_feed", "progress_bar", "run_loop"]

log = logging.getLogger(__name__)


class LoopState(Protocol):
    """What the loop reads and advances on a run's state (``SearchState``, ``RetrainState``)."""

    rt: Runtime
    step: int
    window: dict
    history: list[dict]
    seconds: dict


def local_batch(global_batch: int, world: int, key: str) -> int:
    """Each rank's share of a global batch; ``ValueError`` when it does not split evenly."""
    if global_batch % world:
        raise ValueError(f"{key}: the global batch {global_batch} does not split evenly over {world} workers")
    return global_batch // world


def rank_feed(spec: DataSpec, rows: Any, global_batch: int, key: str, rt: Runtime, stream: str,
              shuffle: bool = True, need_batch: bool = True) -> Feed:
    """This rank's feed of a split: its share of every global batch of ``global_batch`` images (set by ``key``).
    With ``need_batch`` a rank that would get less than one batch is refused before any step (not at its first
    read of the split)."""
    feed = spec.feed(rows, batch_size=local_batch(global_batch, rt.world, key), rank=rt.rank, world=rt.world,
                     shuffle=shuffle, stream=stream, pin_memory=rt.on_gpu)
    if need_batch and feed.batches_per_epoch < 1:
        raise ValueError(f"{key}: each of {rt.world} worker(s) gets {feed.items} {feed.name} images, fewer than one "
                         f"batch of {feed.batch_size}: lower the batch size or use fewer workers")
    return feed


class Clock:
    """Seconds per phase, each timed around its own work (after the device finished it), added to ``seconds``."""

    def __init__(self, rt: Runtime, seconds: dict) -> None:
        self.rt, self.seconds, self.t = rt, seconds, time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.rt.on_gpu:
            torch.cuda.synchronize(self.rt.device)
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.t
        self.t = now


class _NoBar:
    """What ``progress=False`` draws: nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(progress: bool | Callable[..., Any], total: int, done: int, desc: str) -> Any:
    """A tqdm bar on a terminal (``progress=True``; in a log, where each redraw would be a line, one final line
    instead: ``console.FinalLine``), none (``False``), or one built by ``progress(total, done, desc)`` (a Ray Train
    worker shows its bar on the driver's console that way)."""
    if callable(progress):
        return progress(total, done, desc)
    if not progress:
        return _NoBar()
    if not is_terminal():
        return FinalLine(total, done, desc)
    from tqdm.auto import tqdm  # optional: a quiet one-process run needs no tqdm (test_torch_only)

    return tqdm(total=total, initial=done, desc=desc, unit="step")


@dataclass(frozen=True)
class Schedule:
    """When the periodic work runs, in steps: a row every ``log_every`` steps and at the end, an evaluation every
    ``eval_every`` (0: none in the loop), a checkpoint every ``checkpoint_every`` and at the end (0: at the end)."""

    end: int
    log_every: int
    checkpoint_every: int = 0
    eval_every: int = 0


@dataclass(frozen=True)
class Hooks:
    """What the caller adds: ``after_step()`` after every step, ``on_row(row)`` after every row is recorded,
    ``checkpoint()`` on the schedule's checkpoints (each may be collective: every rank calls it at the same step)."""

    after_step: Callable[[], None] | None = None
    on_row: Callable[[dict], None] | None = None
    checkpoint: Callable[[], None] | None = None


def run_loop(state: LoopState, step: Callable[[Clock], Metrics], schedule: Schedule, *,
             row: Callable[[dict[str, float]], dict], evaluate: Callable[[], dict] | None = None,
             hooks: Hooks = Hooks(), progress: bool | Callable[..., Any] = False, desc: str = "train",
             postfix: Callable[[dict], dict[str, str]] | None = None) -> Clock:
    """Run ``step`` until ``state.step`` reaches ``schedule.end``.

    At every row the metric window's means since the last row go to ``row(means)``, which returns the row; an
    evaluation due at that step adds ``evaluate()``'s values to it. The row is appended to ``state.history`` and
    passed to ``hooks.on_row``. Returns the clock, so that the caller times its own closing work (e.g. the final
    evaluation) in the same phases."""
    bar = progress_bar(progress, schedule.end, state.step, desc)
    try:
        clock, checkpointed = _steps(state, step, schedule, row, evaluate, hooks, bar, postfix)
    finally:
        # Closed once, whatever ends the loop: a Ray worker's bar is drawn by the driver until its closing state
        # arrives (``ray.experimental.tqdm_ray``), so a bar left open would stay on the driver's console.
        bar.close()
    if hooks.checkpoint is not None and not checkpointed:
        hooks.checkpoint()  # the end (or a resume at the end) is always checkpointed
    return clock


def _steps(state: LoopState, step: Callable[[Clock], Metrics], schedule: Schedule, row: Callable[[dict], dict],
           evaluate: Callable[[], dict] | None, hooks: Hooks, bar: Any,
           postfix: Callable[[dict], dict[str, str]] | None) -> tuple[Clock, bool]:
    """``run_loop``'s steps; returns the clock and whether the last step was checkpointed."""
    clock = Clock(state.rt, state.seconds)
    checkpointed = False
    while state.step < schedule.end:
        metrics_window(state.window, step(clock))
        bar.update(1)
        if hooks.after_step is not None:
            hooks.after_step()
        at_end = state.step == schedule.end
        if state.step % schedule.log_every == 0 or at_end:
            means = read_window(state.window)
            state.window = {}
            r = row(means)
            if evaluate is not None and schedule.eval_every and state.step % schedule.eval_every == 0:
                clock.lap("other")
                r.update(evaluate())
                clock.lap("eval")
            state.history.append(r)
            if postfix is not None:
                bar.set_postfix(**postfix(r))
            if hooks.on_row is not None:
                hooks.on_row(r)
        checkpointed = bool(schedule.checkpoint_every) and state.step % schedule.checkpoint_every == 0
        if hooks.checkpoint is not None and checkpointed:
            hooks.checkpoint()
        clock.lap("other")
    return clock, checkpointed

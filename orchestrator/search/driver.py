"""``run_search``: the search loop of one process (one rank), with hooks so that a Ray Train wrapper stays thin.

The loop is a function of the state's counters only: every epoch's data order, every batch's augmentation,
every path and every held-out batch are drawn from generators seeded by (seed, counter), so resuming from
``state_dict`` replays exactly. Weight steps run on the training core shared with retraining (``train.core``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from orchestrator.data.feed import Feed
from orchestrator.data.source import Splits, open_splits
from orchestrator.latency.calibrate import validation_metrics
from orchestrator.latency.model import LatencyModel
from orchestrator.latency.profiles import latency_model
from orchestrator.search.config import SearchConfig
from orchestrator.search.state import (
    SearchState,
    alpha_fingerprint,
    fork_from_warmup,
    init_state,
    load_state_dict,
    warmup_steps,
)
from orchestrator.search.steps import arch_step, arch_updates_after, weight_step
from orchestrator.train.core import evaluate, metrics_window, read_window
from orchestrator.train.runtime import Runtime

log = logging.getLogger(__name__)

OnStep = Callable[[SearchState, dict], None]
AfterStep = Callable[[SearchState], None]
Checkpoint = Callable[[SearchState], None]


@dataclass(frozen=True)
class SearchResult:
    """What a search produces: the derived architecture, α, latencies and curves (JSON-ready via ``to_dict``)."""

    arch: str  # the derived net (``derive``: argmax of α, or the most probable net within the target)
    hardware: str
    unit: str
    target: float
    expected_latency: float
    exact_latency: float
    candidates: tuple[str, ...]
    alpha: tuple[tuple[float, ...], ...]
    probs: tuple[tuple[float, ...], ...]
    entropy: float
    steps: int
    arch_steps: int
    alpha_fingerprint: str
    valid_accuracy: float | None
    val_images: int = 0
    device: str = "cpu"
    world_size: int = 1
    seconds: dict = field(default_factory=dict)  # per phase, each timed directly: warmup, weight, arch, data, eval
    latency_model: dict = field(default_factory=dict)  # the latency model's held-out validation figures
    derive: str = "argmax"
    argmax_arch: str = ""  # each block's most probable op (equal to ``arch`` under ``derive: argmax``)
    log_prob: float = 0.0  # log-probability of ``arch`` under α
    curves: dict[str, list] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_latency(cfg: SearchConfig) -> LatencyModel:
    """The latency model for the config's hardware on the searched space; raised errors name the ``hardware`` key."""
    try:
        return latency_model(cfg.hardware, cfg.search_space, cfg.latency_table, cfg.runtime)
    except (ValueError, OSError) as e:
        raise ValueError(f"hardware: {e}") from None


def open_data(cfg: SearchConfig) -> Splits:
    """The task's splits, checked against the searched space (its classes) before any compute."""
    space = cfg.search_space
    return open_splits(cfg.data, space.resolution, space.num_classes, "search", f"space {space.name!r}")


def local_batch(global_batch: int, world: int, key: str) -> int:
    """Each rank's share of a global batch; ``ValueError`` when it does not split evenly."""
    if global_batch % world:
        raise ValueError(f"{key}: the global batch {global_batch} does not split evenly over {world} workers")
    return global_batch // world


class _NoBar:
    """What ``progress=False`` draws: nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(progress: bool | Callable[..., Any], total: int, done: int, desc: str) -> Any:
    """A tqdm bar (``progress=True``), none (``False``), or one built by ``progress(total, done, desc)`` (a Ray
    Train worker shows its bar on the driver's console that way)."""
    if callable(progress):
        return progress(total, done, desc)
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm  # here, not at the top: a quiet one-process run needs no tqdm (test_torch_only)

    return tqdm(total=total, initial=done, desc=desc, unit="step")


def search_feeds(cfg: SearchConfig, data: Splits, rank: int = 0, world: int = 1,
                 pin_memory: bool = False) -> tuple[Feed, Feed]:
    """The weight-training and held-out feeds of one rank; ``ValueError`` before any step when a rank would get
    less than one batch of either (not at the first architecture step, after the warm-up)."""
    train = cfg.data.feed(data.train, batch_size=local_batch(cfg.weight.batch_size, world, "weight.batch_size"),
                          rank=rank, world=world, stream="train", pin_memory=pin_memory)
    arch_batch, arch_key = cfg.arch.holdout_batch
    holdout = cfg.data.feed(data.holdout, batch_size=local_batch(arch_batch, world, arch_key),
                            rank=rank, world=world, stream="holdout", pin_memory=pin_memory)
    for feed, key in ((train, "weight.batch_size"), (holdout, arch_key)):
        if feed.batches_per_epoch < 1:
            raise ValueError(f"{key}: each of {world} worker(s) gets {feed.items} {feed.name} images, fewer than "
                             f"one batch of {feed.batch_size}: lower the batch size or use fewer workers")
    return train, holdout


def _curve_point(state: SearchState) -> dict:
    """Averages since the last point, plus α's state now."""
    row: dict[str, Any] = {"step": state.step, "epoch": state.step / state.steps_per_epoch,
                           "arch_step": state.arch_step, "phase": "search" if state.searching else "warmup"}
    row.update(read_window(state.window))
    with torch.no_grad():
        row["expected_latency"] = state.latency.expected(state.logits.probs()).item()
        row["entropy"] = state.logits.entropy().item()
    state.window = {}
    return row


class _Clock:
    """Seconds per phase, each timed around its own work (after the device finished it)."""

    def __init__(self, state: SearchState) -> None:
        self.state, self.t = state, time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.state.rt.on_gpu:
            torch.cuda.synchronize(self.state.rt.device)
        now = time.perf_counter()
        self.state.seconds[phase] = self.state.seconds.get(phase, 0.0) + now - self.t
        self.t = now


def run_search(
    cfg: SearchConfig,
    data: Splits | None = None,
    *,
    rt: Runtime | None = None,
    on_step: OnStep | None = None,
    after_step: AfterStep | None = None,
    checkpoint: Checkpoint | None = None,
    resume: dict | None = None,
    latency: LatencyModel | None = None,
    progress: bool | Callable[..., Any] = False,
    warm_start: dict | None = None,
    warmup_only: bool = False,
) -> SearchResult:
    """Run (or continue, from a ``state_dict`` in ``resume``) a search on ``data`` (opened from ``cfg.data`` when
    not given) on the runtime ``rt`` (device, precision, ranks; default one process on the CPU).

    ``on_step(state, row)`` gets every curve point, ``after_step(state)`` runs after every weight step (and its
    architecture steps), ``checkpoint(state)`` every ``cfg.checkpoint_every`` weight steps and at the end. With
    several ranks every rank samples the same paths from the same α and reads its own share of every global
    batch; gradients are averaged, so α stays bit-identical.

    ``warm_start`` (a ``state_dict`` at the end of warm-up, of any hardware and target) forks a fresh search from a
    shared warm-up; ``warmup_only`` ends the run at the end of warm-up (the state a sweep's searches fork from)."""
    rt = rt or Runtime()
    latency = latency or resolve_latency(cfg)
    check_target(cfg, latency)
    data = data or open_data(cfg)
    train, holdout = search_feeds(cfg, data, rt.rank, rt.world, rt.on_gpu)
    state = init_state(cfg, latency, train.batches_per_epoch, rt)
    if resume is not None:
        load_state_dict(state, resume)
        log.info("resumed at step %d (arch step %d)", state.step, state.arch_step)
    elif warm_start is not None:
        fork_from_warmup(state, warm_start)
        log.info("forked from the shared warm-up at step %d", state.step)
    end = warmup_steps(state) if warmup_only else state.total_steps
    train_it = train.stream(state.step)
    hold_it = None  # opened at the first architecture step: warm-up reads no held-out image
    bar = progress_bar(progress, end, state.step, "warm-up" if warmup_only else "search")
    clock = _Clock(state)
    while state.step < end:
        x, y = rt.batch(*next(train_it))
        clock.lap("data")
        phase = "weight" if state.searching else "warmup"
        metrics = weight_step(state, x, y)
        clock.lap(phase)
        # A warm-up-only run leaves α untouched, so that searches can fork from it.
        if not warmup_only:
            for _ in range(arch_updates_after(cfg, state.step, state.steps_per_epoch)):
                if hold_it is None:
                    hold_it = holdout.stream(state.arch_step)
                hx, hy = rt.batch(*next(hold_it))
                clock.lap("data")
                metrics.update(arch_step(state, hx, hy))
                clock.lap("arch")
        metrics.pop("expected_latency", None)
        metrics_window(state.window, metrics)
        bar.update(1)
        if after_step is not None:
            after_step(state)
        if len(state.paths) > 10_000:  # nobody checks them (one process): keep memory flat
            state.paths.clear()
        if state.step % cfg.log_every == 0 or state.step == end:
            row = _curve_point(state)
            state.history.append(row)
            bar.set_postfix(loss=f"{row.get('loss', math.nan):.3f}", lat=f"{row['expected_latency']:.3g}")
            if on_step is not None:
                on_step(state, row)
        if checkpoint is not None and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
            checkpoint(state)
        clock.lap("other")
    bar.close()
    if checkpoint is not None and not (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0):
        checkpoint(state)
    valid = cfg.data.feed(data.valid, batch_size=local_batch(cfg.weight.batch_size, rt.world, "weight.batch_size"),
                          rank=rt.rank, world=rt.world, shuffle=False, stream="valid", pin_memory=rt.on_gpu)
    return make_result(state, valid, clock)


def check_target(cfg: SearchConfig, latency: LatencyModel) -> None:
    """Under ``derive: budget`` the target is a hard budget: refuse one below the space's fastest net up front."""
    if cfg.derive == "budget":
        from orchestrator.derive import fastest_latency

        lo = fastest_latency(latency)
        if cfg.target < lo:
            raise ValueError(f"target: {cfg.target:g} {latency.unit} is below the fastest net of space "
                             f"{cfg.search_space.name!r} on {latency.hardware} ({lo:.4g} {latency.unit}); no "
                             f"architecture fits it (derive: budget)")


def derive_arch(state: SearchState):
    """The net the search derives, and its log-probability under α."""
    from orchestrator.derive import derive_under_budget, log_probs_from_alpha

    logp = log_probs_from_alpha(state.logits.alpha.detach().cpu(), state.latency)
    if state.cfg.derive == "budget":
        d = derive_under_budget(logp, state.latency, state.cfg.target)
        return d.arch, d.log_prob
    arch = state.logits.derive()
    return arch, float(sum(logp[b, c] for b, c in enumerate(state.space.indices(arch))))


def make_result(state: SearchState, valid: Feed | None = None, clock: _Clock | None = None) -> SearchResult:
    """The derived architecture and α's state; the derived net (its supernet weights, batch-statistics BN as the
    official search validates paths) evaluated once across ranks on the validation split."""
    arch, log_prob = derive_arch(state)
    with torch.no_grad():
        probs = state.logits.probs()
        expected = state.latency.expected(probs).item()
        entropy = state.logits.entropy().item()
    acc, n = None, 0
    if valid is not None and len(valid.rows) > 0:  # collective: every rank evaluates its share
        net = state.rt.module(state.supernet.extract(arch))
        correct, n = evaluate(net, valid.epoch(0), state.rt, batch_stats=True)
        acc = correct / n if n else None
        if clock is not None:
            clock.lap("eval")
    curves: dict[str, list] = {}
    for row in state.history:
        for k in row:
            curves.setdefault(k, [])
    for row in state.history:
        for k in curves:
            curves[k].append(row.get(k))
    return SearchResult(
        arch=arch.encode(), hardware=state.latency.hardware, unit=state.latency.unit, target=state.cfg.target,
        expected_latency=expected, exact_latency=state.latency.exact(arch),
        candidates=tuple(op.encode() for op in state.space.candidates),
        alpha=tuple(tuple(r) for r in state.logits.alpha.detach().cpu().tolist()),
        probs=tuple(tuple(r) for r in probs.cpu().tolist()), entropy=entropy, steps=state.step,
        arch_steps=state.arch_step, alpha_fingerprint=alpha_fingerprint(state), valid_accuracy=acc, val_images=n,
        device=str(state.rt.device), world_size=state.rt.world, seconds=dict(state.seconds),
        latency_model=validation_metrics(state.latency.provenance), derive=state.cfg.derive,
        argmax_arch=state.logits.derive().encode(), log_prob=log_prob,
        curves=curves, config=state.cfg.to_dict(),
    )


def save_checkpoint(state: SearchState, path: str | Path) -> None:
    """Write ``state_dict(state)`` atomically (a crash mid-write leaves the previous checkpoint intact)."""
    from orchestrator.search.state import state_dict
    from orchestrator.state_io import save_state

    save_state(state_dict(state), path)


def load_checkpoint(path: str | Path) -> dict:
    """A saved search state; a file holding anything but tensors and plain containers is refused, unexecuted."""
    from orchestrator.state_io import load_state

    return load_state(path, "checkpoint")

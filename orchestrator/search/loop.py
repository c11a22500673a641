"""``run_search``: the search loop of one process (one rank), with hooks so that a Ray Train wrapper stays thin.

The loop is a function of the state's counters only: every epoch's data order, every batch's augmentation,
every path and every held-out batch are drawn from generators seeded by (seed, counter), so resuming from
``state_dict`` replays exactly. Weight steps run on the training core shared with retraining (``train.core``).
"""

from __future__ import annotations

import logging
import math
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
    state_dict,
    warmup_steps,
)
from orchestrator.search.steps import arch_step, arch_updates_after, weight_step
from orchestrator.state_io import load_state, save_state
from orchestrator.derive import derive_under_budget, fastest_latency, log_probs_from_alpha
from orchestrator.train.core import evaluate
from orchestrator.train.loop import Clock, Hooks, Schedule, rank_feed, run_loop
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


def search_feeds(cfg: SearchConfig, data: Splits, rt: Runtime | None = None) -> tuple[Feed, Feed]:
    """The weight-training and held-out feeds of one rank; ``ValueError`` before any step when a rank would get
    less than one batch of either (not at the first architecture step, after the warm-up)."""
    rt = rt or Runtime()
    arch_batch, arch_key = cfg.arch.holdout_batch
    return (rank_feed(cfg.data, data.train, cfg.weight.batch_size, "weight.batch_size", rt, "train"),
            rank_feed(cfg.data, data.holdout, arch_batch, arch_key, rt, "holdout"))


def _curve_point(state: SearchState, means: dict[str, float]) -> dict:
    """The window's means since the last point, plus α's state now."""
    row: dict[str, Any] = {"step": state.step, "epoch": state.step / state.steps_per_epoch,
                           "arch_step": state.arch_step, "phase": "search" if state.searching else "warmup"}
    row.update(means)
    with torch.no_grad():
        row["expected_latency"] = state.latency.expected(state.logits.probs()).item()
        row["entropy"] = state.logits.entropy().item()
    return row


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
    train, holdout = search_feeds(cfg, data, rt)
    valid = rank_feed(cfg.data, data.valid, cfg.weight.batch_size, "weight.batch_size", rt, "valid", shuffle=False,
                      need_batch=False)
    state = init_state(cfg, latency, train.batches_per_epoch, rt)
    if resume is not None:
        load_state_dict(state, resume)
        log.info("resumed at step %d (arch step %d)", state.step, state.arch_step)
    elif warm_start is not None:
        fork_from_warmup(state, warm_start)
        log.info("forked from the shared warm-up at step %d", state.step)
    train_it = train.stream(state.step)
    hold_it = None  # opened at the first architecture step: warm-up reads no held-out image

    def step(clock: Clock) -> dict:
        nonlocal hold_it
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
        return metrics

    def after() -> None:
        if after_step is not None:
            after_step(state)
        if len(state.paths) > 10_000:  # nobody checks them (one process): keep memory flat
            state.paths.clear()

    end = warmup_steps(state) if warmup_only else state.total_steps
    clock = run_loop(state, step, Schedule(end, cfg.log_every, cfg.checkpoint_every),
                     row=lambda means: _curve_point(state, means),
                     hooks=Hooks(after_step=after, on_row=on_step and (lambda row: on_step(state, row)),
                                 checkpoint=checkpoint and (lambda: checkpoint(state))),
                     progress=progress, desc="warm-up" if warmup_only else "search",
                     postfix=lambda r: {"loss": f"{r.get('loss', math.nan):.3f}",
                                        "lat": f"{r['expected_latency']:.3g}"})
    return make_result(state, valid, clock)


def check_target(cfg: SearchConfig, latency: LatencyModel) -> None:
    """Under ``derive: budget`` the target is a hard budget: refuse one below the space's fastest net up front."""
    if cfg.derive == "budget":
        lo = fastest_latency(latency)
        if cfg.target < lo:
            raise ValueError(f"target: {cfg.target:g} {latency.unit} is below the fastest net of space "
                             f"{cfg.search_space.name!r} on {latency.hardware} ({lo:.4g} {latency.unit}); no "
                             f"architecture fits it (derive: budget)")


def derive_arch(state: SearchState):
    """The net the search derives, and its log-probability under α."""
    logp = log_probs_from_alpha(state.logits.alpha.detach().cpu(), state.latency)
    if state.cfg.derive == "budget":
        d = derive_under_budget(logp, state.latency, state.cfg.target)
        return d.arch, d.log_prob
    arch = state.logits.derive()
    return arch, float(sum(logp[b, c] for b, c in enumerate(state.space.indices(arch))))


def make_result(state: SearchState, valid: Feed | None = None, clock: Clock | None = None) -> SearchResult:
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
    save_state(state_dict(state), path)


def load_checkpoint(path: str | Path) -> dict:
    """A saved search state; a file holding anything but tensors and plain containers is refused, unexecuted."""
    return load_state(path, "checkpoint")

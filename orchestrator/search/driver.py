"""``run_search``: the one-process search loop, with hooks so that a Ray Train wrapper stays thin.

The loop is a function of the state's counters only: the epoch's data order, every path and every held-out
batch are drawn from generators seeded by (seed, counter), so resuming from ``state_dict`` replays exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

from orchestrator.latency.model import LatencyModel
from orchestrator.latency.profiles import latency_model
from orchestrator.search.config import SearchConfig
from orchestrator.search.sampling import batch_indices, generator
from orchestrator.search.state import SearchState, alpha_fingerprint, fork_from_warmup, init_state, load_state_dict
from orchestrator.search.steps import Sync, arch_step, arch_update_due, weight_step
from orchestrator.spaces import get_space

log = logging.getLogger(__name__)

OnStep = Callable[[SearchState, dict], None]
Checkpoint = Callable[[SearchState], None]


@dataclass(frozen=True)
class SearchResult:
    """What a search produces: the derived architecture, α, latencies and curves (JSON-ready via ``to_dict``)."""

    arch: str
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
    curves: dict[str, list] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_latency(cfg: SearchConfig) -> LatencyModel:
    """The latency model for the config's hardware; raised errors name the ``hardware`` key."""
    try:
        return latency_model(cfg.hardware, get_space(cfg.space), cfg.latency_table)
    except (ValueError, OSError) as e:
        raise ValueError(f"hardware: {e}") from None


def _tensors(ds: Dataset, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(ds, TensorDataset):
        x, y = ds.tensors[:2]
        return x[idx], y[idx]
    items = [ds[int(i)] for i in idx]
    return torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])


def _accumulate(window: dict, metrics: dict) -> None:
    for k, v in metrics.items():
        s, n = window.get(k, (0.0, 0))
        window[k] = (s + float(v), n + 1)


def _curve_point(state: SearchState) -> dict:
    """Averages since the last point, plus α's state now."""
    row: dict[str, Any] = {"step": state.step, "epoch": state.step / state.steps_per_epoch,
                           "arch_step": state.arch_step, "phase": "search" if state.searching else "warmup"}
    row.update({k: s / n for k, (s, n) in state.window.items()})
    with torch.no_grad():
        row["expected_latency"] = state.latency.expected(state.logits.probs()).item()
        row["entropy"] = state.logits.entropy().item()
    state.window = {}
    return row


def run_search(
    cfg: SearchConfig,
    data: Any,
    *,
    sync: Sync | None = None,
    on_step: OnStep | None = None,
    checkpoint: Checkpoint | None = None,
    resume: dict | None = None,
    latency: LatencyModel | None = None,
    progress: bool = False,
    shard: tuple[int, int] = (0, 1),
    warm_start: dict | None = None,
    stop_at: int | None = None,
) -> SearchResult:
    """Run (or continue, from a ``state_dict`` in ``resume``) a search on ``data`` (``.train``, ``.holdout`` and
    optionally ``.valid`` datasets); ``on_step(state, row)`` gets every curve point, ``checkpoint(state)`` is
    called every ``cfg.checkpoint_every`` weight steps and at the end.

    ``shard=(rank, world)`` makes this one data-parallel rank: every rank draws the same global batches and
    paths, and takes the batch items ``rank::world``; ``sync`` averages the gradients, so the update equals that
    of the global batch.

    ``warm_start`` (a ``state_dict`` at the end of warm-up, of any hardware and target) forks a fresh search from a
    shared warm-up; ``stop_at`` ends the loop early at that weight step (e.g. the end of warm-up)."""
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard: rank {rank} is not in [0, {world})")
    if world > min(cfg.weight.batch_size, cfg.arch.batch_size):
        raise ValueError(f"weight.batch_size/arch.batch_size: smaller than the {world} workers sharing each batch")
    latency = latency or resolve_latency(cfg)
    spe = len(data.train) // cfg.weight.batch_size
    state = init_state(cfg, latency, spe)
    if resume is not None:
        load_state_dict(state, resume)
        log.info("resumed at step %d (arch step %d)", state.step, state.arch_step)
    elif warm_start is not None:
        fork_from_warmup(state, warm_start)
        log.info("forked from the shared warm-up at step %d", state.step)
    end = state.total_steps if stop_at is None else min(stop_at, state.total_steps)
    n_train, n_hold = len(data.train), len(data.holdout)
    perm_epoch, perm = -1, None
    bar = tqdm(total=state.total_steps, initial=state.step, disable=not progress, desc="search", unit="step")
    while state.step < end:
        epoch, i = divmod(state.step, spe)
        if epoch != perm_epoch:
            perm, perm_epoch = torch.randperm(n_train, generator=generator(cfg.seed, "data", epoch)), epoch
        b = cfg.weight.batch_size
        metrics = weight_step(state, *_tensors(data.train, perm[i * b:(i + 1) * b][rank::world]), sync=sync)
        # A run stopped at the end of warm-up (stop_at) leaves α untouched, so that searches can fork from it.
        if arch_update_due(cfg, state.step, spe) and (stop_at is None or state.step < stop_at):
            for _ in range(cfg.arch.update_steps):
                idx = batch_indices(n_hold, cfg.arch.batch_size, generator(cfg.seed, "holdout", state.arch_step))
                metrics.update(arch_step(state, *_tensors(data.holdout, idx[rank::world]), sync=sync))
        metrics.pop("expected_latency", None)
        _accumulate(state.window, metrics)
        bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == end:
            row = _curve_point(state)
            state.history.append(row)
            bar.set_postfix(loss=f"{row.get('loss', math.nan):.3f}", lat=f"{row['expected_latency']:.3g}")
            if on_step is not None:
                on_step(state, row)
        if checkpoint is not None and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
            checkpoint(state)
    bar.close()
    if checkpoint is not None and not (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0):
        checkpoint(state)
    return make_result(state, getattr(data, "valid", None))


@torch.no_grad()
def evaluate(net: torch.nn.Module, ds: Dataset, batch: int = 256) -> float:
    """Top-1 accuracy with batch-statistics BN (as the official search validates supernet paths)."""
    net.train()
    correct = 0
    for s in range(0, len(ds), batch):
        x, y = _tensors(ds, torch.arange(s, min(s + batch, len(ds))))
        correct += int((net(x).argmax(1) == y).sum())
    return correct / max(1, len(ds))


def make_result(state: SearchState, valid: Dataset | None = None) -> SearchResult:
    arch = state.logits.derive()
    with torch.no_grad():
        probs = state.logits.probs()
        expected = state.latency.expected(probs).item()
        entropy = state.logits.entropy().item()
    acc = evaluate(state.supernet.extract(arch), valid) if valid is not None and len(valid) else None
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
        alpha=tuple(tuple(r) for r in state.logits.alpha.detach().tolist()),
        probs=tuple(tuple(r) for r in probs.tolist()), entropy=entropy, steps=state.step,
        arch_steps=state.arch_step, alpha_fingerprint=alpha_fingerprint(state), valid_accuracy=acc,
        curves=curves, config=state.cfg.to_dict(),
    )


def load_data(cfg: SearchConfig) -> Any:
    """The three splits a search runs on, as map-style datasets (``.train``, ``.holdout``, ``.valid``): the embedded
    digits, or an ImageFolder tree (ImageNet) with its seeded per-class held-out split and standard transforms.
    Every rank builds the same splits; ``run_search(shard=...)`` then gives each rank its part of every batch."""
    space = get_space(cfg.space)
    if cfg.data.name == "digits":
        from orchestrator.data.digits import digits_splits

        return digits_splits(space.resolution, seed=cfg.data.seed, holdout_per_class=cfg.data.holdout_per_class,
                             valid_fraction=cfg.data.valid_fraction)
    from orchestrator.data.source import DataConfig as Source
    from orchestrator.data.source import folder_parts

    return folder_parts(Source(kind="imagefolder", uri=cfg.data.uri, valid_uri=cfg.data.valid_uri,
                               resolution=space.resolution, holdout_per_class=cfg.data.holdout_per_class,
                               valid_fraction=cfg.data.valid_fraction, seed=cfg.data.seed,
                               num_classes=space.num_classes))


def save_checkpoint(state: SearchState, path: str | Path) -> None:
    """Write ``state_dict(state)`` atomically (a crash mid-write leaves the previous checkpoint intact)."""
    from orchestrator.search.state import state_dict

    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state_dict(state), tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(Path(path), map_location="cpu", weights_only=False)

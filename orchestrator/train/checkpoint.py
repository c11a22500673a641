"""The one per-rank checkpoint format of search, warm-up and retrain: a header every run writes the same way, one
resume check and one reseeding rule.

A checkpoint is a dict of tensors and plain Python values (it loads with ``torch.load(weights_only=True)``):

- the header (``header``): format version, kind (``search`` or ``retrain``), the run's config, its space and that
  space's fingerprint, steps per epoch, world size, every rank's random state, provenance;
- the loop's counters and records: ``step``, ``window`` (running metric sums), ``history`` (curve rows),
  ``seconds`` (per phase);
- the trained model (``model``) and its optimiser (``opt``), plus what the kind adds (the search's α, its optimiser
  and its counters).

Writing one is collective: BatchNorm statistics are averaged over the ranks first and every rank's random state is
gathered, so rank 0's copy describes the whole group. A resume on the same world size restores each rank's own
random state; on another world size weights, optimisers and counters are exact and each rank is reseeded from
(seed, rank, step).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import torch
from torch import nn

from orchestrator.provenance import provenance
from orchestrator.spaces import SearchSpace
from orchestrator.train.runtime import Runtime, average_bn_stats, rng_state, set_rng_state

__all__ = ["CHECKPOINT_VERSION", "Kind", "RESUME_FREE", "cpu", "config_diff", "header", "loop_state",
           "check_resume", "restore_loop_state", "seed_rank"]

CHECKPOINT_VERSION = 3  # one format for search and retrain: header, loop state, model, optimiser
Kind = Literal["search", "retrain"]
# Config keys a resume may change: they change no computed value (logging cadence, where and how data is read).
RESUME_FREE = ("log_every", "checkpoint_every", "data.workers", "data.prefetch", "data.mp_context", "data.endpoint",
               "data.uri", "data.valid_uri")


def cpu(obj: Any) -> Any:
    """Tensors of a (nested) state on the CPU, detached and cloned: a checkpoint loads on any device."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu").clone()
    if isinstance(obj, dict):
        return {k: cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu(v) for v in obj)
    return obj


def config_diff(a: dict, b: dict, free: tuple[str, ...] = RESUME_FREE, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dicts, except the ``free`` ones."""
    keys = []
    for k in sorted(set(a) | set(b)):
        key = prefix + k
        if key in free:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += config_diff(va, vb, free, f"{key}.")
        elif va != vb:
            keys.append(key)
    return keys


def header(kind: Kind, config: dict, space: SearchSpace, steps_per_epoch: int, model: nn.Module,
           rt: Runtime) -> dict:
    """The part every checkpoint shares. Collective: averages ``model``'s BN statistics over the ranks and gathers
    every rank's random state."""
    average_bn_stats(model, rt.comm)
    return {"version": CHECKPOINT_VERSION, "kind": kind, "config": config, "space": space.name,
            "space_fingerprint": space.fingerprint(), "steps_per_epoch": steps_per_epoch, "world_size": rt.world,
            "rng": rt.comm.gather(cpu(rng_state(rt.device))), "provenance": provenance()}


def loop_state(state: Any) -> dict:
    """The loop's counters and records of a state (``step``, ``window``, ``history``, ``seconds``), plain."""
    return {"step": state.step, "window": {k: (float(s), int(n)) for k, (s, n) in state.window.items()},
            "history": [dict(h) for h in state.history], "seconds": dict(state.seconds)}


def check_resume(saved: dict, kind: Kind, config: dict, space: SearchSpace, steps_per_epoch: int, *,
                 free: tuple[str, ...] = RESUME_FREE, what: str = "checkpoint") -> None:
    """The one resume check: format and kind, the space's fingerprint, the config (but ``free`` keys) and the steps
    per epoch (another dataset, batch size or worker count changes them); ``ValueError`` names what differs."""
    if saved.get("version") != CHECKPOINT_VERSION or saved.get("kind") != kind:
        raise ValueError(f"{what} is not a {kind} state of format {CHECKPOINT_VERSION} (version "
                         f"{saved.get('version')!r}, kind {saved.get('kind')!r})")
    if saved["space_fingerprint"] != space.fingerprint():
        raise ValueError(f"{what} is of space {saved.get('space', '?')!r} (fingerprint {saved['space_fingerprint']}), "
                         f"not {space.name!r} ({space.fingerprint()})")
    diff = config_diff(config, saved["config"], free)
    if diff:
        raise ValueError(f"{what} was written with another config (differs in {', '.join(diff)})")
    if saved["steps_per_epoch"] != steps_per_epoch:
        raise ValueError(f"{what} has {saved['steps_per_epoch']} steps per epoch, data and workers give "
                         f"{steps_per_epoch} (another dataset, batch size or worker count)")


def restore_loop_state(state: Any, saved: dict, seed: int) -> None:
    """Counters, records and this rank's random state from ``saved`` (the one reseeding rule: the rank's own state
    on the same world size, else a fresh one from (seed, rank, step))."""
    state.step = saved["step"]
    state.window = {k: (float(s), int(n)) for k, (s, n) in saved["window"].items()}
    state.history = [dict(h) for h in saved["history"]]
    state.seconds = dict(saved["seconds"])
    rt = state.rt
    if len(saved["rng"]) == rt.world:
        set_rng_state(saved["rng"][rt.rank], rt.device)
    else:  # another world size: later random draws (dropout, augmentation in this process) are new
        seed_rank(seed, rt.rank, state.step)


def seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Seed this process's global generator from (seed, rank, step), so that per-rank random draws differ between
    ranks, as between the samples of one global batch, and repeat from run to run. (Every Python process starts
    torch from the same default seed.) A fresh start uses step 0; a resume restores the saved state instead."""
    tag = f"{seed}/rank-rng/{rank}" + (f"/{step}" if step else "")
    digest = hashlib.sha256(tag.encode()).digest()
    torch.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))

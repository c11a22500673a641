"""Fault injection, for the tests that prove recovery: a worker killed, a rank's α moved, every rank paused.

Each fault fires at most once per run: its marker is written to the run's storage (shared by every node) before it
fires, so a restarted worker group or driver does not fire it again. Nothing here runs unless a ``Faults`` asks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import torch

from orchestrator import storage as st
from orchestrator.train.runtime import Comm

__all__ = ["Faults", "inject_fault_once", "inject_divergence_once", "pause_once", "FAULT_MARKER",
           "DIVERGENCE_MARKER", "PAUSE_LIMIT_S"]

log = logging.getLogger(__name__)

FAULT_MARKER = "fault-injected.json"
DIVERGENCE_MARKER = "divergence-injected.json"
PAUSE_LIMIT_S = 300.0  # the longest a pause waits for its release


@dataclass(frozen=True)
class Faults:
    """The faults a test asks of a run on Ray (none by default)."""

    kill_at_step: int | None = None  # rank 1 kills itself once at this step (SIGKILL)
    diverge_at_step: int | None = None  # rank 1 moves its α once at this step
    pause_at_steps: tuple[int, ...] = ()  # every rank waits once at each of these steps (see pause_once)

    def __post_init__(self) -> None:
        if any(s < 1 for s in self.pause_at_steps):
            raise ValueError(f"pause_at_steps: steps must be at least 1, got {list(self.pause_at_steps)}")

    @classmethod
    def from_dict(cls, d: dict) -> "Faults":
        return cls(d["kill_at_step"], d["diverge_at_step"], tuple(d["pause_at_steps"]))


def inject_fault_once(run_dir: str, rank: int, step: int) -> None:
    """SIGKILL this worker, at most once per run, whether or not a restarted group found a checkpoint."""
    loc = st.resolve(run_dir)
    if st.exists(loc, FAULT_MARKER):
        return
    st.publish_bytes(loc, FAULT_MARKER, json.dumps({"rank": rank, "step": step}).encode())
    log.warning("fault injection: rank %d kills itself at step %d", rank, step)
    os.kill(os.getpid(), signal.SIGKILL)


def inject_divergence_once(run_dir: str, state: Any) -> None:
    """Move one allowed logit of this rank's α, at most once per run, so that a retried worker group would run
    clean: a test that still sees ``RanksDiverged`` knows the run was not retried."""
    loc = st.resolve(run_dir)
    if st.exists(loc, DIVERGENCE_MARKER):
        return
    st.publish_bytes(loc, DIVERGENCE_MARKER, json.dumps({"step": state.step}).encode())
    log.warning("fault injection: this rank's α diverges at step %d", state.step)
    with torch.no_grad():
        state.logits.alpha[tuple(state.logits.mask.nonzero()[0].tolist())] += 0.5


def pause_once(run_dir: str, comm: Comm, step: int, node: str, limit_s: float = PAUSE_LIMIT_S) -> bool:
    """Every rank waits at ``step``, once per run, so that a test can do its damage (remove a node, stop a server,
    kill the driver) while the run stands at a known step, every checkpoint before it committed. Rank 0 writes
    ``paused-<step>.json`` to the run's storage (naming each rank's ``node``) when the wait begins and waits until
    the storage holds ``release-<step>`` or ``limit_s`` passed; the others wait for rank 0. The marker stays, so a
    restarted worker group or driver does not pause there again. Collective."""
    loc = st.resolve(run_dir)
    marker = f"paused-{step}.json"
    nodes = comm.gather(node)
    fire = comm.rank == 0 and not st.exists(loc, marker)
    if fire:
        st.publish_bytes(loc, marker, json.dumps({"step": step, "nodes": nodes}).encode())
        log.warning("fault injection: the run pauses at step %d", step)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and not st.exists(loc, f"release-{step}"):
            time.sleep(0.25)
    return bool(comm.gather(fire)[0])  # the other ranks wait here for rank 0

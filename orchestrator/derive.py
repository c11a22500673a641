"""Budgeted derivation: the most probable architecture under α whose predicted latency fits a hard budget.

ProxylessNAS derives the argmax of α, which can land above the search's latency target. With an additive latency
model (``fixed + Σ_b costs[b][c_b]``, optionally ``+ Σ_b pair_costs[b][c_b][c_{b+1}]`` between neighbouring
blocks) the best net under a budget is a multiple-choice knapsack over blocks. It is solved here EXACTLY, with no
discretisation of latency: a dynamic programme over blocks keeps, for every prefix, the Pareto set of
(latency, log-probability) states, removing a state only when another one with the same last choice is at least
as fast and at least as probable (so anything the removed one could become, the other can become too, no slower
and no less probable). A state that cannot fit the budget whatever the remaining blocks take (its latency plus an
exact lower bound on the rest exceeds the budget) is dropped as well. Latencies are summed in block order, the
order ``LatencyModel.total`` defines for ``exact`` and ``bounds`` (the blocks from 0.0, then the fixed part), so
without pairwise terms the reported latency equals ``exact(arch)`` bit for bit, the fastest net's latency equals
``bounds()[0]``, and the budget test is the one a user would make.

Ties: among architectures of equal log-probability the faster one is returned, so a tighter budget never
returns a slower net.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.arch import Arch
from orchestrator.latency.model import LatencyModel

log = logging.getLogger(__name__)

# Pruning by the lower bound on the remaining blocks may only drop states that surely cannot fit: the bound is
# summed in another order than the final latency, so it is compared with this much relative slack. The final
# test ``latency <= budget`` is exact.
_BOUND_SLACK = 1e-9


@dataclass(frozen=True)
class Derived:
    """One derived architecture: its predicted latency (in the model's unit), its log-probability under α (the sum
    over blocks of log softmax(α)) and the budget it was derived for."""

    arch: Arch
    predicted_latency: float
    log_prob: float
    budget: float

    def to_dict(self) -> dict:
        return {"arch": self.arch.encode(), "predicted_latency": self.predicted_latency, "log_prob": self.log_prob,
                "probability": math.exp(self.log_prob), "budget": self.budget}


def log_probs_from_alpha(alpha: Any, model_or_mask: LatencyModel | Sequence[Sequence[bool]]) -> np.ndarray:
    """log softmax(α) per block over the allowed candidates, ``-inf`` elsewhere, in float64: what a search's α
    (a tensor, array or nested list of shape blocks × candidates) says about each block's op."""
    mask = np.asarray(model_or_mask.space.allowed_mask() if isinstance(model_or_mask, LatencyModel)
                      else model_or_mask, dtype=bool)
    a = _as_array(alpha, "alpha")
    if a.shape != mask.shape:
        raise ValueError(f"alpha has shape {a.shape}, expected {mask.shape} (blocks × candidates)")
    a = np.where(mask, a, -np.inf)
    if not np.all(np.isfinite(a[mask])):
        raise ValueError("alpha has non-finite values on allowed candidates")
    top = a.max(axis=1, keepdims=True)
    return a - (top + np.log(np.exp(a - top).sum(axis=1, keepdims=True)))


def derive_under_budget(log_probs: Any, model: LatencyModel, budget: float) -> Derived:
    """The architecture of highest log-probability whose predicted latency is at most ``budget``.

    ``log_probs``: blocks × candidates (``-inf`` where a candidate is not allowed or has probability 0), e.g. from
    ``log_probs_from_alpha``. ``model``: additive costs plus ``fixed``, and ``pair_costs`` (blocks-1 × C × C) if the
    model has them. Raises ``ValueError`` naming the fastest reachable latency when nothing fits."""
    return derive_front(log_probs, model, [budget])[0]


def derive_front(log_probs: Any, model: LatencyModel, budgets: Sequence[float]) -> list[Derived]:
    """``derive_under_budget`` for every budget (in the given order) from one dynamic programme: one net per
    budget, a latency/probability front from a single search."""
    budgets = [float(b) for b in budgets]
    if not budgets:
        raise ValueError("no budgets given")
    for b in budgets:
        if not math.isfinite(b) or b <= 0:
            raise ValueError(f"budget must be a positive number, got {b}")
    prob = _Problem.build(log_probs, model)
    fastest = prob.fastest()
    low = min(budgets)
    if low < fastest:
        raise ValueError(f"no architecture of space {model.space.name!r} fits a budget of {low:.6g} {model.unit} "
                         f"on {model.hardware}: the fastest possible is {fastest:.6g} {model.unit}")
    totals, logps, backtrack = prob.front(max(budgets))
    out = []
    for b in budgets:
        i = int(np.searchsorted(totals, b, side="right")) - 1
        if i < 0:  # cannot happen once b >= fastest; kept as a guard against an inconsistent model
            raise ValueError(f"no architecture fits a budget of {b:.6g} {model.unit} on {model.hardware}")
        idx = backtrack(i)
        out.append(Derived(model.space.arch_from_indices(idx), float(totals[i]), float(logps[i]), b))
    return out


def fastest_latency(model: LatencyModel, log_probs: Any | None = None) -> float:
    """The lowest predicted latency any architecture reaches (among candidates of non-zero probability, when
    ``log_probs`` is given), pairwise terms included."""
    if log_probs is None:
        log_probs = log_probs_from_alpha(np.zeros(np.shape(model.costs)), model)  # every allowed op, uniformly
    return _Problem.build(log_probs, model).fastest()


def _as_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a blocks × candidates array of numbers") from None


@dataclass
class _Problem:
    lp: np.ndarray  # [B, C] log-probabilities, -inf where excluded
    allowed: np.ndarray  # [B, C] bool
    costs: np.ndarray  # [B, C], 0 where excluded
    pair: np.ndarray | None  # [B-1, C, C], 0 where a transition cannot occur
    fixed: float

    @classmethod
    def build(cls, log_probs: Any, model: LatencyModel) -> "_Problem":
        space_mask = np.asarray(model.space.allowed_mask(), dtype=bool)
        lp = _as_array(log_probs, "log_probs")
        if lp.shape != space_mask.shape:
            raise ValueError(f"log_probs has shape {lp.shape}, the latency model of space {model.space.name!r} "
                             f"{space_mask.shape} (blocks × candidates)")
        if np.isnan(lp).any() or (lp == np.inf).any():
            raise ValueError("log_probs holds NaN or +inf")
        allowed = space_mask & np.isfinite(lp)
        empty = np.flatnonzero(~allowed.any(axis=1))
        if empty.size:
            raise ValueError(f"block {int(empty[0])} has no allowed candidate of non-zero probability")
        with np.errstate(invalid="ignore", over="ignore"):
            norm = np.log(np.where(allowed, np.exp(np.where(allowed, lp, 0.0)), 0.0).sum(axis=1))
        if np.any(np.abs(norm) > 1e-3):
            b = int(np.argmax(np.abs(norm)))
            raise ValueError(f"log_probs of block {b} do not sum to probability 1 (log-sum {norm[b]:.4g}): pass "
                             f"log softmax(α) (log_probs_from_alpha), not α itself")
        costs = np.where(allowed, np.asarray(model.costs, dtype=np.float64), 0.0)
        pair = getattr(model, "pair_costs", None)
        if pair is not None:
            pair = np.asarray(pair, dtype=np.float64)
            B, C = lp.shape
            if pair.shape != (B - 1, C, C):
                raise ValueError(f"pair_costs has shape {pair.shape}, expected {(B - 1, C, C)} "
                                 f"(neighbouring blocks × candidate × candidate)")
            used = allowed[:-1, :, None] & allowed[1:, None, :]
            if not np.all(np.isfinite(pair[used])):
                raise ValueError("pair_costs has non-finite values between allowed candidates")
            pair = np.where(used, pair, 0.0)
        return cls(lp, allowed, costs, pair, float(model.fixed))

    def _pair(self, b: int, last: np.ndarray, cands: np.ndarray) -> np.ndarray | float:
        """Pairwise cost from each state's last choice (block b-1) to each candidate of block b: [n, k] or 0."""
        if self.pair is None or b == 0:
            return 0.0
        return self.pair[b - 1][last][:, cands]

    def fastest(self) -> float:
        """Exact minimum latency, summed in the same order as ``front`` and ``LatencyModel.total`` (rounding is
        monotone, so the minimum of the per-prefix minima is the minimum over architectures, and without pairwise
        terms it equals ``LatencyModel.bounds()[0]`` bit for bit)."""
        best = np.zeros(1)
        last = np.zeros(1, dtype=np.int64)
        for b in range(self.lp.shape[0]):
            cands = np.flatnonzero(self.allowed[b])
            lat = (best[:, None] + self.costs[b, cands][None, :]) + self._pair(b, last, cands)
            best, last = lat.min(axis=0), cands
        return self.fixed + float(best.min())

    def _rest_bound(self) -> np.ndarray:
        """rest[b][j]: the least latency blocks b+1.. can add once block b has taken candidate j (exact)."""
        B, C = self.lp.shape
        rest = np.zeros((B, C))
        for b in range(B - 2, -1, -1):
            nxt = np.where(self.allowed[b + 1], self.costs[b + 1] + rest[b + 1], np.inf)  # [C]
            step = nxt[None, :] + (self.pair[b] if self.pair is not None else 0.0)  # [C(j), C(k)]
            rest[b] = step.min(axis=1)
        return rest

    def front(self, budget: float):
        """The Pareto front of whole architectures with latency <= ``budget``: totals ascending, log-probabilities
        strictly ascending, and a function from a front index to the candidate index of every block."""
        B, _ = self.lp.shape
        rest = self._rest_bound()
        limit = budget + _BOUND_SLACK * max(1.0, abs(budget))
        lat, logp = np.zeros(1), np.zeros(1)
        last = np.zeros(1, dtype=np.int64)
        history: list[tuple[np.ndarray, np.ndarray]] = []
        for b in range(B):
            cands = np.flatnonzero(self.allowed[b])
            n, k = lat.size, cands.size
            new_lat = ((lat[:, None] + self.costs[b, cands][None, :]) + self._pair(b, last, cands)).ravel()
            new_lp = (logp[:, None] + self.lp[b, cands][None, :]).ravel()
            parent = np.repeat(np.arange(n), k)
            choice = np.tile(cands, n)
            fits = new_lat + rest[b][choice] + self.fixed <= limit
            new_lat, new_lp, parent, choice = new_lat[fits], new_lp[fits], parent[fits], choice[fits]
            # States that differ only in how the rest is priced must stay apart: with pairwise terms, the next
            # block's cost depends on this block's choice, so dominance is checked within each choice only.
            group = choice if (self.pair is not None and b < B - 1) else np.zeros_like(choice)
            order = np.lexsort((-new_lp, new_lat, group))
            new_lat, new_lp, parent, choice, group = (a[order] for a in (new_lat, new_lp, parent, choice, group))
            keep = np.ones(new_lat.size, dtype=bool)
            starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if group.size else np.array([], int)
            ends = np.r_[starts[1:], group.size]
            for s, e in zip(starts, ends):
                run = np.maximum.accumulate(new_lp[s:e])
                keep[s + 1:e] = new_lp[s + 1:e] > run[:-1]
            lat, logp, last = new_lat[keep], new_lp[keep], choice[keep]
            history.append((parent[keep], last))
        log.debug("budget %.6g: %d front states after %d blocks", budget, lat.size, B)
        totals = self.fixed + lat  # fixed + Σ costs, the order LatencyModel.exact uses
        feasible = totals <= budget
        totals, logp = totals[feasible], logp[feasible]
        final_index = np.flatnonzero(feasible)

        def backtrack(i: int) -> list[int]:
            j = int(final_index[i])
            idx = [0] * B
            for b in range(B - 1, -1, -1):
                parent, choice = history[b]
                idx[b] = int(choice[j])
                j = int(parent[j])
            return idx

        return totals, logp, backtrack

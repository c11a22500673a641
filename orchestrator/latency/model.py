"""The latency model the search optimises: a (block × candidate) cost matrix plus the fixed cost of stem and head.

Every hardware profile (measured tables, imported tables, the analytic ``flops`` proxy) ends up as a
``LatencyModel``; the search needs only ``expected`` (differentiable in α) and ``exact``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from orchestrator.arch import Arch
from orchestrator.spaces import SearchSpace


@dataclass(frozen=True)
class LatencyModel:
    space: SearchSpace
    hardware: str
    costs: tuple[tuple[float, ...], ...]  # [block][candidate]; 0.0 for zero, nan where a candidate is not allowed
    fixed: float  # stem, first block and head
    unit: str = "ms"
    provenance: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        mask = self.space.allowed_mask()
        if len(self.costs) != len(mask) or any(len(r) != len(m) for r, m in zip(self.costs, mask)):
            raise ValueError(f"cost matrix shape does not match space {self.space.name!r}")
        for b, (row, allowed) in enumerate(zip(self.costs, mask)):
            for c, (v, ok) in enumerate(zip(row, allowed)):
                if ok and not (math.isfinite(v) and v >= 0):
                    op = self.space.candidates[c].encode()
                    raise ValueError(f"latency model for {self.hardware!r}: block {b} op {op} has cost {v}")

    def cost_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Costs as a (blocks, candidates) tensor with disallowed entries set to 0."""
        t = torch.tensor(self.costs, dtype=torch.float32, device=device)
        return torch.nan_to_num(t, nan=0.0)

    def exact(self, arch: Arch) -> float:
        """Latency of one architecture: the sum of its entries plus the fixed part."""
        if arch.widths is not None and arch.widths != self.space.widths():
            raise ValueError(f"{arch.encode()} carries its own widths; the {self.hardware!r} table prices only "
                             f"the widths of space {self.space.name!r}: measure the network itself")
        idx = self.space.indices(arch)
        return self.total(self.costs[b][c] for b, c in enumerate(idx))

    def total(self, block_costs: Iterable[float]) -> float:
        """The one summation order of every latency this model reports: the blocks' costs added in block order
        from 0.0, then the fixed part. ``exact``, ``bounds`` and the budgeted derivation (``orchestrator.derive``,
        which adds numpy float64 in the same order) all use it, so a target that ``bounds`` accepts is one the
        derivation reaches, bit for bit (floating-point addition is not associative: ``(fixed + c0) + c1`` and
        ``fixed + (c0 + c1)`` can differ by an ulp)."""
        return self.fixed + sum(block_costs, 0.0)

    def expected(self, probs: torch.Tensor) -> torch.Tensor:
        """E[latency] under per-block candidate probabilities, differentiable in them (and so in α)."""
        costs = self.cost_tensor(probs.device).to(probs.dtype)
        if probs.shape != costs.shape:
            raise ValueError(f"probabilities of shape {tuple(probs.shape)}, expected {tuple(costs.shape)}")
        return self.fixed + (probs * costs).sum()

    def bounds(self) -> tuple[float, float]:
        """The fastest and slowest reachable latency in this space, summed as ``exact`` sums (``total``): the lower
        bound is exactly ``exact`` of the fastest net and ``orchestrator.derive.fastest_latency`` (rounding is
        monotone, so the sum of the per-block minima is the minimum of the sums)."""
        rows = [[v for v, ok in zip(row, allowed) if ok] for row, allowed in zip(self.costs, self.space.allowed_mask())]
        return self.total(min(r) for r in rows), self.total(max(r) for r in rows)

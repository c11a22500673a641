"""Hardware profiles by name: resolve what a config names (``flops``, or a table URI) into a ``LatencyModel``."""

from __future__ import annotations

from orchestrator.latency.model import LatencyModel
from orchestrator.spaces import SearchSpace


def latency_model(hardware: str, space: SearchSpace, table: str | None = None) -> LatencyModel:
    """The latency model for ``hardware`` on ``space``: analytic for ``flops``, else loaded from ``table``."""
    if hardware == "flops":
        from orchestrator.latency.flops import flops_model

        return flops_model(space)
    raise ValueError(f"unknown hardware {hardware!r} (known: flops)")

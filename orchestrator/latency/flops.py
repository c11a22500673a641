"""The analytic ``flops`` hardware profile: MACs from PyTorch's FLOP counter, in millions, as a latency proxy."""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from orchestrator.latency.model import LatencyModel
from orchestrator.network import Head, bn_kwargs, make_op, make_stem
from orchestrator.spaces import SearchSpace


@torch.no_grad()
def _mmacs(module: torch.nn.Module, shape: tuple[int, ...]) -> float:
    module.eval()
    with FlopCounterMode(display=False) as counter:
        module(torch.zeros(shape))
    return counter.get_total_flops() / 2 / 1e6


def flops_model(space: SearchSpace) -> LatencyModel:
    """Cost of every (block, candidate) in millions of MACs at batch 1; ``zero`` costs nothing."""
    widths = space.widths()
    stem_cost = _mmacs(make_stem(space, widths), (1, space.in_channels, space.resolution, space.resolution))
    specs = space.blocks()
    head = Head(widths.stages[-1], widths.head, space.num_classes, 0.0, bn_kwargs(space))
    last = specs[-1]
    head_cost = _mmacs(head, (1, last.out_channels, last.out_resolution, last.out_resolution))
    costs = []
    for spec in specs:
        row = []
        for op in space.candidates:
            if op.is_zero:
                row.append(0.0 if spec.zero_ok else math.nan)
            else:
                m = make_op(spec, op, space)
                row.append(_mmacs(m, (1, spec.in_channels, spec.in_resolution, spec.in_resolution)))
        costs.append(tuple(row))
    return LatencyModel(space, "flops", tuple(costs), stem_cost + head_cost, unit="MMAC",
                        provenance={"hardware": "flops", "space": space.name, "fingerprint": space.fingerprint()})

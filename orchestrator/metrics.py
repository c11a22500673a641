"""Size and compute of a network: parameters and MACs from PyTorch's own FLOP counter."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from orchestrator.arch import Arch
from orchestrator.network import build_net
from orchestrator.spaces import get_space


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def count_macs(net: nn.Module, resolution: int, in_channels: int = 3) -> int:
    """Multiply-accumulates of one image's forward pass (FLOPs / 2 as ``torch.utils.flop_counter`` counts them)."""
    was_training = net.training
    net.eval()
    with FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, in_channels, resolution, resolution))
    net.train(was_training)
    return counter.get_total_flops() // 2


def describe(arch: Arch, resolution: int | None = None) -> dict:
    """The facts ``nas arch info`` prints: the string, space, params, MACs, resolution, blocks."""
    space = get_space(arch.space)
    res = resolution or space.resolution
    net = build_net(arch, space)
    return {
        "arch": arch.encode(),
        "space": space.name,
        "space_fingerprint": space.fingerprint(),
        "params": count_params(net),
        "macs": count_macs(net, res, space.in_channels),
        "resolution": res,
        "blocks": len(arch.ops),
        "skipped_blocks": sum(op.is_zero for op in arch.ops),
    }

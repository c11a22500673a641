"""Standalone ProxylessNAS networks built from an architecture string (derived or published)."""

from __future__ import annotations

import torch
from torch import nn

from orchestrator.arch import Arch, Op, Widths
from orchestrator.blocks import ConvBNAct, MBConv, init_weights
from orchestrator.spaces import BlockSpec, SearchSpace, get_space


class Block(nn.Module):
    """A searchable position: an op (``None`` for ``zero``) plus the identity shortcut where shapes allow."""

    def __init__(self, op: MBConv | None, shortcut: bool) -> None:
        super().__init__()
        if op is None and not shortcut:
            raise ValueError("a zero op needs an identity shortcut")
        self.op = op
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op is None:
            return x
        y = self.op(x)
        return y + x if self.shortcut else y


class Head(nn.Module):
    """1x1 feature mix, global pool, dropout and classifier."""

    def __init__(self, cin: int, width: int, num_classes: int, dropout: float, bn: dict) -> None:
        super().__init__()
        self.feature_mix = ConvBNAct(cin, width, 1, **bn)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_mix(x).mean(dim=(2, 3))
        return self.classifier(self.dropout(x))


def bn_kwargs(space: SearchSpace) -> dict:
    return dict(bn_momentum=space.bn_momentum, bn_eps=space.bn_eps)


def make_stem(space: SearchSpace, widths: Widths) -> nn.Sequential:
    """Stem conv 3x3/2 and the fixed first MBConv k3e1 block, shared by supernet and standalone nets."""
    bn = bn_kwargs(space)
    return nn.Sequential(
        ConvBNAct(space.in_channels, widths.stem, 3, 2, **bn),
        MBConv(widths.stem, widths.first, 3, 1, 1, **bn),
    )


def make_op(spec: BlockSpec, op: Op, space: SearchSpace) -> MBConv | None:
    if op.is_zero:
        return None
    return MBConv(spec.in_channels, spec.out_channels, op.kernel, spec.stride, op.expand, **bn_kwargs(space))


class ProxylessNet(nn.Module):
    """A standalone network: stem, first block, one ``Block`` per searchable position, head."""

    def __init__(self, arch: Arch, space: SearchSpace) -> None:
        super().__init__()
        space.validate(arch)
        self.arch, self.space = arch, space
        widths = arch.widths or space.widths()
        specs = space.blocks(widths)
        self.stem = make_stem(space, widths)
        self.blocks = nn.ModuleList(Block(make_op(s, op, space), s.has_shortcut) for s, op in zip(specs, arch.ops))
        self.head = Head(widths.stages[-1], widths.head, space.num_classes, space.dropout, bn_kwargs(space))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def build_net(arch: Arch | str, space: SearchSpace | None = None) -> ProxylessNet:
    """Build a standalone network from an architecture (string or ``Arch``), looking its space up by name."""
    if isinstance(arch, str):
        arch = Arch.parse(arch)
    return ProxylessNet(arch, space or get_space(arch.space))

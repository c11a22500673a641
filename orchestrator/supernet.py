"""The over-parameterised supernet and its architecture logits.

Nothing here holds a mode: which candidates run is an argument of every forward call (``path``), and the
optional binary ``gates`` give the two-path architecture gradient. This keeps each Ray worker's behaviour a
function of its inputs, never of module-level state.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from orchestrator.arch import Arch
from orchestrator.blocks import init_weights
from orchestrator.network import Head, ProxylessNet, bn_kwargs, make_op, make_stem
from orchestrator.spaces import BlockSpec, SearchSpace

Path = Sequence[int | Sequence[int]]


class MixedBlock(nn.Module):
    """One searchable position holding an ``MBConv`` per allowed candidate; runs only the candidates asked for."""

    def __init__(self, spec: BlockSpec, space: SearchSpace) -> None:
        super().__init__()
        self.spec = spec
        self.shortcut = spec.has_shortcut
        self.ops = space.candidates
        self.allowed = tuple((not op.is_zero) or spec.zero_ok for op in self.ops)
        self.candidates = nn.ModuleDict(
            {op.encode(): make_op(spec, op, space) for op, ok in zip(self.ops, self.allowed) if ok and not op.is_zero}
        )

    def candidate(self, index: int) -> nn.Module | None:
        """The module of candidate column ``index`` (``None`` for zero); ``ValueError`` if not allowed here."""
        if not 0 <= index < len(self.ops) or not self.allowed[index]:
            raise ValueError(f"candidate {index} is not allowed on block {self.spec.index}")
        op = self.ops[index]
        return None if op.is_zero else self.candidates[op.encode()]

    def forward(self, x: torch.Tensor, active: Sequence[int], gates: torch.Tensor | None = None, *,
                no_grad_inactive: bool = False) -> torch.Tensor:
        """Run the candidates in ``active``; with ``gates``, their gated sum y = Σ g_j o_j (plus the shortcut).

        ``no_grad_inactive``: ``active[0]`` is the active candidate (gate 1) and runs with autograd; the others
        carry gate 0 and run under ``no_grad``. A zero gate passes no gradient into its candidate, and the gate's
        own gradient ∂L/∂g_j = <∂L/∂y, o_j> needs only the output o_j, so the gate gradients are those of running
        every candidate with autograd, without the inactive ones' backward (as the official two and full_v2
        modes)."""
        if gates is None:
            if len(active) != 1:
                raise ValueError("several active candidates need gates to weigh them")
            module = self.candidate(active[0])
            if module is None:
                return x
            y = module(x)
        else:
            if len(gates) != len(active):
                raise ValueError(f"{len(active)} active candidates but {len(gates)} gates")
            y = None
            for k, (g, idx) in enumerate(zip(gates, active)):
                module = self.candidate(idx)
                if module is None:
                    continue  # zero contributes nothing, so its gate's gradient is 0
                if k == 0 or not no_grad_inactive:
                    out = module(x)
                else:
                    with torch.no_grad():
                        out = module(x)
                term = g * out
                y = term if y is None else y + term
            if y is None:
                return x
        return y + x if self.shortcut else y


class Supernet(nn.Module):
    """Stem, one ``MixedBlock`` per searchable position, head. Architecture logits live in ``ArchLogits``.

    ``linear_init`` and ``zero_last_gamma`` choose the initialisation (``orchestrator.blocks.init_weights``)."""

    def __init__(self, space: SearchSpace, *, linear_init: str = "normal", zero_last_gamma: bool = True) -> None:
        super().__init__()
        self.space = space
        widths = space.widths()
        self.stem = make_stem(space, widths)
        self.blocks = nn.ModuleList(MixedBlock(spec, space) for spec in space.blocks())
        self.head = Head(widths.stages[-1], widths.head, space.num_classes, space.dropout, bn_kwargs(space))
        init_weights(self, linear=linear_init, zero_last_gamma=zero_last_gamma)

    def forward(self, x: torch.Tensor, path: Path, gates: Sequence[torch.Tensor | None] | None = None, *,
                no_grad_inactive: bool = False) -> torch.Tensor:
        """One candidate per block (``path``), or with ``gates`` several, gated (``MixedBlock.forward``)."""
        if len(path) != len(self.blocks):
            raise ValueError(f"path has {len(path)} entries, supernet has {len(self.blocks)} blocks")
        x = self.stem(x)
        for i, (block, active) in enumerate(zip(self.blocks, path)):
            active = (active,) if isinstance(active, int) else tuple(active)
            x = block(x, active, None if gates is None else gates[i], no_grad_inactive=no_grad_inactive)
        return self.head(x)

    def extract(self, arch: Arch) -> ProxylessNet:
        """The standalone network of ``arch`` with weights (and BN statistics) copied from this supernet."""
        indices = self.space.indices(arch)
        if arch.widths is not None and arch.widths != self.space.widths():
            raise ValueError("cannot extract an architecture with its own widths from a supernet")
        net = ProxylessNet(arch, self.space)
        net.stem = copy.deepcopy(self.stem)
        net.head = copy.deepcopy(self.head)
        for block, mixed, idx in zip(net.blocks, self.blocks, indices):
            module = mixed.candidate(idx)
            block.op = None if module is None else copy.deepcopy(module)
        return net


class ArchLogits(nn.Module):
    """Architecture parameters α: one logit per (block, candidate), disallowed candidates masked out."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        mask = torch.tensor(space.allowed_mask(), dtype=torch.bool)
        self.register_buffer("mask", mask)
        self.alpha = nn.Parameter(torch.zeros(mask.shape))

    def masked(self) -> torch.Tensor:
        return self.alpha.masked_fill(~self.mask, float("-inf"))

    def probs(self) -> torch.Tensor:
        """softmax(α) per block, zero on disallowed candidates; differentiable in α."""
        return torch.softmax(self.masked(), dim=-1)

    def derive(self) -> Arch:
        """The argmax architecture, the one ProxylessNAS retrains."""
        idx = self.masked().argmax(dim=-1).tolist()
        return self.space.arch_from_indices(idx)

    def entropy(self) -> torch.Tensor:
        p = self.probs()
        return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1).mean()

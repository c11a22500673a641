"""Architectures as data: candidate ops and whole architectures, with a string grammar that round-trips.

Grammar (one token per searchable block; stages separated by ``/``; optional widths after ``@``)::

    op     := "k" KERNEL "e" EXPAND | "zero"              e.g. k5e3, k7e6, zero
    stage  := op ("." op)*
    widths := INT ("," INT)*                              stem, first block, one per stage, head
    space  := NAME ["[" variant "]"]                      a registered space, or its task variant
    variant:= ("c" CLASSES | "r" RESOLUTION | "w" MULT) ("," ...)*
    arch   := space ["@" widths] ":" stage ("/" stage)*

    proxyless-imagenet:k5e3.k3e3.zero.zero/k7e3.k3e3.k5e3.k5e3/...
    tiny[c3,r64]:k3e3.zero/k5e6.zero                      the tiny space for a 3-class task at 64 px

The same op tokens name candidate ops, latency-table keys and MLflow tags, so a string seen anywhere
can be pasted back into ``nas arch info``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_OP_RE = re.compile(r"^k(\d+)e(\d+)$")
_SPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*(\[[a-z0-9.,]+\])?$")


@dataclass(frozen=True, order=True)
class Op:
    """One candidate op of a searchable block: an MBConv with a kernel and expansion, or ``zero`` (skip)."""

    kernel: int = 0
    expand: int = 0

    @property
    def is_zero(self) -> bool:
        return self.kernel == 0

    def __post_init__(self) -> None:
        if self.is_zero:
            if self.expand != 0:
                raise ValueError(f"zero op takes no expansion, got expand={self.expand}")
            return
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel size must be a positive odd number, got {self.kernel}")
        if self.expand < 1:
            raise ValueError(f"expansion must be a positive integer, got {self.expand}")

    def encode(self) -> str:
        return "zero" if self.is_zero else f"k{self.kernel}e{self.expand}"

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def parse(cls, token: str) -> "Op":
        token = token.strip()
        if token == "zero":
            return ZERO
        m = _OP_RE.match(token)
        if not m:
            raise ValueError(f"unknown op token {token!r}: expected 'kKeE' such as 'k5e3', or 'zero'")
        return cls(int(m.group(1)), int(m.group(2)))


ZERO = Op(0, 0)


@dataclass(frozen=True)
class Widths:
    """Channel widths an architecture carries when they differ from its space's (published nets do)."""

    stem: int
    first: int
    stages: tuple[int, ...]
    head: int

    def __post_init__(self) -> None:
        for w in (self.stem, self.first, self.head, *self.stages):
            if not isinstance(w, int) or w < 1:
                raise ValueError(f"widths must be positive integers, got {w!r}")

    def encode(self) -> str:
        return ",".join(str(w) for w in (self.stem, self.first, *self.stages, self.head))

    @classmethod
    def parse(cls, text: str) -> "Widths":
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"malformed widths {text!r}: expected comma-separated integers") from None
        if len(values) < 3:
            raise ValueError(f"widths {text!r} need stem, first block, at least one stage and head")
        return cls(values[0], values[1], tuple(values[2:-1]), values[-1])


@dataclass(frozen=True)
class Arch:
    """A concrete architecture: its space's name, the op of every searchable block by stage, and optional widths.

    Construction checks only the grammar; ``SearchSpace.validate`` checks it against its space.
    """

    space: str
    stages: tuple[tuple[Op, ...], ...]
    widths: Widths | None = None

    def __post_init__(self) -> None:
        if not _SPACE_RE.match(self.space):
            raise ValueError(f"malformed space name {self.space!r}")
        if not self.stages or any(len(s) == 0 for s in self.stages):
            raise ValueError("an architecture needs at least one stage, each with at least one block")

    @property
    def ops(self) -> tuple[Op, ...]:
        """Ops of all searchable blocks, flattened in network order."""
        return tuple(op for stage in self.stages for op in stage)

    def encode(self) -> str:
        head = self.space if self.widths is None else f"{self.space}@{self.widths.encode()}"
        return head + ":" + "/".join(".".join(op.encode() for op in stage) for stage in self.stages)

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def parse(cls, text: str) -> "Arch":
        text = text.strip()
        if ":" not in text:
            raise ValueError(f"malformed architecture {text!r}: expected 'SPACE:ops', e.g. 'tiny:k3e3.zero/k5e6'")
        head, body = text.split(":", 1)
        widths = None
        if "@" in head:
            head, wtext = head.split("@", 1)
            widths = Widths.parse(wtext)
        stages = tuple(tuple(Op.parse(tok) for tok in stage.split(".")) for stage in body.split("/"))
        return cls(head, stages, widths)

    def with_ops(self, ops: tuple[Op, ...] | list[Op]) -> "Arch":
        """The same stage shape with other ops, e.g. from a sampled or derived path."""
        ops = tuple(ops)
        if len(ops) != len(self.ops):
            raise ValueError(f"expected {len(self.ops)} ops, got {len(ops)}")
        out, i = [], 0
        for stage in self.stages:
            out.append(ops[i : i + len(stage)])
            i += len(stage)
        return Arch(self.space, tuple(out), self.widths)

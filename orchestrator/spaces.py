"""Search spaces: registered, immutable definitions of a supernet's macro structure and candidate ops.

A space fixes the stem, the first (non-searchable) MBConv k3e1 block, the stages (width, depth, first stride),
the head width, the candidate ops and the input. ``zero`` is a candidate exactly on the blocks with stride 1
and equal input and output width, where the block can be skipped through its identity shortcut.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import asdict, dataclass, field, replace

from orchestrator.arch import ZERO, Arch, Op, Widths


@dataclass(frozen=True)
class Stage:
    width: int
    depth: int
    stride: int


@dataclass(frozen=True)
class BlockSpec:
    """The shape of one searchable block in a concrete network (after widths are resolved)."""

    index: int  # position among the searchable blocks, 0-based
    stage: int
    in_channels: int
    out_channels: int
    stride: int
    in_resolution: int
    out_resolution: int

    @property
    def zero_ok(self) -> bool:
        """A block may be skipped only where its identity shortcut exists."""
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def has_shortcut(self) -> bool:
        return self.zero_ok


def conv_out(resolution: int, kernel: int, stride: int) -> int:
    """Output side of a conv with padding kernel//2, as the networks here use."""
    return (resolution + 2 * (kernel // 2) - kernel) // stride + 1


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of ``divisor`` without losing more than 10% (MobileNetV2 rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


@dataclass(frozen=True)
class SearchSpace:
    name: str
    resolution: int
    num_classes: int
    stem: int
    first: int
    stages: tuple[Stage, ...]
    head: int
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[int, ...] = (3, 6)
    allow_zero: bool = True
    width_mult: float = 1.0
    in_channels: int = 3
    bn_momentum: float = 0.1
    bn_eps: float = 1e-3
    dropout: float = 0.0
    description: str = field(default="", compare=False)

    # ---- candidates -------------------------------------------------------------------------------------------
    @property
    def candidates(self) -> tuple[Op, ...]:
        """All candidate ops, one column each in α and in latency matrices; ``zero`` last when allowed."""
        ops = tuple(Op(k, e) for k in self.kernels for e in self.expands)
        return ops + ((ZERO,) if self.allow_zero else ())

    def candidate_index(self, op: Op) -> int:
        try:
            return self.candidates.index(op)
        except ValueError:
            raise ValueError(
                f"op {op.encode()!r} is not a candidate of space {self.name!r} "
                f"(candidates: {', '.join(o.encode() for o in self.candidates)})"
            ) from None

    # ---- structure --------------------------------------------------------------------------------------------
    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    @property
    def num_blocks(self) -> int:
        return sum(self.depths)

    def widths(self) -> Widths:
        """The space's own widths after the width multiplier."""
        m = self.width_mult
        scale = (lambda w: w) if m == 1.0 else (lambda w: make_divisible(w * m))
        return Widths(
            stem=scale(self.stem),
            first=scale(self.first),
            stages=tuple(scale(s.width) for s in self.stages),
            head=scale(self.head) if m > 1.0 else self.head,
        )

    def stem_resolution(self) -> int:
        return conv_out(self.resolution, 3, 2)

    def blocks(self, widths: Widths | None = None) -> tuple[BlockSpec, ...]:
        """Shapes of all searchable blocks, for the space's widths or an architecture's own."""
        w = widths or self.widths()
        if len(w.stages) != len(self.stages):
            raise ValueError(
                f"widths give {len(w.stages)} stages but space {self.name!r} has {len(self.stages)}"
            )
        res = self.stem_resolution()
        cin = w.first
        out: list[BlockSpec] = []
        for si, (stage, cout) in enumerate(zip(self.stages, w.stages)):
            for d in range(stage.depth):
                stride = stage.stride if d == 0 else 1
                res_out = conv_out(res, 3, stride)
                out.append(BlockSpec(len(out), si, cin, cout, stride, res, res_out))
                cin, res = cout, res_out
        return tuple(out)

    def allowed_mask(self, widths: Widths | None = None) -> list[list[bool]]:
        """Per block, which candidate columns are allowed (``zero`` only where the block can be skipped)."""
        return [[(not op.is_zero) or b.zero_ok for op in self.candidates] for b in self.blocks(widths)]

    def fingerprint(self) -> str:
        """A short hash of everything that shapes the supernet, the task variant included; artifacts carry it."""
        d = asdict(self)
        d.pop("description", None)
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def body_fingerprint(self) -> str:
        """A short hash of the body alone (input, widths, stages, candidates): what a latency table prices.

        The name, the number of classes and dropout are left out, so a K-class variant of a space shares its
        body (and its latency table, with its own head cost) with the space it derives from."""
        d = asdict(self)
        for k in ("description", "name", "num_classes", "dropout"):
            d.pop(k, None)
        d["widths"] = asdict(self.widths())
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fingerprint"] = self.fingerprint()
        d["body_fingerprint"] = self.body_fingerprint()
        return d

    # ---- task variants ----------------------------------------------------------------------------------------
    @property
    def base_name(self) -> str:
        """The registered space this one derives from (itself for a registered space)."""
        return self.name.split("[", 1)[0]

    def variant(self, num_classes: int | None = None, resolution: int | None = None,
                width_mult: float | None = None) -> "SearchSpace":
        """This space instantiated for a task: its number of classes, input resolution and width multiplier.

        The variant is named ``BASE[c<classes>,r<resolution>,w<mult>]`` with only the values that differ from
        the registered base, so the name alone rebuilds it (``get_space``) and architecture strings carry it."""
        base = get_space(self.base_name)
        c = self.num_classes if num_classes is None else num_classes
        r = self.resolution if resolution is None else resolution
        w = self.width_mult if width_mult is None else float(width_mult)
        if isinstance(c, bool) or not isinstance(c, int) or c < 2:
            raise ValueError(f"num_classes: must be an integer of at least 2, got {c!r}")
        if isinstance(r, bool) or not isinstance(r, int) or not 8 <= r <= 4096:
            raise ValueError(f"resolution: must be an integer in [8, 4096], got {r!r}")
        if not (isinstance(w, float) and math.isfinite(w) and 0.1 <= w <= 4.0):
            raise ValueError(f"width_mult: must be a number in [0.1, 4], got {w!r}")
        tokens = [f"c{c}"] if c != base.num_classes else []
        tokens += [f"r{r}"] if r != base.resolution else []
        tokens += [f"w{w:g}"] if w != base.width_mult else []
        name = f"{base.name}[{','.join(tokens)}]" if tokens else base.name
        return replace(base, name=name, num_classes=c, resolution=r, width_mult=w)

    # ---- architectures ----------------------------------------------------------------------------------------
    def validate(self, arch: Arch) -> Arch:
        """Check an architecture against this space; returns it unchanged or raises ``ValueError`` naming the fault."""
        if arch.space != self.name:
            raise ValueError(f"architecture is for space {arch.space!r}, not {self.name!r}")
        if len(arch.stages) != len(self.stages):
            raise ValueError(
                f"space {self.name!r} has {len(self.stages)} stages, architecture has {len(arch.stages)}"
            )
        for si, (ops, stage) in enumerate(zip(arch.stages, self.stages)):
            if len(ops) != stage.depth:
                raise ValueError(
                    f"stage {si + 1} of space {self.name!r} has {stage.depth} blocks, architecture gives {len(ops)}"
                )
        for spec, op in zip(self.blocks(arch.widths), arch.ops):
            self.candidate_index(op)
            if op.is_zero and not spec.zero_ok:
                raise ValueError(
                    f"block {spec.index} (stage {spec.stage + 1}) cannot be 'zero': it has stride {spec.stride} "
                    f"and widths {spec.in_channels}->{spec.out_channels}, so it has no identity shortcut"
                )
        return arch

    def parse(self, text: str) -> Arch:
        return self.validate(Arch.parse(text))

    def arch_from_indices(self, indices: list[int] | tuple[int, ...], widths: Widths | None = None) -> Arch:
        ops = tuple(self.candidates[i] for i in indices)
        template = Arch(self.name, tuple((ZERO,) * s.depth for s in self.stages), widths)
        return self.validate(template.with_ops(ops))

    def indices(self, arch: Arch) -> tuple[int, ...]:
        """Candidate column of every block of an architecture of this space."""
        self.validate(arch)
        return tuple(self.candidate_index(op) for op in arch.ops)

    def random_arch(self, rng: random.Random) -> Arch:
        mask = self.allowed_mask()
        idx = [rng.choice([c for c, ok in enumerate(row) if ok]) for row in mask]
        return self.arch_from_indices(idx)

    def largest_arch(self) -> Arch:
        """Every block at the largest kernel and expansion: the slowest member, for reachability checks."""
        op = Op(max(self.kernels), max(self.expands))
        return self.arch_from_indices([self.candidate_index(op)] * self.num_blocks)

    def search_space_size(self) -> int:
        return math.prod(sum(row) for row in self.allowed_mask())


_REGISTRY: dict[str, SearchSpace] = {}


def register_space(space: SearchSpace) -> SearchSpace:
    if space.name in _REGISTRY and _REGISTRY[space.name] != space:
        raise ValueError(f"a different space named {space.name!r} is already registered")
    _REGISTRY[space.name] = space
    return space


_VARIANT_RE = re.compile(r"^([a-z0-9][a-z0-9_-]*)\[([^\]]*)\]$")
_VARIANT_TOKEN = {"c": ("num_classes", int), "r": ("resolution", int), "w": ("width_mult", float)}


def get_space(name: str) -> SearchSpace:
    """A registered space, or a task variant of one named ``BASE[c10,r64,w1.4]`` (see ``SearchSpace.variant``)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    m = _VARIANT_RE.match(name)
    if m is None or m.group(1) not in _REGISTRY:
        base = m.group(1) if m else name
        raise ValueError(f"unknown search space {base!r} (known: {', '.join(sorted(_REGISTRY))})")
    kwargs: dict = {}
    for token in m.group(2).split(","):
        key = _VARIANT_TOKEN.get(token[:1])
        try:
            value = key[1](token[1:]) if key else None
        except ValueError:
            value = None
        if key is None or value is None or key[0] in kwargs:
            raise ValueError(f"space {name!r}: bad variant token {token!r} (expected c<classes>, r<resolution>, "
                             f"w<width multiplier>, each at most once, e.g. {m.group(1)}[c100,r160])")
        kwargs[key[0]] = value
    space = _REGISTRY[m.group(1)].variant(**kwargs)
    if space.name != name:
        raise ValueError(f"space {name!r} is not in canonical form: write {space.name!r}")
    return space


def space_names() -> list[str]:
    return sorted(_REGISTRY)


PROXYLESS_IMAGENET = register_space(
    SearchSpace(
        name="proxyless-imagenet",
        resolution=224,
        num_classes=1000,
        stem=32,
        first=16,
        stages=(Stage(24, 4, 2), Stage(40, 4, 2), Stage(80, 4, 2), Stage(96, 4, 1), Stage(192, 4, 2), Stage(320, 1, 1)),
        head=1280,
        dropout=0.0,
        description="The official ProxylessNAS ImageNet space (Cai et al., ICLR 2019).",
    )
)

DIGITS = register_space(
    SearchSpace(
        name="digits-32",
        resolution=32,
        num_classes=10,
        stem=16,
        first=8,
        # Only two blocks lack a shortcut (the stride-2 firsts of stages 2 and 3); the other nine may be skipped.
        # A single-path supernet learns slowly through blocks without a shortcut, whose sampled candidate changes
        # every step, so the demo space keeps them few: stage 1 runs at the stem's 16 px and the first block's width.
        stages=(Stage(8, 2, 1), Stage(16, 3, 2), Stage(32, 3, 2), Stage(32, 2, 1), Stage(32, 1, 1)),
        head=256,
        description="A small space for the embedded scikit-learn digits at 32 px; a search runs in minutes on 2 cores.",
    )
)

TINY = register_space(
    SearchSpace(
        name="tiny",
        resolution=16,
        num_classes=10,
        stem=8,
        first=8,
        stages=(Stage(12, 2, 2), Stage(16, 2, 2)),
        head=32,
        description="A tiny space for tests.",
    )
)

"""Import and export of the official ProxylessNAS ``net.config`` JSON schema.

An imported net keeps its own widths (the published nets differ from the search space's), and is matched to
the registered space whose stage structure it follows. Export writes the same fields the official files have,
so a published file exported again is equal to the original.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.arch import ZERO, Arch, Op, Widths
from orchestrator.spaces import SearchSpace, get_space, space_names

_SCHEMA_KEYS = ("name", "bn", "first_conv", "feature_mix_layer", "classifier", "blocks")


def _conv(cin: int, cout: int, kernel: int, stride: int) -> dict[str, Any]:
    return {
        "name": "ConvLayer", "kernel_size": kernel, "stride": stride, "dilation": 1, "groups": 1, "bias": False,
        "has_shuffle": False, "in_channels": cin, "out_channels": cout, "use_bn": True, "act_func": "relu6",
        "dropout_rate": 0, "ops_order": "weight_bn_act",
    }


def _identity(c: int) -> dict[str, Any]:
    return {"name": "IdentityLayer", "in_channels": c, "out_channels": c, "use_bn": False, "act_func": None,
            "dropout_rate": 0, "ops_order": "weight_bn_act"}


def _mb(cin: int, cout: int, kernel: int, stride: int, expand: int) -> dict[str, Any]:
    return {"name": "MBInvertedConvLayer", "in_channels": cin, "out_channels": cout, "kernel_size": kernel,
            "stride": stride, "expand_ratio": expand}


def to_net_config(arch: Arch, space: SearchSpace | None = None) -> dict[str, Any]:
    """The official ``net.config`` dict of an architecture."""
    space = space or get_space(arch.space)
    space.validate(arch)
    w = arch.widths or space.widths()
    blocks = [{"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": _mb(w.stem, w.first, 3, 1, 1),
               "shortcut": None}]
    for spec, op in zip(space.blocks(w), arch.ops):
        conv = {"name": "ZeroLayer", "stride": spec.stride} if op.is_zero else _mb(
            spec.in_channels, spec.out_channels, op.kernel, spec.stride, op.expand)
        blocks.append({"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": conv,
                       "shortcut": _identity(spec.in_channels) if spec.has_shortcut else None})
    out = {
        "name": "ProxylessNASNets",
        "bn": {"momentum": space.bn_momentum, "eps": space.bn_eps},
        "first_conv": _conv(space.in_channels, w.stem, 3, 2),
        "feature_mix_layer": _conv(w.stages[-1], w.head, 1, 1),
        "classifier": {"name": "LinearLayer", "in_features": w.head, "out_features": space.num_classes,
                       "bias": True, "use_bn": False, "act_func": None, "dropout_rate": space.dropout,
                       "ops_order": "weight_bn_act"},
        "blocks": blocks,
    }
    if space.name != space.base_name:
        out["space"] = space.name  # a task variant (classes, resolution, width) names itself; published nets do not
    return out


def _get(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise ValueError(f"malformed net.config: {where} has no {key!r}")
    return d[key]


def from_net_config(cfg: Any, space: str | None = None) -> Arch:
    """The architecture of an official ``net.config`` dict, matched to a registered space (or the one named)."""
    if not isinstance(cfg, dict):
        raise ValueError("malformed net.config: expected a JSON object")
    missing = [k for k in _SCHEMA_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"net.config of unknown schema: missing {', '.join(missing)}")
    if cfg["name"] != "ProxylessNASNets":
        raise ValueError(f"net.config of unknown schema: name {cfg['name']!r}, expected 'ProxylessNASNets'")
    blocks = cfg["blocks"]
    if not isinstance(blocks, list) or len(blocks) < 2:
        raise ValueError("malformed net.config: 'blocks' must list the first block and the searchable blocks")
    convs = [_get(b, "mobile_inverted_conv", f"block {i}") for i, b in enumerate(blocks)]
    first = convs[0]
    if _get(first, "name", "block 0") != "MBInvertedConvLayer" or first.get("expand_ratio") != 1:
        raise ValueError("net.config of unknown schema: block 0 must be an MBInvertedConvLayer with expand_ratio 1")
    ops: list[Op] = []
    outs: list[int | None] = []
    for i, c in enumerate(convs[1:], start=1):
        kind = _get(c, "name", f"block {i}")
        if kind == "ZeroLayer":
            ops.append(ZERO)
            outs.append(None)
        elif kind == "MBInvertedConvLayer":
            try:
                ops.append(Op(int(c["kernel_size"]), int(c["expand_ratio"])))
                outs.append(int(c["out_channels"]))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"malformed net.config: block {i}: {e}") from None
        else:
            raise ValueError(f"net.config of unknown schema: block {i} is a {kind!r}")
    stem = int(_get(cfg["first_conv"], "out_channels", "first_conv"))
    head = int(_get(cfg["feature_mix_layer"], "out_channels", "feature_mix_layer"))
    classes = int(_get(cfg["classifier"], "out_features", "classifier"))
    first_out = int(_get(first, "out_channels", "block 0"))

    space = space or cfg.get("space")
    if space is not None and not isinstance(space, str):
        raise ValueError(f"malformed net.config: 'space' must be a space name, got {space!r}")
    candidates = [get_space(space)] if space else [get_space(n) for n in space_names()]
    errors = []
    for sp in candidates:
        if sp.num_blocks != len(ops) or sp.num_classes != classes:
            errors.append(f"{sp.name}: {sp.num_blocks} blocks and {sp.num_classes} classes")
            continue
        stage_widths, i = [], 0
        for stage in sp.stages:
            width = outs[i]  # a stage's first block changes shape, so it is never zero
            if width is None:
                break
            stage_widths.append(width)
            i += stage.depth
        if len(stage_widths) != len(sp.stages):
            errors.append(f"{sp.name}: a stage starts with a zero block")
            continue
        stages, i = [], 0
        for stage in sp.stages:
            stages.append(tuple(ops[i : i + stage.depth]))
            i += stage.depth
        widths = Widths(stem, first_out, tuple(stage_widths), head)
        arch = Arch(sp.name, tuple(stages), None if widths == sp.widths() else widths)
        try:
            sp.validate(arch)
        except ValueError as e:
            errors.append(f"{sp.name}: {e}")
            continue
        if to_net_config(arch, sp)["blocks"] != _normalise_blocks(blocks):
            errors.append(f"{sp.name}: block shapes or shortcuts differ")
            continue
        return arch
    raise ValueError("net.config matches no registered search space (" + "; ".join(errors) + ")")


def _normalise_blocks(blocks: list[dict]) -> list[dict]:
    out = []
    for b in blocks:
        conv = {k: v for k, v in b["mobile_inverted_conv"].items() if k != "mid_channels" or v is not None}
        out.append({"name": b.get("name"), "mobile_inverted_conv": conv, "shortcut": b.get("shortcut")})
    return out


def load_net_config(path: str | Path, space: str | None = None) -> Arch:
    p = Path(path)
    try:
        cfg = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"net.config file not found: {p}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed net.config {p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    try:
        return from_net_config(cfg, space)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None


def load_arch(text_or_path: str) -> Arch:
    """An architecture from a string or a ``net.config`` file path: the CLI's ``ARCH_OR_FILE``."""
    if text_or_path.endswith((".config", ".json")) or Path(text_or_path).is_file():
        return load_net_config(text_or_path)
    arch = Arch.parse(text_or_path)
    get_space(arch.space).validate(arch)
    return arch

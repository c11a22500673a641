"""The one config loader: YAML presets plus dotted ``--set`` overrides into typed, frozen dataclasses.

Search, retrain and sweep configs are all built here. Every value is checked against its field's type when the
config is built (``'1'`` is not ``1``; an unknown key is named with the keys that exist), and each dataclass's
``__post_init__`` then checks ranges, so bad input fails in milliseconds, naming the dotted key, before any data,
model or cluster is touched.

Two checks hold for every key of every config, whatever its dataclass checks: a number is finite (NaN passes every
range comparison, and ±inf would only fail deep inside a run), and an integer fits in 64 bits (what torch, numpy
and Parquet hold). A field can also carry an upper bound, ``field(metadata={"max": N})``, for a value that would
exhaust the machine (a resolution, a batch size, a process count); ``build`` enforces it, and a dataclass built
another way calls ``check_limits(self)`` in its ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

INT64 = (-(2**63), 2**63 - 1)  # what torch, numpy and Parquet hold; larger integers fail in C code, not here


def fail(key: str, msg: str) -> None:
    """Raise the ``ValueError`` every config check raises: the dotted key, then what is wrong."""
    raise ValueError(f"{key}: {msg}")


def check_finite(key: str, value: Any) -> None:
    """Refuse NaN and ±inf (a YAML ``.nan``/``.inf``), naming ``key``; anything else passes."""
    if isinstance(value, float) and not math.isfinite(value):
        fail(key, f"must be a finite number, got {value}")


def refuse_non_finite(data: Any, prefix: str = "") -> None:
    """Refuse NaN and ±inf anywhere in raw config data (mappings and lists, as YAML gives them), naming the first
    as a dotted key (``grid[0].targets[1]``), so that no config value, typed here or by a loader of its own, can
    be non-finite."""
    if isinstance(data, dict):
        for k, v in data.items():
            refuse_non_finite(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            refuse_non_finite(v, f"{prefix}[{i}]")
    else:
        check_finite(prefix or "config", data)


def _limit(key: str, meta: Any, value: Any) -> None:
    """A field's ``metadata={"max": N}`` bound (and ``"min"``, where given) on a number it holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    hi, lo = meta.get("max"), meta.get("min")
    if hi is not None and value > hi:
        fail(key, f"must be at most {hi}, got {value}")
    if lo is not None and value < lo:
        fail(key, f"must be at least {lo}, got {value}")


def check_limits(obj: Any, prefix: str = "") -> None:
    """Enforce the ``metadata`` bounds of every field of dataclass instance ``obj`` (for a ``__post_init__``)."""
    for f in dataclasses.fields(obj):
        if f.metadata:
            _limit(prefix + f.name, f.metadata, getattr(obj, f.name, None))


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Bring a YAML value to a field's type, rejecting what would silently change meaning (e.g. '1' for 1)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            fail(key, f"expected a mapping, got {value!r}")
        return build(hint, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        return _coerce(key, next(a for a in args if a is not type(None)), value)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            fail(key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            fail(key, f"expected a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, args[0], v) for v in value)
        if len(value) != len(args):
            fail(key, f"expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(key, t, v) for t, v in zip(args, value))
    if hint is bool:
        if not isinstance(value, bool):
            fail(key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(key, f"expected an integer, got {value!r}")
        if not INT64[0] <= value <= INT64[1]:
            fail(key, f"must fit in 64 bits, got {value}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(key, f"expected a number, got {value!r}")
        try:
            out = float(value)
        except OverflowError:
            fail(key, "must be a finite number, got an integer beyond the float range")
        check_finite(key, out)
        return out
    if hint is str:
        if not isinstance(value, str):
            fail(key, f"expected a string, got {value!r}")
        return value
    return value


def build(cls: type[T], data: dict, prefix: str = "") -> T:
    """A ``cls`` instance from a mapping; ``ValueError`` names the first unknown or mistyped dotted key."""
    if not isinstance(data, dict):
        fail(prefix.rstrip(".") or "config", f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        fail(prefix + unknown[0], f"unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(prefix + k, hints[k], v) for k, v in data.items()}
    meta = {f.name: f.metadata for f in dataclasses.fields(cls) if f.metadata}
    for k, v in kwargs.items():
        if k in meta:
            _limit(prefix + k, meta[k], v)
    try:
        return cls(**kwargs)
    except ValueError as e:
        msg = str(e)
        if prefix and not msg.startswith(prefix):  # a nested check names its key relative to its section
            msg = prefix + msg
        raise ValueError(msg) from None


def to_dict(obj: Any) -> dict:
    """A config as plain JSON-ready data (tuples become lists), the inverse of ``build``."""
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(obj))


def _deepcopy(d: dict) -> dict:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``key.sub=value`` strings to a nested dict; values are parsed as YAML (``0.1``, ``true``, ``[0, 0.9]``).

    Every config loader (search, retrain, sweep) passes its data through here, so NaN and ±inf are refused here,
    anywhere in the result, naming the dotted key (``target: must be a finite number, got nan``)."""
    out = _deepcopy(data)
    for item in overrides:
        import yaml  # here: a config given as a dict needs no PyYAML (test_torch_only)

        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. arch.lr=0.01")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ValueError(f"{key}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    refuse_non_finite(out)
    return out


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content (an empty file is ``{}``); ``ValueError`` naming the file when it is not YAML."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def load(cls: type[T], path: str | Path, overrides: list[str] | tuple[str, ...] = (), section: str | None = None,
         prepare: Any = None) -> T:
    """Read a YAML preset (or its ``section``), apply ``--set`` overrides, then ``prepare(dict)`` (e.g. an overlay
    such as ``fidelity``), and build ``cls``; every error names the file and the dotted key."""
    path = Path(path)
    data = read_yaml(path)
    try:
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping, got {type(data).__name__}")
        if section is not None and isinstance(data.get(section), dict):
            data = data[section]
        data = apply_overrides(data, overrides)
        if prepare is not None:
            data = prepare(data)
        return build(cls, data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None

"""Saving and loading stored training state (checkpoints, warm-ups) safely.

Stored state is plain tensors and containers, so it always loads with ``torch.load(weights_only=True)``: a file
that carries anything else (a pickled object, a code payload) is refused with one line and never executed.
Writes are atomic and durable (fsync before and after the rename), so a crash or power loss mid-write leaves the
previous file intact.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from orchestrator.durable import durable_replace


def state_bytes(state: dict) -> bytes:
    """``state`` serialised with ``torch.save`` (for object storage or a Ray checkpoint directory)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save_state(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically and durably (temporary file in the same folder, fsync, rename, fsync
    of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(state_bytes(state))
        durable_replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(source: str | Path | bytes, what: str = "checkpoint", map_location: Any = "cpu",
               name: str | None = None) -> dict:
    """Load stored state with ``weights_only=True``; ``ValueError`` (one line) for a file that is not plain
    tensors and containers, or not a torch file at all. ``source`` is a local path or the file's bytes (then
    ``name`` says where they came from)."""
    name = name or ("the given bytes" if isinstance(source, bytes) else str(source))
    try:
        f = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
        with warnings.catch_warnings():  # a foreign pickle protocol warns before it is refused: one line only
            warnings.simplefilter("ignore")
            obj = torch.load(f, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{what} {name} does not exist") from None
    except Exception as e:  # UnpicklingError for a payload; RuntimeError/EOFError for a truncated or foreign file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "Unsupported operand" in str(e):
            reason = "it holds objects other than tensors and plain containers, which are never unpickled"
        raise ValueError(f"{what} {name} refused: {reason}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {name} refused: expected a state dict, found {type(obj).__name__}")
    return obj

"""Writing architectures out: official net.config JSON and ONNX graphs. Each write is atomic and durable
(``orchestrator.durable``)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from orchestrator.arch import Arch
from orchestrator.durable import durable_replace
from orchestrator.netconfig import to_net_config


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, fsync it and rename, then fsync the folder, so neither a
    failure nor a power loss leaves anything half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        durable_replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_net_config(arch: Arch, path: str | Path) -> None:
    atomic_write_bytes(path, (json.dumps(to_net_config(arch), indent=4) + "\n").encode())


def export_onnx(net: nn.Module, path: str | Path, resolution: int | None = None, opset: int = 17) -> None:
    """Export a standalone network (eval mode) to ONNX with a dynamic batch axis."""
    space = getattr(net, "space", None)
    res = resolution or (space.resolution if space is not None else 224)
    cin = space.in_channels if space is not None else 3
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".onnx")
    os.close(fd)
    try:
        torch.onnx.export(
            net.eval(), (torch.zeros(1, cin, res, res),), tmp, input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset, dynamo=False,
        )
        arch = getattr(net, "arch", None)
        if arch is not None:  # the graph names what it is: the architecture string, its space variant included
            import onnx

            model = onnx.load(tmp)
            meta = {"nas.arch": arch.encode(), "nas.space": space.name,
                    "nas.space_fingerprint": space.fingerprint(), "nas.resolution": str(res)}
            for k, v in meta.items():
                model.metadata_props.add(key=k, value=v)
            onnx.save(model, tmp)
        os.chmod(tmp, 0o644)
        durable_replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

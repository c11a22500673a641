"""The nets found, as MLflow models: each retrained net logged as a PyTorch model, and each hardware's front
registered as versions of one registered model per sweep and hardware.

The model is saved in MLflow's ``pt2`` format (``torch.export``): a traced graph whose weights are plain tensors.
MLflow 3.17 loads it without unpickling anything (``mlflow.pytorch.load_model`` checks the archive holds no pickle
payload unless ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is set), so loading a registered net runs no code from the
store. The ONNX file is logged beside it (``model/net.onnx`` is in the run's ``net.onnx``).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from orchestrator import tracking
from orchestrator.arch import Arch

__all__ = ["MODEL_PATH", "log_net_model", "registered_name", "register_front", "registered_versions", "model_uri"]

log = logging.getLogger(__name__)

MODEL_PATH = "model"  # the run's artifact folder of the logged MLflow model


def _input_example(net, batch: int = 2):
    space = net.space
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, space.in_channels, space.resolution, space.resolution)).astype(np.float32)


def log_net_model(uri: str, run_id: str, net, arch: str, lineage: Mapping[str, str] | None = None) -> str:
    """Log ``net`` (eval mode, CPU) as an MLflow PyTorch model in ``pt2`` format, with its signature and an input
    example, the architecture string and lineage as metadata; returns ``runs:/<run>/model``."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    net = net.cpu().eval()
    example = _input_example(net)
    with torch.no_grad():
        out = net(torch.from_numpy(example)).numpy()
    meta = {"nas.arch": arch, "nas.space": Arch.parse(arch).space, **dict(lineage or {})}
    c = tracking.client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MODEL_PATH
        mlflow.pytorch.save_model(net, str(path), serialization_format="pt2", input_example=example,
                                  signature=infer_signature(example, out), metadata=meta,
                                  # given, not inferred (inferring loads the model in a subprocess: ~40 s)
                                  pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                                    f"mlflow=={mlflow.__version__}"])
        c.log_artifacts(run_id, str(path), MODEL_PATH)
    return f"runs:/{run_id}/{MODEL_PATH}"


def registered_name(sweep: str, hardware: str) -> str:
    """The registered model of a sweep's nets on one hardware: ``<sweep>-<hardware>`` (characters MLflow's names
    refuse replaced by ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{sweep}-{hardware}")


def model_uri(name: str, version: str | int) -> str:
    return f"models:/{name}/{version}"


def registered_versions(uri: str, run_ids: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """Run id -> [(registered model name, version)] for the runs' registered nets."""
    c = tracking.client(uri)
    out: dict[str, list[tuple[str, str]]] = {}
    for rid in run_ids:
        for v in c.search_model_versions(f"run_id = '{rid}'"):
            out.setdefault(rid, []).append((v.name, str(v.version)))
    return out


def register_front(uri: str, sweep: str, summary: Mapping[str, dict]) -> dict[str, list[str]]:
    """Register each hardware's non-dominated retrained nets (the runs with a logged model) as versions of
    ``<sweep>-<hardware>``, tagged with ``nas.arch``, ``nas.hardware``, ``nas.latency``, ``nas.latency_unit``,
    ``nas.top1``, ``nas.budget`` and ``nas.search_run_id``. A run already registered there is not registered again
    (a resumed or re-run sweep). Returns hardware -> the ``models:/`` URIs of its front."""
    from mlflow.exceptions import MlflowException

    c = tracking.client(uri)
    out: dict[str, list[str]] = {}
    for hw, s in summary.items():
        series = s["series"].get(sweep)
        if not series:
            continue
        name = registered_name(sweep, hw)
        front = [p for p in series["front"] if p.get("kind", "retrain") == "retrain" and p.get("run_id")]
        if not front:
            continue
        try:
            c.get_registered_model(name)
        except MlflowException:
            c.create_registered_model(name, tags={"nas.sweep": sweep, "nas.hardware": hw},
                                      description=f"Non-dominated nets of sweep {sweep} on {hw}")
        done = {v.run_id: str(v.version) for v in c.search_model_versions(f"name = '{name}'")}
        uris = []
        for p in front:
            rid = p["run_id"]
            if rid not in done:
                run = c.get_run(rid)
                if not any(a.path == MODEL_PATH for a in c.list_artifacts(rid)):
                    log.warning("run %s has no logged model: not registered", rid)
                    continue
                tags = {"nas.arch": p.get("label", ""), "nas.hardware": hw, "nas.latency": f"{p['latency']:.6g}",
                        "nas.latency_unit": s["unit"], "nas.top1": f"{1.0 - p['error']:.6g}",
                        "nas.budget": str(p.get("target") or ""), "nas.search_run_id": p.get("search_run_id", ""),
                        "nas.latency_source": p.get("latency_source", "measured")}
                v = c.create_model_version(name, f"{run.info.artifact_uri}/{MODEL_PATH}", run_id=rid, tags=tags)
                done[rid] = str(v.version)
            uris.append(model_uri(name, done[rid]))
        out[hw] = uris
    return out

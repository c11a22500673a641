"""The retrain as a job: its checks, its MLflow record, and its Ray Train worker.

Data-parallel on Ray, every rank reads its share of each global batch and gradients are averaged; rank 0 logs the
per-epoch rows and reports a checkpoint every epoch. One run is one Pareto point of a sweep: the curves, the final
top-1 and the number of images it was measured on, cost, net.config and ONNX, plus what the sweep adds (the
measured latency and its table reference). A one-process retrain (``retrain.local``) writes the same record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import registry, tracking
from orchestrator.arch import Arch
from orchestrator.cost import Cost, retrain_cost
from orchestrator.export import export_onnx
from orchestrator.netconfig import to_net_config
from orchestrator.network import build_net
from orchestrator.provenance import provenance
from orchestrator.ray_train import ClusterSpec, run_on_ray, start_worker
from orchestrator.retrain.config import RetrainConfig, retrain_config_from_dict, retrain_data
from orchestrator.retrain.loop import RetrainState, retrain_state_dict, train_net
from orchestrator.runs import RunInfo
from orchestrator.spaces import get_space
from orchestrator.state_io import load_state, state_bytes
from orchestrator.train.runtime import Precision

__all__ = ["CHECKPOINT_FILE", "RetrainJob", "RetrainResult", "run_retrain", "retrain_worker"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "retrain_state.pt"


@dataclass(frozen=True)
class RetrainResult:
    arch: str
    val_accuracy: float
    val_images: int
    epochs: int
    device: str
    run_id: str | None
    tracking_uri: str | None
    worker_seconds: float
    gpu_seconds: float
    wall_seconds: float
    onnx_path: str | None  # a local copy (also an artifact of the run)
    history: tuple[dict, ...] = ()
    resumed_from_step: int = 0  # 0 for a fresh run
    steps_per_epoch: int = 0


@dataclass
class RetrainJob:
    """One retrain: the net, the recipe, and what a sweep adds to its run (``extra_metrics``/``extra_files``, e.g.
    the measured latency; ``cost_before``, a ``cost.Cost`` of the search, its share of the warm-up and the
    measurement, added to the retraining's own in the run's ``cost.*`` metrics); ``onnx_dir`` gets the ONNX."""

    arch: str
    cfg: RetrainConfig
    extra_metrics: Mapping[str, float] = field(default_factory=dict)
    extra_files: Mapping[str, str | bytes] = field(default_factory=dict)
    onnx_dir: str | None = None
    cost_before: Cost | None = None
    kind: str = "retrain"
    experiment: str = "nas-retrain"
    checkpoint_file: str = CHECKPOINT_FILE
    checkpoints_kept: int = 1
    _data_where: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        a = Arch.parse(self.arch) if isinstance(self.arch, str) else self.arch
        get_space(a.space).validate(a)  # a bad architecture fails here, before any worker starts
        self.arch = a.encode()

    @property
    def space(self):
        return get_space(Arch.parse(self.arch).space)

    def default_name(self) -> str:
        # a stable default name (str hashes differ per process), so that the same command resumes the run
        return f"retrain-{hashlib.sha256(self.arch.encode()).hexdigest()[:8]}"

    def preflight(self, num_workers: int) -> None:
        self._data_where = retrain_data(self.space, self.cfg).where  # a class mismatch or missing data fails here

    def run_meta(self) -> dict:
        space = self.space
        return {"space": space.name, "space_fingerprint": space.fingerprint(),
                "config": {**self.cfg.to_dict(), "arch": self.arch}}

    def tags(self, name: str, where: str) -> dict[str, str]:
        space = self.space
        return {"nas.kind": "retrain", "nas.arch": self.arch, "nas.space": space.name,
                "nas.space_fingerprint": space.fingerprint(), "nas.run_name": name, "nas.storage": where,
                "nas.data": self._data_where or retrain_data(space, self.cfg).where}

    def params(self, how: dict) -> dict:
        return {"arch": self.arch, "retrain": self.cfg.to_dict(), "provenance": provenance(), "run": how}

    def on_created(self, uri: str, run_id: str) -> None:
        pass

    def worker_config(self) -> dict:
        return {"arch": self.arch, "retrain": self.cfg.to_dict()}

    def train_func(self) -> Callable[[dict], dict]:
        return retrain_worker

    def finish(self, out: dict, run: RunInfo) -> RetrainResult:
        """Export the trained weights to ONNX and record the run: curves were logged per epoch; here the final
        top-1 and its image count, cost, artifacts."""
        net = build_net(self.arch)
        net.load_state_dict(load_state(out["state_bytes"], "retrained weights"))
        onnx_dir = Path(self.onnx_dir) if self.onnx_dir else Path(tempfile.mkdtemp(prefix="retrain-onnx-"))
        onnx_path = onnx_dir / out.get("onnx_name", f"{run.name}.onnx")
        export_onnx(net, onnx_path)
        last = out["history"][-1]
        on_gpu = out["device"].startswith("cuda")
        gpu_seconds = run.worker_seconds if on_gpu else 0.0
        result = RetrainResult(self.arch, last["val_accuracy"], last["val_images"], self.cfg.epochs, out["device"],
                               run.run_id, run.tracking_uri, run.worker_seconds, gpu_seconds, run.wall_seconds,
                               str(onnx_path), tuple(out["history"]), out["resumed_from_step"],
                               out["steps_per_epoch"])
        cost = {"worker_seconds": run.worker_seconds, "gpu_seconds": gpu_seconds, "wall_seconds": run.wall_seconds,
                **{f"{k}_seconds": v for k, v in out["seconds"].items()}}
        record = json.dumps({**asdict(result), "config": self.cfg.to_dict(), "seconds": out["seconds"], **cost},
                            indent=1)
        out["record"] = record  # the one-process entry writes the same retrain.json
        if run.run_id is not None:
            uri = run.tracking_uri
            tracking.log_artifact_files(uri, run.run_id, {
                "arch.txt": self.arch + "\n", "net.config": json.dumps(to_net_config(Arch.parse(self.arch)), indent=4),
                "net.onnx": onnx_path.read_bytes(), "retrain.json": record, **dict(self.extra_files)})
            total = (self.cost_before or Cost()) + retrain_cost(run.worker_seconds, on_gpu)
            tracking.log_metrics(uri, run.run_id, {
                "val_accuracy": last["val_accuracy"], "val_error": 1 - last["val_accuracy"],
                "val_images": last["val_images"], **cost, **run.tracking, **total.metrics(),
                "point_worker_seconds": total.total_worker, "point_gpu_seconds": total.total_gpu,
                **dict(self.extra_metrics)}, step=self.cfg.epochs)
            self._log_model(uri, run.run_id, net)
        log.info("retrained %s: top-1 %.3f on %d images in %.0f s", self.arch, last["val_accuracy"],
                 last["val_images"], run.wall_seconds)
        return result

    def _log_model(self, uri: str, run_id: str, net) -> None:
        """The net as an MLflow model of the run (``registry.log_net_model``); a failure is the run's
        ``nas.model_error`` tag, not a lost retrain."""
        try:
            registry.log_net_model(uri, run_id, net, self.arch, {"nas.run_id": run_id})
        except Exception as e:  # noqa: BLE001 (torch.export or the store: the weights and ONNX are logged anyway)
            msg = (str(e).splitlines() or [type(e).__name__])[0][:500]
            log.warning("could not log the retrained net as an MLflow model: %s", msg)
            tracking.set_tags(uri, run_id, {"nas.model_error": msg})


def run_retrain(arch: str, cfg: RetrainConfig, cluster: ClusterSpec, *, callbacks: Sequence[Any] = (),
                extra_metrics: Mapping[str, float] | None = None, extra_files: Mapping[str, str | bytes] | None = None,
                onnx_dir: str | Path | None = None, cost_before: Cost | None = None) -> RetrainResult:
    """Retrain ``arch`` on ``cluster.num_workers`` Ray Train workers and record it in MLflow (``ray_train.run_on_ray``;
    nested under ``cluster.parent_run_id``)."""
    job = RetrainJob(arch, cfg, dict(extra_metrics or {}), dict(extra_files or {}),
                     str(onnx_dir) if onnx_dir else None, cost_before)
    return run_on_ray(job, cluster, callbacks)


def retrain_worker(config: dict) -> dict:
    """Runs on every Train worker: restore or start, train on this rank's device with averaged gradients,
    evaluate once across ranks and report a checkpoint every epoch."""
    job = config["job"]
    cfg, arch = retrain_config_from_dict(job["retrain"]), job["arch"]
    w = start_worker(config, CHECKPOINT_FILE, "retrain checkpoint", cfg.seed,
                     Precision(cfg.precision, cfg.channels_last))

    def on_row(state: RetrainState, row: dict) -> None:
        if w.sink is not None:
            w.sink.log(row, step=row["epoch"])

    def checkpoint(state: RetrainState) -> None:
        w.report(state.history[-1], {CHECKPOINT_FILE: retrain_state_dict(state, cfg, arch)})  # collective

    net, state = train_net(arch, cfg, rt=w.rt, on_row=on_row, checkpoint=checkpoint, resume=w.resume,
                           progress=w.progress)
    # Train refuses tensors in a return value: the weights travel as torch.save bytes
    return {"history": state.history, "seconds": state.seconds, "device": str(w.rt.device),
            "state_bytes": state_bytes({k: v.detach().cpu() for k, v in net.state_dict().items()}),
            "resumed_from_step": w.resume["step"] if w.resume else 0, "steps_per_epoch": state.steps_per_epoch,
            "tracking": w.close()}

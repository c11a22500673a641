"""The retrain in this process (``nas retrain`` without ``--workers``): ``retrain.json``, the weights (``net.pt``, a
plain state dict) and ``net.onnx`` in one folder; a checkpoint there every epoch, which ``resume`` continues from
bit for bit (it is removed once the net is written); recorded in MLflow as a Ray run is when a tracking URI is
given or ``MLFLOW_TRACKING_URI`` is set."""

from __future__ import annotations

import json
import time
from pathlib import Path

from orchestrator.export import atomic_write_bytes
from orchestrator.lease import acquire_lease, check_run_flags, clear_for_fresh_run
from orchestrator.retrain.config import RetrainConfig
from orchestrator.retrain.jobs import CHECKPOINT_FILE, RetrainJob, RetrainResult
from orchestrator.retrain.loop import RetrainState, retrain_state_dict, train_net
from orchestrator.runs import LocalRecord, RunInfo, close_run
from orchestrator.state_io import load_state, save_state, state_bytes
from orchestrator.train.runtime import Precision, Runtime

__all__ = ["retrain_here"]


def retrain_here(arch: str, cfg: RetrainConfig, out_dir: str | Path, *, rt: Runtime | None = None,
                 progress: bool = False, resume: bool = False, overwrite: bool = False,
                 tracking_uri: str | None = None, experiment: str | None = None, name: str | None = None,
                 parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> RetrainResult:
    """Retrain ``arch`` in this process and write ``retrain.json``, ``net.pt`` and ``net.onnx`` to ``out_dir``,
    each atomically. ``resume`` continues from the checkpoint there, ``overwrite`` starts afresh over it; a fresh
    run refuses a folder that holds one. The run holds the lease on ``out_dir`` (``lease``): a second run on it is
    refused. Everything checkable is checked before ``out_dir`` is created."""
    check_run_flags(name, resume, overwrite)
    rt = rt or Runtime(precision=Precision(cfg.precision, cfg.channels_last))
    out = Path(out_dir).resolve()
    job = RetrainJob(arch, cfg, onnx_dir=str(out))
    job.preflight(1)
    rec = LocalRecord.checked(tracking_uri)
    with acquire_lease(str(out), "retrain") as lease:
        return _retrain(job, cfg, rec, out, rt, progress, resume, overwrite, experiment, name, parent_run_id, tags,
                        lease.takeover)


def _retrain(job: RetrainJob, cfg: RetrainConfig, rec: LocalRecord, out: Path, rt: Runtime, progress: bool,
             resume: bool, overwrite: bool, experiment: str | None, name: str | None, parent_run_id: str | None,
             tags: dict[str, str] | None, takeover: dict | None) -> RetrainResult:
    clear_for_fresh_run(out, CHECKPOINT_FILE, "retrain", resume, overwrite)
    ckpt = out / CHECKPOINT_FILE
    saved = load_state(ckpt, "retrain checkpoint") if resume and ckpt.exists() else None
    name = rec.open(job, out, str(rt.device), experiment, name, saved is None, tags, parent_run_id, takeover)
    done = saved["step"] // saved["steps_per_epoch"] if saved is not None else 0

    def on_row(state: RetrainState, row: dict) -> None:
        if rec.sink is not None and row["epoch"] > done:  # a resumed run logs each epoch once
            rec.sink.log(row, step=row["epoch"])

    t0 = time.time()
    net, state = train_net(job.arch, cfg, rt=rt, on_row=on_row, resume=saved, progress=progress,
                           checkpoint=lambda s: save_state(retrain_state_dict(s, cfg, job.arch), ckpt))
    wall = time.time() - t0
    weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    gap = rec.close()
    record = {"history": state.history, "seconds": state.seconds, "device": str(rt.device),
              "state_bytes": state_bytes(weights), "onnx_name": "net.onnx",
              "resumed_from_step": saved["step"] if saved is not None else 0, "steps_per_epoch": state.steps_per_epoch}
    result = close_run(job, record, RunInfo(rec.run_id, rec.uri, name, None, str(ckpt), wall, wall, gap))
    text = record["record"]
    if takeover:
        text = json.dumps({**json.loads(text), "lease_takeover": takeover}, indent=1)
    atomic_write_bytes(out / "net.pt", record["state_bytes"])
    atomic_write_bytes(out / "retrain.json", text.encode())
    ckpt.unlink(missing_ok=True)  # the run is complete: net.pt holds its weights
    return result

"""The search in this process (``nas search`` without ``--workers``): checkpoints and ``result.json`` in one folder,
resumable, and recorded in MLflow as a Ray run is when a tracking URI is given or ``MLFLOW_TRACKING_URI`` is set."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from orchestrator import tracking
from orchestrator.export import atomic_write_bytes
from orchestrator.lease import acquire_lease, check_run_flags, clear_for_fresh_run
from orchestrator.runs import LocalRecord, RunInfo, close_run
from orchestrator.search.config import SearchConfig
from orchestrator.search.jobs import SearchJob, SearchRun, curve_metrics
from orchestrator.search.loop import load_checkpoint, run_search, save_checkpoint
from orchestrator.search.state import SearchState
from orchestrator.train.runtime import Precision, Runtime

__all__ = ["CHECKPOINT", "RESULT", "search_here"]

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"


def search_here(cfg: SearchConfig, out_dir: str | Path, *, rt: Runtime | None = None, resume: bool = False,
                overwrite: bool = False, progress: bool = False, tracking_uri: str | None = None,
                experiment: str | None = None, name: str | None = None, parent_run_id: str | None = None,
                tags: dict[str, str] | None = None) -> SearchRun:
    """Search in this process on ``rt`` (default: the CPU), checkpointing to ``out_dir/checkpoint.pt`` (``resume``
    continues from it, bit for bit; ``overwrite`` starts afresh over it; a fresh run refuses a folder that holds
    one) and writing ``out_dir/result.json``. The run holds the lease on ``out_dir`` (``lease``): a second run on
    it is refused. Everything checkable is checked before ``out_dir`` is created."""
    check_run_flags(name, resume, overwrite)
    rt = rt or Runtime(precision=Precision(cfg.precision, cfg.channels_last))
    job = SearchJob(cfg)
    job.preflight(1)
    rec = LocalRecord.checked(tracking_uri)
    out = Path(out_dir).resolve()
    with acquire_lease(str(out), "search") as lease:
        return _search(cfg, job, rec, out, rt, resume, overwrite, progress, experiment, name, parent_run_id, tags,
                       lease.takeover)


def _search(cfg: SearchConfig, job: SearchJob, rec: LocalRecord, out: Path, rt: Runtime, resume: bool,
            overwrite: bool, progress: bool, experiment: str | None, name: str | None, parent_run_id: str | None,
            tags: dict[str, str] | None, takeover: dict | None) -> SearchRun:
    clear_for_fresh_run(out, CHECKPOINT, "search", resume, overwrite, also=(RESULT,))
    ckpt = out / CHECKPOINT
    saved = load_checkpoint(ckpt) if resume and ckpt.exists() else None
    name = rec.open(job, out, str(rt.device), experiment, name, saved is None, tags, parent_run_id, takeover)
    # a resumed run replays no step, but its last curve points may have been logged after its last checkpoint
    logged = tracking.logged_steps(rec.uri, rec.run_id, "loss") if rec.reopened else set()

    def on_step(state: SearchState, row: dict) -> None:
        if rec.sink is not None and state.step not in logged:
            rec.sink.log(curve_metrics(row), step=state.step)

    t0 = time.time()
    result = run_search(cfg, rt=rt, latency=job.latency, resume=saved, progress=progress, on_step=on_step,
                        checkpoint=lambda state: save_checkpoint(state, ckpt))
    wall = time.time() - t0
    record: dict[str, Any] = result.to_dict()
    record["resumed_from_step"] = saved["step"] if saved is not None else 0
    if takeover:
        record["lease_takeover"] = takeover
    gap = rec.close()
    atomic_write_bytes(out / RESULT, json.dumps({**record, "run_id": rec.run_id}, indent=1).encode())
    return close_run(job, record, RunInfo(rec.run_id, rec.uri, name, None, str(ckpt), wall, wall, gap))

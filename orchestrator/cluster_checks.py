"""Checks made before any training starts, so that bad input fails fast with one line instead of hanging:
storage that cannot be written, a cluster too small for the requested workers."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from orchestrator.storage import one_line, resolve


def check_storage(uri: str) -> str:
    """Write and delete a marker under ``uri``; returns the normalised URI or raises ``ValueError``."""
    loc = resolve(uri)
    marker = loc.path(f".write-check-{uuid.uuid4().hex[:8]}")
    created = None  # the topmost local folder this check creates: removed again, so a refused run leaves nothing
    try:
        if not loc.is_s3:
            created = _first_missing(Path(loc.root))
            loc.fs.create_dir(loc.root, recursive=True)
        with loc.fs.open_output_stream(marker) as f:
            f.write(b"ok")
        loc.fs.delete_file(marker)
    except OSError as e:
        raise ValueError(f"storage path {uri} is not writable: {one_line(e)}") from None
    finally:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
    return loc.uri


def _first_missing(path: Path) -> Path | None:
    """The outermost missing folder on the way to ``path`` (None when it exists)."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def check_worker_shape(num_workers: int, cpus_per_worker: float, workers_key: str = "num_workers") -> None:
    """The worker count and CPUs per worker of a Train run (search, retrain, sweep trial) make sense."""
    if num_workers < 1:
        raise ValueError(f"{workers_key}: must be at least 1, got {num_workers}")
    if cpus_per_worker <= 0:
        raise ValueError(f"cpus_per_worker: must be positive, got {cpus_per_worker}")


def per_worker_resources(cpus_per_worker: float, use_gpu: bool) -> dict[str, float]:
    """What each Train worker asks Ray for."""
    return {"CPU": cpus_per_worker, **({"GPU": 1.0} if use_gpu else {})}


def check_resources(num_workers: int, per_worker: dict[str, float], allow_autoscale: bool = False) -> None:
    """Refuse a run whose workers cannot all be placed on the running cluster (Ray Train would retry forever)."""
    import ray

    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    if allow_autoscale:
        return
    total = ray.cluster_resources()
    for name, amount in per_worker.items():
        need, have = amount * num_workers, total.get(name, 0.0)
        if need > have + 1e-9:
            raise ValueError(
                f"cluster has {have:g} {name} in all, but {num_workers} workers x {amount:g} {name} need {need:g}; "
                f"lower the number of workers or the resources per worker"
            )

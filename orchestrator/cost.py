"""What searches, retrains and Pareto points cost, broken down the same way in every record.

A cost is worker-seconds per part (a Ray Train run of W workers for t seconds is W·t worker-seconds), and the
same parts in GPU-seconds for the work that ran on GPUs (0 elsewhere). Phases of a run are timed directly on
rank 0 around their own work (``SearchResult.seconds``: warm-up, weight steps, architecture steps) and scaled
by the number of workers, which all do the same steps; what the phases do not cover (Ray Train start-up, data
waits, evaluation, checkpoints) is the run's ``other`` part, so the parts add up to the run's total.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

PARTS = ("warmup", "weight_steps", "arch_steps", "search_other", "measurement", "retraining")


@dataclass(frozen=True)
class Cost:
    """Worker-seconds and GPU-seconds per part (``PARTS``)."""

    worker: dict[str, float] = field(default_factory=dict)
    gpu: dict[str, float] = field(default_factory=dict)

    @property
    def total_worker(self) -> float:
        return sum(self.worker.values())

    @property
    def total_gpu(self) -> float:
        return sum(self.gpu.values())

    def __add__(self, other: "Cost") -> "Cost":
        add = lambda a, b: {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {*a, *b}}  # noqa: E731
        return Cost(add(self.worker, other.worker), add(self.gpu, other.gpu))

    def metrics(self) -> dict[str, float]:
        """MLflow metrics: ``cost.<part>_worker_s`` and ``cost.<part>_gpu_s`` for every part, and the totals."""
        out = {}
        for part in PARTS:
            out[f"cost.{part}_worker_s"] = float(self.worker.get(part, 0.0))
            out[f"cost.{part}_gpu_s"] = float(self.gpu.get(part, 0.0))
        out["cost.total_worker_s"], out["cost.total_gpu_s"] = self.total_worker, self.total_gpu
        return out


def _both(parts: Mapping[str, float], on_gpu: bool) -> Cost:
    parts = {k: max(0.0, float(v)) for k, v in parts.items()}
    return Cost(parts, dict(parts) if on_gpu else {k: 0.0 for k in parts})


def search_cost(phase_seconds: Mapping[str, float], worker_seconds: float, workers: int, on_gpu: bool) -> Cost:
    """A search run's cost from rank 0's phase timings and the run's total worker-seconds."""
    parts = {"warmup": phase_seconds.get("warmup", 0.0) * workers,
             "weight_steps": phase_seconds.get("weight", 0.0) * workers,
             "arch_steps": phase_seconds.get("arch", 0.0) * workers}
    parts["search_other"] = worker_seconds - sum(parts.values())
    return _both(parts, on_gpu)


def warmup_share(worker_seconds: float, trials: int, on_gpu: bool) -> Cost:
    """One trial's share of a warm-up shared by ``trials`` searches."""
    return _both({"warmup": worker_seconds / max(1, trials)}, on_gpu)


def measurement_cost(seconds: float, on_gpu: bool) -> Cost:
    """Timing (or counting) one derived net on its hardware: one task."""
    return _both({"measurement": seconds}, on_gpu)


def retrain_cost(worker_seconds: float, on_gpu: bool) -> Cost:
    return _both({"retraining": worker_seconds}, on_gpu)

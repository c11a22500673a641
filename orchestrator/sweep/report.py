"""Pareto fronts read back from MLflow: every sweep's retrained points, per hardware, compared across sweeps.

MLflow is the record, so fronts are computed from the runs (not from a sweep's memory): a retrain run carries its
hardware, unit and measured latency, and its validation accuracy; a sweep without retraining falls back to its
search runs and the supernet's accuracy. One plot per hardware, because units differ (ms vs MMAC).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator import tracking
from orchestrator.pareto import PUBLISHED_REFERENCE, Point, plot_fronts, reference_latency, summarize_front
from orchestrator.redact import redact

log = logging.getLogger(__name__)

RETRAIN_FILTER = "tags.`nas.kind` = 'retrain' and attributes.status = 'FINISHED'"
SEARCH_FILTER = "tags.`nas.kind` = 'search' and attributes.status = 'FINISHED' and metrics.measured_latency >= 0"


@dataclass(frozen=True)
class FrontReport:
    """Per hardware: per experiment (series) the points, front and hypervolume; plus the files written."""

    summary: dict  # {hardware: {"unit": str, "series": {experiment: summarize_front(...)}}}
    plots: tuple[Path, ...]
    json_path: Path


def experiment_points(uri: str, experiment: str) -> dict[str, list[Point]]:
    """The experiment's points by hardware; ``ValueError`` if it is unknown or holds no measured point."""
    runs = tracking.find_runs(uri, experiment, RETRAIN_FILTER)
    acc_key, kind = "val_accuracy", "retrain"
    if not runs:
        runs = tracking.find_runs(uri, experiment, SEARCH_FILTER)
        acc_key, kind = "supernet_valid_accuracy", "search"
    out: dict[str, list[Point]] = {}
    for r in runs:
        m, t = r.data.metrics, r.data.tags
        if "measured_latency" not in m or acc_key not in m:
            continue
        hw = t.get("nas.hardware", "?")
        meta = {"run_id": r.info.run_id, "kind": kind, "unit": t.get("nas.latency_unit", ""),
                "target": t.get("nas.target"), "search_run_id": t.get("nas.search_run_id", r.info.run_id),
                "worker_seconds": m.get("point_worker_seconds"),
                "point": t.get("nas.point", "search"),  # "front": derived from a search's α under an extra budget
                "runtime": t.get("nas.runtime", "torch"),
                # "predicted" for a device outside the cluster: its front is the table's, not a node's timing
                "latency_source": t.get("nas.latency_source", "measured")}
        out.setdefault(hw, []).append(Point(m["measured_latency"], 1.0 - m[acc_key], t.get("nas.arch", ""), meta))
    if not out:
        raise ValueError(f"experiment {experiment!r} at {redact(uri)} has no finished run with a measured latency "
                         f"(is it a sweep?)")
    return out


def compare_fronts(uri: str, experiments: Sequence[str], out_dir: str | Path, title: str = "") -> FrontReport:
    """Fronts of every experiment, per hardware: one PNG per hardware and ``pareto.json`` in ``out_dir``."""
    if not experiments:
        raise ValueError("give at least one experiment")
    by_exp = {e: experiment_points(uri, e) for e in experiments}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, plots = {}, []
    for hw in sorted({hw for pts in by_exp.values() for hw in pts}):
        series = {e: pts[hw] for e, pts in by_exp.items() if hw in pts}
        unit = next(p.meta.get("unit") for s in series.values() for p in s) or "ms"
        reference = PUBLISHED_REFERENCE.get(hw, ())
        ref = reference_latency([p for s in series.values() for p in s])
        summary[hw] = {"unit": unit, "series": {e: summarize_front(s, ref) for e, s in series.items()},
                       "published_reference": [{"latency": p.latency, "error": p.error, "label": p.label}
                                               for p in reference]}
        heading = f"{title}: Pareto front on {hw}" if title else f"Pareto front on {hw}"
        plots.append(plot_fronts(series, out / f"pareto-{hw}.png", heading, unit, reference))
    json_path = out / "pareto.json"
    json_path.write_text(json.dumps({"tracking_uri": redact(uri), "experiments": list(experiments), "hardware": summary},
                                    indent=1, default=str))
    return FrontReport(summary, tuple(plots), json_path)

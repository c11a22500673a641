"""`make demo`: the full story on the embedded digits, in a few minutes on 2 cores.

1. Build this node's CPU latency table for digits-32 with the latency package (measured here, with provenance).
2. Sweep hardware x target (this CPU, measured, and ``flops``) x 2 targets on Ray Tune: one shared warm-up, a Ray
   Train search per trial, each derived net's latency measured on its hardware in a Ray task, the net retrained.
3. Pareto fronts per hardware from the MLflow runs, plotted and logged to the sweep's parent run.
4. Where to look: ``mlflow ui`` on the SQLite store, the plots, the ONNX files.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from orchestrator import mlflow_links, tracking
from orchestrator.latency.hardware import default_profile
from orchestrator.latency.measure import MeasureConfig
from orchestrator.latency.runner import build_table
from orchestrator.latency.table import LatencyTable
from orchestrator.ray_session import quiet_ray_env
from orchestrator.spaces import get_space
from orchestrator.sweep import load_sweep, run_sweep
from orchestrator.sweep.config import SweepConfig, base_config
from orchestrator.sweep.report import compare_fronts

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "configs" / "demo-sweep.yaml"


def ensure_cpu_table(uri: str, space_name: str) -> str:
    """This node's measured CPU table for the space, built once (reused while its provenance still applies)."""
    space, profile = get_space(space_name), default_profile("cpu")
    if Path(uri).exists():
        try:
            table = LatencyTable.load(uri)
            table.to_model(space)
            if table.provenance.hardware == profile.name:
                log.info("latency table %s (%s) already built", uri, profile.name)
                return uri
        except ValueError as e:
            log.info("rebuilding %s: %s", uri, e)
    t0 = time.time()
    # in-network timing on one thread's CPU clock: robust on a shared 2-core host (benchmarks/latency_table.py)
    cfg = MeasureConfig(threads=1, warmup=5, repeats=40, min_repeat_ms=0.0, statistic="min", clock="cpu",
                        method="in-network")
    table = build_table(space, profile, cfg, use_ray=False)
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    table.save(uri)
    log.info("built latency table %s for %s in %.0f s (%d entries)", uri, profile.name, time.time() - t0,
             len(table.entries))
    return uri


def demo_sweep(out: Path, name: str | None = None, sweep_path: Path = SWEEP) -> SweepConfig:
    """The demo's sweep config, with its output folders under ``out`` and a fresh experiment name per run."""
    sweep = load_sweep(sweep_path)
    name = name or f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    grid = tuple(g if not g.table else g.__class__(**{**g.__dict__, "table": str(out / Path(g.table).name)})
                 for g in sweep.grid)
    return sweep.replace(name=name, grid=grid, storage=str(out / "sweeps"),
                         tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")


def main(out_dir: str = "demo-out", name: str | None = None):
    """Run the demo; returns the ``SweepResult`` (the benchmark times it)."""
    quiet_ray_env()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("ray", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    t0 = time.time()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sweep = demo_sweep(out, name)
    space = base_config(sweep).space
    for g in sweep.grid:
        if g.table:
            ensure_cpu_table(g.table, space)
    result = run_sweep(sweep)
    rep = compare_fronts(result.tracking_uri, [result.name], out / "pareto", f"demo sweep {result.name}")
    lines = [f"demo finished in {time.time() - t0:.0f} s: {len(result.trials)} trials, {len(result.errors)} failed,"
             f" {result.worker_seconds:.0f} worker-seconds (warm-up once: {result.warmup_worker_seconds:.0f})"]
    for hw, s in sorted(rep.summary.items()):
        # every retrained net of the hardware: a trial's own (search) and those derived under the front budgets;
        # * marks the non-dominated ones
        f = s["series"][result.name]
        front = {p["run_id"] for p in f["front"]}
        lines.append(f"  {hw}: {len(f['points'])} retrained nets, {len(front)} non-dominated (*), hypervolume "
                     f"{f['hypervolume']:.4g} (ref {f['ref_latency']:.4g} {s['unit']} x error 1.0)")
        for p in sorted(f["points"], key=lambda p: p["latency"]):
            kind = "trial" if p["point"] == "search" else "front"
            lines.append(f"   {'*' if p['run_id'] in front else ' '} {kind} budget {float(p['target']):<7.4g} "
                         f"measured {p['latency']:<7.4g}{s['unit']:<5} top-1 {1 - p['error']:.3f}  {p['label']}")
    experiment_id = tracking.client(result.tracking_uri).get_run(result.parent_run_id).info.experiment_id
    lines += ["where to look:",
              f"  mlflow ui --backend-store-uri {result.tracking_uri}   then "
              f"{mlflow_links.experiment_url(mlflow_links.DEFAULT_UI, experiment_id)}",
              f"    (experiment {result.name}; parent run {result.parent_run_id}: pareto/ plots and tables; child "
              f"search runs; retrain runs with net.onnx and the MLflow model)",
              *[f"  registered {hw}: {', '.join(u)}" for hw, u in result.registered.items()],
              *[f"  plot: {p}" for p in rep.plots], f"  fronts: {rep.json_path}",
              f"  compare sweeps: nas pareto --experiment {result.name} --tracking-uri {result.tracking_uri} "
              f"--out {out / 'compare'}"]
    log.info("\n".join(lines))
    summary = {"wall_seconds": round(time.time() - t0, 1), "trials": result.trials, "failed": len(result.errors),
               "worker_seconds": result.worker_seconds, "warmup_worker_seconds": result.warmup_worker_seconds,
               "fronts": rep.summary, "experiment": result.name, "tracking_uri": result.tracking_uri}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return result

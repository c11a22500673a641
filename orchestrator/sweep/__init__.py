"""Sweeps over hardware x latency target on Ray Tune: shared warm-up, per-trial search, measurement, retrain,
MLflow lineage and Pareto fronts. ``load_sweep`` + ``run_sweep`` is the whole API."""

from orchestrator.sweep.config import HardwareGrid, SweepConfig, TrialPoint, load_sweep, sweep_from_dict
from orchestrator.sweep.runner import SweepResult, run_sweep

__all__ = ["HardwareGrid", "SweepConfig", "SweepResult", "TrialPoint", "load_sweep", "run_sweep", "sweep_from_dict"]

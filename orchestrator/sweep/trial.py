"""One sweep trial, as a Tune function trainable: search (forked from the shared warm-up) -> measure -> retrain.

Everything a trial needs travels in its Tune config (its ``point`` and ``ctx``, plain data), so a resumed sweep
rebuilds identical trials from the sweep's JSON record. The search and the retrain are Ray Train runs with stable
names under the sweep's storage (``search-<point key>``, ``retrain-<point key>``), so a trial interrupted with its
driver resumes from their ``weights_only`` checkpoints; their reports reach Tune through ``TuneReportCallback``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace


from orchestrator import mlflow_links, tracking
from orchestrator.cost import measurement_cost, retrain_cost, search_cost, warmup_share
from orchestrator.derive import derive_front, log_probs_from_alpha
from orchestrator.ray_train import ClusterSpec
from orchestrator.redact import install as install_redaction, redact
from orchestrator.retrain.config import retrain_config_from_dict
from orchestrator.retrain.jobs import run_retrain
from orchestrator.search.config import SearchConfig, config_from_dict
from orchestrator.search.jobs import SearchRun, run_distributed_search
from orchestrator.search.loop import resolve_latency
from orchestrator.sweep.measure import measure_latency

__all__ = ["TrialContext", "trial_point", "point_key", "sweep_trial", "front_points"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs, the same for every trial of a sweep. It travels in the Tune config as plain data
    (``to_dict``), so a resumed sweep rebuilds identical trials."""

    name: str  # the sweep's name: its MLflow experiment
    search: dict  # the base search config
    tracking_uri: str
    parent_run_id: str  # the sweep's MLflow run
    storage: str  # the sweep's folder: searches/ and retrains/ go under it
    cluster: ClusterSpec  # each trial's workers (its storage, name, experiment and tags are set per run)
    trials_per_warmup: int
    default_seed: int
    warmups: dict[str, dict] = field(default_factory=dict)  # seed -> the shared warm-up's state_uri, run, seconds
    tables: dict[str, str] = field(default_factory=dict)  # hardware -> latency table URI
    runtimes: dict[str, str] = field(default_factory=dict)  # hardware -> the runtime its table was measured in
    fronts: dict[str, list[float]] = field(default_factory=dict)  # hardware -> extra budgets derived from α
    measure_rounds: int | None = None
    retrain: dict | None = None  # the retrain config, or None: search and measure only

    @property
    def experiment(self) -> str:
        return self.name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrialContext":
        cluster = dict(d["cluster"])
        cluster["tags"] = tuple(map(tuple, cluster.get("tags", ())))
        return cls(**{**d, "cluster": ClusterSpec(**cluster)})

    def run_cluster(self, kind: str, name: str, parent_run_id: str, tags: dict[str, str]) -> ClusterSpec:
        """The cluster spec of one of the trial's runs: under ``<storage>/<kind>/<name>``, nested under
        ``parent_run_id``, in the sweep's experiment, with no progress bar."""
        return self.cluster.replace(storage_path=f"{self.storage}/{kind}", name=name, tracking_uri=self.tracking_uri,
                                    experiment=self.experiment, parent_run_id=parent_run_id,
                                    tags=tuple(tags.items()), progress=False)


def trial_point(config: dict) -> tuple[str, float, int]:
    """(hardware, target, seed) of a trial (its ``point``: listed and sampled grids alike, drawn by the driver)."""
    p = config["point"]
    return str(p["hardware"]), float(p["target"]), int(p["seed"])


def point_key(hardware: str, target: float, seed: int) -> str:
    return f"{hardware}-t{target:.4g}-s{seed}"


def sweep_trial(config: dict, tracking_uri: str | None = None) -> None:
    """Tune trainable: the search, its latency measured on the target hardware, the net retrained; one report.
    ``tracking_uri`` (through ``tune.with_parameters``) is the URI with its credentials, which the config's
    ``ctx`` holds masked. An error that would carry them is re-raised with them masked (Tune writes a trial's
    error to storage)."""
    install_redaction()
    try:
        _sweep_trial(config, tracking_uri)
    except Exception as e:
        text = f"{type(e).__name__}: {e}"
        if redact(text) != text:
            raise RuntimeError(redact(text)) from None
        raise


def _sweep_trial(config: dict, tracking_uri: str | None) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    ctx = TrialContext.from_dict(config["ctx"])
    if tracking_uri:
        ctx = replace(ctx, tracking_uri=tracking_uri)
    hw, target, seed = trial_point(config)
    key = point_key(hw, target, seed)
    table = ctx.tables.get(hw)
    uri, parent = ctx.tracking_uri, ctx.parent_run_id
    base = config_from_dict(ctx.search)
    cfg = base.replace(hardware=hw, target=target, seed=seed, latency_table=table,
                       runtime=ctx.runtimes.get(hw, base.runtime))
    warm = ctx.warmups.get(str(seed))  # None when every trial pays its own warm-up
    lineage = {"nas.sweep": ctx.name, "nas.sweep_run_id": parent, "nas.trial": key, "nas.seed": str(seed)}
    spec = ctx.run_cluster("searches", f"search-{key}", parent, {
        **lineage, "nas.warm_start": warm["state_uri"] if warm else "",
        "nas.warmup_run_id": warm["run_id"] if warm else ""})
    res = run_distributed_search(cfg, spec, warm_start=warm["state_uri"] if warm else None,
                                 callbacks=(TuneReportCallback(),))
    arch = res.search["arch"]
    lat = measure_latency(arch, hw, table, ctx.measure_rounds, cfg.runtime)
    tracking.log_artifact_files(uri, res.run_id, {"latency.json": lat.to_json()})
    tracking.set_tags(uri, res.run_id, {"nas.runtime": lat.runtime, "nas.latency_source": lat.source})
    tracking.log_metrics(uri, res.run_id, {"measured_latency": lat.value}, step=res.search["steps"])
    on_gpu = str(res.search.get("device", "cpu")).startswith("cuda")
    warm_share = warm["worker_seconds"] / ctx.trials_per_warmup if warm else 0.0
    point = (search_cost(res.search.get("seconds", {}), res.worker_seconds, ctx.cluster.num_workers, on_gpu)
             + warmup_share(warm["worker_seconds"] if warm else 0.0, ctx.trials_per_warmup, on_gpu)
             + measurement_cost(lat.seconds, hw.startswith("cuda-")))
    cost = {"search_worker_seconds": res.worker_seconds, "warmup_share_worker_seconds": warm_share,
            "measure_seconds": lat.seconds}
    out = {"hardware": hw, "runtime": lat.runtime, "latency_source": lat.source, "target": target, "seed": seed,
           "unit": lat.unit, "arch": arch,
           "search_run_id": res.run_id, "measured_latency": lat.value, "predicted_latency": lat.predicted,
           "supernet_valid_accuracy": res.search.get("valid_accuracy"), **cost}
    within = {"within_budget": float(lat.value <= target), "predicted_within_budget": float(lat.predicted <= target)}
    tracking.log_metrics(uri, res.run_id, within, step=res.search["steps"])
    if ctx.retrain is not None:
        tags = {**lineage, "nas.search_run_id": res.run_id, "nas.hardware": hw, "nas.target": f"{target:g}",
                "nas.latency_unit": lat.unit, "nas.latency_method": lat.method, "nas.point": "search",
                "nas.runtime": lat.runtime, "nas.latency_source": lat.source,
                "nas.derive": res.search.get("derive", "argmax")}
        rspec = ctx.run_cluster("retrains", f"retrain-{key}", res.run_id, tags)
        rt = run_retrain(arch, retrain_config_from_dict(ctx.retrain), rspec, callbacks=(TuneReportCallback(),),
                         extra_metrics={"measured_latency": lat.value, "predicted_latency": lat.predicted,
                                        "target": target, **within, **cost},
                         extra_files={"latency.json": lat.to_json()}, cost_before=point)
        point = point + retrain_cost(rt.worker_seconds, rt.gpu_seconds > 0)
        _comparable(uri, rt.run_id, hw, lat, rt.val_accuracy, target)
        out.update(retrain_run_id=rt.run_id, val_accuracy=rt.val_accuracy, retrain_worker_seconds=rt.worker_seconds)
    else:
        tracking.log_metrics(uri, res.run_id, {"point_worker_seconds": point.total_worker,
                                               "point_gpu_seconds": point.total_gpu, **point.metrics()},
                             step=res.search["steps"])
    out.update(point_worker_seconds=point.total_worker, point_gpu_seconds=point.total_gpu)
    if ctx.retrain is not None and ctx.fronts.get(hw):
        out["front_points"] = front_points(ctx, cfg, res, key, lineage)
    log.info("trial %s: %s", key, json.dumps(out, default=str))
    tune.report({**out, "trial_done": 1})


def _comparable(uri: str, run_id: str | None, hw: str, lat, top1: float, budget: float) -> None:
    """The values compared across retrain runs, with the same names on each (``mlflow_links.log_comparable``)."""
    if run_id is not None:
        mlflow_links.log_comparable(uri, run_id, hardware=hw, unit=lat.unit, latency_source=lat.source,
                                    measured=lat.value, predicted=lat.predicted, top1=top1, budget=budget)


def front_points(ctx: TrialContext, cfg: SearchConfig, res: SearchRun, key: str, lineage: dict) -> int:
    """The grid's extra budgets for this hardware, derived from this trial's α (no further search): each distinct
    net is measured on its hardware and retrained, tagged ``nas.point=front`` with its budget and its search.
    Returns how many were retrained."""
    hw, table, uri = cfg.hardware, cfg.latency_table, ctx.tracking_uri
    model = resolve_latency(cfg)
    done, count = {res.search["arch"]}, 0
    for d in derive_front(log_probs_from_alpha(res.search["alpha"], model), model, ctx.fronts[hw]):
        arch = d.arch.encode()
        if arch in done:  # the same net as the trial's own, or as a looser budget's: one point is enough
            continue
        done.add(arch)
        lat = measure_latency(arch, hw, table, ctx.measure_rounds, cfg.runtime)
        within = {"within_budget": float(lat.value <= d.budget), "predicted_within_budget": 1.0}
        tags = {**lineage, "nas.search_run_id": res.run_id, "nas.hardware": hw, "nas.target": f"{d.budget:g}",
                "nas.latency_unit": lat.unit, "nas.latency_method": lat.method, "nas.point": "front",
                "nas.runtime": lat.runtime, "nas.latency_source": lat.source,
                "nas.front_budget": f"{d.budget:g}", "nas.derive": "budget"}
        spec = ctx.run_cluster("retrains", f"retrain-{key}-front-{d.budget:.4g}", res.run_id, tags)
        rt = run_retrain(arch, retrain_config_from_dict(ctx.retrain), spec,
                         extra_metrics={"measured_latency": lat.value, "predicted_latency": lat.predicted,
                                        "target": d.budget, "log_prob": d.log_prob, **within},
                         extra_files={"latency.json": lat.to_json()},
                         cost_before=measurement_cost(lat.seconds, hw.startswith("cuda-")))
        _comparable(uri, rt.run_id, hw, lat, rt.val_accuracy, d.budget)
        count += 1
    tracking.log_metrics(uri, res.run_id, {"front_points": count}, step=res.search["steps"])
    return count

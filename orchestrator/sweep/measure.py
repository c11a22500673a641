"""The latency of a derived network, measured where its hardware is: always in a Ray task.

A measured profile (``cpu-...``, ``cuda-...``) times the whole network with the latency package's harness and the
table's own settings, in a task that needs the ``hw:<name>`` resource, so it runs on a node that has that hardware
(one at a time there: measurements disturb each other). ``flops`` counts MACs with ``metrics.count_macs``, also in
a task, so the driver of a sweep on a cluster never does the work itself.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from dataclasses import dataclass

from orchestrator.arch import Arch
from orchestrator.latency.hardware import parse_profile
from orchestrator.latency.profiles import latency_model
from orchestrator.latency.runner import config_of, measure_archs_chunk, measure_runtime_chunk, reference_factor
from orchestrator.latency.table import LatencyTable
from orchestrator.metrics import count_macs
from orchestrator.network import build_net
from orchestrator.spaces import get_space


@dataclass(frozen=True)
class MeasuredLatency:
    """One network's latency on one hardware, with the reference to the table (and its provenance) it relates to."""

    arch: str
    hardware: str
    unit: str
    value: float  # measured (ms), counted (MMAC), or, for a device outside the cluster, the table's prediction
    predicted: float  # the search's latency model for the same network
    method: str  # "measured" (whole network, timed), "macs" (counted) or "table-estimate" (no such node)
    table: str | None
    provenance: dict
    node: dict
    seconds: float  # task time (compute cost of the measurement)
    runtime: str = "torch"  # what ran (or would run) the network

    @property
    def source(self) -> str:
        """``measured`` on a cluster node with the hardware and runtime, ``counted`` (MACs), or ``predicted``
        where no node has them (a kit device, the official Pixel 1 table): MLflow's ``latency_source``."""
        return {"measured": "measured", "macs": "counted"}.get(self.method, "predicted")

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "latency_source": self.source}, indent=1, default=str)


def _count_mmacs(arch: str) -> tuple[float, dict, float]:
    t0 = time.time()
    net = build_net(arch)
    macs = count_macs(net, net.space.resolution, net.space.in_channels)
    return macs / 1e6, {"hostname": socket.gethostname()}, time.time() - t0


def _time_network(arch: str, table_uri: str, rounds: int | None) -> tuple[float, dict, float]:
    """The network timed as the table's validation times networks (round-robin with the table's reference network,
    part by part on the table's clock), then put at the host speed the table was built at: the reference network's
    latency then over its latency now. A shared host's drift between building and measuring cancels out; the
    raw figure and the factor are kept in the node record."""
    t0 = time.time()
    table = LatencyTable.load(table_uri)
    cfg = config_of(table)
    if rounds is not None:
        cfg = dataclasses.replace(cfg, min_rounds=max(2, rounds), max_rounds=max(2, rounds))
    # a deployment runtime's table: the network exported and timed in that runtime, as the table's build timed it
    measure = measure_archs_chunk if cfg.runtime == "torch" else measure_runtime_chunk
    res = measure(table.provenance.space, [arch], cfg)
    raw, factor = res.entries[arch].latency_ms, reference_factor(table, res)
    node = {**dataclasses.asdict(res.node), "raw_ms": raw, "reference_factor": factor}
    return raw * factor, node, time.time() - t0


def _outside_trial():
    """Schedule outside the calling Tune trial's placement group (which holds only the trial's own tiny share),
    so that the task lands wherever its hardware resource is."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=None)


def check_hardware_available(hardware: str) -> None:
    """Refuse a measured profile that no node of the running cluster offers (its task would wait forever)."""
    import ray

    profile = parse_profile(hardware)
    if profile.measured and ray.cluster_resources().get(profile.resource, 0) <= 0:
        raise ValueError(f"no node in the Ray cluster offers hardware {hardware!r} (resource {profile.resource!r}); "
                         f"start one with --resources '{{\"{profile.resource}\": 1}}'")


def measure_latency(arch: str, hardware: str, table: str | None, rounds: int | None = None,
                    runtime: str = "torch") -> MeasuredLatency:
    """Measure (or count) ``arch`` on ``hardware`` in ``runtime``, in a Ray task placed where that hardware is; a
    device that is no cluster node (a kit device, ``pixel1``) gets its table's prediction, never a node's
    measurement under its name."""
    import ray

    profile = parse_profile(hardware)
    space = get_space(Arch.parse(arch).space)
    model = latency_model(hardware, space, table, runtime)
    predicted = model.exact(space.parse(arch))
    if profile.measured:
        if table is None:
            raise ValueError(f"hardware {hardware!r} is measured: its table URI is needed to time it the same way")
        check_hardware_available(hardware)
        task = ray.remote(_time_network).options(resources={profile.resource: 1}, num_cpus=1,
                                                 num_gpus=1 if profile.kind == "cuda" else 0, max_retries=1,
                                                 scheduling_strategy=_outside_trial())
        value, node, secs = ray.get(task.remote(arch, table, rounds))
        prov = dataclasses.asdict(LatencyTable.load(table).provenance)
        method = "measured"
    elif profile.kind == "analytic":
        task = ray.remote(_count_mmacs).options(num_cpus=0.01, max_retries=1, scheduling_strategy=_outside_trial())
        value, node, secs = ray.get(task.remote(arch))
        prov, method = dict(model.provenance), "macs"
    else:  # a kit device or the official table: no such device in the cluster, so the table's estimate stands in
        value, node, secs, method = predicted, {}, 0.0, "table-estimate"
        prov = dict(model.provenance)
    return MeasuredLatency(arch, hardware, model.unit, float(value), float(predicted), method, table, prov, node, secs,
                           runtime)

"""A table build placed by its hardware resource runs on the node that has it, in a two-node Ray cluster."""

from __future__ import annotations

import pytest

from orchestrator.latency.calibrate import CalibrationConfig
from orchestrator.latency.hardware import HardwareProfile
from orchestrator.latency.measure import MeasureConfig
from orchestrator.latency.runner import build_table
from orchestrator.latency.table import required_keys
from orchestrator.spaces import TINY
from orchestrator.sweep.measure import measure_latency

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    """A head node without the hardware and a worker node that offers ``hw:cpu-labelled``; stops only these."""
    import ray
    from ray.cluster_utils import Cluster

    profile = HardwareProfile("cpu-labelled", "cpu")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1, resources={profile.resource: 1})
    try:
        ray.init(address=cluster.address, logging_level="WARNING")
        cluster.wait_for_nodes()
        yield profile, worker.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_build_runs_on_node_with_the_hardware(two_nodes):
    """Every chunk of a calibrated build (plain entries, calibration and validation networks) runs on the node
    that offers the hardware."""
    profile, worker_id = two_nodes
    cfg = MeasureConfig(warmup=1, repeats=3, min_repeat_ms=0.0, min_rounds=4, max_rounds=4)
    cal = CalibrationConfig(networks=4, group_size=2, validate=3)
    table = build_table(TINY, profile, cfg, use_ray=True, calibration=cal)
    assert table.provenance.node_id == worker_id
    assert table.provenance.hardware == "cpu-labelled"
    assert set(required_keys(TINY)) <= set(table.entries)
    assert table.provenance.calibration["rounds"] == [4, 4] and table.provenance.validation["samples"] == 3
    table.to_model()


def test_build_for_absent_hardware_is_refused(two_nodes):
    cfg = MeasureConfig(warmup=1, repeats=3, min_repeat_ms=0.0)
    with pytest.raises(ValueError, match="no node in the Ray cluster offers hardware 'cpu-nowhere'"):
        build_table(TINY, HardwareProfile("cpu-nowhere", "cpu"), cfg, use_ray=True, calibration=None)


def test_runtime_build_and_measurement_run_on_node_with_the_hardware(two_nodes, tmp_path):
    """A build in ONNX Runtime exports and times its whole networks on the labelled node; a derived net measured
    against that table is timed there in ONNX Runtime too (``latency_source: measured``)."""
    profile, worker_id = two_nodes
    cfg = MeasureConfig(min_rounds=4, max_rounds=4, runtime="onnxruntime", warmup=1)
    cal = CalibrationConfig(networks=6, group_size=5, validate=3)
    table = build_table(TINY, profile, cfg, use_ray=True, calibration=cal)
    p = table.provenance
    assert (p.node_id, p.runtime, p.calibration["rounds"]) == (worker_id, "onnxruntime", [4, 4])
    uri = table.save(str(tmp_path / "t.parquet"))
    arch = p.validation["archs"][0]
    lat = measure_latency(arch, profile.name, uri, rounds=4, runtime="onnxruntime")
    assert (lat.source, lat.runtime, lat.node["node_id"]) == ("measured", "onnxruntime", worker_id)
    assert lat.node["runtime_version"] == p.runtime_version and lat.value > 0

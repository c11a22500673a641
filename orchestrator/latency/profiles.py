"""Hardware profiles by name: resolve what a config names (``flops``, ``pixel1``, or a measured profile with its
table URI) into a ``LatencyModel``."""

from __future__ import annotations

from pathlib import Path

from orchestrator.latency.flops import flops_model
from orchestrator.latency.hardware import DEVICE, known_hardware, parse_profile
from orchestrator.latency.kit_runner import RUNTIMES as DEPLOYMENT_RUNTIMES
from orchestrator.latency.model import LatencyModel
from orchestrator.latency.official import import_proxyless_yaml
from orchestrator.latency.table import LatencyTable
from orchestrator.spaces import SearchSpace

DEFAULT_RUNTIME = "torch"
RUNTIMES: tuple[str, ...] = (DEFAULT_RUNTIME, *DEPLOYMENT_RUNTIMES)  # what runs the networks a table prices

# The official table ships beside the project (../shared/reference/proxylessnas), not inside the package.
REFERENCE_PIXEL1 = Path(__file__).resolve().parents[3] / "shared" / "reference" / "proxylessnas" / "mobile_trim.yaml"


def load_table(uri: str, hardware: str = "pixel1"):
    """A table from a Parquet URI, or from an official YAML file (``.yaml``/``.yml``) imported on the fly."""
    if uri.endswith((".yaml", ".yml")):
        return import_proxyless_yaml(uri, hardware)
    return LatencyTable.load(uri)


def latency_model(hardware: str, space: SearchSpace, table: str | None = None,
                  runtime: str = DEFAULT_RUNTIME) -> LatencyModel:
    """The latency model for ``hardware`` in ``runtime`` on ``space``: analytic for ``flops``, else from a table.

    ``pixel1`` defaults to the official table beside the project (TFLite on a Pixel 1: runtime ``litert``); a
    measured profile (``cpu-...``, ``cuda-...``) and a kit device (any other name) need ``table``, a Parquet URI
    (local or ``s3://``) built for that hardware, runtime and space body. ``space`` may be a task variant of the
    table's space that changes only the classes (``tiny[c3]``): the table's body is reused and the head priced
    for the variant. Another body, hardware or runtime is refused.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    profile = parse_profile(hardware)
    if profile.kind == "analytic":
        if runtime != DEFAULT_RUNTIME:
            raise ValueError(f"hardware {hardware!r} counts multiply-accumulates: it has no runtime (drop runtime: "
                             f"{runtime})")
        return flops_model(space)
    if table is None:
        if profile.kind == DEVICE:
            raise ValueError(f"unknown hardware {hardware!r} (known: {known_hardware()}): as a kit device it needs "
                             f"its table (nas latency import --kit ...)")
        if profile.kind != "imported":
            raise ValueError(f"hardware {hardware!r} is measured: give its table URI (nas latency build --out URI)")
        if not REFERENCE_PIXEL1.is_file():
            raise ValueError(f"no table given for {hardware!r} and the official one is not at {REFERENCE_PIXEL1}")
        table = str(REFERENCE_PIXEL1)
    t = load_table(table, hardware)
    if t.provenance.hardware != hardware:
        raise ValueError(f"table {table} is for hardware {t.provenance.hardware!r}, not {hardware!r}")
    model = t.to_model(space)  # another space's table is refused first: the runtime cannot fix that
    t.check_runtime(hardware, runtime)
    return model


__all__ = ["known_hardware", "latency_model", "load_table", "RUNTIMES", "DEFAULT_RUNTIME"]

"""``nas latency``: build, import, predict with and validate latency lookup tables."""

from __future__ import annotations

import contextlib
import json

import click  # noqa: TID253

from orchestrator.cli import app
from orchestrator.latency.calibrate import CalibrationConfig
from orchestrator.latency.hardware import (
    cluster_profiles,
    default_profile,
    local_profiles,
    node_resources,
    parse_profile,
)
from orchestrator.latency.kit import below_goal, import_kit, write_kit
from orchestrator.latency.kit_runner import (
    DEFAULT_CALIBRATION,
    DEFAULT_VALIDATION,
    KIT_FORMATS,
    RUNTIMES,
    runtime_version,
)
from orchestrator.latency.measure import default_config
from orchestrator.latency.official import OFFICIAL_HARDWARE, import_proxyless_yaml
from orchestrator.latency.runner import build_tables, config_of, describe, validate_table
from orchestrator.latency.table import LatencyTable
from orchestrator.netconfig import load_arch
from orchestrator.ray_session import ray_session
from orchestrator.spaces import get_space

DTYPE_CHOICES = ("float32", "float16", "bfloat16")
RUNTIME_CHOICES = ("torch", *RUNTIMES)


@app.group()
def latency() -> None:
    """Latency lookup tables: build on cluster hardware, import official ones, predict, validate."""


def _profiles(names: tuple[str, ...], device: str, use_ray: bool):
    """The profiles ``--hardware`` names; none means this node's device, ``all`` every one the cluster offers."""
    if not names:
        return [default_profile(device)]
    if "all" in names:
        if not use_ray:
            raise ValueError("--hardware all needs Ray (drop --local)")
        import ray

        found = cluster_profiles(ray.cluster_resources())
        if not found:
            raise ValueError("no node in the Ray cluster offers any hardware resource (hw:<name>)")
        return list(found)
    return [parse_profile(n) for n in names]


def _out_for(out: str, hardware: str, several: bool) -> str:
    if several and "{hardware}" not in out:
        raise ValueError("--out must contain '{hardware}' when building several tables")
    return out.replace("{hardware}", hardware)


@latency.command("build")
@click.option("--hardware", "hardware", multiple=True,
              help="Profile to measure (repeatable; 'all' = every hw:<name> resource in the cluster; "
                   "default: this node's device).")
@click.option("--space", "space_name", required=True, help="Search space name, e.g. digits-32.")
@click.option("--calibrate", "networks", type=int, default=60, show_default=True,
              help="Whole networks to calibrate the entries on (0: the plain table).")
@click.option("--validate", "validate_n", type=int, default=30, show_default=True,
              help="Held-out networks to validate on after the build (0: none); figures go into the provenance.")
@click.option("--seed", type=int, default=0, show_default=True, help="Calibration networks' seed.")
@click.option("--validation-seed", type=int, default=1, show_default=True,
              help="Held-out networks' seed (must differ from --seed).")
@click.option("--group-size", type=int, default=30, show_default=True,
              help="Networks timed round-robin together (one task each).")
@click.option("--batch-size", type=int, default=1, show_default=True)
@click.option("--threads", type=int, default=None, help="Torch intra-op threads on CPU [default: 1].")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="float32", show_default=True)
@click.option("--warmup", type=int, default=None, help="Untimed passes before timing entries [default: 5].")
@click.option("--repeats", type=int, default=None, help="Timed passes per plain entry [default: 60].")
@click.option("--min-repeat-ms", type=float, default=None,
              help="Each repeat times enough calls to last at least this long [default: 0].")
@click.option("--statistic", type=click.Choice(["median", "min"]), default=None,
              help="Which statistic of the repeats a plain entry is [default: min].")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default=None,
              help="Thread CPU time (CPU, 1 thread: ignores time a busy host takes away) or wall time "
                   "[default: cpu on CPU with 1 thread, else wall].")
@click.option("--method", type=click.Choice(["isolated", "in-network"]), default=None,
              help="Time each plain entry alone, or where it runs inside a whole network [default: in-network].")
@click.option("--min-rounds", type=int, default=None, help="Whole networks: least round-robin rounds [default: 20].")
@click.option("--max-rounds", type=int, default=None, help="Whole networks: most rounds [default: 80].")
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="torch", show_default=True,
              help="What runs the networks: torch (eager, entries timed part by part) or a deployment runtime "
                   "(whole networks exported and timed in it, entries fitted from them).")
@click.option("--provider", default=None,
              help="ONNX Runtime execution provider or OpenVINO device [default: the runtime's CPU one; "
                   "CUDAExecutionProvider / GPU on cuda].")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: from the hardware's kind).")
@click.option("--resolution", type=int, default=None,
              help="Input side (default: the space's; else the table is for the variant SPACE[r<side>]).")
@click.option("--local", "local", is_flag=True, help="Measure in this process instead of as Ray tasks.")
@click.option("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
@click.option("--endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL).")
@click.option("--out", "out", required=True, help="Table URI: a path or s3://bucket/key; '{hardware}' is replaced.")
def build(hardware: tuple[str, ...], space_name: str, networks: int, validate_n: int, seed: int,
          validation_seed: int, group_size: int, batch_size: int, threads: int | None, dtype: str,
          warmup: int | None, repeats: int | None, min_repeat_ms: float | None, statistic: str | None,
          clock: str | None, method: str | None, min_rounds: int | None, max_rounds: int | None, runtime: str,
          provider: str | None, device: str | None, resolution: int | None, local: bool, address: str | None,
          endpoint: str | None, out: str) -> None:
    """Measure every (block, candidate) of a space, plus stem and head, on each named hardware; calibrate the
    entries on whole networks there and validate them on held-out ones."""
    space = get_space(space_name)
    calibration = CalibrationConfig(networks=networks, group_size=group_size, seed=seed, validate=validate_n,
                                    validation_seed=validation_seed)
    settings = dict(batch_size=batch_size, threads=threads, dtype=dtype, warmup=warmup, repeats=repeats,
                    min_repeat_ms=min_repeat_ms, resolution=resolution, statistic=statistic, clock=clock,
                    method=method, min_rounds=min_rounds, max_rounds=max_rounds, runtime=runtime, provider=provider)
    if runtime != "torch":
        runtime_version(runtime)  # refuse a runtime this machine lacks before starting anything
        if dtype != "float32" or method or statistic or repeats is not None:
            raise ValueError(f"--runtime {runtime} times whole float32 networks: --dtype, --method, --statistic "
                             f"and --repeats apply to torch only")
    with contextlib.nullcontext() if local else ray_session(address):
        profiles = _profiles(hardware, device or "cpu", not local)
        uris = [_out_for(out, p.name, len(profiles) > 1) for p in profiles]
        jobs = [(p, default_config(device or p.device, **settings)) for p in profiles]
        tables = build_tables(space, jobs, use_ray=not local, calibration=calibration)
    for table, uri in zip(tables, uris):
        table.to_model()
        table.save(uri, endpoint)
        p = table.provenance
        click.echo(f"{uri}: {p.hardware} in {p.runtime} ({len(table.entries)} entries)")
        if p.validation:
            click.echo(f"  {describe(p.validation)}")


@latency.command("kit")
@click.option("--space", "space_name", required=True, help="Search space name, e.g. proxyless-imagenet.")
@click.option("--format", "fmt", type=click.Choice(KIT_FORMATS), required=True,
              help="onnx (ONNX Runtime, OpenVINO, TensorRT) or tflite (LiteRT, TFLite's benchmark_model).")
@click.option("--networks", type=int, default=DEFAULT_CALIBRATION, show_default=True,
              help="Calibration networks (at most 100).")
@click.option("--validate", "validate_n", type=int, default=DEFAULT_VALIDATION, show_default=True,
              help="Held-out networks (a kit holds at most 130 networks).")
@click.option("--seed", type=int, default=0, show_default=True, help="Calibration networks' seed.")
@click.option("--validation-seed", type=int, default=1, show_default=True, help="Held-out networks' seed.")
@click.option("--out", "out", required=True, help="New folder for the kit.")
def kit(space_name: str, fmt: str, networks: int, validate_n: int, seed: int, validation_seed: int,
        out: str) -> None:
    """Write a latency kit: whole networks of a space to measure on a device that is not a cluster node."""
    from tqdm import tqdm

    space = get_space(space_name)
    with tqdm(total=networks + validate_n, desc=f"kit {space.name} ({fmt})", unit="net", disable=None) as bar:
        manifest = write_kit(space, fmt, out, networks, validate_n, seed, validation_seed, bar.update)
    click.echo(f"{out}: kit {manifest['fingerprint']}, {networks} calibration + {validate_n} held-out networks "
               f"({fmt}); measure with: python {out}/run_kit.py --runtime RUNTIME")


@latency.command("import")
@click.argument("file", required=False)
@click.option("--format", "fmt", type=click.Choice(["proxyless-yaml"]), default=None,
              help="FILE's format (the official ProxylessNAS table).")
@click.option("--kit", "kit_dir", default=None, help="A kit folder (nas latency kit) whose --results to import.")
@click.option("--results", default=None, help="The kit's results CSV (columns file,ms; more allowed).")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None,
              help="The runtime that measured the kit [default: the results' runtime column].")
@click.option("--hardware", default=None,
              help="The name the table is known by: pixel1 for the official table; a kit device's own name "
                   "(e.g. pixel7-litert) for a kit.")
@click.option("--space", "space_name", default=None,
              help="The official table's space [default: proxyless-imagenet]; a kit names its own.")
@click.option("--endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL).")
@click.option("--out", "out", required=True, help="Table URI: a path or s3://bucket/key.")
def import_(file: str | None, fmt: str | None, kit_dir: str | None, results: str | None, runtime: str | None,
            hardware: str | None, space_name: str, endpoint: str | None, out: str) -> None:
    """Convert an official latency table FILE, or fit a kit device's table from its measured --kit --results."""
    if kit_dir is not None:
        if file is not None or fmt is not None:
            raise ValueError("give either FILE --format proxyless-yaml or --kit with --results, not both")
        if results is None or hardware is None:
            raise ValueError("--kit needs --results FILE and --hardware NAME")
        if space_name is not None:
            raise ValueError("--space belongs to the official table: a kit's manifest names its space")
        table = import_kit(kit_dir, results, hardware, runtime, endpoint=endpoint)
        table.to_model()
        warning = below_goal(table)
        table.save(out, endpoint)
        p = table.provenance
        click.echo(f"{out}: {p.hardware} in {p.runtime} ({len(table.entries)} entries, fitted on "
                   f"{p.calibration['networks']} networks)")
        if p.validation:
            click.echo(f"  {describe(p.validation)}")
        if warning:
            click.echo(f"warning: {warning}", err=True)
        return
    if file is None or fmt is None:
        raise ValueError("give FILE --format proxyless-yaml, or --kit DIR --results FILE --hardware NAME")
    if results is not None or runtime is not None:
        raise ValueError("--results and --runtime belong to a kit import (--kit)")
    hardware = hardware or OFFICIAL_HARDWARE
    space = get_space(space_name or "proxyless-imagenet")
    table = import_proxyless_yaml(file, hardware, space, endpoint)
    table.to_model(space)
    table.save(out, endpoint)
    click.echo(f"{out}: {hardware} in {table.provenance.runtime} ({len(table.entries)} entries)")


@latency.command("predict")
@click.option("--table", "table_uri", required=True, help="Table URI (path or s3://).")
@click.argument("arch")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--plain", is_flag=True, help="Sum the plain entries (before calibration on whole networks).")
@click.option("--endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL).")
def predict(table_uri: str, arch: str, as_json: bool, plain: bool, endpoint: str | None) -> None:
    """Latency in ms of ARCH (an architecture string or a net.config file) by the table's (calibrated) entries.

    ARCH may name a K-class variant of the table's space (``proxyless-imagenet[c100]:...``): its head is priced
    for its own classes."""
    table = LatencyTable.load(table_uri, endpoint)
    a = load_arch(arch)
    ms = table.predict(a, plain=plain)
    if as_json:
        click.echo(json.dumps({"arch": a.encode(), "hardware": table.provenance.hardware, "latency_ms": ms,
                               "runtime": table.provenance.runtime,
                               "table": table_uri, "calibrated": bool(table.provenance.calibration
                                                                      and table.provenance.calibration.get("networks"))
                               and not plain}))
    else:
        click.echo(f"{ms:.3f} ms")


@latency.command("validate")
@click.option("--table", "table_uri", required=True, help="Table URI (path or s3://).")
@click.option("--samples", type=int, default=30, show_default=True, help="Held-out networks to measure.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Held-out networks' seed (must differ from the table's calibration seed).")
@click.option("--uniform", is_flag=True,
              help="Draw the networks uniformly (a narrow latency range) instead of spread across the range.")
@click.option("--record", is_flag=True, help="Write the figures into the table's provenance (replaces the table).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every sample.")
@click.option("--local", "local", is_flag=True, help="Measure in this process instead of as Ray tasks.")
@click.option("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
@click.option("--endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL).")
def validate(table_uri: str, samples: int, seed: int, uniform: bool, record: bool, as_json: bool, local: bool,
             address: str | None, endpoint: str | None) -> None:
    """Measure held-out whole networks on the table's hardware; score the table and its plain entries."""
    table = LatencyTable.load(table_uri, endpoint)
    table.to_model()
    config_of(table)
    with contextlib.nullcontext() if local else ray_session(address):
        v = validate_table(table, samples, seed, not local, spread=not uniform)
    if record:
        table.with_provenance(validation=v).save(table_uri, endpoint)
    p = table.provenance
    if as_json:
        click.echo(json.dumps({"hardware": p.hardware, "space": p.space, "table": table_uri, **v}))
    else:
        click.echo(f"{p.hardware} on {p.space}: {describe(v)}")


@latency.command("hardware")
@click.option("--json", "as_json", is_flag=True)
def hardware_cmd(as_json: bool) -> None:
    """This node's measured profiles and the Ray resources that offer them (for ``ray start --resources``)."""
    profiles = local_profiles()
    if as_json:
        click.echo(json.dumps({"profiles": [p.name for p in profiles], "resources": node_resources(profiles)}))
    else:
        for p in profiles:
            click.echo(f"{p.name}  (ray resource {p.resource})")

"""``nas arch``: inspect and export architectures (strings or net.config files), and derive them from a search."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import click  # noqa: TID253

from orchestrator import tracking
from orchestrator.arch import Arch
from orchestrator.cli import UserError, app
from orchestrator.derive import derive_front, log_probs_from_alpha
from orchestrator.export import export_net_config, export_onnx
from orchestrator.latency.profiles import DEFAULT_RUNTIME, latency_model, load_table
from orchestrator.metrics import describe
from orchestrator.netconfig import load_arch
from orchestrator.network import build_net
from orchestrator.redact import redact
from orchestrator.spaces import get_space
from orchestrator.state_io import load_state


@app.group()
def arch() -> None:
    """Architectures: info, export and budgeted derivation from a finished search."""


@arch.command("info")
@click.argument("arch_or_file")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--resolution", type=int, default=None, help="Input side in pixels (default: the space's).")
def info(arch_or_file: str, as_json: bool, resolution: int | None) -> None:
    """Parameters, MACs and shape of ARCH_OR_FILE (an architecture string or a net.config file)."""
    d = describe(load_arch(arch_or_file), resolution)
    if as_json:
        click.echo(json.dumps(d))
    else:
        for k, v in d.items():
            click.echo(f"{k:>12}: {v}")


@arch.command("export")
@click.argument("arch_or_file")
@click.option("--format", "fmt", type=click.Choice(["net-config", "onnx"]), required=True)
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True)
def export(arch_or_file: str, fmt: str, out: str) -> None:
    """Write ARCH_OR_FILE as an official net.config JSON or an ONNX graph (randomly initialised weights)."""
    a = load_arch(arch_or_file)
    if fmt == "net-config":
        export_net_config(a, out)
    else:
        export_onnx(build_net(a).eval(), out)
    click.echo(out)


@arch.command("derive")
@click.option("--from", "source", required=True, metavar="RESULT",
              help="A finished search: its result.json, a checkpoint (checkpoint.pt of 'nas search', search_state.pt "
                   "of a Ray run), a folder holding one, or an MLflow run (runs:/RUN_ID, or RUN_ID).")
@click.option("--target", type=float, default=None, help="The latency budget, in the hardware profile's unit.")
@click.option("--targets", default=None, metavar="T1,T2,...", help="Several budgets: one net per budget.")
@click.option("--hardware", default=None, help="Price with this hardware profile instead of the search's own.")
@click.option("--table", default=None, metavar="URI",
              help="Latency table for --hardware (a measured profile needs one); alone, its own hardware is used.")
@click.option("--runtime", default=None,
              help="The runtime --hardware runs the net in [default: torch; the search's own without --hardware].")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI for a run id (default: $MLFLOW_TRACKING_URI, "
              "else sqlite:///mlflow.db here).")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: one object for --target, a list of objects (in the order given) for --targets.")
def derive(source: str, target: float | None, targets: str | None, hardware: str | None, table: str | None,
           runtime: str | None, tracking_uri: str | None, as_json: bool) -> None:
    """The most probable architecture under a search's α whose predicted latency is at most the budget (exact
    dynamic programme over blocks); with --targets, one net per budget from the same search."""
    if (target is None) == (targets is None):
        raise UserError("give either --target T or --targets T1,T2,...")
    if targets is not None:
        try:
            budgets = [float(t) for t in targets.split(",")]
        except ValueError:
            raise UserError(f"--targets {targets!r}: expected numbers separated by commas, e.g. 0.08,0.1,0.12") \
                from None
    else:
        budgets = [target]
    record, where = _load_search(source, tracking_uri)
    space = _space_of(record, where)
    model = _derive_latency_model(record, space, hardware, table, runtime, where)
    try:
        log_probs = log_probs_from_alpha(record["alpha"], model)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    derived = derive_front(log_probs, model, budgets)
    rows = [{**d.to_dict(), "unit": model.unit, "hardware": model.hardware} for d in derived]
    if as_json:
        click.echo(json.dumps(rows if targets is not None else rows[0]))
        return
    for i, r in enumerate(rows):
        if i:
            click.echo("")
        click.echo(f"arch: {r['arch']}")
        click.echo(f"predicted latency: {r['predicted_latency']:.6g} {r['unit']} "
                   f"(budget {r['budget']:.6g}, {r['hardware']})")
        click.echo(f"log-probability: {r['log_prob']:.6g} (probability {r['probability']:.4g})")


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def _load_search(source: str, tracking_uri: str | None) -> tuple[dict, str]:
    """A finished search as a dict with at least ``alpha`` and ``config`` (plus ``arch``, ``candidates`` from a
    result.json, ``space_fingerprint`` from a checkpoint), and a name for it in error messages."""
    path = Path(source)
    if source.startswith("runs:/"):
        return _load_mlflow(source[len("runs:/"):].split("/")[0], tracking_uri)
    if path.is_dir():
        for name in ("result.json", "checkpoint.pt", "search_state.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise ValueError(f"{source}: no result.json, checkpoint.pt or search_state.pt in this folder")
    elif not path.is_file():
        if _RUN_ID.match(source):
            return _load_mlflow(source, tracking_uri)
        raise ValueError(f"{source}: no such file, and not an MLflow run (runs:/RUN_ID)")
    if path.suffix == ".json":
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    else:
        record = _load_state(path)
    if not isinstance(record, dict) or "alpha" not in record or not isinstance(record.get("config"), dict):
        raise ValueError(f"{path}: not a search result or checkpoint (no 'alpha' and 'config')")
    return record, str(path)


def _load_state(path: Path) -> dict:
    """A search checkpoint, loaded as tensors and plain values only (``weights_only=True``)."""
    return load_state(path, "search checkpoint")


def _load_mlflow(run_id: str, tracking_uri: str | None) -> tuple[dict, str]:
    """The ``result.json`` artifact of a search run in MLflow."""
    from mlflow.exceptions import MlflowException

    uri = tracking.resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ValueError(f"no MLflow store at {redact(uri)} (give --tracking-uri)")
    tracking.check_tracking_uri(uri)
    where = f"MLflow run {run_id} at {redact(uri)}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = tracking.client(uri).download_artifacts(run_id, "result.json", tmp)
            record = json.loads(Path(local).read_text())
    except MlflowException as e:
        first = str(e.message if hasattr(e, "message") else e).strip().splitlines()[0]
        raise ValueError(f"{where}: no search result.json ({first})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: cannot read its result.json ({e})") from None
    if not isinstance(record, dict) or "alpha" not in record or not isinstance(record.get("config"), dict):
        raise ValueError(f"{where}: its result.json is not a search result")
    return record, where


def _space_of(record: dict, where: str):
    """The search's space: from its derived architecture's string (which names task variants), else from the
    config (``space`` plus any top-level ``num_classes``/``resolution``), checked against a stored fingerprint."""
    cfg = record["config"]
    try:
        if record.get("arch"):
            space = get_space(Arch.parse(str(record["arch"])).space)
        else:
            space = get_space(str(cfg.get("space"))).variant(cfg.get("num_classes"), cfg.get("resolution"),
                                                                cfg.get("width_mult"))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    fp = record.get("space_fingerprint")
    if fp is not None and fp != space.fingerprint():
        raise ValueError(f"{where}: its space fingerprint {fp} is not that of space {space.name!r} "
                         f"({space.fingerprint()})")
    cands = record.get("candidates")
    if cands is not None and list(cands) != [op.encode() for op in space.candidates]:
        raise ValueError(f"{where}: candidates {','.join(cands)} are not those of space {space.name!r}")
    return space


def _derive_latency_model(record: dict, space, hardware: str | None, table: str | None, runtime: str | None,
                          where: str):
    """The search's own latency model, or the one ``--hardware``/``--table``/``--runtime`` name, for the search's
    space; a table of another hardware or runtime than named is refused."""
    if hardware is None and table is None and runtime is None:
        cfg = record["config"]
        try:
            return latency_model(str(cfg.get("hardware")), space, cfg.get("latency_table"),
                                 str(cfg.get("runtime", DEFAULT_RUNTIME)))
        except (ValueError, OSError) as e:
            raise ValueError(f"{where}: its latency model (hardware {cfg.get('hardware')!r}): {e}") from None
    try:
        if hardware is None and table is not None:  # the table alone: its own hardware (and runtime, unless named)
            own = load_table(table).provenance
            hardware, runtime = own.hardware, runtime or own.runtime
        elif hardware is None:  # --runtime alone: the search's own hardware and table, priced in that runtime
            hardware, table = str(record["config"].get("hardware")), record["config"].get("latency_table")
        return latency_model(hardware, space, table, runtime or DEFAULT_RUNTIME)
    except (ValueError, OSError) as e:
        raise ValueError(f"--hardware/--table/--runtime: {e}") from None

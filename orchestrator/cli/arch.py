"""``nas arch``: inspect and export architectures (strings or net.config files)."""

from __future__ import annotations

import json

import click

from orchestrator.cli import app


@app.group()
def arch() -> None:
    """Architectures: info and export."""


@arch.command("info")
@click.argument("arch_or_file")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--resolution", type=int, default=None, help="Input side in pixels (default: the space's).")
def info(arch_or_file: str, as_json: bool, resolution: int | None) -> None:
    """Parameters, MACs and shape of ARCH_OR_FILE (an architecture string or a net.config file)."""
    from orchestrator.metrics import describe
    from orchestrator.netconfig import load_arch

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
    from orchestrator.export import export_net_config, export_onnx
    from orchestrator.netconfig import load_arch
    from orchestrator.network import build_net

    a = load_arch(arch_or_file)
    if fmt == "net-config":
        export_net_config(a, out)
    else:
        export_onnx(build_net(a).eval(), out)
    click.echo(out)

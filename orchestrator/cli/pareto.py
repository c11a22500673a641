"""``nas pareto``: compare the Pareto fronts of sweeps (MLflow experiments) per hardware; PNG + JSON."""

from __future__ import annotations

from pathlib import Path

import click  # noqa: TID253

from orchestrator import registry, tracking
from orchestrator.cli import app
from orchestrator.sweep.report import compare_fronts
from orchestrator.redact import redact


@app.command("pareto")
@click.option("--experiment", "experiments", multiple=True, required=True,
              help="A sweep's MLflow experiment; repeat to compare sweeps.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for PNGs and pareto.json.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
              "sqlite:///mlflow.db here).")
def pareto(experiments: tuple[str, ...], out_dir: str, tracking_uri: str | None) -> None:
    """Non-dominated sets and hypervolumes per hardware, from the experiments' retrain runs."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ValueError(f"no MLflow store at {redact(uri)} (reading fronts creates nothing)")
    rep = compare_fronts(uri, list(experiments), out_dir)
    for hw, s in rep.summary.items():
        for exp, f in s["series"].items():
            click.echo(f"{hw:>24} {exp}: {len(f['points'])} point(s), front {len(f['front'])}, "
                       f"hypervolume {f['hypervolume']:.4g} (ref {f['ref_latency']:.4g} {s['unit']})")
            versions = registry.registered_versions(uri, [p["run_id"] for p in f["front"] if p.get("run_id")])
            for p in f["front"]:
                for name, version in versions.get(p.get("run_id", ""), []):
                    click.echo(f"{'':>24}   {registry.model_uri(name, version)}  (registered model {name} version "
                               f"{version}): {p['latency']:.4g} {s['unit']}, top-1 {1 - p['error']:.3f}")
    for p in rep.plots:
        click.echo(f"plot: {p}")
    click.echo(f"json: {rep.json_path}")

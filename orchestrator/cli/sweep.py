"""``nas sweep``: a Ray Tune sweep over hardware x latency target, recorded in MLflow, with Pareto fronts."""

from __future__ import annotations

import click  # noqa: TID253

from orchestrator import console, mlflow_links
from orchestrator.cli import app
from orchestrator.sweep import load_sweep, run_sweep
from orchestrator.redact import redact


@app.command("sweep")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A sweep YAML, e.g. configs/sweep-tiny.yaml.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a sweep key (e.g. max_concurrent_trials=1, retrain.epochs=2); repeatable.")
@click.option("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a private local Ray).")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the private local Ray (default: all).")
@click.option("--gpu", is_flag=True, help="One GPU per Train worker for the warm-up, every search and retrain "
              "(the same as --set use_gpu=true).")
@click.option("--allow-autoscale", is_flag=True, help="The cluster autoscales: start even if its nodes cannot host "
              "the workers yet (the same as --set allow_autoscale=true).")
@click.option("--quiet", is_flag=True, help="No progress: neither the warm-up's bar nor a line per trial (warnings "
              "and the results still show).")
def sweep(config_path: str, overrides: tuple[str, ...], address: str | None, num_cpus: int | None, gpu: bool,
          allow_autoscale: bool, quiet: bool) -> None:
    """Run (or resume, with the same name and storage) a sweep; prints each point and where to look."""
    flags = [*(["use_gpu=true"] if gpu else []), *(["allow_autoscale=true"] if allow_autoscale else [])]
    cfg = load_sweep(config_path, [*overrides, *flags])
    console.setup(quiet=quiet)
    res = run_sweep(cfg, address=address, num_cpus=num_cpus, progress=not quiet)
    for t in sorted(res.trials, key=lambda t: (t["hardware"], t["target"])):
        acc = t.get("val_accuracy", t.get("supernet_valid_accuracy"))
        click.echo(f"{t['hardware']:>24} target {t['target']:<8.4g} measured {t['measured_latency']:.4g} {t['unit']:<5}"
                   f" top-1 {acc if acc is None else f'{acc:.3f}'}  {t['arch']}")
    for hw, s in res.pareto.items():
        click.echo(f"front {hw}: {len(s['series'][res.name]['front'])} point(s), "
                   f"hypervolume {s['series'][res.name]['hypervolume']:.4g}")
    click.echo(f"sweep {res.name}: {len(res.trials)} trial(s) finished, {len(res.errors)} failed"
               f"{' (resumed)' if res.resumed else ''}; {res.wall_seconds:.0f} s wall, "
               f"{res.worker_seconds:.0f} worker-seconds")
    click.echo(f"mlflow: experiment {res.name}, parent run {res.parent_run_id} at {redact(res.tracking_uri)}")
    for hw, uris in res.registered.items():
        click.echo(f"registered {hw}: {', '.join(uris)}")
    click.echo(mlflow_links.where_to_look(res.tracking_uri, run_id=res.parent_run_id))
    if res.errors:
        raise click.ClickException(f"{len(res.errors)} trial(s) failed: {res.errors[0]}")

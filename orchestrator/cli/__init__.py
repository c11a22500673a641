"""The ``nas`` console command. Each sub-group lives in its own module and is registered here.

Errors a user can cause (bad input, missing files, unreachable services) surface as one line on stderr and a
non-zero exit, never a traceback: library code raises ``ValueError`` (or ``OSError``) with a message that
names the problem, and ``main`` prints it.
"""

from __future__ import annotations

import logging
import os
import sys

import click  # noqa: TID253 (the CLI is click; the core imports without it)

from orchestrator import console
from orchestrator.ray_session import quiet_ray_env
from orchestrator.redact import install as install_redaction, redact


class UserError(click.ClickException):
    """An error to print as one line and exit 2."""

    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def app(verbose: int) -> None:
    """Hardware-aware ProxylessNAS at cluster scale."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic"):  # their INFO lines (database set-up) are not the user's business
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    install_redaction()  # no credential (a tracking URI's password) in any log line, the project's or MLflow's
    console.setup()  # progress lines (orchestrator.progress) show at INFO whatever the level; a --quiet turns them off


def _register() -> None:
    # Deferred: each module adds its group to ``app``, so it imports this module (the cycle cli.arch -> cli).
    from orchestrator.cli import arch  # noqa: F401, PLC0415

    for name in ("latency", "data", "search", "sweep", "retrain", "pareto"):
        try:
            __import__(f"orchestrator.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"orchestrator.cli.{name}":
                raise


def main(argv: list[str] | None = None) -> None:
    """Entry point: run ``app`` and turn user errors into one line and a non-zero exit."""
    quiet_ray_env()
    _register()
    try:
        rc = app.main(args=argv, prog_name="nas", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"error: {redact(e.format_message())}", err=True)
        sys.exit(e.exit_code)
    except (ValueError, OSError, KeyError, RuntimeError) as e:  # RuntimeError: a failed Ray run, said in one line
        msg = redact(str(e).splitlines()[0]) if str(e) else type(e).__name__
        click.echo(f"error: {msg}", err=True)
        if os.environ.get("NAS_DEBUG"):
            raise
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)

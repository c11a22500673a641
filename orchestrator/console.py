"""What a user sees while a command runs: progress (a bar on a terminal, one final line in a log) and the sweep's
progress lines, all through the ``orchestrator.progress`` logger, which ``--quiet`` silences (warnings still show).

Library code logs progress to ``progress_log``; the entry points decide where it goes: the CLI (``setup``) prints
its records as plain lines on stderr, the demo's root logger shows them as they are.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

__all__ = ["PROGRESS_LOGGER", "progress_log", "setup", "is_terminal", "FinalLine"]

PROGRESS_LOGGER = "orchestrator.progress"
progress_log = logging.getLogger(PROGRESS_LOGGER)


def setup(quiet: bool = False) -> None:
    """The CLI's console: progress lines as plain lines on stderr at INFO (whatever ``-v`` says of other loggers),
    none under ``quiet``. Idempotent."""
    progress_log.setLevel(logging.WARNING if quiet else logging.INFO)
    progress_log.propagate = False  # its own plain format; the root logger's "LEVEL name:" lines are for the rest
    if not any(getattr(h, "_nas_progress", False) for h in progress_log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        h._nas_progress = True  # type: ignore[attr-defined]
        progress_log.addHandler(h)


def is_terminal() -> bool:
    """Whether progress bars go to a terminal (tqdm draws on stderr); in a log a bar would be one redraw per update."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def _interval(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class FinalLine:
    """A progress bar for a log: nothing while the loop runs, one line when it closes (its description, steps,
    time, rate and the last postfix), logged to ``progress_log``. Same calls as a tqdm bar."""

    def __init__(self, total: int, done: int, desc: str) -> None:
        self.total, self.start, self.n, self.desc = total, done, done, desc
        self.postfix: dict[str, Any] = {}
        self.t0 = time.monotonic()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def line(self) -> str:
        secs = time.monotonic() - self.t0
        steps = self.n - self.start
        rate = f"{steps / secs:.2f} step/s" if secs > 0 and steps else "-"
        tail = "".join(f" {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}: {self.n}/{self.total} steps in {_interval(secs)} ({rate}){tail}"

    def close(self) -> None:
        if not self.closed:  # once, however often it is closed
            self.closed = True
            progress_log.info("%s", self.line())

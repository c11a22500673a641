"""Joining or starting Ray for a command: the one place that decides which cluster a driver talks to."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Join ``address`` (or ``RAY_ADDRESS``, as inside a Ray job), else start a private local Ray whose node offers
    this machine's hardware (``hw:<name>``), never silently attaching to another user's local cluster. Shuts down
    only a connection this call made; inside an existing session it does nothing."""
    import ray

    from orchestrator.latency.hardware import local_profiles, node_resources

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(address="local", num_cpus=num_cpus, resources=node_resources(local_profiles()),
                 logging_level=logging.WARNING, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()

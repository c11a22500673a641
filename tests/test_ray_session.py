"""The one way a command starts or joins Ray (``orchestrator.ray_session``)."""

from __future__ import annotations

import pytest

from orchestrator.ray_session import ray_session


@pytest.mark.timeout(300)
def test_workers_of_a_private_ray_find_their_own_cluster_beside_another():
    """Ray's State API inside a worker (Ray Train's placement-group cleaner polls it with no address) must reach the
    session's own cluster while another local Ray runs on the machine: without being told, it either raises
    "Found multiple active Ray instances" (a traceback on the console, the cleaner stops) or finds the other one."""
    import ray
    from ray.cluster_utils import Cluster

    other = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    try:
        with ray_session(num_cpus=1):
            @ray.remote
            def where() -> str:
                from ray.dashboard.utils import get_address_for_submission_client

                return get_address_for_submission_client(None)

            ours = ray._private.worker.global_worker.node.address_info["webui_url"]
            assert ray.get(where.remote()) == f"http://{ours}"
    finally:
        other.shutdown()

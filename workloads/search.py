"""Data-parallel ProxylessNAS search on Ray Train.

    ray job submit --working-dir . -- python workloads/search.py --config configs/demo.yaml --workers 2

On a running cluster (RAY_ADDRESS set, as inside a Ray job) it joins it; run directly, it starts a local Ray.
Options are those of ``nas search --ray``.
"""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    main(["search", "--ray", *sys.argv[1:]])

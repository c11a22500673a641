"""`nas retrain --ray` as a Ray job entry point (thin: the work is in orchestrator).

    ray job submit --working-dir . -- python workloads/retrain.py --arch ARCH --config configs/retrain-imagenet.yaml \
        --workers 8 --gpu --storage s3://bucket/runs
"""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    main(["retrain", "--ray", *sys.argv[1:]])

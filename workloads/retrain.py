"""`nas retrain` as a Ray job entry point (thin: the work is in orchestrator)."""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    main(["retrain", *sys.argv[1:]])

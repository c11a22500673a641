"""`nas sweep` as a Ray job entry point (thin: the work is in orchestrator)."""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    main(["sweep", *sys.argv[1:]])

"""`make bench`: every benchmark in turn; each prints its figures and writes benchmarks/out/<name>.json."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ["latency_table", "loader", "data_overlap", "supernet_memory", "distributed", "search_cost",
              "fidelity", "sweep", "derive"]


def main() -> None:
    failed = []
    for name in sys.argv[1:] or BENCHMARKS:
        print(f"\n=== benchmarks.{name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}"]).returncode != 0:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

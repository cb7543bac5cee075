"""TTFT benchmark: `python benchmarks/ttft.py --help`, the same as `di-router bench --help`.

`python benchmarks/ttft.py --compare` starts a simulator fleet and the router and compares
prefix-affinity routing with cache-blind and round-robin routing (benchmarks/RESULTS-ttft.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run from a checkout without installing: the repository root holds the `router` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of the plan's picture (plugins/module_utils/_diagram.py).

Prints, as medians over --repeat runs of one process, the time to draw (target for 1,000
hosts: under 2 s, docs/diagram.md):
  1. the summary view of --hosts hypervisors x --guests guests (what the planner draws at
     fleet scale);
  2. the same plan drawn in full (every guest a box; summary_over raised), for comparison;
  3. a 3-host plan, the lab's size.
The plans are built once by the planner; only the drawing is timed.

Usage: .venv/bin/python bench/diagram_bench.py [--hosts 1000] [--guests 8] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".collections"))
from ansible_collections.mv6.transition.plugins.module_utils import _diagram, _plan


def fleet(hosts: int, guests: int) -> dict:
    return _plan.build_plan(
        "ipv4",
        {"prefix": "2001:db8::/32", "uplink": "eth1"},
        {f"hv{i:05d}": [{"name": f"g{i}x{j}"} for j in range(guests)] for i in range(hosts)},
    )


def timed(repeat: int, *args, **kwargs) -> tuple[float, int]:
    runs, size = [], 0
    for _run in range(repeat):
        start = time.perf_counter()
        size = len(_diagram.render(*args, **kwargs))
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--guests", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    big = fleet(args.hosts, args.guests)
    rows = [
        (f"summary, {args.hosts} x {args.guests}", *timed(args.repeat, big)),
        (
            f"in full, {args.hosts} x {args.guests}",
            *timed(args.repeat, big, summary_over=args.hosts),
        ),
        ("in full, 3 x 2 (the lab's size)", *timed(args.repeat, fleet(3, 2))),
    ]
    for name, seconds, size in rows:
        print(f"{name:36s} {seconds * 1000:9.1f} ms  {size / 1024:9.1f} KiB")


if __name__ == "__main__":
    main()

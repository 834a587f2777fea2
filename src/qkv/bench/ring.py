"""`qkv bench ring` (also `python -m qkv.bench ring`): ring attention across 1, 2 and 4 processes.

Per-rank peak memory and time of exact attention over a sequence split across 1, 2 and 4
local processes, in the common row schema (:mod:`qkv.bench.points`), measured by
``qkv.bench.ring_measure`` once ring attention (issue 8) has landed. Until then the command
says that ring attention is not available yet, writes a result saying so
(``"available": false`` with the reason, no rows), which BENCHMARKS.md reports, and exits
with status 0: nothing failed, there is nothing to measure yet.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from rich.console import Console

from qkv.bench import refuse_outputs
from qkv.bench.measure import machine_info

__all__ = ["measure", "main"]

WORLD_SIZES = (1, 2, 4)
NOT_LANDED = "ring attention (qkv.distributed, issue 8) has not landed yet"


def measure(quick: bool) -> dict | None:
    """The ring benchmark's result, or None while ring attention is not available."""
    try:
        from qkv.bench.ring_measure import run_ring_bench
    except ImportError:
        return None
    return run_ring_bench(processes=WORLD_SIZES, quick=quick, progress=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``qkv bench ring``: exit status 0, also while there is nothing to measure."""
    from qkv.bench import report

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="qkv bench ring", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that it runs")
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="ring attention runs on CPU processes")
    parser.add_argument("--json", type=Path, default=None,
                        help="where the JSON goes (default <out>/bench-ring-<device>.json)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="results folder: JSON unless --json, BENCHMARKS.md from every bench-*.json "
                             "beside it (default bench-results)")
    args = parser.parse_args(argv)
    refuse_outputs(parser, [("--json", args.json, "file"), ("--out", args.out, "folder")])
    console = Console()
    result = measure(args.quick)
    if result is None:
        console.print(f"qkv bench ring: not available yet: {NOT_LANDED}.")
        result = {"benchmark": "ring", "date": datetime.date.today().isoformat(), "machine": machine_info(),
                  "config": {"device": "cpu", "quick": args.quick, "world_sizes": list(WORLD_SIZES)},
                  "available": False, "reason": NOT_LANDED, "rows": []}
    result["command"] = " ".join(["qkv bench ring", *argv])
    report.publish(result, args.json, args.out, console)  # written first: a long run is never lost
    report.print_ring(result, console)
    return 0

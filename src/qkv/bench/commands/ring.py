"""``qkv bench ring``: ring attention across 1, 2 and 4 local processes (:mod:`qkv.bench.ring`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from qkv.argtypes import positive_int
from qkv.bench import report, ring
from qkv.bench.commands import refuse_outputs
from qkv.bench.tables import format_bytes, format_seconds, print_tabs

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="qkv bench ring", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=2048 only, one repetition, to check that it runs")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=list(ring.SIZES), help="sequence lengths N")
    parser.add_argument("--processes", type=positive_int, nargs="+", default=list(ring.WORLD_SIZES),
                        help="process counts of the ring")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--layout", choices=["contiguous", "zigzag"], default="contiguous")
    parser.add_argument("--mode", choices=["fwd", "fwd+bwd"], default="fwd")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed calls per configuration")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="ring attention runs on CPU processes")
    parser.add_argument("--json", type=Path, default=None,
                        help="where the JSON goes (default <out>/bench-ring-<device>.json)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="results folder: JSON unless --json, BENCHMARKS.md from every bench-*.json "
                             "beside it (default bench-results)")
    args = parser.parse_args(argv)
    refuse_outputs(parser, [("--json", args.json, "file"), ("--out", args.out, "folder")])
    console = Console()

    def show(row: dict) -> None:
        console.print(f"[dim]{row['backend']} P={row['processes']} N={row['n']}: {format_seconds(row['time_s'])}, "
                      f"peak {format_bytes(row['peak_bytes'])} per rank[/]")

    result = ring.run_ring_bench(tuple(args.sizes), tuple(args.processes), args.quick, causal=args.causal,
                                 layout=args.layout, mode=args.mode, repeats=args.repeats, threads=args.threads,
                                 on_row=show)
    result["command"] = " ".join(["qkv bench ring", *argv])
    report.publish(result, args.json, args.out, console)
    print_tabs(report.ring_tabs(result), console)
    return 0

"""``qkv bench report``: BENCHMARKS.md and the plots, generated from the benchmarks' JSON, measuring nothing."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from qkv.bench import report
from qkv.bench.commands import refuse_outputs

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qkv bench report", description=__doc__.split("\n")[0],
                                     epilog=report.__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", type=Path, help="results written by qkv bench attention|model|ring|triton")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder of BENCHMARKS.md (default: .)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.json if not p.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    refuse_outputs(parser, [("--out", args.out, "folder")])
    written = report.write_report(args.json, args.out)
    Console().print("wrote " + ", ".join(str(p) for p in written))
    return 0

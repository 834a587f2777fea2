"""Benchmark programs: ``qkv bench attention|model|ring|streaming|report|triton`` (also ``python -m qkv.bench ...``).

Benchmarks print tables and write JSON, plots and BENCHMARKS.md; they are programs, never
timed tests. The package reads from the bottom up:

- what is measured and how: :mod:`~qkv.bench.contenders` (the contenders and masking
  variants, declared as data; inputs), :mod:`~qkv.bench.measure` (time, peak memory, the
  machine), :mod:`~qkv.bench.points` (rows, FLOPs, scaling fits), :mod:`~qkv.bench.tables`
  (tables, formats, targets);
- the measurements: :mod:`~qkv.bench.sweep` (the one sweep over contenders x N x variants),
  :mod:`~qkv.bench.overhead`, :mod:`~qkv.bench.ring`, :mod:`~qkv.bench.model`,
  :mod:`~qkv.bench.streaming`,
  :mod:`~qkv.bench.triton_gpu`;
- the report: :mod:`~qkv.bench.plots`, :mod:`~qkv.bench.report_triton`, :mod:`~qkv.bench.report`;
- the commands, each only its ``main(argv)``: :mod:`qkv.bench.commands`.

Each command checks its output paths before it measures, writes every file whole or not at
all (:mod:`qkv.files`), and exits with code 130 on Ctrl-C.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["main"]

BENCHMARKS = ("attention", "model", "ring", "streaming", "report", "triton")  # each a module of qkv.bench.commands


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``<benchmark> [options]`` to the benchmark's own ``main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        known = ", ".join(BENCHMARKS)
        print(f"usage: qkv bench {{{known}}} [options]   (each has --help; also python -m qkv.bench)")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown benchmark {argv[0]!r}; choose one of: {known}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    try:
        return int(importlib.import_module(f"qkv.bench.commands.{argv[0]}").main(argv[1:]) or 0)
    except SystemExit as exit_:  # argparse: --help (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except KeyboardInterrupt:
        print(f"qkv bench {argv[0]}: interrupted (Ctrl-C); files already written are complete", file=sys.stderr)
        return 130

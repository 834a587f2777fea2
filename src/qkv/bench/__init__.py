"""Benchmark programs: ``qkv bench attention|model|ring|report|triton`` (also ``python -m qkv.bench ...``).

Benchmarks print tables and write JSON, plots and BENCHMARKS.md (:mod:`qkv.bench.report`);
they are programs, never timed tests.
"""

from __future__ import annotations

import sys

__all__ = ["main"]

BENCHMARKS = {"attention": "qkv.bench.attention", "model": "qkv.bench.model", "ring": "qkv.bench.ring",
              "report": "qkv.bench.report", "triton": "qkv.bench.triton_gpu"}


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
    import importlib

    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])

"""Benchmark programs: ``qkv bench attention|model|ring|report|triton`` (also ``python -m qkv.bench ...``).

Benchmarks print tables and write JSON, plots and BENCHMARKS.md (:mod:`qkv.bench.report`);
they are programs, never timed tests. Each checks its output paths before it measures
(:func:`refuse_outputs`), writes every file whole or not at all (:mod:`qkv.files`), and
exits with code 130 on Ctrl-C.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable
    from pathlib import Path

__all__ = ["main", "refuse_outputs"]

BENCHMARKS = {"attention": "qkv.bench.attention_command", "model": "qkv.bench.model", "ring": "qkv.bench.ring",
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

    try:
        return int(importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0)
    except SystemExit as exit_:  # argparse: --help (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except KeyboardInterrupt:
        print(f"qkv bench {argv[0]}: interrupted (Ctrl-C); files already written are complete", file=sys.stderr)
        return 130


def refuse_outputs(parser: argparse.ArgumentParser, outputs: Iterable[tuple[str, str | Path | None, str]]) -> None:
    """Exit with code 2 and one line naming the option when an output path cannot be written.

    ``parser``: the benchmark's argparse parser (its ``prog`` starts the line); ``outputs``:
    ``(option, path, "file" | "folder")`` triples, as :func:`qkv.files.outputs_problem` takes.
    Called before anything is measured.
    """
    from qkv.files import outputs_problem

    problem = outputs_problem(outputs)
    if problem:
        parser.exit(2, f"{parser.prog}: error: {problem}\n")

"""The ``qkv bench`` subcommands, one module each with only its ``main(argv) -> int``.

Each parses its options, refuses bad ones (:func:`refuse_outputs` checks the output paths
before anything is measured), calls the measurement below it and hands the result to
:mod:`qkv.bench.report`. :func:`qkv.bench.main` dispatches to them.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from qkv.files import outputs_problem

__all__ = ["refuse_outputs"]


def refuse_outputs(parser: argparse.ArgumentParser, outputs: Iterable[tuple[str, str | Path | None, str]]) -> None:
    """Exit with code 2 and one line naming the option when an output path cannot be written.

    ``parser``: the benchmark's argparse parser (its ``prog`` starts the line); ``outputs``:
    ``(option, path, "file" | "folder")`` triples, as :func:`qkv.files.outputs_problem` takes.
    """
    problem = outputs_problem(outputs)
    if problem:
        parser.exit(2, f"{parser.prog}: error: {problem}\n")

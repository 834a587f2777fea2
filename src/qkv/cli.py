"""The ``qkv`` command: the parser and the dispatch, nothing else.

``qkv walkthrough`` runs self-attention step by step on random vectors; ``qkv explain``
(and ``qkv serve``, the same as a local web page) shows every step of attention in a real
model for one word; ``qkv generate`` continues a prompt with a decoder; ``qkv wsd``,
``qkv contextuality`` and ``qkv fidelity`` measure models on data; ``qkv train-demo``
trains a small transformer and shows its attention learning; ``qkv bench`` forwards to
:mod:`qkv.bench`. Each command lives in its own module under :mod:`qkv.commands`.

Usage errors, found before any model is loaded where possible, print one line naming the
option (``qkv explain: error: --layer 6: ...``) and exit with code 2, as argparse does; an
output path that cannot be written is one of them (:func:`qkv.files.output_problem`).
Output files go where asked, missing parent folders created, each written whole or not at
all (:mod:`qkv.files`). Ctrl-C prints one line and exits with code 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

import qkv
from qkv.commands import COMMANDS

__all__ = ["build_parser", "main"]

BENCH_HELP = ("benchmarks: attention backends, whole models, ring attention, the Triton kernel, and the "
              "BENCHMARKS.md report (qkv bench --help)")


def _command(name: str) -> ModuleType:
    """The module of ``qkv NAME`` (see :mod:`qkv.commands` for what it holds)."""
    return importlib.import_module(f"qkv.commands.{COMMANDS[name]}")


def _bench(argv: list[str]) -> int:
    """Run ``qkv bench``: forward the remaining arguments to :func:`qkv.bench.main`."""
    try:
        from qkv.bench import main as bench_main
    except ImportError as err:
        print(f"qkv bench: error: the benchmarks are not available ({err})", file=sys.stderr)
        return 1
    return int(bench_main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    """The ``qkv`` argument parser, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="qkv", description="Self-attention end to end: see it, check it, measure it."
    )
    parser.add_argument("--version", action="version", version=f"qkv {qkv.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = _command(name)
        module.configure(sub.add_parser(name, help=module.HELP))
    sub.add_parser("bench", help=BENCH_HELP, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qkv`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after "bench", --help included, belongs to it
        return _bench(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    if args.command not in COMMANDS:
        parser.print_help(sys.stderr)
        return 2
    try:
        return _command(args.command).run(args)
    except KeyboardInterrupt:  # every file is written whole or not at all, so what exists is complete
        print(f"qkv {args.command}: interrupted (Ctrl-C); files already written are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

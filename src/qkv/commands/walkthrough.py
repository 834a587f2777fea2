"""``qkv walkthrough``: self-attention step by step on random vectors, every number printed."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from qkv.argtypes import positive_int
from qkv.inspect.toy_walkthrough import walkthrough_numbers
from qkv.text import DEFAULT_SENTENCE
from qkv.viz.toy_walkthrough import render_walkthrough

__all__ = ["HELP", "configure", "run"]

HELP = "self-attention step by step on random vectors"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``qkv walkthrough``'s options to ``parser``."""
    parser.add_argument("sentence", nargs="?", default=DEFAULT_SENTENCE,
                        help=f"the sentence (default: {DEFAULT_SENTENCE!r})")
    parser.add_argument("--focus", default="bank", help="the token whose attention to show")
    parser.add_argument("--dim", type=positive_int, default=4, help="vector size D (>= 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--causal", action="store_true", help="hide tokens after the focus")


def run(args: argparse.Namespace) -> int:
    """Run ``qkv walkthrough``; exit code 2 on a bad sentence or focus word."""
    try:
        numbers = walkthrough_numbers(args.sentence, args.focus, args.dim, args.seed, args.causal)
    except ValueError as err:
        print(f"qkv walkthrough: error: {err}", file=sys.stderr)
        return 2
    render_walkthrough(numbers, args.dim, args.causal, Console())
    return 0

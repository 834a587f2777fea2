"""``qkv wsd``: word-sense disambiguation from each layer's vectors (:mod:`qkv.inspect.wsd`)."""

from __future__ import annotations

import argparse

from qkv.argtypes import positive_int
from qkv.commands.common import MODEL_HELP, load_data_and_model, make_console, save_outputs
from qkv.viz.terminal import wsd_tables

__all__ = ["HELP", "configure", "run"]

HELP = "word-sense disambiguation from each layer's vectors (CoarseWSD-20 format)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``qkv wsd``'s options to ``parser``."""
    parser.add_argument("--data", required=True, help="folder with one CoarseWSD-20 folder per word")
    parser.add_argument("--model", default="minilm", help=MODEL_HELP)
    parser.add_argument("--method", choices=["1nn", "probe"], default="1nn",
                        help="1nn: nearest sense centroid by cosine (default); probe: logistic regression")
    parser.add_argument("--words", default=None, help="comma-separated subset of the words")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="sentences per forward pass (default: 32)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the scores as JSON")
    parser.add_argument("--out", default=None, metavar="DIR", help="write a PNG of F1 against layer")


def run(args: argparse.Namespace) -> int:
    """Run ``qkv wsd``: sense disambiguation per layer, table, JSON and plot."""

    from rich.progress import Progress

    from qkv.inspect.wsd import run_wsd
    from qkv.viz.measures import plot_wsd

    loaded = load_data_and_model("wsd", args)
    if loaded is None:
        return 2
    dataset, model, tokenizer = loaded
    console = make_console()
    with Progress(console=console, transient=True) as progress:
        result = run_wsd(model, tokenizer, dataset, method=args.method, batch_size=args.batch_size,
                         progress=progress)
    for table in wsd_tables(result, args.method, model.name):
        console.print(table)
    save_outputs(console, args, result, plot_wsd, f"wsd_{args.method}.png")
    return 0

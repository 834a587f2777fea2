"""``qkv wsd``: word-sense disambiguation from each layer's vectors (:mod:`qkv.inspect.wsd`)."""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from qkv.argtypes import positive_int
from qkv.commands.common import (
    MODEL_HELP,
    VECTORS_CAPTION,
    load_data_and_model,
    make_console,
    markup_safe,
    save_outputs,
)
from qkv.text import terminal_safe

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
    layers = result["layers"]
    table = Table(title=f"word-sense disambiguation, {args.method}, {markup_safe(model.name)}: F1 (%) averaged over "
                        f"{len(dataset)} words", caption=VECTORS_CAPTION)
    table.add_column("after layer")
    table.add_column("micro-F1", justify="right")
    table.add_column("macro-F1", justify="right")
    for layer in layers:
        label = {"last4": "last 4 summed"}.get(layer, layer)
        scores = result["average"][layer]
        table.add_row(label, f"{scores['micro_f1']:.1f}", f"{scores['macro_f1']:.1f}")
    table.add_row("most frequent sense", f"{result['mfs']['micro_f1']:.1f}", f"{result['mfs']['macro_f1']:.1f}",
                  style="dim")
    console.print(table)
    per_word = Table(title="micro-F1 per word and layer")
    per_word.add_column("word")
    for layer in layers:
        per_word.add_column(layer, justify="right")
    per_word.add_column("MFS", justify="right")
    for word, scores in result["words"].items():
        per_word.add_row(Text(terminal_safe(word)), *[f"{scores[layer]['micro_f1']:.1f}" for layer in layers],
                         f"{scores['mfs']['micro_f1']:.1f}")
    console.print(per_word)
    save_outputs(console, args, result, plot_wsd, f"wsd_{args.method}.png")
    return 0

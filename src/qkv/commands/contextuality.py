"""``qkv contextuality``: Ethayarajh's measures of contextuality per layer
(:mod:`qkv.inspect.contextuality`)."""

from __future__ import annotations

import argparse

from qkv.argtypes import positive_int
from qkv.commands.common import MODEL_HELP, load_data_and_model, make_console, save_outputs
from qkv.viz.terminal import contextuality_table

__all__ = ["HELP", "configure", "run"]

HELP = ("self-similarity, intra-sentence similarity and anisotropy "
        "per layer (Ethayarajh, 2019)")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``qkv contextuality``'s options to ``parser``."""
    parser.add_argument("--data", required=True, help="folder with one CoarseWSD-20 folder per word")
    parser.add_argument("--model", default="minilm", help=MODEL_HELP)
    parser.add_argument("--max-sentences", type=positive_int, default=200, help="sentences sampled per word")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the measures as JSON")
    parser.add_argument("--out", default=None, metavar="DIR", help="write a PNG plot")


def run(args: argparse.Namespace) -> int:
    """Run ``qkv contextuality``: Ethayarajh's measures per layer, table, JSON and plot."""

    from rich.progress import Progress

    from qkv.inspect.contextuality import contextuality
    from qkv.viz.measures import plot_contextuality

    loaded = load_data_and_model("contextuality", args)
    if loaded is None:
        return 2
    dataset, model, tokenizer = loaded
    console = make_console()
    with Progress(console=console, transient=True) as progress:
        total = sum(min(args.max_sentences, len(w.train) + len(w.test)) for w in dataset)
        task = progress.add_task("contextuality", total=total)
        result = contextuality(model, tokenizer, dataset, max_sentences_per_word=args.max_sentences,
                               on_batch=lambda n: progress.advance(task, n))
    console.print(contextuality_table(result, model.name))
    save_outputs(console, args, result, plot_contextuality, "contextuality.png")
    return 0

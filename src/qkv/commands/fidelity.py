"""``qkv fidelity``: what sliding windows and approximate attention cost inside a model
(:mod:`qkv.inspect.fidelity`)."""

from __future__ import annotations

import argparse

import qkv
from qkv.argtypes import positive_int
from qkv.commands.common import MODEL_HELP, fail, make_console, read_text_file, save_outputs, wsd_subset
from qkv.viz.terminal import fidelity_table

__all__ = ["HELP", "configure", "run"]

HELP = "what sliding windows and approximate attention cost inside the model"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``qkv fidelity``'s options to ``parser``."""
    parser.add_argument("--model", default="minilm",
                        help=MODEL_HELP + " (GPT-2 runs only the methods that can be causal)")
    parser.add_argument("--text", default=None, metavar="FILE", help="a text file to encode (default: a built-in "
                        "paragraph of about 440 tokens)")
    parser.add_argument("--data", default=None, metavar="DIR", help="CoarseWSD-20 folder: adds word-sense "
                        "disambiguation F1 per variant")
    parser.add_argument("--words", default=None, help="comma-separated subset of the words (with --data)")
    parser.add_argument("--max-per-word", type=positive_int, default=100,
                        help="train sentences sampled per word, half as many test (default: 100)")
    parser.add_argument("--backends", default=None,
                        help="comma-separated backends to try (default: sliding,linear,performer,nystrom,linformer)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every number as JSON")
    parser.add_argument("--out", default=None, metavar="DIR", help="write a PNG of quality against speed")


def run(args: argparse.Namespace) -> int:
    """Run ``qkv fidelity``: efficient attention inside the model against the exact model."""
    from rich.progress import Progress

    from qkv.inspect.fidelity import (
        DEFAULT_TEXT,
        DEFAULT_VARIANTS,
        fidelity,
        subsample,
        variant_problem,
    )
    from qkv.viz.measures import plot_fidelity

    try:
        text = DEFAULT_TEXT if args.text is None else read_text_file("--text", args.text, "encode")
        backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
        known = sorted({v.backend for v in DEFAULT_VARIANTS})
        unknown = sorted(set(backends or ()) - set(known))
        if unknown:
            raise ValueError(f"--backends {args.backends!r}: unknown {unknown}; choose from {known}")
        variants = [v for v in DEFAULT_VARIANTS if backends is None or v.backend in backends]
        dataset = wsd_subset(args)
        if dataset is not None:
            dataset = subsample(dataset, args.max_per_word)
        model, tokenizer = qkv.load(args.model)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        return fail("fidelity", str(err))
    console = make_console(120)
    # Some methods cannot run in some models (Nystrom and Linformer are not causal, GPT-2 is).
    problems = {v.label: variant_problem(model, v) for v in variants}
    reasons = dict.fromkeys(reason for reason in problems.values() if reason is not None)  # distinct, in order
    variants = [v for v in variants if problems[v.label] is None]
    if not variants:
        chosen = f"--backends {args.backends!r}" if args.backends else "the default variants"
        return fail("fidelity", f"{chosen}: this model can run none of them: " + "; ".join(reasons))
    for reason in reasons:
        console.print(f"skipped {', '.join(label for label, r in problems.items() if r == reason)}: {reason}")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("fidelity", total=len(variants) + 1)

        def on_step(message: str) -> None:
            progress.update(task, description=f"fidelity: {message}")
            if ":" not in message:  # the exact model and each variant; WSD sub-steps share their step
                progress.advance(task)

        result = fidelity(model, tokenizer, text, variants, dataset=dataset, on_step=on_step)
    console.print(fidelity_table(result, model.name))
    console.print("attention TV: mean total-variation distance of each attention row to the exact one "
                  "(0 = same, 1 = disjoint; more than 1 where a method's mixing weights are not a "
                  "distribution). WSD F1: micro-F1 (%), last layer, 1-nearest centroid.")
    save_outputs(console, args, result, plot_fidelity, "fidelity.png")
    return 0

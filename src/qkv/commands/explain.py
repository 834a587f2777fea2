"""``qkv explain``: every step of attention in a real model for one word, in the terminal and as
JSON, an interactive page and PNG figures (:mod:`qkv.inspect.explain`)."""

from __future__ import annotations

import argparse

import qkv
from qkv.argtypes import positive_int
from qkv.commands.common import MODEL_HELP, fail, make_console, output_options_problem
from qkv.text import DEFAULT_SENTENCE, terminal_safe

__all__ = ["HELP", "configure", "run"]

HELP = "every step of attention on a real model, for one word"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``qkv explain``'s options to ``parser``."""
    parser.add_argument("sentence", nargs="?", default=DEFAULT_SENTENCE,
                        help=f"the sentence (default: {DEFAULT_SENTENCE!r})")
    parser.add_argument("--focus", default="bank", help="the word to follow (default: bank)")
    parser.add_argument("--occurrence", type=positive_int, default=None, metavar="N",
                        help="which occurrence of a repeated focus word to follow, from 1 (default: the first)")
    parser.add_argument("--model", default="minilm", help=MODEL_HELP)
    parser.add_argument("--layer", type=int, default=None,
                        help="layer of the step-by-step head, from 0 (default: the head where the focus word "
                             "looks most at content words)")
    parser.add_argument("--head", type=int, default=None, help="head of the step-by-step walkthrough, from 0")
    parser.add_argument("--senses", default=None,
                        help='sense examples: "money: sentence | sentence; river: sentence | sentence"')
    parser.add_argument("--contrast", default=None, metavar="SENTENCE",
                        help="a sentence that uses the focus word in another sense, to compare its vector with "
                             "(default: an example of the sense the focus word is farthest from)")
    parser.add_argument("--truncate", action="store_true",
                        help="explain only the first words of an input longer than the model was trained on "
                             "(MiniLM: 256 tokens), cut at a word boundary; without it such an input is explained "
                             "whole, with a note on what the extra length means")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every number as JSON")
    parser.add_argument("--html", default=None, metavar="PATH", help="write a self-contained interactive page")
    parser.add_argument("--out", default=None, metavar="DIR", help="write PNG figures")


def run(args: argparse.Namespace) -> int:
    """Run ``qkv explain``: the report in the terminal, and as JSON, HTML and PNG when asked."""
    from qkv.inspect.senses import parse_senses
    from qkv.viz.notebook import explain
    from qkv.viz.terminal import print_report

    # Everything that can be checked without the model first: a typo costs no loading time.
    if not args.sentence.strip():
        return fail("explain", f"the sentence is empty; give one that contains the focus word, e.g. "
                                f"qkv explain {DEFAULT_SENTENCE!r} --focus bank")
    if not args.focus.strip():
        return fail("explain", "--focus is empty; give a word of the sentence")
    if args.contrast is not None and not args.contrast.strip():
        return fail("explain", "--contrast is empty; give a sentence that uses the focus word in another sense")
    problem = output_options_problem(args)
    if problem:
        return fail("explain", problem)
    try:
        senses = parse_senses(args.senses) if args.senses else None
        model, tokenizer = qkv.load(args.model)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        return fail("explain", str(err))
    from qkv.inspect.words import word_view

    try:  # which token to follow, named as the options are, before the model runs
        word_view(tokenizer(args.sentence, truncation=False)).find(args.focus, args.occurrence, option="--occurrence")
    except ValueError as err:
        return fail("explain", str(err))
    layers, heads = len(model.blocks), model.blocks[0].attn.num_heads
    for option, value, count, what in (("--layer", args.layer, layers, "layers"),
                                       ("--head", args.head, heads, "heads per layer")):
        if value is not None and not 0 <= value < count:
            return fail("explain", f"{option} {value}: this model has {count} {what}, numbered 0 to {count - 1}")
    try:
        report = explain(model, tokenizer, args.sentence, args.focus, occurrence=args.occurrence, layer=args.layer,
                         head=args.head, senses=senses, contrast=args.contrast, truncate=args.truncate)
    except ValueError as err:
        return fail("explain", str(err))
    print_report(report, make_console())
    if args.json:
        report.save_json(args.json)
        print(f"wrote {terminal_safe(args.json)}")
    if args.html:
        report.save_html(args.html)
        print(f"wrote {terminal_safe(args.html)} (self-contained; open it in a browser)")
    if args.out:
        from qkv.viz.figures import skipped_figures

        paths = report.figures(args.out)
        print(f"wrote {len(paths)} figures to {terminal_safe(args.out)}")
        for name, reason in skipped_figures(report).items():
            print(f"  no {name}: {reason}")
    return 0

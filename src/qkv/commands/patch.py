"""``qkv patch``: activation patching from a clean input into a corrupted one
(:mod:`qkv.inspect.patching`)."""

from __future__ import annotations

import argparse

from qkv.argtypes import positive_int
from qkv.commands.common import MODEL_HELP, fail, make_console, output_options_problem, save_outputs
from qkv.text import DEFAULT_FOCUS, DEFAULT_SENTENCE

__all__ = ["HELP", "configure", "run"]

HELP = "activation patching: which layers, positions and heads carry a difference between two inputs"

ENCODER_CORRUPTED = "He sat on the bank of the river."
DECODER_CLEAN, DECODER_CORRUPTED = "The capital of France is", "The capital of Italy is"
DECODER_ANSWERS = (" Paris", " Rome")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``qkv patch``'s options to ``parser``."""
    from qkv.inspect.patching import SITES

    parser.add_argument("clean", nargs="?", default=None, help=f"the input whose activations are copied (default: "
                        f"{DEFAULT_SENTENCE!r} for an encoder, {DECODER_CLEAN!r} for a decoder)")
    parser.add_argument("corrupted", nargs="?", default=None, help=f"the input they are copied into (default: "
                        f"{ENCODER_CORRUPTED!r}, or {DECODER_CORRUPTED!r})")
    parser.add_argument("--model", default="minilm", help=MODEL_HELP)
    parser.add_argument("--focus", default=None, help=f"encoders: the word whose vector the metric reads (default: "
                        f"{DEFAULT_FOCUS!r}); positions pair by their distance from it when the inputs differ")
    parser.add_argument("--senses", default=None, help="encoders: sense examples, \"money: sentence | sentence; "
                        "river: sentence\" (built in for 'bank')")
    parser.add_argument("--sense", default=None, help="encoders: the sense whose prototype the metric uses "
                        "(default: the one the focus word in the clean input is nearest to)")
    parser.add_argument("--answer", default=None, help=f"decoders: the clean input's next token (default with the "
                        f"default inputs: {DECODER_ANSWERS[0]!r}); the metric is logit(answer) - logit(wrong)")
    parser.add_argument("--wrong", default=None, help=f"decoders: the corrupted input's next token (default: "
                        f"{DECODER_ANSWERS[1]!r})")
    parser.add_argument("--sites", default=",".join(SITES), help=f"what to patch, comma-separated: resid (the "
                        f"residual stream entering each layer, per position), z (each head's output), weights "
                        f"(each head's attention weights) (default: {','.join(SITES)})")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="patched runs per forward pass "
                        "(default: 32)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every number as JSON")
    parser.add_argument("--html", default=None, metavar="PATH", help="write the grids as a self-contained page")
    parser.add_argument("--out", default=None, metavar="DIR", help="write patching.png, one heatmap per site")


def run(args: argparse.Namespace) -> int:
    """Run ``qkv patch``: the grids in the terminal, and as JSON, page and PNG when asked."""
    from rich.progress import Progress

    import qkv
    from qkv.inspect.patching import (
        SITES,
        activation_patching,
        logit_difference,
        prepare_pair,
        runs_needed,
        sense_cosine,
    )
    from qkv.inspect.senses import DEFAULT_SENSES, parse_senses
    from qkv.viz.patching import patching_tables, plot_patching, printable, save_patching_page

    try:
        sites = [s.strip() for s in args.sites.split(",") if s.strip()]
        unknown = [s for s in sites if s not in SITES]
        if unknown or not sites:
            raise ValueError(f"--sites {args.sites!r}: choose from {list(SITES)}, comma-separated")
        if (args.clean is None) != (args.corrupted is None):
            raise ValueError("give both inputs, clean and corrupted, or neither (for the defaults)")
        problem = output_options_problem(args)
        if problem:
            raise ValueError(problem)
        model, tokenizer = qkv.load(args.model)
        decoder = bool(model.blocks[0].attn.causal)
        if decoder:
            for option in ("focus", "senses", "sense"):
                if getattr(args, option) is not None:
                    raise ValueError(f"--{option} is for encoders; a decoder's metric is logit(--answer) - "
                                     f"logit(--wrong) at the last position")
            clean, corrupted = args.clean or DECODER_CLEAN, args.corrupted or DECODER_CORRUPTED
            answer, wrong = args.answer, args.wrong
            if args.clean is None:
                answer, wrong = answer or DECODER_ANSWERS[0], wrong or DECODER_ANSWERS[1]
            if answer is None or wrong is None:
                raise ValueError("a decoder needs --answer (the clean input's next token) and --wrong (the corrupted "
                                 "one's), e.g. --answer ' Paris' --wrong ' Rome'")
            metric = logit_difference(tokenizer, answer, wrong)
            focus = None
        else:
            for option in ("answer", "wrong"):
                if getattr(args, option) is not None:
                    raise ValueError(f"--{option} is for decoders; an encoder's metric is the --focus word's cosine "
                                     f"to a sense prototype")
            clean, corrupted = args.clean or DEFAULT_SENTENCE, args.corrupted or ENCODER_CORRUPTED
            focus = args.focus or DEFAULT_FOCUS
            senses = parse_senses(args.senses) if args.senses else DEFAULT_SENSES.get(focus.lower())
            if senses is None:
                raise ValueError(f"--focus {focus!r} has no built-in sense examples; give --senses \"a: sentence | "
                                 f"sentence; b: sentence\"")
            sense = args.sense
            if sense is None:
                from qkv.inspect.faithfulness import nearest_sense

                sense = nearest_sense(model, tokenizer, clean, focus, senses)
            metric = sense_cosine(model, tokenizer, focus, senses, sense)
        pair = prepare_pair(tokenizer, clean, corrupted, focus)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        return fail("patch", str(err))
    console = make_console(120)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("patching", total=runs_needed(model, pair, sites))
        result = activation_patching(model, tokenizer, clean, corrupted, metric, focus=focus, sites=sites,
                                     batch_size=args.batch_size, on_batch=lambda n: progress.advance(task, n))
    data = result.to_dict()
    data["model"] = model.name
    console.print(printable(f"{model.name}: patching {clean!r} (clean) into {corrupted!r} (corrupted)"), markup=False)
    console.print(printable(f"metric {result.metric}: clean {result.clean_metric:.4f}, corrupted "
                            f"{result.corrupted_metric:.4f}"), markup=False)
    console.print(printable(f"alignment: {result.alignment_note}"), markup=False)
    for table in patching_tables(data):
        console.print(table)
    for site in sites:
        where = (lambda col: f"position {result.corrupted_tokens[col]!r}") if site == "resid" else (
            lambda col: f"head {col}")
        top = ", ".join(f"layer {layer} {where(col)} {share:+.2f}" for layer, col, share in result.top(site, 3))
        console.print(printable(f"most restored by {site}: {top}"), markup=False)
    console.print("share restored: (patched - corrupted) / (clean - corrupted); 0 is the corrupted run, 1 the clean")
    if args.html:
        console.print(f"wrote {save_patching_page(data, args.html)}")
    save_outputs(console, args, data, plot_patching, "patching.png")
    return 0

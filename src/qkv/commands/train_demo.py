"""``qkv train-demo``: train a small transformer from scratch and watch its attention find the word
that decides another word's sense (:mod:`qkv.train`)."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from qkv.argtypes import positive_int
from qkv.commands.common import fail, make_console, output_options_problem
from qkv.files import write_text

__all__ = ["HELP", "configure", "run"]

HELP = ("train a small transformer from scratch and watch attention find "
        "the word that decides another word's sense")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``qkv train-demo``'s options to ``parser``."""
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="optimiser steps of each run (default: 2000; 400 with --quick)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seeds the model, the data and the sampling (default: 0)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (fewer steps and sentences; about 20 s on 2 cores)")
    parser.add_argument("--d-model", dest="d_model", type=positive_int, default=None, help="model width (default: 64)")
    parser.add_argument("--heads", dest="num_heads", type=positive_int, default=None,
                        help="heads per layer (default: 4)")
    parser.add_argument("--layers", dest="num_layers", type=positive_int, default=None, help="layers (default: 2)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: 1, or torch's own setting when OMP_NUM_THREADS is set)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every number as JSON")
    parser.add_argument("--out", default=None, metavar="DIR", help="write PNG figures (training curves, attention)")


def run(args: argparse.Namespace) -> int:
    """Run ``qkv train-demo``: train from scratch, then the control; progress, tables, JSON and PNG."""
    import json
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qkv.train import QUICK, DemoConfig, train_demo

    problem = output_options_problem(args)
    if problem:
        return fail("train-demo", problem)
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
        return fail("train-demo", str(err))
    console = make_console(110)
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
    from qkv.viz.training import training_tables

    data = result.to_json()
    for table in training_tables(result, data, config, config.threads or torch.get_num_threads()):
        console.print(table)
    final = data["final"]
    best = final["best_head"]
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

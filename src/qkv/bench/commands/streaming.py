"""``qkv bench streaming``: a sink cache against a full cache while a decoder generates (or reads
a text), time per token, cache bytes and resident memory at checkpoints (:mod:`qkv.bench.streaming`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch

from qkv.argtypes import positive_int
from qkv.bench.commands import refuse_outputs
from qkv.bench.streaming import decode_cost

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Measure a sink cache against a full cache while generating; print a table, write JSON."""
    import qkv
    from qkv.files import write_text
    from qkv.inspect.perplexity import default_text
    from qkv.nn import KVCache, SinkCache

    parser = argparse.ArgumentParser(prog="qkv bench streaming",
                                     description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=positive_int, default=16384, help="tokens generated with the sink cache")
    parser.add_argument("--full-tokens", type=int, default=8192,
                        help="tokens generated with the full cache (0: skip it; default 8192)")
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--window", type=positive_int, default=1024)
    parser.add_argument("--checkpoints", default="2048,8192,16384")
    parser.add_argument("--prompt-tokens", type=positive_int, default=16, help="prompt: the default text's first N")
    parser.add_argument("--read-text", action="store_true",
                        help="decode the default text's tokens instead of generating, and score them (streaming "
                             "perplexity)")
    parser.add_argument("--caches", default="sink,full", help="which runs: sink, full or both (default: both)")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args(argv)
    refuse_outputs(parser, [("--json", args.json, "file")])
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = [int(c) for c in args.checkpoints.split(",") if c.strip()]
    model, tokenizer = qkv.load(args.model)
    ids = tokenizer(default_text(), truncation=False).input_ids[0]
    prompt, text = ids[None, :args.prompt_tokens], ids[args.prompt_tokens:] if args.read_text else None
    if text is not None and text.shape[0] < max(args.tokens, args.full_tokens):
        raise SystemExit(f"the default text has {ids.shape[0]} tokens; ask for fewer --tokens")
    runs = []
    if "sink" in args.caches:
        runs.append((f"SinkCache({args.sinks}, {args.window})", SinkCache(args.sinks, args.window), args.tokens))
    if "full" in args.caches and args.full_tokens > 0:
        runs.append(("KVCache (full)", KVCache(), args.full_tokens))
    result = {"model": model.name, "prompt_tokens": int(prompt.shape[1]), "threads": torch.get_num_threads(),
              "decoding": "the default text, token by token (scored)" if args.read_text else "greedy generation",
              "runs": []}
    for label, cache, tokens in runs:
        started = time.perf_counter()
        run = {"cache": label, "tokens": tokens, "points": []}
        result["runs"].append(run)

        def on_point(row: dict, label: str = label, run: dict = run, started: float = started) -> None:
            row["elapsed_s"] = time.perf_counter() - started
            run["points"].append(row)
            print(f"{label}: {row}", file=sys.stderr, flush=True)
            if args.json:  # at every point, so that a stopped program keeps what it measured
                write_text(args.json, json.dumps(result, indent=1))

        decode_cost(model, prompt, tokens, cache, checkpoints, on_point=on_point, text=text)
    print(f"{'cache':22s} {'generated':>9s} {'ms/token':>9s} {'cache MiB':>10s} {'RSS MiB':>8s} {'peak RSS MiB':>12s}")
    for run in result["runs"]:
        for row in run["points"]:
            print(f"{run['cache']:22s} {row['tokens']:9d} {row['ms_per_token']:9.1f} "
                  f"{row['cache_bytes'] / 2**20:10.1f} {row['rss_bytes'] / 2**20:8.0f} "
                  f"{row['peak_rss_bytes'] / 2**20:12.0f}")
    return 0

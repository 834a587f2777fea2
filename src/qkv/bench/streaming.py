"""Streaming generation in constant memory: ``python -m qkv.bench.streaming``.

A decoder generates ``--tokens`` tokens (greedy) after a short prompt, once with a
:class:`qkv.nn.SinkCache` (the first ``sinks`` and the last ``window`` positions) and once
with the full :class:`qkv.nn.KVCache` (usually stopped earlier: ``--full-tokens``). At each
checkpoint the program records the median time per token over the last 64 tokens, the
bytes the cache holds, and the process's resident memory (current, and the peak since the
run began). A sink cache should stay flat in all three; a full cache grows.

Example::

    python -m qkv.bench.streaming --model smollm2 --tokens 16384 --full-tokens 8192 \\
        --checkpoints 2048,8192,16384 --threads 2 --json streaming.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from qkv.argtypes import positive_int
from qkv.bench.measure import peak_rss_bytes, reset_peak_rss, rss_bytes

__all__ = ["decode_cost", "main"]

STEPS_PER_POINT = 64  # tokens whose median time is reported at a checkpoint


def decode_cost(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, cache, checkpoints: Sequence[int],
                on_point=None, text: torch.Tensor | None = None) -> list[dict]:
    """Decode ``new_tokens`` one at a time after ``prompt`` with ``cache``; measure at each checkpoint.

    Without ``text`` the model generates (greedy); with ``text`` it reads the text's tokens one at a
    time instead (the same computation per step) and also scores each one, so the points carry the
    streaming perplexity so far.

    Args:
        model: a causal language model with ``generate``.
        prompt: (1, P) token ids.
        new_tokens: tokens to decode.
        cache: an empty KVCache or SinkCache.
        checkpoints: numbers of decoded tokens at which to measure.
        on_point: called with each checkpoint's dict as soon as it is measured.
        text: (N,) token ids that continue ``prompt`` (N >= new_tokens + 1), or None.

    Returns:
        One dict per checkpoint reached: ``tokens`` (decoded), ``ms_per_token`` (median of the last
        64), ``cache_bytes``, ``rss_bytes``, ``peak_rss_bytes`` and, with ``text``, ``perplexity``
        (of every token scored so far).
    """
    wanted = sorted(c for c in set(checkpoints) if c <= new_tokens)
    steps: list[float] = []
    losses: list[float] = []
    rows: list[dict] = []
    last = [0.0]

    def record(token: torch.Tensor) -> None:
        now = time.perf_counter()
        steps.append(now - last[0])
        last[0] = now
        if wanted and len(steps) == wanted[0]:
            wanted.pop(0)
            recent = steps[-STEPS_PER_POINT:] if len(steps) > STEPS_PER_POINT else steps[1:]  # not the prefill
            row = {"tokens": len(steps), "ms_per_token": statistics.median(recent) * 1e3,
                   "cache_bytes": cache.nbytes(), "rss_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes()}
            if losses:
                row["perplexity"] = math.exp(statistics.fmean(losses))
            rows.append(row)
            if on_point is not None:
                on_point(row)

    reset_peak_rss()
    last[0] = time.perf_counter()
    if text is None:
        model.generate(prompt, new_tokens, cache=cache, on_token=record)
        return rows
    with torch.no_grad():
        logits = model(prompt, kv_cache=cache).logits[0, -1]
        for t in range(new_tokens):
            token = text[t:t + 1]
            losses.append(float(torch.nn.functional.cross_entropy(logits.float()[None], token)))
            record(token)
            if t + 1 < new_tokens:
                logits = model(token[None], kv_cache=cache).logits[0, -1]
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Measure a sink cache against a full cache while generating; print a table, write JSON."""
    import qkv
    from qkv.files import write_text
    from qkv.inspect.perplexity import default_text
    from qkv.nn import KVCache, SinkCache

    parser = argparse.ArgumentParser(prog="python -m qkv.bench.streaming", description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    sys.exit(main())

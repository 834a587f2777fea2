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
                on_token=None) -> list[dict]:
    """Generate ``new_tokens`` greedily after ``prompt`` with ``cache``; measure at each checkpoint.

    Args:
        model: a causal language model with ``generate``.
        prompt: (1, P) token ids.
        new_tokens: tokens to generate.
        cache: an empty KVCache or SinkCache.
        checkpoints: numbers of generated tokens at which to measure.
        on_token: called with the number of tokens generated so far.

    Returns:
        One dict per checkpoint reached: ``tokens`` (generated), ``ms_per_token`` (median of the last
        64), ``cache_bytes``, ``rss_bytes`` and ``peak_rss_bytes``.
    """
    wanted = sorted(c for c in set(checkpoints) if c <= new_tokens)
    steps: list[float] = []
    rows: list[dict] = []
    last = [0.0]

    def record(token: torch.Tensor) -> None:
        now = time.perf_counter()
        steps.append(now - last[0])
        last[0] = now
        if wanted and len(steps) == wanted[0]:
            wanted.pop(0)
            recent = steps[-STEPS_PER_POINT:] if len(steps) > STEPS_PER_POINT else steps[1:]  # not the prefill
            rows.append({"tokens": len(steps), "ms_per_token": statistics.median(recent) * 1e3,
                         "cache_bytes": cache.nbytes(), "rss_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes()})
        if on_token is not None:
            on_token(len(steps))

    reset_peak_rss()
    last[0] = time.perf_counter()
    model.generate(prompt, new_tokens, cache=cache, on_token=record)
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
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = [int(c) for c in args.checkpoints.split(",") if c.strip()]
    model, tokenizer = qkv.load(args.model)
    prompt = tokenizer(default_text(("Genesis",))[:2000]).input_ids[:, :args.prompt_tokens]
    runs = [(f"SinkCache({args.sinks}, {args.window})", SinkCache(args.sinks, args.window), args.tokens)]
    if args.full_tokens > 0:
        runs.append(("KVCache (full)", KVCache(), args.full_tokens))
    result = {"model": model.name, "prompt_tokens": int(prompt.shape[1]), "threads": torch.get_num_threads(),
              "runs": []}
    for label, cache, tokens in runs:
        started = time.perf_counter()

        def progress(done: int, label: str = label, tokens: int = tokens, started: float = started) -> None:
            if done % 512 == 0:
                print(f"{label}: {done}/{tokens} tokens, {time.perf_counter() - started:.0f} s", file=sys.stderr,
                      flush=True)

        rows = decode_cost(model, prompt, tokens, cache, checkpoints, on_token=progress)
        result["runs"].append({"cache": label, "tokens": tokens, "seconds": time.perf_counter() - started,
                               "points": rows})
        if args.json:  # after each run, so that a stopped program keeps what it measured
            write_text(args.json, json.dumps(result, indent=1))
    print(f"{'cache':22s} {'generated':>9s} {'ms/token':>9s} {'cache MiB':>10s} {'RSS MiB':>8s} {'peak RSS MiB':>12s}")
    for run in result["runs"]:
        for row in run["points"]:
            print(f"{run['cache']:22s} {row['tokens']:9d} {row['ms_per_token']:9.1f} "
                  f"{row['cache_bytes'] / 2**20:10.1f} {row['rss_bytes'] / 2**20:8.0f} "
                  f"{row['peak_rss_bytes'] / 2**20:12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

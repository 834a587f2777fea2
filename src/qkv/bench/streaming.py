"""Streaming generation in constant memory (``qkv bench streaming``, :mod:`qkv.bench.commands.streaming`).

A decoder generates ``--tokens`` tokens (greedy) after a short prompt, once with a
:class:`qkv.nn.SinkCache` (the first ``sinks`` and the last ``window`` positions) and once
with the full :class:`qkv.nn.KVCache` (usually stopped earlier: ``--full-tokens``). At each
checkpoint the program records the median time per token over the last 64 tokens, the
bytes the cache holds, and the process's resident memory (current, and the peak since the
run began). A sink cache should stay flat in all three; a full cache grows.

Example::

    qkv bench streaming --model smollm2 --tokens 16384 --full-tokens 8192 \\
        --checkpoints 2048,8192,16384 --threads 2 --json streaming.json
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

import torch

from qkv.bench.measure import peak_rss_bytes, reset_peak_rss, rss_bytes

__all__ = ["decode_cost"]

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

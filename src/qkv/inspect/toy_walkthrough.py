"""Self-attention step by step on random vectors (``qkv walkthrough``): every intermediate number.

The embeddings and projections are random (seeded), so the weights show how attention
computes and mean nothing about the words; each step is checked against the library
(:func:`qkv.attention_weights`, :func:`qkv.attention` with the reference backend).
:mod:`qkv.viz.toy_walkthrough` prints it.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from qkv.functional import attention, attention_weights
from qkv.text import DEFAULT_SENTENCE

__all__ = ["tokenize", "walkthrough_numbers", "TOLERANCE"]

TOLERANCE = 1e-6  # hand computation vs library, in float64
_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")  # words (with an apostrophe part) or punctuation



def tokenize(sentence: str) -> list[str]:
    """Split ``sentence`` into words and punctuation marks: "bank." -> ["bank", "."]."""
    return _TOKEN.findall(sentence)


def _focus_index(tokens: list[str], focus: str) -> int:
    """Position of the first token equal to ``focus`` (case-insensitive); ValueError if none."""
    for i, token in enumerate(tokens):
        if token.lower() == focus.lower():
            return i
    listing = ", ".join(map(repr, tokens))
    raise ValueError(f"focus word {focus!r} is not in the sentence; its tokens are: {listing}")


def walkthrough_numbers(
    sentence: str = DEFAULT_SENTENCE,
    focus: str = "bank",
    dim: int = 4,
    seed: int = 0,
    causal: bool = False,
) -> dict[str, Any]:
    """Every number of one self-attention step for the ``focus`` token, on random vectors.

    The numbers are computed by hand (scores, softmax, weighted average) and by the
    library; a RuntimeError is raised if the two differ by more than 1e-6.

    Returns:
        A dict with ``tokens`` (N strings), ``focus_index``, ``x`` (N, D) embeddings,
        ``w_q``, ``w_k``, ``w_v`` (D, D) projections, ``q`` (D,) the focus token's query,
        ``k`` and ``v`` (N, D), ``raw`` (N,) dot products q·k, ``scores`` (N,) scaled
        (-inf where causal hides a key), ``weights`` (N,) summing to 1, ``output`` (D,),
        and ``library_weights`` (N,), ``library_output`` (D,) from qkv. Tensors are float64.

    Raises:
        ValueError: ``dim`` < 1, an empty sentence, or ``focus`` not among the tokens.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1; got {dim}")
    tokens = tokenize(sentence)
    if not tokens:
        raise ValueError(f"the sentence {sentence!r} has no tokens")
    i = _focus_index(tokens, focus)
    N, D = len(tokens), dim

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)  # (N, D) random embeddings
    w_q, w_k, w_v = (
        torch.randn(D, D, generator=gen, dtype=torch.float64) / math.sqrt(D) for _ in range(3)
    )
    queries, k, v = x @ w_q, x @ w_k, x @ w_v  # (N, D) each

    # By hand, for the focus token only.
    scale = 1.0 / math.sqrt(D)
    q = queries[i]  # (D,)
    raw = k @ q  # (N,) dot products
    scores = raw * scale
    if causal:
        scores = scores.masked_fill(torch.arange(N) > i, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (N,)
    output = weights @ v  # (D,)

    # The library, on (B, H, N, D) = (1, 1, N, D). All N queries go in, not just the focus
    # token's: qkv's causal mask is bottom-right aligned, so a lone query would sit at the
    # last position and see every key.
    q4, k4, v4 = (t.view(1, 1, N, D) for t in (queries, k, v))
    library_weights = attention_weights(q4, k4, causal=causal)[0, 0, i]  # (N,)
    library_output = attention(q4, k4, v4, causal=causal, backend="reference")[0, 0, i]

    for name, mine, theirs in (
        ("weights", weights, library_weights),
        ("output", output, library_output),
    ):
        err = (mine - theirs).abs().max().item()
        if not err <= TOLERANCE:
            raise RuntimeError(f"hand-computed {name} differ from qkv's by {err:.3g} > {TOLERANCE}")

    return {
        "tokens": tokens, "focus_index": i, "x": x, "w_q": w_q, "w_k": w_k, "w_v": w_v,
        "q": q, "k": k, "v": v, "raw": raw, "scores": scores, "weights": weights,
        "output": output, "library_weights": library_weights, "library_output": library_output,
    }

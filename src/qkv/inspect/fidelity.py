"""What efficient attention costs inside a pretrained model: ``qkv fidelity``.

Each *variant* swaps every attention layer of the model for another backend
(``model.set_attention(backend, **options)``): a sliding window, global tokens, or an
approximate method (linear, Performer, Nystrom, Linformer). For each one we measure,
against the exact model on the same input:

- ``token_cosine``: the mean cosine of the final token vectors (and the worst token);
- ``sentence_cosine``: the cosine of the sentence embeddings (mean pooling);
- ``attention_distance``: the mean total-variation distance ``0.5 * sum_j |w_ij - w*_ij|``
  between the variant's attention rows and the exact ones, over layers, heads and real
  tokens (0: identical, 1: disjoint); every backend here can give its weights (the
  exact masked softmax, or an approximate method's mixing matrix);
- ``wsd_micro_f1``: word-sense disambiguation micro-F1 on CoarseWSD-20 from the last
  layer (1-nearest-centroid, :mod:`qkv.inspect.wsd`), beside the exact model's;
- ``time_ms``: the median forward time on the text, for a plot of quality against speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from qkv.models.tokenizer import Tokenizer
    from qkv.nn.stack import TransformerStack

__all__ = ["Variant", "DEFAULT_VARIANTS", "DEFAULT_TEXT", "fidelity", "subsample", "variant_problem"]

# Our own prose, long enough (about 400 word pieces) for windows and landmarks to matter.
DEFAULT_TEXT = (
    "Self-attention lets every token of a sentence look at every other token before deciding what it means. "
    "Each token is turned into three vectors: a query, which says what the token is looking for, a key, which "
    "says what it offers to others, and a value, which is what it hands over when it is chosen. The similarity "
    "between one token's query and every key gives a score per pair; a softmax turns the scores of a row into "
    "weights that sum to one, and the token's new vector is the weighted average of all the values. When she "
    "deposited her check at the bank, the word bank gave most of its weight to deposited and to check, and "
    "its vector moved toward money and away from rivers. When the children sat on the bank of the river and "
    "watched the water, the same word listened to river and water instead, and ended somewhere else. Many "
    "heads run side by side, each with its own projections, so one head can follow syntax while another "
    "follows coreference or simply looks at the previous word. Layers are stacked, and every layer starts "
    "from the context the previous one built, so the representations become more and more specific to the "
    "sentence they live in. The price is quadratic: a sequence of ten thousand tokens has a hundred million "
    "pairs in every head of every layer. Flash attention computes the same numbers tile by tile without ever "
    "storing the whole matrix, which saves memory but not arithmetic. Sliding windows keep only the pairs that "
    "are close to each other, which is exact for what it keeps and blind to everything else, unless a few "
    "global tokens are allowed to see and be seen by all. Approximate methods replace the softmax kernel by "
    "random features, by a low rank projection of the keys and values, or by a handful of landmarks that "
    "summarise the sequence, and they trade a measured error for time that grows only linearly with length. "
    "Whether that error matters depends on the task, which is why we measure it inside a real model rather "
    "than on random numbers: the geometry of trained queries and keys is nothing like a Gaussian cloud, and "
    "the words a model attends to are rarely the ones a uniform average would pick."
)


@dataclass(frozen=True)
class Variant:
    """One way of running every attention layer."""

    label: str  # row name in the table
    backend: str  # a qkv backend name
    options: dict = field(default_factory=dict)  # keywords for model.set_attention

    @property
    def family(self) -> str:
        """The backend, with "+global" when global tokens are used (for plot colours)."""
        return self.backend + ("+global" if "global_tokens" in self.options else "")


DEFAULT_VARIANTS = (
    *(Variant(f"sliding w={w}", "sliding", {"window": (w, w)}) for w in (8, 16, 32, 64, 128)),
    *(Variant(f"sliding w={w} + [CLS] global", "sliding", {"window": (w, w), "global_tokens": [0]})
      for w in (8, 32)),
    Variant("linear (elu+1)", "linear"),
    *(Variant(f"performer m={m}", "performer", {"features": m}) for m in (64, 128, 256)),
    *(Variant(f"nystrom landmarks={n}", "nystrom", {"landmarks": n}) for n in (8, 16, 32, 64)),
    *(Variant(f"linformer k={k}", "linformer", {"k": k}) for k in (16, 32, 64, 128)),
)


def subsample(dataset: list, max_per_word: int | None, seed: int = 0) -> list:
    """At most ``max_per_word`` train and ``max_per_word // 2`` test sentences per word.

    A seeded random subset, so every variant sees the same sentences.
    """
    if max_per_word is None:
        return dataset
    from qkv.inspect.wsd import WsdWord

    generator = torch.Generator().manual_seed(seed)

    def pick(examples: list, count: int) -> list:
        if len(examples) <= count:
            return examples
        chosen = torch.randperm(len(examples), generator=generator)[:count].sort().values
        return [examples[i] for i in chosen.tolist()]

    return [WsdWord(w.word, w.senses, pick(w.train, max_per_word), pick(w.test, max(1, max_per_word // 2)))
            for w in dataset]


@contextmanager
def attention_set_to(model: TransformerStack, variant: Variant | None) -> Iterator[None]:
    """Run every layer with ``variant`` (None: the exact default) and restore afterwards."""
    saved = model.attention_backends()
    try:
        if variant is not None:
            model.set_attention(variant.backend, **variant.options)
        yield
    finally:
        for block, (backend, options) in zip(model.blocks, saved):
            block.attn.set_backend(backend, **options)


def variant_problem(model: TransformerStack, variant: Variant) -> str | None:
    """Why ``model`` cannot run ``variant`` (e.g. Nystrom, which is not causal, in GPT-2), or None."""
    try:
        with attention_set_to(model, variant):
            pass
    except ValueError as error:
        return str(error)
    return None


def _final_and_sentence(model, batch) -> tuple[Tensor, Tensor]:
    """Final token vectors (N, d) and the mean-pooled sentence embedding (d,) of one text."""
    with torch.no_grad():
        output = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    hidden = output.last_hidden_state[0]  # (N, d)
    return hidden, hidden.mean(dim=0)


def _attention_rows(model, batch) -> list[Tensor]:
    """Attention weights of every layer, (H, N, N) each."""
    _, cache = model.run_with_cache(batch, names="blocks.*.attn.weights")
    return [cache[f"blocks.{i}.attn.weights"][0] for i in range(len(model.blocks))]


def _forward_ms(model, batch, repeats: int) -> float:
    """Median wall time of a forward pass, after one warm-up."""
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            times.append((time.perf_counter() - start) * 1e3)
    times = sorted(times[1:])
    return times[len(times) // 2]


def _wsd_f1(model, tokenizer, dataset: list, batch_size: int) -> float:
    from qkv.inspect.wsd import run_wsd

    result = run_wsd(model, tokenizer, dataset, batch_size=batch_size)
    return result["average"][result["layers"][-2]]["micro_f1"]  # the last layer ("last4" comes after)


def fidelity(
    model: TransformerStack,
    tokenizer: Tokenizer,
    text: str = DEFAULT_TEXT,
    variants: tuple[Variant, ...] | list[Variant] = DEFAULT_VARIANTS,
    dataset: list | None = None,
    wsd_batch_size: int = 32,
    repeats: int = 5,
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """Measure each variant against the exact model (see the module docstring).

    Args:
        model: a qkv model (e.g. from ``qkv.load("minilm")``); leave out the variants it cannot
            run (:func:`variant_problem`), such as non-causal methods in GPT-2.
        tokenizer: its tokenizer; ``text`` is truncated to the model's maximum length.
        variants: the backends and options to try.
        dataset: CoarseWSD-20 words (:func:`qkv.inspect.wsd.read_dataset`, maybe
            :func:`subsample`-d) for the WSD column; None skips it.
        repeats: forward passes timed per variant (median reported).
        on_step: called with a description before each measurement (progress).

    Returns:
        A JSON-ready dict: ``tokens``, ``exact`` (time, WSD F1) and ``variants``, a list of
        rows with ``label``, ``backend``, ``options``, ``token_cosine``,
        ``min_token_cosine``, ``sentence_cosine``, ``attention_distance``,
        ``wsd_micro_f1``, ``time_ms`` and ``speedup`` (exact time / variant time).
    """
    step = on_step or (lambda _message: None)
    batch = tokenizer(text, truncation=True)
    real = batch.attention_mask[0].bool()  # (N,)
    step("exact model")
    exact_tokens, exact_sentence = _final_and_sentence(model, batch)
    exact_rows = _attention_rows(model, batch)
    exact_ms = _forward_ms(model, batch, repeats)
    exact_f1 = None
    if dataset is not None:
        step("exact model: word-sense disambiguation")
        exact_f1 = _wsd_f1(model, tokenizer, dataset, wsd_batch_size)

    rows = []
    for variant in variants:
        step(variant.label)
        with attention_set_to(model, variant):
            tokens, sentence = _final_and_sentence(model, batch)
            token_cos = torch.cosine_similarity(tokens[real], exact_tokens[real], dim=-1)  # (N,)
            distances = [
                0.5 * (w[:, real] - w_exact[:, real]).abs().sum(dim=-1).mean().item()
                for w, w_exact in zip(_attention_rows(model, batch), exact_rows)
            ]
            ms = _forward_ms(model, batch, repeats)
            f1 = None
            if dataset is not None:
                step(f"{variant.label}: word-sense disambiguation")
                f1 = _wsd_f1(model, tokenizer, dataset, wsd_batch_size)
        rows.append({
            "label": variant.label,
            "backend": variant.backend,
            "family": variant.family,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in variant.options.items()},
            "token_cosine": token_cos.mean().item(),
            "min_token_cosine": token_cos.min().item(),
            "sentence_cosine": torch.cosine_similarity(sentence, exact_sentence, dim=0).item(),
            "attention_distance": sum(distances) / len(distances),
            "wsd_micro_f1": f1,
            "time_ms": ms,
            "speedup": exact_ms / ms,
        })
    return {
        "model": getattr(model, "name", None),
        "tokens": int(real.sum()),
        "exact": {"time_ms": exact_ms, "wsd_micro_f1": exact_f1},
        "wsd_sentences": None if dataset is None else sum(len(w.train) + len(w.test) for w in dataset),
        "variants": rows,
    }

"""Which explanation says what the model uses: deletion curves of every attribution method.

An explanation ranks the input tokens. If it is faithful, hiding its top-ranked tokens
should move the metric most (Samek et al., 2017; DeYoung et al., 2020). For each sentence
and each method of :mod:`qkv.inspect.attribution` (and a random ranking, the floor), the
top-k tokens are deleted for k = 0 .. max_k and the metric is measured again:

* the metric is the focus word's cosine to the prototype of its sense (the mean final
  vector of the word in other sentences of that sense), as :class:`~qkv.inspect.patching.SenseCosine`;
* a deleted token is dropped from attention: ``attention_mask`` (the key padding mask) is
  False at its position in every layer, so no query reads it; it is not replaced by [MASK];
* the candidates are the sentence's word pieces other than the focus word's; [CLS], [SEP]
  and the focus word are never deleted. A sentence with fewer than k candidates loses all
  of them, and its curve stays flat from there, the same for every method;
* the drop at k is metric(sentence) - metric(top k deleted); the deletion AUC is the
  trapezoid area under the drop from k = 0 to max_k, divided by max_k: the mean drop, in
  cosine units. Larger is more faithful.

Everything is batched: sentences of similar length go through attribution together
(integrated gradients' steps in the same forward passes), and every deleted variant of a
batch is one more batch of forward passes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.inspect.attribution import IG_STEPS, METHODS, attribute, baseline_ids

if TYPE_CHECKING:
    from qkv.inspect.wsd import WsdWord
    from qkv.models.tokenizer import Tokenizer
    from qkv.nn.stack import TransformerOutput, TransformerStack

__all__ = ["FAITHFULNESS_METHODS", "SenseItem", "seed_items", "wsd_items", "deletion_curves", "deletion_auc",
           "summarize", "nearest_sense", "faithfulness", "MAX_K", "WINDOW_WORDS"]

#: every attribution method, then a random ranking (seeded) as the floor
FAITHFULNESS_METHODS = (*METHODS, "random")
MAX_K = 4  # tokens deleted, at most
WINDOW_WORDS = 12  # a WSD sentence is cut to this many words around its target (attention flow is O(N^3))


@dataclass(frozen=True)
class SenseItem:
    """One sentence whose focus word's cosine to a sense prototype is the metric."""

    words: list[str]  # the sentence, split on white space
    target: int  # index of the focus word in ``words``
    prototype: Tensor  # (d_model,) the sense's prototype
    group: str  # what the item belongs to ("bank", "seed")


def _pieces(tokenizer: Tokenizer, words: list[str]) -> tuple[Any, list[list[int]]]:
    from qkv.inspect.wsd import _pieces_of_words

    batch = tokenizer(" ".join(words))
    return batch, _pieces_of_words(words, batch.offsets[0], batch.special_tokens_mask[0])


def seed_items(model: TransformerStack, tokenizer: Tokenizer, sentence: str, focus: str,
               senses: dict[str, list[str]], sense: str) -> list[SenseItem]:
    """One item: ``focus`` in ``sentence`` against the prototype of ``senses[sense]``."""
    from qkv.inspect.patching import sense_cosine

    metric = sense_cosine(model, tokenizer, focus, senses, sense)
    words = sentence.split()
    stripped = [w.strip(".,;:!?\"'()").lower() for w in words]
    if focus.lower() not in stripped:
        raise ValueError(f"focus {focus!r} is not a word of {sentence!r}")
    # the focus word's own punctuation becomes a word of its own, as the tokenizer reads it
    target = stripped.index(focus.lower())
    word = words[target]
    core = word.lower().index(focus.lower())
    split = [p for p in (word[:core], word[core:core + len(focus)], word[core + len(focus):]) if p]
    words = words[:target] + split + words[target + 1:]
    target += 1 if core else 0
    return [SenseItem(words, target, metric.prototype, "seed")]


def _window(words: list[str], target: int, size: int) -> tuple[list[str], int]:
    """At most ``size`` words around ``target``: (words, the target's index in them)."""
    if len(words) <= size:
        return words, target
    start = min(max(0, target - size // 2), len(words) - size)
    return words[start:start + size], target - start


def wsd_items(model: TransformerStack, tokenizer: Tokenizer, dataset: Sequence[WsdWord], per_word: int = 100,
              prototype_sentences: int = 16, window: int = WINDOW_WORDS, seed: int = 0) -> tuple[list[SenseItem], str]:
    """``per_word`` sentences of each word, each against the prototype of its gold sense.

    The sentences are test sentences (a seeded sample when there are more); a word with fewer
    test sentences is filled up from its train sentences. Each sense's prototype is the mean
    final vector of the word in up to ``prototype_sentences`` train sentences of that sense
    that are not evaluated (at least one per sense when the word has one to spare).

    Returns:
        (items, a note saying how many were filled from train and how prototypes were built).
    """
    from qkv.inspect.wsd import target_vectors

    rng = random.Random(seed)
    items: list[SenseItem] = []
    filled: dict[str, int] = {}
    smallest: dict[str, int] = {}
    for entry in dataset:
        test = rng.sample(entry.test, per_word) if len(entry.test) > per_word else list(entry.test)
        train = list(entry.train)
        rng.shuffle(train)
        by_sense: dict[int, list] = {}
        for example in train:
            by_sense.setdefault(example.sense, []).append(example)
        reserve = {s: min(prototype_sentences, len(e)) for s, e in by_sense.items()}
        needed = per_word - len(test)
        while needed > 0 and len(train) - sum(reserve.values()) < needed and max(reserve.values(), default=0) > 1:
            largest = max(reserve, key=reserve.get)
            reserve[largest] -= 1
        kept = {s: examples[:reserve[s]] for s, examples in by_sense.items()}
        spare = [e for s, examples in by_sense.items() for e in examples[reserve[s]:]]
        rng.shuffle(spare)
        evaluated = test + spare[:max(0, needed)]
        if needed > 0:
            filled[entry.word] = min(needed, len(spare))
        prototypes = {}
        for sense, examples in kept.items():
            if examples:
                vectors = target_vectors(model, tokenizer, examples)  # (n, L+1, d)
                prototypes[sense] = vectors[:, -1].nanmean(dim=0)
                smallest[entry.word] = min(smallest.get(entry.word, len(examples)), len(examples))
        for example in evaluated:
            if example.sense not in prototypes:
                continue
            words, target = _window(example.tokens, example.target, window)
            items.append(SenseItem(words, target, prototypes[example.sense], entry.word))
    note = (f"{per_word} sentences per word, test sentences first" +
            (", filled from train sentences for " + ", ".join(f"{w} ({n})" for w, n in filled.items())
             if filled else "") +
            f"; each sentence cut to at most {window} words around the target; prototypes: the mean final "
            f"vector over up to {prototype_sentences} other train sentences per sense")
    fewer = [f"{w} {n}" for w, n in smallest.items() if n < prototype_sentences]
    if fewer:
        note += " (fewest per sense: " + ", ".join(fewer) + ")"
    return items, note


def _encode(tokenizer: Tokenizer, items: Sequence[SenseItem]) -> dict[str, Tensor]:
    """Token ids, masks, read weights, candidates and integrated gradients' baseline of a batch of items."""
    from qkv.inspect.wsd import _pieces_of_words

    batch = tokenizer([" ".join(item.words) for item in items])
    b, n = batch.input_ids.shape
    read = torch.zeros(b, n)
    special = torch.tensor(batch.special_tokens_mask)  # (B, N), padding included
    for row, item in enumerate(items):
        pieces = _pieces_of_words(item.words, batch.offsets[row], batch.special_tokens_mask[row])[item.target]
        if not pieces:
            raise ValueError(f"the focus word {item.words[item.target]!r} has no tokens in {' '.join(item.words)!r}")
        read[row, pieces] = 1.0 / len(pieces)
    mask = batch.attention_mask.bool()
    candidates = mask & ~special & (read == 0)  # (B, N)
    keep = ~candidates
    return {"ids": batch.input_ids, "mask": mask, "read": read, "candidates": candidates,
            "baseline": baseline_ids(batch.input_ids, keep, tokenizer.token_to_id("[MASK]")),
            "prototypes": torch.stack([item.prototype for item in items])}


def _cosine_score(read: Tensor, prototypes: Tensor) -> Callable[[TransformerOutput, Tensor], Tensor]:
    def score(output: TransformerOutput, rows: Tensor) -> Tensor:
        vector = torch.einsum("rn,rnd->rd", read[rows].to(output.last_hidden_state),
                              output.last_hidden_state)  # (R, d)
        return F.cosine_similarity(vector, prototypes[rows].to(vector), dim=-1)  # (R,)
    return score


@torch.no_grad()
def _deleted_metrics(model: TransformerStack, encoded: dict[str, Tensor], orders: Tensor, max_k: int,
                     batch_size: int) -> Tensor:
    """The metric after deleting each method's top k tokens. orders (B, M, N) -> (B, M, max_k)."""
    b, m, n = orders.shape
    count = encoded["candidates"].sum(dim=1)  # (B,)
    # candidates first, in the order given: only they may be deleted
    is_candidate = encoded["candidates"][:, None, :].expand(b, m, n).gather(2, orders)  # (B, M, N)
    orders = orders.gather(2, (~is_candidate).to(torch.uint8).argsort(dim=-1, stable=True))
    masks = []
    for k in range(1, max_k + 1):
        top = orders[:, :, :k]  # (B, M, k)
        valid = torch.arange(k)[None, None, :] < count[:, None, None]  # (B, M, k): only real candidates
        mask = encoded["mask"][:, None, :].expand(b, m, n).clone()  # (B, M, N)
        mask.scatter_(2, top, ~valid & mask.gather(2, top))
        masks.append(mask)
    masks = torch.stack(masks, dim=2).view(b * m * max_k, n)  # rows: item-major, then method, then k
    rows = torch.arange(b).repeat_interleave(m * max_k)  # (B*M*K,)
    score = _cosine_score(encoded["read"], encoded["prototypes"])
    out = torch.empty(len(rows))
    device = model.device
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        output = model(encoded["ids"][chunk].to(device), masks[start:start + batch_size].to(device))
        out[start:start + batch_size] = score(output, chunk.to(device)).float().cpu()
    return out.view(b, m, max_k)


def deletion_curves(model: TransformerStack, tokenizer: Tokenizer, items: Sequence[SenseItem], *,
                    methods: Sequence[str] = FAITHFULNESS_METHODS, max_k: int = MAX_K, steps: int = IG_STEPS,
                    batch_size: int = 16, forward_batch: int = 128, seed: int = 0,
                    on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Deletion curves of every method on every item.

    Args:
        items: :func:`seed_items`, :func:`wsd_items`.
        methods: some of :data:`FAITHFULNESS_METHODS`.
        max_k: the most tokens deleted.
        steps: integrated gradients' nodes.
        batch_size: sentences attributed together.
        forward_batch: rows per forward pass (integrated gradients' points, deleted variants).
        on_batch: called with the number of sentences done after each batch (progress).

    Returns:
        ``curves`` (I, M, max_k + 1) metric after deleting k = 0 .. max_k (NaN where a method
        could not rank the sentence: attention flow on a long one), ``methods``, ``groups`` (I,),
        ``completeness`` (I,) integrated gradients' relative completeness error, ``candidates`` (I,).
    """
    unknown = [m for m in methods if m not in FAITHFULNESS_METHODS]
    if unknown:
        raise ValueError(f"methods {unknown} are not among {list(FAITHFULNESS_METHODS)}")
    generator = torch.Generator().manual_seed(seed)
    order = sorted(range(len(items)), key=lambda i: len(items[i].words))
    curves = torch.full((len(items), len(methods), max_k + 1), float("nan"))
    completeness = torch.full((len(items),), float("nan"))
    candidates = torch.zeros(len(items), dtype=torch.long)
    attributed = [m for m in methods if m != "random"]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        encoded = _encode(tokenizer, [items[i] for i in chunk])
        score = _cosine_score(encoded["read"].to(model.device), encoded["prototypes"].to(model.device))
        result = attribute(model, encoded["ids"], encoded["mask"], encoded["read"], score, methods=attributed,
                           steps=steps, baseline=encoded["baseline"], batch_size=forward_batch)
        b, n = encoded["ids"].shape
        ranked = []
        for method in methods:
            values = (torch.rand(b, n, generator=generator) if method == "random"
                      else result.scores[method].clone())  # (B, N)
            ranked.append(values.masked_fill(~encoded["candidates"], -math.inf))
        stacked = torch.stack(ranked, dim=1)  # (B, M, N)
        orders = torch.nan_to_num(stacked, nan=-math.inf).argsort(dim=-1, descending=True, stable=True)
        deleted = _deleted_metrics(model, encoded, orders, max_k, forward_batch)  # (B, M, K)
        full = torch.cat([result.metric[:, None, None].expand(b, len(methods), 1), deleted], dim=2)
        unranked = torch.isnan(stacked).all(dim=-1)  # (B, M): flow skipped
        full[unranked] = float("nan")
        rows = torch.tensor(chunk)
        curves[rows] = full
        candidates[rows] = encoded["candidates"].sum(dim=1)
        if "integrated_gradients" in attributed:
            completeness[rows] = result.completeness_error()
        if on_batch is not None:
            on_batch(len(chunk))
    return {"curves": curves, "methods": list(methods), "groups": [item.group for item in items],
            "completeness": completeness, "candidates": candidates, "max_k": max_k, "steps": steps}


def deletion_auc(curves: Tensor) -> Tensor:
    """(..., K + 1) metric after k deletions -> (...) the mean drop: trapezoid area of drop over k, divided by K."""
    drop = curves[..., :1] - curves  # (..., K+1), 0 at k = 0
    k = curves.shape[-1] - 1
    return ((drop[..., 1:] + drop[..., :-1]) / 2).sum(dim=-1) / k


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready summary: per method, the mean deletion AUC (with its standard error), the mean
    curve, how often it beats random, over all items and per group."""
    auc = deletion_auc(run["curves"])  # (I, M)
    groups = run["groups"]
    methods = run["methods"]

    def stats(rows: list[int]) -> dict[str, Any]:
        out = {}
        random_auc = auc[rows, methods.index("random")] if "random" in methods else None
        for m, method in enumerate(methods):
            values = auc[rows, m]
            ok = ~torch.isnan(values)
            v = values[ok]
            entry = {"auc": float(v.mean()) if len(v) else None,
                     "auc_se": float(v.std() / math.sqrt(len(v))) if len(v) > 1 else None,
                     "sentences": int(ok.sum()),
                     "curve": [float(x) for x in torch.nanmean(run["curves"][rows, m], dim=0)]}
            if random_auc is not None and method != "random":
                entry["beats_random"] = float((values[ok] > random_auc[ok]).float().mean()) if len(v) else None
            out[method] = entry
        return out

    everything = list(range(len(groups)))
    names = list(dict.fromkeys(groups))
    completeness = run["completeness"][~torch.isnan(run["completeness"])]
    return {
        "deletion": "dropped from attention (attention_mask False at the token in every layer), top k by each "
                    "method, k = 1 .. max_k; [CLS], [SEP] and the focus word are never deleted",
        "auc": "trapezoid area under metric(sentence) - metric(top k deleted), k = 0 .. max_k, divided by max_k "
               "(the mean drop in cosine); larger is more faithful",
        "max_k": run["max_k"],
        "integrated_gradients": {
            "steps": run["steps"], "baseline": "[MASK] at every candidate token (the focus word, [CLS] and [SEP] "
                                               "kept); Gauss-Legendre nodes on the straight path",
            "completeness_error_median": float(completeness.median()) if len(completeness) else None,
            "completeness_error_p95": float(completeness.quantile(0.95)) if len(completeness) else None,
            "completeness_below_1_percent": float((completeness < 0.01).float().mean()) if len(completeness)
            else None,
        },
        "sentences": len(groups),
        "methods": methods,
        "all": stats(everything),
        "groups": {name: stats([i for i, g in enumerate(groups) if g == name]) for name in names},
    }


def nearest_sense(model: TransformerStack, tokenizer: Tokenizer, sentence: str, focus: str,
                  senses: dict[str, list[str]]) -> str:
    """The sense whose prototype ``focus`` in ``sentence`` is closest to at the last layer."""
    from qkv.inspect.senses import word_vectors_by_layer

    vector = word_vectors_by_layer(model, tokenizer, [sentence], focus)[0, -1]  # (d,)
    cosines = {name: float(F.cosine_similarity(
        vector, word_vectors_by_layer(model, tokenizer, examples, focus)[:, -1].mean(dim=0), dim=0))
        for name, examples in senses.items()}
    return max(cosines, key=cosines.get)


def faithfulness(model: TransformerStack, tokenizer: Tokenizer, sentence: str, focus: str,
                 senses: dict[str, list[str]], sense: str | None = None, dataset: Sequence[WsdWord] | None = None,
                 *, per_word: int = 100, window: int = WINDOW_WORDS, max_k: int = MAX_K, steps: int = IG_STEPS,
                 batch_size: int = 16, on_step: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Deletion AUC of every method on one sentence and, with ``dataset``, on its WSD sentences.

    Args:
        sentence, focus, senses: the seed example: ``focus`` in ``sentence`` against the prototype
            of ``sense`` (None: the sense it is nearest to at the last layer).
        dataset: CoarseWSD-20 words (:func:`qkv.inspect.wsd.read_dataset`); ``per_word`` sentences each.
        on_step: progress, called as ``on_step(name, done, total)``.

    Returns:
        A JSON-ready dict: ``seed`` and ``wsd`` summaries (:func:`summarize`), ``best``: the method
        with the largest deletion AUC on each.
    """
    if sense is None:
        sense = nearest_sense(model, tokenizer, sentence, focus, senses)
    seed = deletion_curves(model, tokenizer, seed_items(model, tokenizer, sentence, focus, senses, sense),
                           max_k=max_k, steps=steps)
    report: dict[str, Any] = {"model": getattr(model, "name", None), "sentence": sentence, "focus": focus,
                              "sense": sense, "seed": summarize(seed)}
    report["seed"]["curves"] = seed["curves"][0].tolist()
    if dataset is not None:
        items, note = wsd_items(model, tokenizer, dataset, per_word=per_word, window=window)
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if on_step is not None:
                on_step("wsd", done, len(items))

        run = deletion_curves(model, tokenizer, items, max_k=max_k, steps=steps, batch_size=batch_size,
                              on_batch=advance)
        report["wsd"] = summarize(run)
        report["wsd"]["sampling"] = note
        report["wsd"]["items"] = {"groups": run["groups"], "curves": run["curves"].tolist(),
                                  "completeness": run["completeness"].tolist()}
    report["best"] = {
        part: max((m for m in report[part]["all"] if report[part]["all"][m]["auc"] is not None),
                  key=lambda m: report[part]["all"][m]["auc"])
        for part in ("seed", "wsd") if part in report
    }
    return report

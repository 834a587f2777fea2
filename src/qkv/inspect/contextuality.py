"""How contextual are contextual word vectors? Ethayarajh (2019), layer by layer.

Three measures of a model's word vectors in the embeddings and after every layer (named as
:mod:`qkv.numbering` says: "emb", then "0" after layer 0, and so on), all cosines:

* self-similarity SelfSim_l(w): the mean cosine between the vectors of the same word w in
  different sentences (all pairs i < j of its occurrences), averaged over words. 1 means
  the word's vector ignores its context; lower means more contextual.
* intra-sentence similarity IntraSim_l(s): the mean over a sentence's words of the cosine
  between a word's vector and the mean vector of the sentence, averaged over sentences.
* anisotropy_l: the mean cosine between random pairs of word vectors from different
  sentences. Vectors that share a large common direction have a high cosine whatever
  they mean, so the paper subtracts it: adjusted = similarity − anisotropy.

The pure functions take tensors: vectors of shape (n, L + 1, d), hidden state l in ``[:, l]``
(0: the embeddings; l: after layer l - 1).
A vector holding any NaN (a word truncated away by :func:`qkv.inspect.wsd.word_piece_vectors`)
is skipped at every layer. Sums run in float64; results are float64.

:func:`contextuality` runs a model over sentences of a CoarseWSD-format dataset
(:func:`qkv.inspect.wsd.read_dataset`): the ambiguous words' occurrences give
self-similarity, all words of all sampled sentences give intra-similarity and anisotropy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.inspect.wsd import WsdWord, word_piece_vectors
from qkv.numbering import LAYER_NUMBERING, vector_labels

if TYPE_CHECKING:
    from qkv.models.tokenizer import Tokenizer
    from qkv.nn.stack import TransformerStack

__all__ = [
    "word_self_similarities",
    "self_similarity",
    "intra_similarity",
    "anisotropy",
    "contextuality",
]

ANISOTROPY_PAIRS = 5000  # random cross-sentence pairs behind the anisotropy estimate
_PAIR_CHUNK = 1024  # pairs gathered at once (bounds memory at chunk x (L + 1) x d)


def _check_vectors(vectors: Tensor, name: str, shape: tuple[int, int] | None) -> tuple[int, int]:
    """Check one (n, L + 1, d) tensor; return its (L + 1, d), equal to ``shape`` if given."""
    if not isinstance(vectors, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, L + 1, d); got {type(vectors).__name__}")
    if vectors.dim() != 3:
        raise ValueError(f"{name} must have shape (n, L + 1, d); got {tuple(vectors.shape)}")
    if not vectors.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got {vectors.dtype}")
    if shape is not None and tuple(vectors.shape[1:]) != shape:
        raise ValueError(
            f"{name} has (L + 1, d) = {tuple(vectors.shape[1:])} but earlier vectors have {shape}; "
            f"every tensor must come from the same model"
        )
    return vectors.shape[1], vectors.shape[2]


def _valid(vectors: Tensor) -> Tensor:
    """(n, L + 1, d) -> (n,) bool: True where the vector has no NaN at any layer."""
    return ~torch.isnan(vectors).flatten(1).any(dim=1)


def _drop_nan(vectors: Tensor) -> Tensor:
    """(n, L + 1, d) -> (n_valid, L + 1, d); no copy when nothing is dropped."""
    valid = _valid(vectors)
    return vectors if bool(valid.all()) else vectors[valid]


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def word_self_similarities(vectors_by_word: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, int]]:
    """Self-similarity of each word at every layer, and the words skipped.

    Args:
        vectors_by_word: word -> (n_w, L + 1, d) vectors of its n_w occurrences, each in a
            different sentence. Occurrences with a NaN are dropped.

    Returns:
        (per_word, skipped): per_word maps each word with at least 2 valid occurrences to
        its (L + 1,) float64 mean cosine over all pairs i < j of occurrences;
        skipped maps each other word to its number of valid occurrences (0 or 1).
    """
    if not isinstance(vectors_by_word, dict):
        raise TypeError(f"vectors_by_word must be a dict word -> (n_w, L + 1, d) tensor; "
                        f"got {type(vectors_by_word).__name__}")
    per_word: dict[str, Tensor] = {}
    skipped: dict[str, int] = {}
    shape = None
    for word, vectors in vectors_by_word.items():
        shape = _check_vectors(vectors, f"vectors_by_word[{word!r}]", shape)
        vectors = _drop_nan(vectors)
        n = vectors.shape[0]
        if n < 2:
            skipped[word] = n
            continue
        unit = F.normalize(vectors.double(), dim=-1)  # (n, L+1, d)
        total = unit.sum(dim=0).square().sum(dim=-1)  # (L+1,) = sum over all i, j of cos
        diagonal = unit.square().sum(dim=-1).sum(dim=0)  # (L+1,) = the i == j terms
        per_word[word] = (total - diagonal) / (n * (n - 1))  # mean over ordered pairs i != j
    return per_word, skipped


def self_similarity(vectors_by_word: dict[str, Tensor]) -> Tensor:
    """Mean self-similarity over words at every layer (Ethayarajh, 2019, SelfSim).

    SelfSim_l(w) = mean over pairs i < j of cos(v_i[l], v_j[l]) for the n_w occurrences of
    w, each in a different sentence; the result averages it over the words (each word
    counts once). NaN occurrences are dropped; words left with fewer than 2 occurrences
    are skipped (see :func:`word_self_similarities` for which).

    Args:
        vectors_by_word: word -> (n_w, L + 1, d) vectors of its occurrences.

    Returns:
        (L + 1,) float64; entry l uses the vectors' slice [:, l].

    Raises:
        ValueError: no word has 2 valid occurrences.
    """
    per_word, skipped = word_self_similarities(vectors_by_word)
    if not per_word:
        raise ValueError(
            f"vectors_by_word has no word with at least 2 valid (non-NaN) occurrences; "
            f"all {len(skipped)} words were skipped: {skipped}"
        )
    return torch.stack(list(per_word.values())).mean(dim=0)


def _valid_sentences(sentence_vectors: list[Tensor], name: str) -> list[Tensor]:
    """Each sentence's valid (non-NaN) vectors, checked for one shape across sentences."""
    if not isinstance(sentence_vectors, (list, tuple)):
        raise TypeError(f"{name} must be a list of (n_words, L + 1, d) tensors; got {type(sentence_vectors).__name__}")
    shape = None
    valid = []
    for index, vectors in enumerate(sentence_vectors):
        shape = _check_vectors(vectors, f"{name}[{index}]", shape)
        valid.append(_drop_nan(vectors))
    return valid


def intra_similarity(sentence_vectors: list[Tensor]) -> Tensor:
    """Mean intra-sentence similarity at every layer (Ethayarajh, 2019, IntraSim).

    IntraSim_l(s) = mean over the words i of s of cos(v_i[l], mean_j v_j[l]); the result
    averages it over sentences. NaN vectors are dropped; a sentence left with fewer than 2
    words is skipped (one word is trivially similar to itself).

    Args:
        sentence_vectors: per sentence, the (n_words, L + 1, d) vectors of its words.

    Returns:
        (L + 1,) float64; entry l uses the vectors' slice [:, l].

    Raises:
        ValueError: no sentence has 2 valid words.
    """
    per_sentence = []
    for vectors in _valid_sentences(sentence_vectors, "sentence_vectors"):
        if vectors.shape[0] < 2:
            continue
        vectors = vectors.double()  # (n, L+1, d)
        mean = vectors.mean(dim=0, keepdim=True)  # (1, L+1, d)
        per_sentence.append(F.cosine_similarity(vectors, mean, dim=-1).mean(dim=0))  # (L+1,)
    if not per_sentence:
        raise ValueError(
            f"sentence_vectors has no sentence with at least 2 valid (non-NaN) word vectors "
            f"(got {len(sentence_vectors)} sentences)"
        )
    return torch.stack(per_sentence).mean(dim=0)


def anisotropy(sentence_vectors: list[Tensor], pairs: int = ANISOTROPY_PAIRS, seed: int = 0) -> Tensor:
    """Mean cosine between random word vectors from different sentences, at every layer.

    Ordered pairs (i, j) of valid word vectors with i and j in different sentences are
    drawn uniformly, with replacement: i with probability proportional to the number of
    vectors outside its sentence, then j uniformly among those. The same pairs serve
    every layer, so layers are compared on equal footing.

    Args:
        sentence_vectors: per sentence, the (n_words, L + 1, d) vectors of its words;
            NaN vectors are dropped.
        pairs: number of pairs drawn.
        seed: seed of the ``torch.Generator`` that draws them (same seed, same pairs).

    Returns:
        (L + 1,) float64; entry l uses the vectors' slice [:, l].

    Raises:
        ValueError: ``pairs`` < 1, or fewer than 2 sentences with a valid vector.
    """
    _check_positive_int(pairs, "pairs")
    valid = [v for v in _valid_sentences(sentence_vectors, "sentence_vectors") if v.shape[0] > 0]
    if len(valid) < 2:
        raise ValueError(
            f"sentence_vectors needs at least 2 sentences with a valid (non-NaN) word vector to pair "
            f"words across sentences; got {len(valid)} of {len(sentence_vectors)}"
        )
    counts = torch.tensor([v.shape[0] for v in valid])  # (S,)
    starts = torch.cumsum(counts, dim=0) - counts  # (S,) first flat index of each sentence
    sentence_of = torch.repeat_interleave(torch.arange(len(valid)), counts)  # (M,)
    total = int(counts.sum())
    outside = total - counts[sentence_of]  # (M,) vectors outside each vector's sentence
    generator = torch.Generator().manual_seed(seed)
    cumulative = torch.cumsum(outside, dim=0)  # (M,)
    first = torch.searchsorted(cumulative, torch.randint(0, int(cumulative[-1]), (pairs,), generator=generator),
                               right=True)  # (P,) i, with probability proportional to outside[i]
    room = outside[first]  # (P,)
    offset = (torch.rand(pairs, generator=generator, dtype=torch.float64) * room).long().clamp(max=room - 1)
    home = sentence_of[first]  # (P,)
    second = torch.where(offset < starts[home], offset, offset + counts[home])  # (P,) skip i's sentence
    word_of = torch.arange(total) - starts[sentence_of]  # (M,) index inside the sentence

    def gather(flat: Tensor) -> Tensor:  # (p,) flat indices -> (p, L+1, d) float64
        return torch.stack([valid[s][w] for s, w in zip(sentence_of[flat].tolist(), word_of[flat].tolist())]).double()

    cosine_sum = None
    for start in range(0, pairs, _PAIR_CHUNK):
        chunk = slice(start, start + _PAIR_CHUNK)
        cosines = F.cosine_similarity(gather(first[chunk]), gather(second[chunk]), dim=-1).sum(dim=0)  # (L+1,)
        cosine_sum = cosines if cosine_sum is None else cosine_sum + cosines
    return cosine_sum / pairs


def contextuality(
    model: TransformerStack,
    tokenizer: Tokenizer,
    dataset: list[WsdWord],
    max_sentences_per_word: int = 200,
    seed: int = 0,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
    pairs: int = ANISOTROPY_PAIRS,
) -> dict:
    """Self-similarity, intra-sentence similarity and anisotropy of a model, per layer.

    For each word of ``dataset`` (train and test pooled), up to ``max_sentences_per_word``
    sentences are drawn without replacement by a ``torch.Generator`` seeded with
    ``seed``; a sentence drawn for two words is encoded once. One
    :func:`~qkv.inspect.wsd.word_piece_vectors` call gives the vectors of every word of
    every sentence. The ambiguous word's occurrences (one per sentence) give its
    self-similarity; all words of all sentences give intra-similarity and anisotropy.

    Args:
        model, tokenizer: from :func:`qkv.load`.
        dataset: ambiguous words, from :func:`qkv.inspect.wsd.read_dataset`.
        max_sentences_per_word: sentences drawn per word at most.
        seed: seeds the sentence draw and the anisotropy pairs.
        batch_size: sentences per forward pass.
        on_batch: called with the number of sentences after each batch (progress).
        pairs: random cross-sentence pairs for anisotropy.

    Returns:
        A JSON-ready dict; every list has one float per vector "emb" (embeddings), "0" ..
        str(L - 1) (after each layer), named in "layers"; "layer_numbering" states the convention
        (:data:`qkv.numbering.LAYER_NUMBERING`); "self_similarity", "intra_similarity", "anisotropy",
        "adjusted_self_similarity" (self − anisotropy), "adjusted_intra_similarity"
        (intra − anisotropy), "per_word_self_similarity" {word: list}, "skipped_words"
        {word: valid occurrences} (fewer than 2, left out), "words" (words averaged),
        "sentences" (distinct sentences encoded), "skipped_sentences" (fewer than 2
        valid words, left out of intra-similarity), "pairs", "max_sentences_per_word",
        "seed" and "model" (its name).
    """
    if not isinstance(dataset, (list, tuple)) or not dataset:
        raise ValueError("dataset must be a non-empty list of WsdWord (from qkv.inspect.wsd.read_dataset)")
    _check_positive_int(max_sentences_per_word, "max_sentences_per_word")
    _check_positive_int(pairs, "pairs")

    generator = torch.Generator().manual_seed(seed)
    sentences: list[list[str]] = []
    sentence_index: dict[tuple[str, ...], int] = {}
    occurrences: dict[str, list[tuple[int, int]]] = {}  # word -> (sentence, target position)
    for entry in dataset:
        if not isinstance(entry, WsdWord):
            raise TypeError(f"dataset must hold WsdWord items; got {type(entry).__name__}")
        examples = entry.train + entry.test
        drawn = torch.randperm(len(examples), generator=generator)[:max_sentences_per_word].tolist()
        seen: set[int] = set()  # one occurrence per sentence: contexts must differ
        found = occurrences.setdefault(entry.word, [])
        for k in sorted(drawn):
            example = examples[k]
            key = tuple(example.tokens)
            if key not in sentence_index:
                sentence_index[key] = len(sentences)
                sentences.append(list(example.tokens))
            index = sentence_index[key]
            if index not in seen:
                seen.add(index)
                found.append((index, example.target))

    vectors = word_piece_vectors(model, tokenizer, sentences, batch_size=batch_size, on_batch=on_batch)
    vectors_by_word = {
        word: torch.stack([vectors[s][t] for s, t in found]) for word, found in occurrences.items() if found
    }
    per_word, skipped = word_self_similarities(vectors_by_word)
    skipped.update({word: 0 for word, found in occurrences.items() if not found})
    if not per_word:
        raise ValueError(f"no word of dataset has 2 sentences with its vector (skipped: {skipped}); "
                         f"give each word at least 2 sentences")
    self_sim = torch.stack(list(per_word.values())).mean(dim=0)  # (L+1,)
    intra = intra_similarity(vectors)  # (L+1,)
    aniso = anisotropy(vectors, pairs=pairs, seed=seed)  # (L+1,)
    skipped_sentences = sum(int(_valid(v).sum()) < 2 for v in vectors)
    return {
        "model": getattr(model, "name", None),
        "layer_numbering": LAYER_NUMBERING,
        "layers": vector_labels(self_sim.shape[0] - 1),
        "self_similarity": self_sim.tolist(),
        "intra_similarity": intra.tolist(),
        "anisotropy": aniso.tolist(),
        "adjusted_self_similarity": (self_sim - aniso).tolist(),
        "adjusted_intra_similarity": (intra - aniso).tolist(),
        "per_word_self_similarity": {word: value.tolist() for word, value in per_word.items()},
        "skipped_words": skipped,
        "words": len(per_word),
        "sentences": len(sentences),
        "skipped_sentences": skipped_sentences,
        "pairs": pairs,
        "max_sentences_per_word": max_sentences_per_word,
        "seed": seed,
    }

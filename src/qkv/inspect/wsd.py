"""Word-sense disambiguation from contextual vectors, layer by layer (CoarseWSD-20 format).

Each word's folder holds ``{train,test}.data.txt`` (``<target index>\\t<tokenised,
lower-cased sentence>``), ``{train,test}.gold.txt`` (sense ids) and ``classes_map.txt``
(sense names), as in Loureiro et al. (2021). The target word's vector is the mean of its
word pieces after every layer and in the embeddings (named as :mod:`qkv.numbering` says:
"emb", then "0" for the vector after layer 0, and so on); ``1nn`` gives a
test sentence the sense of the nearest training centroid by cosine, ``probe`` trains a
logistic regression per word (:mod:`qkv.inspect.probe`). Scores are micro-F1 (accuracy:
one label per sentence) and macro-F1 (the mean of per-sense F1 over the senses present in
the gold or predicted labels), beside the most-frequent-sense baseline.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.numbering import LAYER_NUMBERING, vector_label, vector_labels

if TYPE_CHECKING:
    from rich.progress import Progress

    from qkv.models.tokenizer import Tokenizer
    from qkv.nn.stack import TransformerStack

__all__ = [
    "WsdExample", "WsdWord", "read_word", "read_dataset", "word_piece_vectors", "target_vectors",
    "f1_scores", "nearest_centroid", "layer_names", "evaluate_word", "average_scores", "run_wsd",
]


@dataclass(frozen=True)
class WsdExample:
    """One sentence with an ambiguous word."""

    tokens: list[str]  # the sentence, split on white space
    target: int  # index of the ambiguous word in ``tokens``
    sense: int  # gold sense id


@dataclass(frozen=True)
class WsdWord:
    """One ambiguous word: its senses and its train and test sentences."""

    word: str
    senses: dict[int, str]  # sense id -> name
    train: list[WsdExample]
    test: list[WsdExample]


def _read_split(folder: Path, split: str) -> list[WsdExample]:
    data = (folder / f"{split}.data.txt").read_text(encoding="utf-8").splitlines()
    gold = (folder / f"{split}.gold.txt").read_text(encoding="utf-8").splitlines()
    if len(data) != len(gold):
        raise ValueError(f"{folder}: {split}.data.txt has {len(data)} lines but {split}.gold.txt {len(gold)}")
    examples = []
    for number, (line, sense) in enumerate(zip(data, gold), start=1):
        index, _, sentence = line.partition("\t")
        tokens = sentence.split(" ")
        if not index.strip().isdigit() or int(index) >= len(tokens):
            raise ValueError(f"{folder / (split + '.data.txt')}:{number}: bad target index {index!r}")
        examples.append(WsdExample(tokens=tokens, target=int(index), sense=int(sense)))
    return examples


def read_word(folder: str | Path) -> WsdWord:
    """One word's folder in the CoarseWSD-20 format."""
    folder = Path(folder)
    senses = {int(k): v for k, v in json.loads((folder / "classes_map.txt").read_text()).items()}
    return WsdWord(folder.name, senses, _read_split(folder, "train"), _read_split(folder, "test"))


def read_dataset(root: str | Path, words: list[str] | None = None) -> list[WsdWord]:
    """Every word folder under ``root`` (those with a classes_map.txt), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no data folder at {root}; pass --data DIR with one folder per word")
    folders = sorted(p for p in root.iterdir() if (p / "classes_map.txt").is_file())
    if words is not None:
        unknown = set(words) - {p.name for p in folders}
        if unknown:
            raise ValueError(f"no folder for {sorted(unknown)} in {root}; it has {[p.name for p in folders]}")
        folders = [p for p in folders if p.name in words]
    if not folders:
        raise ValueError(f"{root} has no word folders (each needs classes_map.txt and train/test files)")
    return [read_word(p) for p in folders]


@torch.no_grad()
def word_piece_vectors(
    model: TransformerStack,
    tokenizer: Tokenizer,
    sentences: list[list[str]],
    positions: list[list[int]] | None = None,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> list[Tensor]:
    """Vectors of whole words at every layer: the mean of each word's pieces.

    Sentences are encoded in length-sorted, padded batches; the hidden states come from
    ``run_with_cache`` (``embed.embed`` and every ``blocks.i.resid_post``).

    Args:
        sentences: sentences as lists of words (split on white space).
        positions: for each sentence, the words wanted (default: all of them).
        batch_size: sentences per forward pass.
        on_batch: called with the number of sentences after each batch (progress).

    Returns:
        For each sentence, a (len(positions[i]), L + 1, d_model) float32 tensor.
        A word truncated away (beyond the model's maximum length) gets NaN.
    """
    positions = [list(range(len(s))) for s in sentences] if positions is None else positions
    names = ["embed.embed"] + [f"blocks.{i}.resid_post" for i in range(len(model.blocks))]
    texts = [" ".join(words) for words in sentences]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    results: list[Tensor | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in chunk])
        _, cache = model.run_with_cache(batch, names=names)
        hidden = torch.stack([cache[n] for n in names], dim=2).float()  # (B, N, L+1, d)
        for row, i in enumerate(chunk):
            pieces = _pieces_of_words(sentences[i], batch.offsets[row], batch.special_tokens_mask[row])
            vectors = []
            for word in positions[i]:
                if pieces[word]:
                    vectors.append(hidden[row, pieces[word]].mean(dim=0))  # (L+1, d)
                else:
                    vectors.append(torch.full(hidden.shape[2:], float("nan")))
            results[i] = torch.stack(vectors) if vectors else hidden.new_zeros((0,) + hidden.shape[2:])
        if on_batch is not None:
            on_batch(len(chunk))
    return results


def _pieces_of_words(words: list[str], offsets: list[tuple[int, int]], special: list[bool]) -> list[list[int]]:
    """For each white-space word of ``" ".join(words)``, the positions of its pieces."""
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    pieces: list[list[int]] = [[] for _ in words]
    for index, ((begin, end), is_special) in enumerate(zip(offsets, special)):
        if is_special or end <= begin:
            continue
        pieces[bisect.bisect_right(starts, begin) - 1].append(index)
    return pieces


def target_vectors(model: TransformerStack, tokenizer: Tokenizer, examples: list[WsdExample], batch_size: int = 32,
                   on_batch: Callable[[int], None] | None = None) -> Tensor:
    """The ambiguous word's vector in each example at every layer: (n, L + 1, d_model)."""
    vectors = word_piece_vectors(model, tokenizer, [e.tokens for e in examples], [[e.target] for e in examples],
                                 batch_size=batch_size, on_batch=on_batch)
    return torch.cat(vectors)


def layer_names(num_layers: int) -> list[str]:
    """"emb" (embeddings), "0", ..., str(L - 1) (after each layer), and "last4" (the sum of the
    vectors after the last four layers)."""
    return vector_labels(num_layers) + ["last4"]


def layer_features(vectors: Tensor) -> dict[str, Tensor]:
    """(n, L + 1, d) vectors -> {vector name ("emb", "0", ...): (n, d)}, with "last4" the sum of the last four."""
    features = {vector_label(i): vectors[:, i] for i in range(vectors.shape[1])}
    features["last4"] = vectors[:, -4:].sum(dim=1)
    return features


def f1_scores(gold: list[int] | Tensor, predicted: list[int] | Tensor) -> dict[str, float]:
    """Micro-F1 (= accuracy for one label per example) and macro-F1, in percent.

    Macro-F1 averages per-sense F1 over the senses present in the gold or the predicted
    labels (scikit-learn's convention); a sense with no true or predicted examples has F1 0.
    """
    gold, predicted = torch.as_tensor(gold).long(), torch.as_tensor(predicted).long()
    if gold.shape != predicted.shape or gold.numel() == 0:
        raise ValueError(f"gold and predicted must be equal, non-empty lengths; got {gold.shape}, {predicted.shape}")
    micro = (gold == predicted).float().mean().item()
    per_sense = []
    for sense in torch.unique(torch.cat([gold, predicted])).tolist():
        true_positive = ((predicted == sense) & (gold == sense)).sum().item()
        predicted_count, gold_count = (predicted == sense).sum().item(), (gold == sense).sum().item()
        precision = true_positive / predicted_count if predicted_count else 0.0
        recall = true_positive / gold_count if gold_count else 0.0
        per_sense.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return {"micro_f1": 100 * micro, "macro_f1": 100 * sum(per_sense) / len(per_sense)}


def nearest_centroid(train: Tensor, train_senses: Tensor, test: Tensor) -> Tensor:
    """1-NN on sense centroids by cosine: (n_train, d), (n_train,), (n_test, d) -> (n_test,) senses."""
    senses = torch.unique(train_senses)
    centroids = torch.stack([train[train_senses == s].mean(dim=0) for s in senses])  # (S, d)
    similarity = F.normalize(test, dim=-1) @ F.normalize(centroids, dim=-1).t()  # (n_test, S)
    return senses[similarity.argmax(dim=-1)]


def evaluate_word(train_vectors: Tensor, train_senses: Tensor, test_vectors: Tensor, test_senses: Tensor,
                  method: str = "1nn", seed: int = 0) -> dict[str, dict[str, float]]:
    """Scores of one word at every layer: {layer name: {"micro_f1", "macro_f1"}}, plus "mfs"."""
    scores = {}
    train_features, test_features = layer_features(train_vectors), layer_features(test_vectors)
    for name in train_features:
        if method == "1nn":
            predicted = nearest_centroid(train_features[name], train_senses, test_features[name])
        elif method == "probe":
            from qkv.inspect.probe import fit_probe

            probe = fit_probe(train_features[name], train_senses, seed=seed)
            predicted = probe.predict(test_features[name])
        else:
            raise ValueError(f"method must be '1nn' or 'probe'; got {method!r}")
        scores[name] = f1_scores(test_senses, predicted)
    most_frequent = torch.mode(train_senses).values.item()
    scores["mfs"] = f1_scores(test_senses, torch.full_like(test_senses, most_frequent))
    return scores


def average_scores(per_word: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per-layer scores averaged over words (each word counts once)."""
    layers = next(iter(per_word.values())).keys()
    return {
        layer: {metric: sum(w[layer][metric] for w in per_word.values()) / len(per_word)
                for metric in ("micro_f1", "macro_f1")}
        for layer in layers
    }


def run_wsd(model: TransformerStack, tokenizer: Tokenizer, dataset: list[WsdWord], method: str = "1nn",
            batch_size: int = 32, progress: Progress | None = None, seed: int = 0) -> dict:
    """Disambiguate every word of ``dataset`` at every layer.

    Args:
        progress: a ``rich.progress.Progress`` to show sentences encoded (optional).

    Returns:
        A JSON-ready dict: ``average[layer]`` and ``words[word][layer]`` hold
        ``{"micro_f1", "macro_f1"}`` (percent) for the vectors "emb" (embeddings), "0" .. str(L - 1)
        (after each layer) and "last4"; ``mfs`` the most-frequent-sense baseline, ``sizes`` the
        sentence counts, ``layer_numbering`` the convention (:data:`qkv.numbering.LAYER_NUMBERING`).
    """
    if method not in ("1nn", "probe"):
        raise ValueError(f"method must be '1nn' or 'probe'; got {method!r}")
    task = None
    if progress is not None:
        total = sum(len(w.train) + len(w.test) for w in dataset)
        task = progress.add_task(f"wsd {method}", total=total)
    words, sizes = {}, {}
    for entry in dataset:
        if progress is not None:
            progress.update(task, description=f"wsd {method}: {entry.word}")

        def advance(count: int) -> None:
            if progress is not None:
                progress.advance(task, count)

        train = target_vectors(model, tokenizer, entry.train, batch_size, advance)
        test = target_vectors(model, tokenizer, entry.test, batch_size, advance)
        train_senses = torch.tensor([e.sense for e in entry.train])
        test_senses = torch.tensor([e.sense for e in entry.test])
        words[entry.word] = evaluate_word(train, train_senses, test, test_senses, method=method, seed=seed)
        sizes[entry.word] = {"train": len(entry.train), "test": len(entry.test), "senses": len(entry.senses)}
    average = average_scores(words)
    return {
        "method": method,
        "model": getattr(model, "name", None),
        "layer_numbering": LAYER_NUMBERING,
        "layers": layer_names(len(model.blocks)),
        "average": {k: v for k, v in average.items() if k != "mfs"},
        "mfs": average["mfs"],
        "words": words,
        "sizes": sizes,
    }

"""Context changing meaning, measured: a word's vector at every layer against sense prototypes.

A sense prototype is the mean vector of the word in sentences that use it in that sense
(money contexts for 'bank', river contexts for the other 'bank'). Following the focus
word's vector layer by layer shows it move toward the prototype of its own sense as
attention mixes in its context (Ethayarajh, 2019; Loureiro et al., 2021).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.inspect.words import word_view

if TYPE_CHECKING:
    from qkv.models.tokenizer import Tokenizer
    from qkv.nn.stack import TransformerStack

__all__ = ["DEFAULT_SENSES", "DEFAULT_CONTRAST", "parse_senses", "word_vectors_by_layer", "SenseTrajectory",
           "sense_trajectory"]

DEFAULT_SENSES: dict[str, dict[str, list[str]]] = {
    "bank": {
        "money": [
            "I need to withdraw cash from the bank.",
            "The bank approved her loan application.",
            "He opened a savings account at the bank.",
            "The bank charges a fee for every transfer.",
        ],
        "river": [
            "We sat on the grassy bank of the river.",
            "The boat drifted toward the muddy bank.",
            "Fishermen lined the bank of the stream.",
            "Flood water spilled over the river bank.",
        ],
    },
}
DEFAULT_CONTRAST = {"bank": "They had a picnic on the grassy bank of the river."}


def parse_senses(text: str) -> dict[str, list[str]]:
    """``"money: I paid the bank. | The bank lent it; river: the river bank"`` -> a dict.

    Senses are separated by ';', a sense's name from its sentences by ':', and
    sentences by '|'.
    """
    senses: dict[str, list[str]] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, colon, sentences = part.partition(":")
        examples = [s.strip() for s in sentences.split("|") if s.strip()]
        if not colon or not name.strip() or not examples:
            raise ValueError(
                f"--senses must look like \"money: sentence | sentence; river: sentence\"; could not "
                f"read {part.strip()!r}"
            )
        senses[name.strip()] = examples
    if len(senses) < 2:
        raise ValueError(f"--senses needs at least two senses to compare; got {list(senses)}")
    return senses


@torch.no_grad()
def word_vectors_by_layer(model: TransformerStack, tokenizer: Tokenizer, sentences: list[str], word: str) -> Tensor:
    """The vector of ``word`` (mean of its pieces) in each sentence at every layer.

    Returns:
        (S, L + 1, d_model): layer 0 is the embeddings, before any attention.
    """
    batch = tokenizer(sentences).to(model.device)  # right padding: piece positions are absolute
    output = model(batch.input_ids, batch.attention_mask, output_hidden_states=True)
    hidden = torch.stack(output.hidden_states, dim=1)  # (S, L+1, N, d)
    vectors = []
    for row in range(len(sentences)):
        view = word_view(batch, row)
        try:
            positions = view.pieces[view.index_of(word)]
        except ValueError as error:
            raise ValueError(f"sentence {sentences[row]!r}: {error}") from error
        vectors.append(hidden[row, :, positions].mean(dim=1))  # (L+1, d)
    return torch.stack(vectors)


@dataclass(frozen=True)
class SenseTrajectory:
    """The focus word's similarity to each sense, layer by layer."""

    senses: list[str]  # S sense names
    cosine: Tensor  # (L + 1, S) cosine of the focus vector to each sense prototype
    predicted: list[str]  # L + 1 nearest sense per layer
    contrast_sentence: str | None  # the same word in another sense
    contrast_cosine: Tensor | None  # (L + 1,) cosine of the focus vector to the word there


def sense_trajectory(
    model: TransformerStack, tokenizer: Tokenizer, sentence: str, word: str, senses: dict[str, list[str]],
    contrast: str | None = None,
) -> SenseTrajectory:
    """Cosine of ``word``'s vector in ``sentence`` to per-sense prototypes at every layer."""
    focus = word_vectors_by_layer(model, tokenizer, [sentence], word)[0]  # (L+1, d)
    prototypes = torch.stack([
        word_vectors_by_layer(model, tokenizer, examples, word).mean(dim=0) for examples in senses.values()
    ], dim=1)  # (L+1, S, d)
    cosine = F.cosine_similarity(focus[:, None, :], prototypes, dim=-1)  # (L+1, S)
    names = list(senses)
    predicted = [names[i] for i in cosine.argmax(dim=-1).tolist()]
    contrast_cosine = None
    if contrast is not None:
        other = word_vectors_by_layer(model, tokenizer, [contrast], word)[0]  # (L+1, d)
        contrast_cosine = F.cosine_similarity(focus, other, dim=-1)
    return SenseTrajectory(names, cosine, predicted, contrast, contrast_cosine)

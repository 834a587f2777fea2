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

__all__ = ["DEFAULT_SENSES", "parse_senses", "word_vectors_by_layer", "SenseTrajectory", "sense_trajectory"]

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
def word_vectors_by_layer(model: TransformerStack, tokenizer: Tokenizer, sentences: list[str], word: str,
                          occurrence: int = 1) -> Tensor:
    """The vector of ``word`` (mean of its pieces; its ``occurrence``-th, from 1) in each sentence
    at every layer.

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
            positions = view.pieces[view.index_of(word, occurrence)]
        except ValueError as error:
            raise ValueError(f"sentence {sentences[row]!r}: {error}") from error
        vectors.append(hidden[row, :, positions].mean(dim=1))  # (L+1, d)
    return torch.stack(vectors)


@dataclass(frozen=True)
class SenseTrajectory:
    """The focus word's similarity to each sense, layer by layer, and a sentence to contrast it with."""

    senses: list[str]  # S sense names
    cosine: Tensor  # (L + 1, S) cosine of the focus vector to each sense prototype
    predicted: list[str]  # L + 1 nearest sense per layer
    contrast_sentence: str  # the same word in another sense
    contrast_cosine: Tensor  # (L + 1,) cosine of the focus vector to the word there
    contrast_sense: str  # the sense of the contrast sentence's word (nearest prototype at the last layer)
    contrast_reason: str  # why this contrast, in words


def sense_trajectory(
    model: TransformerStack, tokenizer: Tokenizer, sentence: str, word: str, senses: dict[str, list[str]],
    contrast: str | None = None, occurrence: int = 1,
) -> SenseTrajectory:
    """Cosine of ``word``'s vector in ``sentence`` (its ``occurrence``-th, from 1) to per-sense
    prototypes at every layer, and to the same word in a contrast sentence.

    Without ``contrast``, the contrast is chosen by the model's own vectors: the focus word is
    closest to one sense at the last layer; the contrast is the example of the sense farthest
    from it there (the other one, with two senses) whose vector is closest to that sense's
    prototype, its clearest example. A given ``contrast`` is kept, and the reason says which
    sense the word there is closest to.
    """
    focus = word_vectors_by_layer(model, tokenizer, [sentence], word, occurrence)[0]  # (L+1, d)
    examples = [word_vectors_by_layer(model, tokenizer, sentences, word) for sentences in senses.values()]
    prototypes = torch.stack([vectors.mean(dim=0) for vectors in examples], dim=1)  # (L+1, S, d)
    cosine = F.cosine_similarity(focus[:, None, :], prototypes, dim=-1)  # (L+1, S)
    names = list(senses)
    predicted = [names[i] for i in cosine.argmax(dim=-1).tolist()]
    own, last = predicted[-1], cosine[-1]  # the sense the model reads here, at the last layer
    if contrast is None:
        farthest = min((i for i, name in enumerate(names) if name != own), key=lambda i: float(last[i]))
        typicality = F.cosine_similarity(examples[farthest][:, -1], prototypes[-1, farthest][None], dim=-1)  # (E,)
        contrast, contrast_sense = senses[names[farthest]][int(typicality.argmax())], names[farthest]
        other = examples[farthest][int(typicality.argmax())]  # (L+1, d)
        reason = (f"'{word}' here is closest to the {own} sense at the last layer (cosine {float(last.max()):.3f}, "
                  f"against {float(last[farthest]):.3f} for {contrast_sense}), so the contrast is the "
                  f"{contrast_sense} example nearest that sense's mean")
    else:
        other = word_vectors_by_layer(model, tokenizer, [contrast], word)[0]  # (L+1, d)
        contrast_sense = names[int(F.cosine_similarity(other[-1][None], prototypes[-1], dim=-1).argmax())]
        reason = (f"the contrast sentence asked for; '{word}' there is closest to the {contrast_sense} sense at the "
                  f"last layer" + (", the same sense as here" if contrast_sense == own else ""))
    contrast_cosine = F.cosine_similarity(focus, other, dim=-1)  # (L+1,)
    return SenseTrajectory(names, cosine, predicted, contrast, contrast_cosine, contrast_sense, reason)

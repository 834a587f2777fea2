"""Text every part of qkv shares: the sentence its commands and examples start from, and
:class:`Batch`, tokenized text as the modules take it (:class:`qkv.models.Tokenizer` makes it)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["DEFAULT_FOCUS", "DEFAULT_SENTENCE", "Batch"]

#: The example of the project's mission: "bank" is pulled toward its money sense by
#: "deposited" and "check".
DEFAULT_SENTENCE = "She deposited her check at the bank."
#: The word of DEFAULT_SENTENCE that commands follow by default.
DEFAULT_FOCUS = "bank"


@dataclass(frozen=True)
class Batch:
    """Token ids of several texts, padded to one length, with what each token came from.

    ``input_ids`` and ``attention_mask`` are tensors; the per-token lists are per text
    and include padding positions (token "", offsets (0, 0), word id None).
    """

    input_ids: Tensor  # (B, N) int64
    attention_mask: Tensor  # (B, N) bool, True = real token
    token_type_ids: Tensor  # (B, N) int64 segment ids
    tokens: list[list[str]]  # (B, N) token strings
    offsets: list[list[tuple[int, int]]]  # (B, N) character spans in the text
    word_ids: list[list[int | None]]  # (B, N) word index; None for special tokens and padding
    special_tokens_mask: list[list[bool]]  # (B, N) True for [CLS], [SEP], padding...
    texts: list[str]  # the B input texts
    padding_side: str  # "right" or "left"

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with its tensors on ``device``."""
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            token_type_ids=self.token_type_ids.to(device),
        )

    def word_token_positions(self, row: int, word_index: int) -> list[int]:
        """Positions of the tokens (word pieces) of word ``word_index`` in text ``row``."""
        return [i for i, w in enumerate(self.word_ids[row]) if w == word_index]

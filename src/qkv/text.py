"""Text every part of qkv shares: the sentence its commands and examples start from,
:class:`Batch` (tokenized text as the modules take it; :class:`qkv.models.Tokenizer` makes it),
and user text made safe to show in a terminal."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["DEFAULT_FOCUS", "DEFAULT_SENTENCE", "Batch", "terminal_safe"]

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


# Control characters (C0, DEL, C1: ESC starts the sequences that clear a screen or set a title) and
# the bidirectional embeddings, overrides and isolates (they reorder what the terminal shows).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str, keep: str = "") -> str:
    """``text`` with every control character shown as its escape, as Python writes it in a
    string literal: ESC as ``\\x1b``, a newline as ``\\n``, U+202E as ``\\u202e``.

    User text (a sentence, a focus word, tokens, file and folder names) goes through this
    before it reaches a terminal, so that it can neither drive the terminal (clear the screen,
    set the window title, move the cursor) nor disguise what is shown. Characters in ``keep``
    (e.g. ``"\\n"``) are left as they are. Printable text, backslashes included, is unchanged.

    Example:
        >>> terminal_safe("bank\\x1b[2J")
        'bank\\\\x1b[2J'
    """
    return _UNSAFE.sub(lambda match: match[0] if match[0] in keep else repr(match[0])[1:-1], text)

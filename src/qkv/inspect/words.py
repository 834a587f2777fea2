"""Word pieces merged back into words, for display and for word-level attention.

A tokenizer splits "unbelievably" into several pieces; people read words. Following
Clark et al. (2019), attention *to* a word is the sum over its pieces and attention
*from* a word is the mean over its pieces' rows, so that word-level rows still sum to 1.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.models.tokenizer import Batch

__all__ = ["WordView", "word_view"]

_VISIBLE_SPACE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "↵"})


def is_punctuation(text: str) -> bool:
    """True for a token made only of punctuation or symbols ("." "," "'s" is not)."""
    return bool(text) and all(unicodedata.category(c)[0] in "PS" for c in text)


@dataclass(frozen=True)
class WordView:
    """How the pieces of one tokenised text group into displayed tokens."""

    tokens: list[str]  # W display tokens: words in the text's own spelling (no leading space), [CLS], [SEP], "."
    kinds: list[str]  # W kinds: "special", "punctuation" (also runs of spaces) or "word"
    pieces: list[list[int]]  # W lists of piece positions
    piece_tokens: list[str]  # N pieces as the tokenizer wrote them

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def special_mask(self) -> Tensor:
        """(W,) True for [CLS], [SEP] and other special tokens."""
        return torch.tensor([k == "special" for k in self.kinds])

    @property
    def punctuation_mask(self) -> Tensor:
        """(W,) True for punctuation tokens."""
        return torch.tensor([k == "punctuation" for k in self.kinds])

    def pooling(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """(W, N) matrix whose rows average a word's pieces."""
        matrix = torch.zeros(len(self.tokens), len(self.piece_tokens), dtype=dtype)
        for w, positions in enumerate(self.pieces):
            matrix[w, positions] = 1.0 / len(positions)
        return matrix

    def attention_to_words(self, weights: Tensor) -> Tensor:
        """Piece-level attention (..., N, N) -> word level (..., W, W).

        Rows: mean over the query word's pieces; columns: sum over the key word's pieces.
        """
        pooling = self.pooling(weights.dtype).to(weights.device)  # (W, N)
        summing = (pooling > 0).to(weights.dtype)  # (W, N)
        return pooling @ weights @ summing.t()

    def vectors_to_words(self, vectors: Tensor) -> Tensor:
        """Piece vectors (..., N, d) -> word vectors (..., W, d), the mean of each word's pieces."""
        return self.pooling(vectors.dtype).to(vectors.device) @ vectors

    def index_of(self, word: str) -> int:
        """Position of the first display token equal to ``word`` (case-insensitive; surrounding
        spaces ignored, so GPT-2's " bank" finds "bank")."""
        wanted = word.strip().lower()
        for i, token in enumerate(self.tokens):
            if token.lower() == wanted and self.kinds[i] == "word":
                return i
        words = [t for t, k in zip(self.tokens, self.kinds) if k == "word"]
        if not words:
            raise ValueError(f"the sentence has no words to follow (only {self.tokens}); give a sentence with words")
        raise ValueError(f"focus word {word!r} is not in the sentence; its words are {words}")


def word_view(batch: Batch, row: int = 0) -> WordView:
    """Group the pieces of text ``row`` of ``batch`` into display tokens.

    Padding is dropped and piece positions count real pieces only.
    """
    text = batch.texts[row]
    tokens, kinds, pieces = [], [], []
    current_word = object()
    real_positions = [i for i, real in enumerate(batch.attention_mask[row].tolist()) if real]
    offsets = [batch.offsets[row][i] for i in real_positions]
    # Positions count real pieces only, so that they index unpadded (N, N) matrices.
    for position, i in enumerate(real_positions):
        piece, word_id, special = batch.tokens[row][i], batch.word_ids[row][i], batch.special_tokens_mask[row][i]
        if special or word_id is None:
            tokens.append(piece)
            kinds.append("special")
            pieces.append([position])
            current_word = object()
        elif word_id == current_word:
            pieces[-1].append(position)
        else:
            tokens.append(piece)
            kinds.append("word")
            pieces.append([position])
            current_word = word_id
    # Spell each word as it is in the text (offsets span from its first to its last piece),
    # without the space before it that byte-level BPE (GPT-2) keeps inside the word's first piece.
    for w, positions in enumerate(pieces):
        if kinds[w] == "special":
            continue
        start, end = offsets[positions[0]][0], offsets[positions[-1]][1]
        spelled = text[start:end]
        if spelled.strip():
            tokens[w] = spelled.strip()
        elif spelled:  # a run of spaces or line breaks, a token of its own in GPT-2: shown, set aside
            tokens[w] = spelled.translate(_VISIBLE_SPACE)
            kinds[w] = "punctuation"
        if is_punctuation(tokens[w]):
            kinds[w] = "punctuation"
    piece_tokens = [batch.tokens[row][i] for i in real_positions]
    return WordView(tokens=tokens, kinds=kinds, pieces=pieces, piece_tokens=piece_tokens)

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

from qkv.text import Batch

__all__ = ["WordView", "FocusChoice", "word_view", "unknown_token"]

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

    @property
    def piece_words(self) -> Tensor:
        """(N,) the display token each piece belongs to."""
        return torch.tensor([w for w, positions in enumerate(self.pieces) for _ in positions], dtype=torch.long)

    def sum_over_words(self, values: Tensor, dim: int = -1) -> Tensor:
        """Sum piece values into their words along ``dim``: (..., N, ...) -> (..., W, ...).

        An index_add over the pieces, so the memory is that of ``values`` and the result only.
        """
        dim = dim % values.dim()
        shape = list(values.shape)
        shape[dim] = len(self.tokens)
        return values.new_zeros(shape).index_add_(dim, self.piece_words.to(values.device), values)

    def mean_over_words(self, values: Tensor, dim: int = -1) -> Tensor:
        """Average piece values over each word's pieces along ``dim``: (..., N, ...) -> (..., W, ...)."""
        dim = dim % values.dim()
        counts = torch.tensor([len(p) for p in self.pieces], dtype=values.dtype, device=values.device)  # (W,)
        return self.sum_over_words(values, dim) / counts.view(-1, *([1] * (values.dim() - dim - 1)))

    def attention_to_words(self, weights: Tensor) -> Tensor:
        """Piece-level attention (..., N, N) -> word level (..., W, W).

        Rows: mean over the query word's pieces; columns: sum over the key word's pieces.
        """
        return self.mean_over_words(self.sum_over_words(weights, dim=-1), dim=-2)

    def vectors_to_words(self, vectors: Tensor) -> Tensor:
        """Piece vectors (..., N, d) -> word vectors (..., W, d), the mean of each word's pieces."""
        return self.mean_over_words(vectors, dim=-2)

    def occurrences(self, word: str) -> list[int]:
        """Display tokens spelled ``word`` (case-insensitive; surrounding spaces ignored, so GPT-2's
        " bank" finds "bank"), in order: the words, or, when no word matches, the other tokens
        that are not special (a symbol or emoji typed as the focus)."""
        wanted = word.strip().lower()
        spelled = [i for i, token in enumerate(self.tokens) if token.lower() == wanted]
        words = [i for i in spelled if self.kinds[i] == "word"]
        return words or [i for i in spelled if self.kinds[i] != "special"]

    def index_of(self, word: str, occurrence: int = 1) -> int:
        """Position of the ``occurrence``-th (from 1) display token spelled ``word`` (see
        :meth:`occurrences`)."""
        return self.find(word, occurrence).index

    def find(self, word: str, occurrence: int | None = None, *, option: str = "occurrence",
             unknown_token: str | None = None) -> FocusChoice:
        """Which display token to follow for ``word``, and what the reader should know about it.

        Args:
            word: the focus word, as typed.
            occurrence: which occurrence to follow, from 1 (None: the first, and the note says
                that the word repeats).
            option: how the caller names ``occurrence`` in errors ("--occurrence" in the CLI); the
                note names the CLI's option, as the report's views show it.
            unknown_token: the tokenizer's unknown token ("[UNK]"); a focus read as it is
                followed, and the note says what that means.

        Raises:
            ValueError: ``word`` is not among the tokens (the message lists the words, or says
                how the tokenizer split it), or ``occurrence`` is out of range.
        """
        found = self.occurrences(word)
        if not found:
            words = [t for t, k in zip(self.tokens, self.kinds) if k == "word"]
            if not words:
                raise ValueError(f"the sentence has no words to follow (only {self.tokens}); give a sentence with "
                                 f"words")
            raise ValueError(self.split_reason(word) or f"focus word {word!r} is not in the sentence; its words are "
                                                        f"{words}")
        if occurrence is not None and not 1 <= occurrence <= len(found):
            choices = {1: "1", 2: "1 or 2"}.get(len(found), f"1 to {len(found)}")
            raise ValueError(
                f"{option} {occurrence}: {word.strip()!r} occurs {_times(len(found))} in the sentence "
                f"(token{'s' if len(found) > 1 else ''} {_listing(found)}); give {choices}"
            )
        chosen = found[(occurrence or 1) - 1]
        notes = []
        if len(found) > 1:
            others = [str(n) for n in range(1, len(found) + 1) if n != (occurrence or 1)]
            which = "the other" if len(others) == 1 else "the others"
            following = f"following the {_ORDINALS.get(occurrence or 1, f'{occurrence}th')}, at token {chosen}"
            notes.append(f"{self.tokens[chosen]!r} occurs {_times(len(found))} (tokens {_listing(found)}); "
                         f"{following}; --occurrence {_listing(others, 'or')} for {which}")
        if unknown_token is not None and all(self.piece_tokens[p] == unknown_token for p in self.pieces[chosen]):
            notes.append(f"{self.tokens[chosen]!r} is read by the model as {unknown_token}, the token for "
                         f"anything outside its vocabulary: it starts from the same vector as any other text "
                         f"the model does not know, so only its position and context tell it apart")
        return FocusChoice(index=chosen, occurrence=found.index(chosen) + 1, occurrences=found,
                           note="; ".join(notes) or None)

    def split_reason(self, word: str) -> str | None:
        """If ``word`` is spelled by several consecutive tokens (the tokenizer split it into words of
        their own, as BERT does with Chinese characters), the message saying so; else None."""
        wanted = word.strip().lower()
        for start in range(len(self.tokens)):
            spelled = ""
            for end in range(start, len(self.tokens)):
                if self.kinds[end] == "special":
                    break
                spelled += self.tokens[end].lower()
                if spelled == wanted and end > start:
                    parts = ", ".join(repr(t) for t in self.tokens[start:end + 1])
                    return (f"focus word {word.strip()!r} is read by the model as {end - start + 1} separate "
                            f"tokens ({parts}); give one of them as the focus")
                if not wanted.startswith(spelled):
                    break
        return None


_ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth",
             9: "ninth", 10: "tenth"}


def _times(count: int) -> str:
    """2 -> "twice", 5 -> "5 times"."""
    return {1: "once", 2: "twice"}.get(count, f"{count} times")


def _listing(items: list, last: str = "and") -> str:
    """[2, 7, 9] -> "2, 7 and 9"."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


@dataclass(frozen=True)
class FocusChoice:
    """The display token chosen as the focus, among the tokens spelled like the focus word."""

    index: int  # display token followed
    occurrence: int  # which occurrence it is, from 1
    occurrences: list[int]  # every display token spelled like the focus word, in order
    note: str | None  # for the reader: the word repeats (and how to choose another), or is read as unknown


def unknown_token(tokenizer: object) -> str | None:
    """The token a tokenizer writes for text outside its vocabulary ("[UNK]"), or None (byte-level
    BPE has none)."""
    backend = getattr(getattr(tokenizer, "backend", None), "model", None)
    return getattr(backend, "unk_token", None) or None


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

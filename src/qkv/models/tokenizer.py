"""Tokenisation through the Hugging Face ``tokenizers`` library, from tokenizer.json.

Besides ids, every token keeps its character offsets in the text and the index of the
word it belongs to, so that word pieces can be merged back into words for display
and a word's vector can be found from its position in the sentence.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer as BackendTokenizer
from torch import Tensor

from qkv.text import Batch

__all__ = ["Tokenizer", "Batch", "backend_from_gguf"]

PAD_CANDIDATES = ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>", "</s>")


GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


def backend_from_gguf(reader, source: str = "") -> BackendTokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` from a GGUF file's vocabulary and merges.

    ``tokenizer.ggml.model`` must be "gpt2" (byte-level BPE, as Llama 3, SmolLM, Qwen2):
    the tokens are already spelled in GPT-2's byte alphabet, the merges are "a b" pairs.
    Control tokens (type 3, e.g. ``<|im_start|>``) become special tokens that are never
    split; user-defined ones (type 4) are added whole.

    Args:
        reader: a ``gguf.GGUFReader``.
        source: the file, for messages.
    """
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors

    def field(key: str):
        value = reader.fields.get(key)
        return None if value is None else value.contents()

    kind = field("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{source}: GGUF tokenizer {kind!r} is not supported; qkv builds 'gpt2' (byte-level BPE)")
    tokens, merges = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise ValueError(f"{source}: the GGUF file has no tokenizer.ggml.tokens or tokenizer.ggml.merges")
    types = field("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {token: index for index, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    backend = BackendTokenizer(models.BPE(vocab, pairs, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types) if kind == GGUF_CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, kind in zip(tokens, types) if kind == GGUF_USER_DEFINED])
    return backend


class Tokenizer:
    """A tokenizer.json tokenizer that pads batches itself and keeps offsets and word ids.

    Args:
        backend: a ``tokenizers.Tokenizer``.
        name: where it came from, for messages.
        max_length: longest sequence the model accepts (inputs are truncated to it).
        pad_token_id: the padding id (None: the first of the usual pad tokens the vocabulary has).
        chat_template: the model's chat template (Jinja text), when its file has one.
    """

    def __init__(
        self, backend: BackendTokenizer, name: str = "", max_length: int | None = None, *,
        pad_token_id: int | None = None, chat_template: str | None = None,
    ) -> None:
        backend.no_padding()  # padding and truncation are done here, per call
        backend.no_truncation()
        self.backend, self.name, self.max_length = backend, name, max_length
        self.pad_token_id = self._find_pad_id() if pad_token_id is None else pad_token_id
        self.chat_template = chat_template  # the Jinja chat template a GGUF file carries, as text

    @classmethod
    def from_file(cls, path: str | Path, max_length: int | None = None) -> Tokenizer:
        """Load a tokenizer.json file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no tokenizer file at {path}; qkv reads tokenizer.json (a 'fast' tokenizer "
                f"saved by Hugging Face: tokenizer.save_pretrained(folder) writes it)"
            )
        try:
            backend = BackendTokenizer.from_file(str(path))
        except Exception as error:
            raise ValueError(f"could not read the tokenizer {path}: {error}") from error
        return cls(backend, name=str(path), max_length=max_length)

    def _find_pad_id(self) -> int:
        vocab = self.backend.get_vocab()
        for token in PAD_CANDIDATES:
            if token in vocab:
                return vocab[token]
        return 0

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def check_fits(self, vocab_size: int, table: str) -> None:
        """Refuse a tokenizer that can give an id (its padding id included) outside the embedding table.

        Args:
            vocab_size: rows of the model's token embedding table.
            table: where ``vocab_size`` comes from, for the message (e.g. "config.json's vocab_size").

        Raises:
            ValueError: naming the tokenizer, its largest id and ``table``.
        """
        ids = self.backend.get_vocab(with_added_tokens=True).values()
        largest = max(ids, default=-1)
        if largest >= vocab_size:
            raise ValueError(f"{self.name}: the tokenizer has ids up to {largest}, but {table} is {vocab_size}: "
                             f"the model's embedding table has no row for ids >= {vocab_size}; use the "
                             f"tokenizer the model was trained with")
        if not 0 <= self.pad_token_id < vocab_size:
            raise ValueError(f"{self.name}: the padding id {self.pad_token_id} is outside the embedding table "
                             f"({table} is {vocab_size}); set a pad token id in 0 .. {vocab_size - 1}")

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token``, or None."""
        return self.backend.token_to_id(token)

    def __call__(
        self,
        texts: str | list[str],
        *,
        padding_side: str = "right",
        add_special_tokens: bool = True,
        max_length: int | None = None,
        truncation: bool = True,
    ) -> Batch:
        """Tokenise one text or a batch, padding to the longest.

        Args:
            texts: a string or a list of strings.
            padding_side: "right" (encoders) or "left" (batched generation).
            add_special_tokens: add [CLS]/[SEP] or whatever the tokenizer's template says.
            max_length: truncate longer sequences (default: the model's maximum).
            truncation: False keeps every token (to check a length before refusing it).

        Returns:
            A :class:`Batch`.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts must be a string or a non-empty list of strings; got {texts!r:.80}")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left'; got {padding_side!r}")
        limit = (max_length or self.max_length) if truncation else None
        if limit is None:
            self.backend.no_truncation()
        else:  # the library keeps [CLS] and [SEP] inside the limit
            self.backend.enable_truncation(limit)
        encodings = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        width = max(len(e.ids) for e in encodings)
        columns: dict[str, list[list]] = {k: [] for k in
                                          ("ids", "mask", "types", "tokens", "offsets", "words", "special")}
        for encoding in encodings:
            pad = width - len(encoding.ids)
            rows = {
                "ids": (list(encoding.ids), self.pad_token_id),
                "mask": ([True] * len(encoding.ids), False),
                "types": (list(encoding.type_ids), 0),
                "tokens": (list(encoding.tokens), ""),
                "offsets": ([tuple(o) for o in encoding.offsets], (0, 0)),
                "words": (list(encoding.word_ids), None),
                "special": ([bool(s) for s in encoding.special_tokens_mask], True),
            }
            for key, (values, fill) in rows.items():
                padding = [fill] * pad
                columns[key].append(values + padding if padding_side == "right" else padding + values)
        return Batch(
            input_ids=torch.tensor(columns["ids"], dtype=torch.long),
            attention_mask=torch.tensor(columns["mask"], dtype=torch.bool),
            token_type_ids=torch.tensor(columns["types"], dtype=torch.long),
            tokens=columns["tokens"],
            offsets=columns["offsets"],
            word_ids=columns["words"],
            special_tokens_mask=columns["special"],
            texts=list(texts),
            padding_side=padding_side,
        )

    def decode(self, ids: Tensor | list[int], skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, pad_token_id={self.pad_token_id})"

"""qkv.models.Tokenizer: ids with offsets, word ids and padding, from a tokenizer.json.

Run on all-MiniLM-L6-v2's WordPiece tokenizer and on the tiny byte-level BPE GPT-2 one.
"""

from __future__ import annotations

import re

import pytest
import torch

import qkv
from qkv.models import Batch, Tokenizer

SENTENCE = "She deposited her check at the bank."
WORDS = ["She", "deposited", "her", "check", "at", "the", "bank", "."]  # punctuation is a word of its own


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_folder) -> Tokenizer:
    return Tokenizer.from_file(minilm_folder / "tokenizer.json")


@pytest.fixture(scope="module")
def gpt2_tokenizer(tiny_gpt2_folder) -> Tokenizer:
    return Tokenizer.from_file(tiny_gpt2_folder / "tokenizer.json")


@pytest.fixture(params=["minilm", "gpt2"])
def tokenizer(request) -> Tokenizer:
    return request.getfixturevalue(f"{request.param}_tokenizer")


def piece_text(token: str) -> str:
    """What a token covers in the text: WordPiece's '##' and byte-level BPE's 'Ġ' undone."""
    return token.removeprefix("##").replace("Ġ", " ").lower()


# One sentence


def test_minilm_cls_sentence_sep(minilm_tokenizer):
    batch = minilm_tokenizer(SENTENCE)
    assert isinstance(batch, Batch) and len(batch) == 1
    tokens = batch.tokens[0]
    assert tokens == ["[CLS]", "she", "deposited", "her", "check", "at", "the", "bank", ".", "[SEP]"]
    assert batch.input_ids[0, 0].item() == minilm_tokenizer.token_to_id("[CLS]")
    assert batch.input_ids[0, -1].item() == minilm_tokenizer.token_to_id("[SEP]")
    assert batch.input_ids.dtype == torch.long and batch.input_ids.shape == (1, len(tokens))
    assert batch.attention_mask.dtype == torch.bool and bool(batch.attention_mask.all())
    assert batch.token_type_ids.tolist() == [[0] * len(tokens)]
    assert batch.special_tokens_mask[0] == [True] + [False] * (len(tokens) - 2) + [True]
    assert batch.word_ids[0][0] is None and batch.word_ids[0][-1] is None
    assert batch.texts == [SENTENCE] and batch.padding_side == "right"


def test_without_special_tokens(minilm_tokenizer):
    batch = minilm_tokenizer(SENTENCE, add_special_tokens=False)
    assert batch.tokens[0] == ["she", "deposited", "her", "check", "at", "the", "bank", "."]
    assert not any(batch.special_tokens_mask[0])


def test_offsets_slice_the_text_back(tokenizer):
    text = "She deposited her check at the bank, unbelievably."
    batch = tokenizer(text)
    for token, (start, end), special in zip(batch.tokens[0], batch.offsets[0], batch.special_tokens_mask[0]):
        if special:
            assert (start, end) == (0, 0)
            continue
        assert text[start:end].lower() == piece_text(token), token


def test_word_ids_give_the_pieces_of_each_word(tokenizer):
    batch = tokenizer(SENTENCE)
    word_ids = [w for w in batch.word_ids[0] if w is not None]
    assert sorted(set(word_ids)) == list(range(len(WORDS)))
    assert word_ids == sorted(word_ids)  # words come in order
    for i, word in enumerate(WORDS):
        positions = batch.word_token_positions(0, i)
        assert positions, word
        assert positions == list(range(positions[0], positions[-1] + 1))  # contiguous
        pieces = "".join(SENTENCE[s:e] for s, e in (batch.offsets[0][p] for p in positions))
        assert pieces.strip() == word
        assert "".join(piece_text(batch.tokens[0][p]) for p in positions).strip() == word.lower()


def test_special_tokens_have_no_word(minilm_tokenizer):
    batch = minilm_tokenizer(SENTENCE)
    for token, word, special in zip(batch.tokens[0], batch.word_ids[0], batch.special_tokens_mask[0]):
        assert (word is None) == special == (token in ("[CLS]", "[SEP]"))
    assert batch.word_token_positions(0, len(WORDS)) == []  # no such word


def test_a_word_in_several_pieces_shares_one_word_id(tokenizer):
    text = "It was unbelievably good"
    batch = tokenizer(text)
    positions = batch.word_token_positions(0, 2)
    assert len(positions) > 1
    assert {batch.word_ids[0][p] for p in positions} == {2}
    assert "".join(piece_text(batch.tokens[0][p]) for p in positions).strip() == "unbelievably"
    start, end = batch.offsets[0][positions[0]][0], batch.offsets[0][positions[-1]][1]
    assert text[start:end].strip() == "unbelievably"


def test_minilm_word_pieces_are_marked(minilm_tokenizer):
    batch = minilm_tokenizer("unbelievably")
    pieces = batch.tokens[0][1:-1]
    assert len(pieces) > 1 and not pieces[0].startswith("##")
    assert all(p.startswith("##") for p in pieces[1:])


# Batches and padding


TEXTS = ["A short one.", SENTENCE, "Queries ask, keys answer, values carry the message along."]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_pads_to_the_longest(tokenizer, padding_side):
    batch = tokenizer(TEXTS, padding_side=padding_side)
    singles = [tokenizer(text) for text in TEXTS]
    lengths = [s.input_ids.shape[1] for s in singles]
    width = max(lengths)
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.token_type_ids.shape == (3, width)
    assert len(set(lengths)) == 3  # the rows really need padding
    assert tokenizer.pad_token_id == 0
    assert batch.padding_side == padding_side
    for row, (single, length) in enumerate(zip(singles, lengths)):
        pad = width - length
        real = slice(0, length) if padding_side == "right" else slice(pad, width)
        padding = slice(length, width) if padding_side == "right" else slice(0, pad)
        assert batch.input_ids[row, real].tolist() == single.input_ids[0].tolist()
        assert batch.input_ids[row, padding].tolist() == [0] * pad
        assert batch.attention_mask[row].tolist() == [i in range(width)[real] for i in range(width)]
        assert batch.token_type_ids[row, padding].tolist() == [0] * pad
        for column in ("tokens", "offsets", "word_ids", "special_tokens_mask"):
            values = getattr(batch, column)[row]
            assert len(values) == width
            assert values[real] == getattr(single, column)[0], column
        assert batch.special_tokens_mask[row][padding] == [True] * pad
        assert batch.word_ids[row][padding] == [None] * pad
        assert batch.tokens[row][padding] == [""] * pad
        assert batch.offsets[row][padding] == [(0, 0)] * pad
    # positions of words are found in the padded row too
    row = 0
    shift = 0 if padding_side == "right" else width - lengths[row]
    assert batch.word_token_positions(row, 0) == [p + shift for p in singles[row].word_token_positions(0, 0)]


def test_left_padding_puts_the_padding_first(minilm_tokenizer):
    batch = minilm_tokenizer(["Hi.", SENTENCE], padding_side="left")
    assert batch.tokens[0][: batch.input_ids.shape[1] - 4] == [""] * (batch.input_ids.shape[1] - 4)
    assert batch.tokens[0][-4:] == ["[CLS]", "hi", ".", "[SEP]"]
    assert not batch.attention_mask[0, 0] and batch.attention_mask[0, -1]


def test_batch_to(minilm_tokenizer):
    batch = minilm_tokenizer(TEXTS)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert getattr(moved, name).device.type == "cpu"
        assert torch.equal(getattr(moved, name), getattr(batch, name))
    assert moved.tokens == batch.tokens and moved.word_ids == batch.word_ids and moved.texts == batch.texts
    assert moved.offsets == batch.offsets and moved.padding_side == batch.padding_side
    if torch.cuda.is_available():
        assert batch.to("cuda").input_ids.device.type == "cuda"


# Truncation and the tokenizer.json's own settings


def test_max_length_truncates(tokenizer):
    text = " ".join(["bank"] * 40)
    assert tokenizer(text).input_ids.shape[1] > 10
    batch = tokenizer([text, "bank"], max_length=10)
    assert batch.input_ids.shape == (2, 10)
    assert batch.attention_mask[0].all() and len(batch.tokens[0]) == 10


def test_minilm_truncation_keeps_cls(minilm_tokenizer):
    batch = minilm_tokenizer(" ".join(["bank"] * 40), max_length=10)
    assert batch.tokens[0][0] == "[CLS]"


def test_minilm_truncation_keeps_sep(minilm_tokenizer):
    batch = minilm_tokenizer(" ".join(["bank"] * 40), max_length=10)
    assert batch.tokens[0] == ["[CLS]"] + ["bank"] * 8 + ["[SEP]"]
    assert batch.special_tokens_mask[0][-1]


def test_model_maximum_is_the_default_limit(tiny_bert_folder):
    _, tokenizer = qkv.load(tiny_bert_folder)  # max_position_embeddings=64
    assert tokenizer.max_length == 64
    assert tokenizer(" ".join(["bank"] * 100)).input_ids.shape == (1, 64)


def test_tokenizer_json_padding_and_truncation_are_not_applied(minilm_folder, minilm_tokenizer):
    import json

    settings = json.loads((minilm_folder / "tokenizer.json").read_text())
    assert settings["padding"]["strategy"] == {"Fixed": 128}  # what the file asks for...
    assert settings["truncation"]["max_length"] == 128
    assert minilm_tokenizer("She deposited cheques.").input_ids.shape[1] < 10  # ...is not done
    assert minilm_tokenizer(" ".join(["bank"] * 200)).input_ids.shape[1] == 202
    assert minilm_tokenizer.backend.padding is None and minilm_tokenizer.backend.truncation is None


def test_loaded_minilm_tokenizer_is_not_padded_to_128(minilm_folder):
    _, tokenizer = qkv.load(minilm_folder)
    batch = tokenizer("Three short words")
    assert batch.tokens[0] == ["[CLS]", "three", "short", "words", "[SEP]"]
    assert tokenizer.max_length == 512
    assert tokenizer(" ".join(["bank"] * 200)).input_ids.shape[1] == 202  # not cut at 128


# Decoding


def test_minilm_decode_round_trip(minilm_tokenizer):
    batch = minilm_tokenizer(SENTENCE)
    assert minilm_tokenizer.decode(batch.input_ids[0]) == SENTENCE.lower()
    assert minilm_tokenizer.decode(batch.input_ids[0].tolist()) == SENTENCE.lower()
    with_specials = minilm_tokenizer.decode(batch.input_ids[0], skip_special_tokens=False)
    assert with_specials.startswith("[CLS]") and with_specials.endswith("[SEP]")


def test_padded_rows_decode_to_their_text(tokenizer):
    batch = tokenizer(TEXTS, padding_side="left")
    for row, text in enumerate(TEXTS):
        ids = batch.input_ids[row][batch.attention_mask[row]]
        assert tokenizer.decode(ids).lower() == text.lower()


def test_gpt2_decode_is_exact(gpt2_tokenizer):
    text = "She deposited her check at the bank, unbelievably."
    assert gpt2_tokenizer.decode(gpt2_tokenizer(text).input_ids[0]) == text


# Bad inputs


@pytest.mark.parametrize("texts", [[], 5, None, ["ok", 3], b"bytes"], ids=["empty", "int", "none", "mixed", "bytes"])
def test_bad_texts(minilm_tokenizer, texts):
    with pytest.raises(TypeError, match="non-empty list of strings"):
        minilm_tokenizer(texts)


def test_bad_padding_side(minilm_tokenizer):
    with pytest.raises(ValueError, match=r"padding_side.*'middle'"):
        minilm_tokenizer(SENTENCE, padding_side="middle")


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "tokenizer.json"))):
        Tokenizer.from_file(tmp_path / "tokenizer.json")


def test_repr_and_vocab(minilm_tokenizer, gpt2_tokenizer):
    assert minilm_tokenizer.vocab_size == 30522
    assert minilm_tokenizer.token_to_id("[PAD]") == minilm_tokenizer.pad_token_id == 0
    assert minilm_tokenizer.token_to_id("no-such-token-xyz") is None
    assert gpt2_tokenizer.pad_token_id == gpt2_tokenizer.token_to_id("<|endoftext|>")
    assert "vocab_size=30522" in repr(minilm_tokenizer)

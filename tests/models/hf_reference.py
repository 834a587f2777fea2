"""Hugging Face ``transformers``, the reference the models are compared with (a test dependency).

Its own module, not conftest: test files in other folders have a conftest too, and
``from conftest import ...`` would find whichever was imported first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")


def hf_model(folder: Path, kind: str):
    """The Hugging Face model of a folder, eager attention (it returns weights), eval mode."""
    cls = {"bert": transformers.BertModel, "gpt2": transformers.GPT2LMHeadModel}[kind]
    return cls.from_pretrained(folder, attn_implementation="eager").eval()

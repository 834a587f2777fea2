"""The package's former path, ``qkv.attention.<module>``, still imports (for one release) with a
DeprecationWarning, gives the very objects of :mod:`qkv.functional`, and leaves ``qkv.attention``
the function."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest
import torch

import qkv
import qkv.functional.oracle
from qkv.functional.masks import MaskSpec


def _forget_old_paths() -> None:
    for name in [n for n in sys.modules if n.startswith("qkv.attention.")]:
        del sys.modules[name]
    sys.modules["qkv.attention"].__dict__.pop("get_backend", None)


def test_the_new_package_imports_with_plain_import() -> None:
    assert qkv.functional.oracle.two_x_rule is not None  # `import qkv.functional.oracle` reaches its names


def test_an_old_module_path_gives_the_same_module_with_a_warning() -> None:
    _forget_old_paths()
    with pytest.warns(DeprecationWarning, match=r"qkv\.attention\.masks .*import qkv\.functional\.masks instead"):
        old = importlib.import_module("qkv.attention.masks")
    assert old is sys.modules["qkv.functional.masks"] and old.MaskSpec is MaskSpec
    assert callable(qkv.attention) and qkv.attention is qkv.functional.attention  # still the function


def test_from_the_old_package_import_a_name_warns_once() -> None:
    _forget_old_paths()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec("from qkv.attention import get_backend", namespace := {})
    assert namespace["get_backend"] is qkv.get_backend
    assert [str(w.message).split(" is ")[0] for w in caught if w.category is DeprecationWarning] == [
        "qkv.attention.get_backend"]
    q = torch.randn(1, 2, 3, 4)
    assert qkv.attention(q, q, q).shape == (1, 2, 3, 4)


def test_an_unknown_old_name_is_an_import_error() -> None:
    with pytest.raises(ImportError):
        importlib.import_module("qkv.attention.no_such_module")
    with pytest.raises(ImportError):
        exec("from qkv.attention import no_such_name", {})


def test_no_code_of_qkv_uses_the_old_path() -> None:
    src = Path(qkv.__file__).parent
    old = []
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [module or ""]
            old += [f"{path.relative_to(src)}:{node.lineno}" for name in names
                    if name == "qkv.attention" or name.startswith("qkv.attention.")]
    assert not old, f"imports through the deprecated path: {old}"

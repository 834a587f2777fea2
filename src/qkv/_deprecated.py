"""The functional core's old package path, ``qkv.attention.<module>``, kept for one release.

``qkv.attention`` is the function; the package of backends behind it is :mod:`qkv.functional`.
Imports written for the old layout (``from qkv.attention.masks import MaskSpec``,
``from qkv.attention import get_backend``) still work: they get the same module objects
from :mod:`qkv.functional` and a DeprecationWarning naming the new path. Nothing inside qkv
imports through here.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings

__all__ = ["install"]

OLD, NEW = "qkv.attention", "qkv.functional"


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated and will be removed in the next release: the package is now {NEW} "
                  f"(qkv.attention is the attention function); import {new} instead", DeprecationWarning,
                  stacklevel=3)


class _OldPackage(types.ModuleType):
    """``sys.modules["qkv.attention"]``: its names are those of :mod:`qkv.functional`, with a warning."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        package = importlib.import_module(NEW)
        if not hasattr(package, name):
            try:
                importlib.import_module(f"{NEW}.{name}")
            except ModuleNotFoundError:
                raise AttributeError(f"module {NEW!r} has no attribute {name!r}") from None
        value = getattr(package, name)
        self.__dict__[name] = value  # later lookups (the import system looks twice) find it: one warning
        _warn(f"{OLD}.{name}", f"{NEW}.{name}")
        return value


class _Alias(importlib.abc.Loader):
    """Loads ``qkv.attention.X`` as the module ``qkv.functional.X`` itself (one module object)."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = NEW + spec.name[len(OLD):]
        _warn(spec.name, new)
        return importlib.import_module(new)

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # already executed under its new name


class _OldPathFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(OLD + "."):
            return None
        if importlib.util.find_spec(NEW + fullname[len(OLD):]) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias())


def install() -> None:
    """Make the old paths importable (idempotent)."""
    if OLD not in sys.modules:
        old = _OldPackage(OLD, __doc__)
        old.__path__ = []  # a package: its submodules are found by the finder below
        sys.modules[OLD] = old
    if not any(isinstance(finder, _OldPathFinder) for finder in sys.meta_path):
        sys.meta_path.append(_OldPathFinder())

"""Named activations that can be read and replaced (TransformerLens' HookPoint idea).

A :class:`HookPoint` is an identity module placed at an activation worth looking at.
Every hook point of a model gets a dotted name from its position in the module tree
(``blocks.3.attn.weights``; a ``hook_`` prefix on the attribute is dropped). Functions
added to a hook point see the activation and may return a replacement, which is how
heads are ablated and activations patched. :class:`ActivationCache` holds what a
:meth:`HookedModule.run_with_cache` call captured; nothing is kept in globals.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["HookPoint", "HookFn", "ActivationCache", "HookedModule"]

HookFn = Callable[[Tensor, "HookPoint"], "Tensor | None"]


class HookPoint(nn.Module):
    """Identity at a named activation; added functions may read or replace the value."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""  # set by HookedModule.setup_hooks()
        self._fns: list[HookFn] = []

    @property
    def active(self) -> bool:
        """True when some function will see this activation."""
        return bool(self._fns)

    def add(self, fn: HookFn) -> Callable[[], None]:
        """Run ``fn(value, hook_point)`` on every forward; a returned tensor replaces it.

        Returns a function that removes ``fn`` again.
        """
        self._fns.append(fn)
        return lambda: self._fns.remove(fn) if fn in self._fns else None

    def clear(self) -> None:
        """Remove every function."""
        self._fns.clear()

    def __call__(self, value: Tensor) -> Tensor:
        # Identity while nothing watches: skips nn.Module's call machinery, which a model with a
        # dozen hook points per layer would otherwise pay at every decoding step.
        return super().__call__(value) if self._fns else value

    def forward(self, value: Tensor) -> Tensor:
        for fn in list(self._fns):
            replaced = fn(value, self)
            if replaced is not None:
                if not isinstance(replaced, Tensor) or replaced.shape != value.shape:
                    seen = tuple(replaced.shape) if isinstance(replaced, Tensor) else type(replaced)
                    raise ValueError(
                        f"a hook on {self.name!r} must return None or a tensor of shape "
                        f"{tuple(value.shape)}; got {seen}"
                    )
                value = replaced
        return value

    def extra_repr(self) -> str:
        return repr(self.name)


class ActivationCache:
    """Activations captured by name, with their shapes documented by the model.

    Index it like a dict: ``cache["blocks.3.attn.weights"]`` is (B, H, N, N).
    """

    def __init__(
        self, values: dict[str, Tensor], batch: object | None = None, *, complete: bool = False,
        unavailable: dict[str, str] | None = None,
    ) -> None:
        self._values = values
        self.batch = batch  # the tokenised qkv Batch when the model was given text
        self.complete = complete  # every hook point was asked for (names=None)
        self.unavailable = dict(unavailable or {})  # hook point -> why its layer's backend cannot produce it

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._values:
            if name in self.unavailable:
                raise KeyError(
                    f"{name!r} was not captured: {self.unavailable[name]}; set_attention('auto') and run "
                    f"again to capture it"
                )
            close = fnmatch.filter(self._values, f"*{name.split('.')[-1]}*")[:5]
            if self.complete:
                fix = "every hook point was captured, so this name is not one of the model's"
            else:
                fix = "add it to names=, or pass names=None to capture everything"
            raise KeyError(
                f"{name!r} was not captured; captured names include {close or list(self._values)[:5]}"
                f" ({len(self._values)} in all; {fix})"
            )
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def names(self) -> list[str]:
        """Every captured name, in the order the model produced them."""
        return list(self._values)

    def stack(self, suffix: str) -> Tensor:
        """One activation for every layer, stacked: ``stack("attn.weights")`` is (L, B, H, N, N)."""
        layers = sorted(
            (int(name.split(".")[1]), value)
            for name, value in self._values.items()
            if name.startswith("blocks.") and name.endswith("." + suffix)
        )
        if not layers:
            raise KeyError(f"no captured activation ends with {suffix!r}")
        return torch.stack([value for _, value in layers])

    def __repr__(self) -> str:
        return f"ActivationCache({len(self._values)} activations)"


def matches(name: str, patterns: Iterable[str] | None) -> bool:
    """Whether ``name`` matches one of the glob ``patterns`` (None matches everything)."""
    return patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns)


class HookedModule(nn.Module):
    """Base for models with hook points: names them, adds hooks, captures caches."""

    def setup_hooks(self) -> None:
        """Name every hook point after its place in the module tree; call after building."""
        for module_name, module in self.named_modules():
            if isinstance(module, HookPoint):
                parts = module_name.split(".")
                parts[-1] = parts[-1].removeprefix("hook_")
                module.name = ".".join(parts)

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point by name."""
        return {m.name: m for m in self.modules() if isinstance(m, HookPoint)}

    def _select(self, names: str | Iterable[str] | None) -> list[HookPoint]:
        patterns = [names] if isinstance(names, str) else names
        points = [p for name, p in self.hook_points().items() if matches(name, patterns)]
        if patterns is not None and not points:
            raise KeyError(
                f"no hook point matches {list(patterns)}; names look like "
                f"{list(self.hook_points())[:6]} (glob patterns such as 'blocks.*.attn.weights' work)"
            )
        return points

    def add_hook(self, names: str | Iterable[str], fn: HookFn) -> Callable[[], None]:
        """Add ``fn`` to every hook point whose name matches ``names`` (globs allowed).

        Returns a function removing what was added.
        """
        removers = [point.add(fn) for point in self._select(names)]
        return lambda: [remove() for remove in removers]

    def reset_hooks(self) -> None:
        """Remove every function from every hook point."""
        for point in self.hook_points().values():
            point.clear()

    @contextmanager
    def hooks(self, hooks: Iterable[tuple[str, HookFn]]) -> Iterator[HookedModule]:
        """Temporarily add ``(names, fn)`` pairs: ``with model.hooks([(name, fn)]): model(x)``."""
        removers = [self.add_hook(names, fn) for names, fn in hooks]
        try:
            yield self
        finally:
            for remove in removers:
                remove()

    @contextmanager
    def capture(self, names: str | Iterable[str] | None = None) -> Iterator[dict[str, Tensor]]:
        """Record the activations whose names match ``names`` into the yielded dict."""
        store: dict[str, Tensor] = {}

        def record(value: Tensor, point: HookPoint) -> None:
            store[point.name] = value.detach()

        remove = self.add_hook(names, record) if names is not None else self.add_hook("*", record)
        try:
            yield store
        finally:
            remove()

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

__all__ = ["HookPoint", "HookFn", "ActivationCache", "HookedModule", "LENS_ALIASES"]

HookFn = Callable[[Tensor, "HookPoint"], "Tensor | None"]

# TransformerLens' activation names (as ``cache["pattern", 3]`` takes them) -> qkv's name inside
# block i. The tensors are qkv's own: per-head ones are (B, H, N, Dh), where TransformerLens
# has (B, N, H, Dh).
LENS_ALIASES = {
    "pattern": "attn.weights", "attn": "attn.weights",
    "attn_scores": "attn.scores", "attn_logits": "attn.scores",
    "q": "attn.q", "query": "attn.q", "rot_q": "attn.q",
    "k": "attn.k", "key": "attn.k", "rot_k": "attn.k",
    "v": "attn.v", "value": "attn.v",
    "z": "attn.z", "attn_out": "attn.out",
    "resid_pre": "resid_pre", "resid_mid": "resid_mid", "resid_post": "resid_post",
    "post": "mlp.hidden", "mlp_post": "mlp.hidden", "mlp_out": "mlp.out",
}
# TransformerLens names without a qkv counterpart, and what to use instead.
_LENS_MISSING = {
    "result": "qkv keeps each head's weighted average of the values, blocks.{i}.attn.z (B, H, N, Dh), and the "
              "projected sum of the heads, blocks.{i}.attn.out; there is no per-head projected output",
    "pre": "qkv captures the MLP after its activation only, blocks.{i}.mlp.hidden (cache['post', {i}])",
    "mlp_pre": "qkv captures the MLP after its activation only, blocks.{i}.mlp.hidden (cache['post', {i}])",
    "embed": "qkv captures the embeddings once summed (tokens, positions, segments) and normalised: embed.embed",
    "pos_embed": "qkv captures the embeddings once summed (tokens, positions, segments) and normalised: embed.embed",
}


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

    Index it like a dict: ``cache["blocks.3.attn.weights"]`` is (B, H, N, N); ``keys()``,
    ``values()`` and ``items()`` list what was captured. TransformerLens' ``(name, layer)``
    keys work as aliases (:data:`LENS_ALIASES`): ``cache["pattern", 3]`` is
    ``cache["blocks.3.attn.weights"]``, ``cache["q", -1]`` the last layer's queries (qkv's
    (B, H, N, Dh) layout); a TransformerLens name without a counterpart raises a KeyError
    that says what to use.
    """

    def __init__(
        self, values: dict[str, Tensor], batch: object | None = None, *, complete: bool = False,
        unavailable: dict[str, str] | None = None,
    ) -> None:
        self._values = values
        self.batch = batch  # the tokenised qkv Batch when the model was given text
        self.complete = complete  # every hook point was asked for (names=None)
        self.unavailable = dict(unavailable or {})  # hook point -> why its layer's backend cannot produce it

    def __getitem__(self, name: str | tuple[str, int]) -> Tensor:
        name = self.resolve(name)
        if name not in self._values:
            if name in self.unavailable:
                raise KeyError(
                    f"{name!r} was not captured: {self.unavailable[name]}; set_attention('auto') and run "
                    f"again to capture it"
                )
            close = fnmatch.filter(self._values, f"*{name.split('.')[-1]}*")[:5]
            lens = _lens_hint(name)
            if lens:
                raise KeyError(f"{name!r} is not a qkv name: {lens}")
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
        if isinstance(name, tuple):
            try:
                name = self.resolve(name)
            except KeyError:
                return False
        return name in self._values

    def resolve(self, key: str | tuple[str, int]) -> str:
        """qkv's name for ``key``: a name is itself; ``(alias, layer)`` becomes
        ``blocks.{layer}.{LENS_ALIASES[alias]}`` (a negative layer counts from the last captured one).

        Raises:
            KeyError: an alias qkv does not have, or a layer that is not an int.
        """
        if not isinstance(key, tuple):
            return key
        if len(key) != 2 or not isinstance(key[0], str) or isinstance(key[1], bool) or not isinstance(key[1], int):
            raise KeyError(f"cache keys are names, 'blocks.3.attn.weights', or (name, layer) pairs such as "
                           f"('pattern', 3); got {key!r}")
        alias, layer = key
        if layer < 0:
            layers = {int(n.split(".")[1]) for n in self._values if n.startswith("blocks.")}
            layer += max(layers, default=-1) + 1
        if alias in _LENS_MISSING:
            raise KeyError(f"{key!r}: {_LENS_MISSING[alias].format(i=layer)}")
        if alias not in LENS_ALIASES:
            raise KeyError(f"{key!r}: {alias!r} is not a name qkv knows; (name, layer) keys take "
                           f"{sorted(LENS_ALIASES)}, or use a full name such as 'blocks.{layer}.attn.weights'")
        return f"blocks.{layer}.{LENS_ALIASES[alias]}"

    def keys(self) -> list[str]:
        """Every captured name, in the order the model produced them (as :meth:`names`)."""
        return list(self._values)

    def values(self) -> list[Tensor]:
        """Every captured activation, in the order of :meth:`keys`."""
        return list(self._values.values())

    def items(self) -> list[tuple[str, Tensor]]:
        """(name, activation) pairs, in the order of :meth:`keys`."""
        return list(self._values.items())

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


def _lens_hint(name: object) -> str | None:
    """What to use for a TransformerLens-style name ("blocks.3.attn.hook_pattern", "pattern"), or None."""
    if not isinstance(name, str):
        return None
    parts = name.split(".")
    if len(parts) > 1 and not parts[-1].startswith("hook_"):  # a qkv-style name: no hint
        return None
    last = parts[-1].removeprefix("hook_")
    layer = parts[1] if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None
    if last not in LENS_ALIASES and last not in _LENS_MISSING:
        return None
    if last in _LENS_MISSING:
        return _LENS_MISSING[last].format(i=layer if layer is not None else "i")
    if layer is None:
        return (f"{last!r} is TransformerLens' name for an activation of every block; qkv's is "
                f"'blocks.i.{LENS_ALIASES[last]}': cache[{last!r}, 3] is layer 3's, and "
                f"cache.stack({LENS_ALIASES[last]!r}) stacks every layer")
    return f"use {f'blocks.{layer}.{LENS_ALIASES[last]}'!r}, or cache[{last!r}, {layer}]"


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

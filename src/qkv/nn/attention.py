"""Multi-head attention as a module, on top of :func:`qkv.attention`.

Tokens (B, N, d_model) are projected to queries, keys and values, split into heads
(B, H, N, Dh), attended with the chosen backend and merged back. With hook points on
q, k, v, the scores, the weights and the per-head outputs, a caller can read or
replace each step; while a hook watches the scores or weights the module computes
them explicitly (the reference steps), otherwise it calls the fast backend.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import torch
from torch import Tensor, nn

from qkv.functional import attention
from qkv.functional.api import build_spec, zero_unread_keys
from qkv.functional.linformer import LinformerOptions
from qkv.functional.masks import normalize_window
from qkv.functional.reference import attention_scores, mask_scores, repeat_kv_heads, softmax_weights
from qkv.functional.registry import CallNeeds, available_backends, get_backend
from qkv.nn.hooks import HookPoint
from qkv.nn.rotary import RotaryEmbedding, rotate

__all__ = ["MultiHeadAttention", "KVCache", "SinkCache", "RotaryEmbedding", "LinformerProjection", "ATTENTION_OPTIONS"]

# Keyword arguments of qkv.attention that a module may fix for every call.
ATTENTION_OPTIONS = frozenset(
    name for name, p in inspect.signature(attention).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
) - {"causal", "key_padding_mask", "mask", "backend", "return_lse"}


class KVCache:
    """Keys and values of positions already seen, per layer, for incremental decoding.

    Buffers grow by doubling, so appending one token costs O(1) amortised copies.
    Keys are stored after the rotary rotation, at their positions in the text.
    """

    stores_unrotated_keys = False  # True: the layer rotates keys by their index in the cache (SinkCache)

    def __init__(self) -> None:
        self._keys: dict[int, Tensor] = {}
        self._values: dict[int, Tensor] = {}
        self._lengths: dict[int, int] = {}

    def __len__(self) -> int:
        """Positions cached in every layer: the fewest any layer holds (0 when empty). While
        a forward pass runs, the layers it has reached already hold the new positions too."""
        return min(self._lengths.values(), default=0)

    def nbytes(self) -> int:
        """Bytes of every layer's key and value buffers (what the cache holds in memory)."""
        return sum(t.nbytes for t in (*self._keys.values(), *self._values.values()))

    def length(self, layer: int) -> int:
        """Positions cached for ``layer`` (0 before its first update)."""
        return self._lengths.get(layer, 0)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new keys/values of ``layer`` and return all of them.

        Args:
            layer: index of the attention layer.
            k: (B, Hkv, n_new, Dh) new keys.
            v: (B, Hkv, n_new, Dv) new values.

        Returns:
            keys (B, Hkv, N, Dh) and values (B, Hkv, N, Dv) of every position so far.
        """
        length = self._lengths.get(layer, 0)
        needed = length + k.shape[2]
        if layer not in self._keys or needed > self._keys[layer].shape[2]:
            capacity = max(needed, 2 * (self._keys[layer].shape[2] if layer in self._keys else 16))
            keys = k.new_empty(k.shape[:2] + (capacity, k.shape[3]))
            values = v.new_empty(v.shape[:2] + (capacity, v.shape[3]))
            if layer in self._keys:
                keys[:, :, :length] = self._keys[layer][:, :, :length]
                values[:, :, :length] = self._values[layer][:, :, :length]
            self._keys[layer], self._values[layer] = keys, values
        self._keys[layer][:, :, length:needed] = k
        self._values[layer][:, :, length:needed] = v
        self._lengths[layer] = needed
        return self._keys[layer][:, :, :needed], self._values[layer][:, :, :needed]


class SinkCache(KVCache):
    """A KV cache of constant size: the first ``sinks`` positions and the last ``window`` ones.

    StreamingLLM (Xiao et al., 2023): most heads of a trained decoder park attention on the
    first tokens (attention sinks), so keeping them beside a sliding window lets a model run
    far beyond its training length in constant memory, where a window alone collapses.
    Each new token sees the sinks and the ``window`` most recent tokens, itself included: the
    visibility of ``causal=True, window=(window - 1, 0), global_tokens=range(sinks)``.

    Rotary positions are positions *within the cache*, as the paper does: keys are stored
    before the rotation and rotated by their index in the cache at every call (sinks at
    0 .. sinks - 1, then the window in order), and a new query by its own index. Relative
    offsets inside the window are the text's; a sink is never farther than
    ``sinks + window - 1`` from a query, whatever the length of the text.

    Several new positions in one call (a prompt) are attended together at their indices in
    the cache, with the window and the sinks as the mask; a prompt longer than the cache is
    kept whole until the next call drops what no later token can see.

    Memory: per layer, key and value buffers of ``sinks + window + slack`` positions (more
    while a longer prompt is held), allocated once and kept (:meth:`nbytes` counts them
    whole); a one-token step writes one position and moves the sinks up by one, and every
    ``slack`` steps the held positions are copied back to the buffers' start.

    Hook points ``attn.k`` and ``attn.q`` see the new positions rotated at their cache
    indices; the cache stores the keys as projected (before ``attn.k``).

    Args:
        sinks: first positions kept forever (the paper uses 4).
        window: most recent positions kept, the new token included.
    """

    stores_unrotated_keys = True

    def __init__(self, sinks: int = 4, window: int = 1024) -> None:
        super().__init__()
        for name, value, least in (("sinks", sinks, 0), ("window", window, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"SinkCache {name} must be a whole number >= {least}; got {value!r}")
        self.sinks, self.window = sinks, window
        self._positions: dict[tuple[int, torch.device], Tensor] = {}
        # Per layer, the key and value buffers (_keys, _values) have room past the held positions:
        # the held ones are buffer[:, :, start:start + held], sinks first, so a step writes the new
        # position and moves the sinks up by one instead of copying the window; a buffer is
        # compacted to its start when the room runs out (one copy every `slack` steps).
        self._spans: dict[int, tuple[int, int]] = {}  # layer -> (start, held)
        self.slack = max(16, window // 4)  # steps between two compactions

    def __repr__(self) -> str:
        return f"SinkCache(sinks={self.sinks}, window={self.window})"

    def stored(self, layer: int) -> int:
        """Positions held for ``layer`` now: at most ``sinks + window`` after a one-token step
        (``len(cache)`` counts the positions of the text seen so far)."""
        return self._spans.get(layer, (0, 0))[1]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Drop the positions no new query can see, append the new ones, and return what is held.

        Args:
            layer: index of the attention layer.
            k: (B, Hkv, n_new, Dh) new keys, before the rotary rotation.
            v: (B, Hkv, n_new, Dv) new values.

        Returns:
            keys (B, Hkv, S, Dh) (not rotated) and values (B, Hkv, S, Dv): the sinks, the
            ``window - 1`` positions before the first new one (or fewer), and the new ones.
            They are views of the cache's buffers, valid until its next update of ``layer``.
        """
        n_new = k.shape[2]
        start, held = self._spans.get(layer, (0, 0))
        sinks = min(self.sinks, held)
        drop = max(0, held - sinks - (self.window - 1))  # older than the first new query's window
        kept = held - drop  # the sinks and the window's recent positions
        buffers = (self._keys[layer], self._values[layer]) if layer in self._keys else None
        if buffers is None or start + drop + kept + n_new > buffers[0].shape[2]:
            buffers = self._compacted(layer, buffers, start, sinks, drop, kept, k, v)
            start, drop = 0, 0
        for buffer, new in zip(buffers, (k, v)):
            if drop and sinks:  # the sinks move up to sit just before the window's oldest kept position
                buffer[:, :, start + drop:start + drop + sinks] = buffer[:, :, start:start + sinks].clone()
            buffer[:, :, start + drop + kept:start + drop + kept + n_new] = new
        start, held = start + drop, kept + n_new
        self._spans[layer] = (start, held)
        self._lengths[layer] = self._lengths.get(layer, 0) + n_new  # positions of the text seen so far
        return buffers[0][:, :, start:start + held], buffers[1][:, :, start:start + held]

    def _compacted(self, layer: int, buffers: tuple[Tensor, Tensor] | None, start: int, sinks: int, drop: int,
                   kept: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Buffers for ``layer`` holding the kept positions from index 0, with room for the new ones and
        ``slack`` more steps (reused when they are large enough)."""
        needed = kept + k.shape[2]
        capacity = max(needed, min(self.sinks, needed) + self.window) + self.slack
        if buffers is not None and buffers[0].shape[2] >= capacity:
            fresh = buffers
        else:
            fresh = (k.new_empty(k.shape[:2] + (capacity, k.shape[3])),
                     v.new_empty(v.shape[:2] + (capacity, v.shape[3])))
        if buffers is not None:
            for old, new in zip(buffers, fresh):
                window = old[:, :, start + sinks + drop:start + drop + kept].clone()  # may overlap the target
                new[:, :, :sinks] = old[:, :, start:start + sinks].clone()
                new[:, :, sinks:kept] = window
        self._keys[layer], self._values[layer] = fresh
        return fresh

    def positions(self, held: int, device: torch.device) -> Tensor:
        """Cache indices 0 .. held - 1 as one (held,) tensor per size, reused so that the shared
        rotary module computes cos and sin once for every layer."""
        key = (held, device)
        if key not in self._positions:  # keep only the latest size: every layer of a step asks for it
            self._positions = {key: torch.arange(held, device=device)}
        return self._positions[key]

    def attention_options(self, held: int) -> dict[str, object]:
        """``qkv.attention`` options that give the new queries their visibility among ``held`` keys:
        none while every query sees every earlier key, else the window and the sinks."""
        if held <= self.sinks + self.window:
            return {}
        options: dict[str, object] = {"window": (self.window - 1, 0)}
        if self.sinks:
            options["global_tokens"] = list(range(min(self.sinks, held)))
        return options


class LinformerProjection(nn.Module):
    """Learnable Linformer projections E and F along the sequence (Wang et al., 2020).

    The functional ``"linformer"`` backend uses fixed random projections; the paper
    learns them. This module holds them as parameters for one attention layer, so they
    train with the model (or alone, to distil a pretrained layer).

    Args:
        k: projected length (rows of E and F).
        max_length: the longest key sequence; a shorter one uses the first Nk columns.
        init: "random" (N(0, 1/k) entries, as the functional form) or "mean" (row r
            averages the r-th of k equal segments of max_length: pooling, refined by training).
        seed: seeds the "random" initialisation.
    """

    def __init__(self, k: int, max_length: int, init: str = "random", seed: int = 0) -> None:
        super().__init__()
        if k < 1 or max_length < 1:
            raise ValueError(f"k and max_length must be >= 1; got k={k}, max_length={max_length}")
        if init == "random":
            generator = torch.Generator().manual_seed(seed)
            weight = torch.randn(2, k, max_length, generator=generator) / math.sqrt(k)
        elif init == "mean":
            segment = torch.arange(max_length) * k // max_length  # segment of each position
            weight = (segment[None, :] == torch.arange(k)[:, None]).float()  # (k, max_length)
            weight = (weight / weight.sum(dim=1, keepdim=True).clamp(min=1)).expand(2, -1, -1).clone()
        else:
            raise ValueError(f"init must be 'random' or 'mean'; got {init!r}")
        self.k, self.max_length = k, max_length
        self.weight = nn.Parameter(weight)  # (2, k, max_length): E, then F

    def forward(self, nk: int) -> Tensor:
        """E and F for Nk keys: (2, k, Nk)."""
        if nk > self.max_length:
            raise ValueError(
                f"{nk} keys but these Linformer projections were built for max_length={self.max_length}; "
                f"set the backend again with a larger max_length"
            )
        return self.weight[:, :, :nk]

    def extra_repr(self) -> str:
        return f"k={self.k}, max_length={self.max_length}"


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with MHA, GQA or MQA heads and a choice of backend.

    Args:
        d_model: width of the token vectors.
        num_heads: query heads H.
        num_kv_heads: key/value heads (None: H, multi-head; 1: multi-query; else grouped).
        head_dim: width of a head (None: d_model // H).
        bias: biases on the q/k/v projections.
        out_bias: bias on the output projection.
        fused_qkv: one (d_model, (H + 2 Hkv) Dh) projection instead of three.
        causal: each token attends only to itself and earlier tokens.
        scale: multiplies q k^T (None: 1/sqrt(Dh)).
        backend: the :func:`qkv.attention` backend ("auto" by default). "ring" makes the
            layer sequence-parallel: x holds this rank's slice of the tokens, and
            ``set_backend("ring", group=g)`` names the torch.distributed process group
            (see :mod:`qkv.distributed`).
        rotary: rotary position embedding applied to q and k (None: none); one
            instance may be shared by every layer.
        window: the architecture's own sliding window ``(left, right)`` (Mistral's
            ``sliding_window=W`` is ``(W - 1, 0)``); it stays through ``set_backend``
            unless that passes ``window=`` itself.
        layer_index: this layer's index in a KV cache.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        *,
        bias: bool = True,
        out_bias: bool = True,
        fused_qkv: bool = False,
        causal: bool = False,
        scale: float | None = None,
        backend: str = "auto",
        rotary: RotaryEmbedding | None = None,
        window: int | tuple[int, int] | None = None,
        layer_index: int = 0,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads < 1 or num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads={num_heads} must be a positive multiple of num_kv_heads={num_kv_heads}"
            )
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(
                    f"d_model={d_model} is not divisible by num_heads={num_heads}; pass head_dim"
                )
            head_dim = d_model // num_heads
        self.d_model, self.num_heads, self.num_kv_heads, self.head_dim = (
            d_model, num_heads, num_kv_heads, head_dim
        )
        self.causal, self.scale, self.rotary, self.layer_index = causal, scale, rotary, layer_index
        self.fused_qkv = fused_qkv
        q_width, kv_width = num_heads * head_dim, num_kv_heads * head_dim
        if fused_qkv:
            self.qkv_proj = nn.Linear(d_model, q_width + 2 * kv_width, bias=bias)
        else:
            self.q_proj = nn.Linear(d_model, q_width, bias=bias)
            self.k_proj = nn.Linear(d_model, kv_width, bias=bias)
            self.v_proj = nn.Linear(d_model, kv_width, bias=bias)
        self.out_proj = nn.Linear(q_width, d_model, bias=out_bias)
        self.backend = "auto"
        self.options: dict[str, object] = {}
        self.linformer: LinformerProjection | None = None  # learnable E, F when asked for
        self.own_options = {} if window is None else {"window": window}  # part of the architecture
        self.set_backend(backend)
        if rotary is not None:
            self.hook_q_pre_rotary = HookPoint()  # (B, H, N, Dh) queries before the rotation
            self.hook_k_pre_rotary = HookPoint()  # (B, Hkv, N, Dh) keys before the rotation
        self.hook_q = HookPoint()  # (B, H, N, Dh) queries, after rotary
        self.hook_k = HookPoint()  # (B, Hkv, N, Dh) keys of the new positions
        self.hook_v = HookPoint()  # (B, Hkv, N, Dh) values of the new positions
        self.hook_scores = HookPoint()  # (B, H, Nq, Nk) scaled scores, -inf where hidden
        self.hook_weights = HookPoint()  # (B, H, Nq, Nk) attention weights
        self.hook_z = HookPoint()  # (B, H, Nq, Dh) per-head outputs: weighted averages of values
        self.hook_out = HookPoint()  # (B, Nq, d_model) after the output projection

    def set_backend(self, backend: str, **options: object) -> None:
        """Use ``backend`` (and fixed ``qkv.attention`` options such as ``window``) from now on.

        Keywords that are not ``qkv.attention`` options are fields of the backend's
        options object: ``set_backend("performer", features=128)`` builds
        ``PerformerOptions(features=128)`` once, here; ``set_backend("ring", group=g,
        layout="zigzag")`` builds ``qkv.distributed.RingOptions``. For "linformer",
        ``learnable=True, max_length=L`` (and ``init="random"|"mean"``) adds a
        :class:`LinformerProjection` of trainable E and F to this module.

        Raises:
            ValueError: an unknown backend or option, a malformed window, or a backend
                that cannot honour this layer's causal masking or the window /
                global_tokens asked for (the message names the backends that can); all
                checked now rather than at the first forward.
        """
        record = None if backend == "auto" else get_backend(backend)  # raises listing backends
        options = {**self.own_options, **options}
        self.check_capabilities(backend, options)
        learnable = {name: options.pop(name) for name in ("learnable", "max_length", "init") if name in options}
        if learnable.pop("learnable", False):
            if backend != "linformer" or "max_length" not in learnable:
                raise ValueError(
                    f"learnable=True gives backend='linformer' trainable projections and needs max_length= "
                    f"(the longest key sequence); got backend={backend!r}, {learnable or 'no max_length'}"
                )
            self.linformer = LinformerProjection(
                options.get("k", LinformerOptions.k), learnable["max_length"], learnable.get("init", "random"),
                options.get("seed", 0),
            ).to(self.out_proj.weight.device)
        elif learnable:
            raise ValueError(f"{sorted(learnable)} only go with learnable=True (backend='linformer')")
        call_options = {name: value for name, value in options.items() if name in ATTENTION_OPTIONS}
        backend_fields = {name: value for name, value in options.items() if name not in ATTENTION_OPTIONS}
        if backend_fields:
            options_type = None if record is None else record.options_type
            if options_type is None:
                raise ValueError(
                    f"unknown attention options {sorted(backend_fields)}; backend={backend!r} takes "
                    f"only {sorted(ATTENTION_OPTIONS)}"
                )
            if "options" in call_options:
                raise ValueError(
                    f"pass either options= or its fields {sorted(backend_fields)}, not both"
                )
            fields = set(inspect.signature(options_type).parameters)
            unknown = set(backend_fields) - fields
            if unknown:
                raise ValueError(
                    f"unknown options {sorted(unknown)} for backend={backend!r}; it takes "
                    f"{sorted(ATTENTION_OPTIONS)} and the {options_type.__name__} fields {sorted(fields)}"
                )
            call_options["options"] = options_type(**backend_fields)
        if record is not None:
            record.check_options(call_options.get("options"))
        self.backend, self.options = backend, call_options

    def check_capabilities(self, backend: str, options: dict[str, object]) -> None:
        """Refuse now what every call of this layer would ask and ``backend`` cannot honour.

        The layer's ``causal`` and the fixed ``window``/``global_tokens`` are known before
        any input; padding masks and gradients depend on the call, and so does the device
        (the module may still move), so those are checked per call by :func:`qkv.attention`.
        """
        window = options.get("window")
        normalize_window(window, self.causal)  # raises on a malformed window
        if options.get("global_tokens") is not None and window is None:
            raise ValueError(
                "global_tokens exempt positions from the window, but no window is set (every token "
                "already sees every other); pass window=(left, right) too"
            )
        if backend == "auto":
            return  # "auto" picks, per call, an exact backend that can serve it
        needs = CallNeeds(return_lse=False, grad=False, mask=False, key_padding=False, causal=self.causal,
                          window=window is not None, device=None,  # the module may still move
                          global_tokens=options.get("global_tokens") is not None)
        record = get_backend(backend)
        reason = needs.unmet_by(record)
        if reason is not None:
            able = [name for name in available_backends() if needs.unmet_by(get_backend(name)) is None]
            because = " (this layer is causal, as in a decoder)" if self.causal and not record.supports_causal else ""
            raise ValueError(
                f"backend={backend!r} cannot {reason}{because}; backends that can serve this layer: {able or 'none'}"
            )

    def unavailable_hooks(self) -> dict[HookPoint, str]:
        """The hook points this layer's backend cannot produce, each with the reason."""
        record = None if self.backend == "auto" else get_backend(self.backend)
        if record is not None and record.sequence_parallel:
            reason = (f"backend={self.backend!r} holds only this process's slice of the keys, so the (Nq, Nk) "
                      f"scores and weights do not exist in one place")
            return {self.hook_scores: reason, self.hook_weights: reason}
        if record is not None and record.weights_fn is not None:
            return {self.hook_scores: f"backend={self.backend!r} is approximate and computes no (Nq, Nk) scores "
                                      f"(its mixing matrix of the values is the 'attn.weights' hook point)"}
        return {}

    @property
    def effective_scale(self) -> float | None:
        """What multiplies q·k in this layer's calls: set_attention's ``scale=`` if given, else
        the layer's own ``scale`` (None: 1/sqrt(Dh))."""
        return self.options.get("scale", self.scale)

    def call_options(self, nk: int) -> dict[str, object]:
        """The keyword options for this call: the fixed ones, plus learned Linformer projections."""
        if self.backend != "linformer" or self.linformer is None:
            return self.options
        base = self.options.get("options") or LinformerOptions(k=self.linformer.k)
        return {**self.options, "options": dataclasses.replace(base, projection=self.linformer(nk))}

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, d_model) -> q (B, H, N, Dh), k and v (B, Hkv, N, Dh)."""
        batch, n, _ = x.shape
        if self.fused_qkv:
            widths = [self.num_heads * self.head_dim] + [self.num_kv_heads * self.head_dim] * 2
            q, k, v = self.qkv_proj(x).split(widths, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(batch, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Attend.

        Args:
            x: (B, N, d_model) token vectors.
            key_padding_mask: (B, Nk) bool, True for real tokens, over every key
                including cached ones.
            kv_cache: keys and values of earlier positions; the new ones are appended.
            positions: (B, N) or (N,) positions of x's tokens, for rotary embeddings.

        Returns:
            (B, N, d_model).
        """
        batch, n, _ = x.shape
        q, k, v = self.project(x)
        if kv_cache is not None and kv_cache.stores_unrotated_keys:
            z = self.hook_z(self.attend_within_cache(q, k, v, kv_cache, key_padding_mask))  # (B, H, N, Dh)
            out = self.out_proj(z.transpose(1, 2).reshape(batch, n, self.num_heads * self.head_dim))
            return self.hook_out(out)
        if self.rotary is not None:
            if positions is None:
                # this layer's own count: earlier layers of this pass have already appended
                start = kv_cache.length(self.layer_index) if kv_cache is not None else 0
                positions = torch.arange(start, start + n, device=x.device)
            q, k = self.hook_q_pre_rotary(q), self.hook_k_pre_rotary(k)
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, k, v)
        if self.hook_scores.active or self.hook_weights.active:
            z = self.explicit_attention(q, k, v, key_padding_mask)
        else:
            z = self.attend(q, k, v, key_padding_mask)
        z = self.hook_z(z)  # (B, H, N, Dh)
        out = self.out_proj(z.transpose(1, 2).reshape(batch, n, self.num_heads * self.head_dim))
        return self.hook_out(out)

    def attend_within_cache(
        self, q: Tensor, k: Tensor, v: Tensor, cache: KVCache, key_padding_mask: Tensor | None
    ) -> Tensor:
        """Attend with a cache that rotates keys by their index in it (:class:`SinkCache`).

        Args:
            q: (B, H, n, Dh) new queries, before the rotation.
            k: (B, Hkv, n, Dh) new keys, before the rotation.
            v: (B, Hkv, n, Dh) new values.
            cache: the cache; the new keys and values are stored in it.
            key_padding_mask: must be None (a SinkCache holds no padding).

        Returns:
            (B, H, n, Dh) per-head outputs.
        """
        if key_padding_mask is not None:
            raise ValueError(f"{cache!r} keeps positions by their index in the cache and cannot follow padding; "
                             f"pass sequences without padding (one text, or texts of equal length)")
        if not self.causal:
            raise ValueError(f"{cache!r} keeps only earlier positions, so it serves causal layers only")
        clash = sorted({"window", "global_tokens"} & self.options.keys())
        if clash:
            raise ValueError(f"this layer already has {clash} set ({self.options}); {cache!r} decides the window "
                             f"and the sinks itself: set_attention without them, or use a KVCache")
        n = q.shape[2]
        if self.rotary is not None:
            q, k = self.hook_q_pre_rotary(q), self.hook_k_pre_rotary(k)
        v = self.hook_v(v)
        k, v = cache.update(self.layer_index, k, v)  # (B, Hkv, S, Dh): sinks, recent positions, new ones
        held = k.shape[2]
        if self.rotary is not None:  # positions within the cache
            cos, sin = self.rotary.cos_sin(cache.positions(held, q.device), q.dtype)  # (S, Dh)
            q, k = rotate(q, cos[held - n:], sin[held - n:]), rotate(k, cos, sin)
        q = self.hook_q(q)
        if self.hook_k.active:
            k = torch.cat([k[:, :, :held - n], self.hook_k(k[:, :, held - n:])], dim=2)
        extra = cache.attention_options(held)
        if self.hook_scores.active or self.hook_weights.active:
            return self.explicit_attention(q, k, v, None, extra)
        return self.attend(q, k, v, None, extra)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
               extra: dict[str, object] | None = None) -> Tensor:
        """This layer's attention through :func:`qkv.attention`, its backend and options.

        Args:
            q: (B, H, Nq, Dh) queries.
            k: (B, Hkv, Nk, Dh) keys (cached ones included).
            v: (B, Hkv, Nk, Dh) values.
            key_padding_mask: (B, Nk) bool, True for real tokens, or None.
            extra: options added to the layer's own for this call (a cache's window and sinks).

        Returns:
            (B, H, Nq, Dh) per-head outputs.
        """
        options = self.options if self.linformer is None else self.call_options(k.shape[2])
        if extra:
            options = {**options, **extra}
        if "scale" in options:  # set_attention(scale=...) overrides the layer's own
            return attention(q, k, v, causal=self.causal, key_padding_mask=key_padding_mask, backend=self.backend,
                             **options)
        return attention(q, k, v, causal=self.causal, key_padding_mask=key_padding_mask, backend=self.backend,
                         scale=self.scale, **options)

    def explicit_attention(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
        extra: dict[str, object] | None = None,
    ) -> Tensor:
        """The reference steps, so hooks can see and replace the scores and the weights.

        An approximate backend has no (Nq, Nk) scores; its weights are the mixing matrix
        it applies to the values (its ``weights_fn``), so hooks see what it computes.
        ``extra`` as in :meth:`attend`.
        """
        scale = self.effective_scale
        options = {**self.options, **(extra or {})}
        spec, scale = build_spec(q, k, v, causal=self.causal, window=options.get("window"),
                                 mask=None, key_padding_mask=key_padding_mask, scale=scale,
                                 global_tokens=options.get("global_tokens"))
        for point, reason in self.unavailable_hooks().items():
            if point.active:
                name = point.name or next(n for n, child in self.named_children() if child is point)
                raise ValueError(
                    f"cannot hook {name!r}: {reason}. Remove that hook (leave it out of run_with_cache's "
                    f"names=), or run this layer with backend 'auto' (set_attention/set_backend) to inspect it"
                )
        record = None if self.backend == "auto" else get_backend(self.backend)
        k, v = zero_unread_keys(k, v, spec)
        if record is not None and record.weights_fn is not None:
            options = self.call_options(k.shape[2]).get("options") or record.options_type()
            weights = record.weights_fn(q, k, spec, scale, options)  # (B, H, Nq, Nk)
        else:
            scores = attention_scores(q, repeat_kv_heads(k, self.num_heads), scale)  # (B, H, Nq, Nk)
            scores = self.hook_scores(mask_scores(scores, spec))
            weights, _ = softmax_weights(scores)
        weights = self.hook_weights(weights)  # (B, H, Nq, Nk)
        return torch.matmul(weights, repeat_kv_heads(v, self.num_heads))  # (B, H, Nq, Dh)

    def extra_repr(self) -> str:
        heads = f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}"
        return f"{heads}, causal={self.causal}, backend={self.backend!r}, options={self.options}"

"""The public attention functions: one signature, validated once, many backends.

Layout is (B, H, N, D), as PyTorch SDPA and FlexAttention. ``q`` is (B, Hq, Nq, D),
``k`` is (B, Hkv, Nk, D) and ``v`` is (B, Hkv, Nk, Dv); Hq a multiple of Hkv means
grouped-query attention (Hkv = 1 is multi-query attention).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from qkv.attention.masks import MaskSpec, normalize_window
from qkv.attention.reference import reference_weights
from qkv.attention.registry import CallNeeds, resolve_backend
from qkv.attention.stats import AttentionStats, streaming_stats

__all__ = ["attention", "attention_weights", "attention_stats", "AttentionStats"]

Window = int | tuple[int | None, int | None] | None


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_tensor(name: str, t: object, layout: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}; got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(
            f"{name} must have 4 dimensions {layout}; got shape {_shape(t)}. "
            f"For a single head use {name}.unsqueeze(1); for a single sequence {name}.unsqueeze(0)."
        )
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point; got dtype {t.dtype}. Cast it with .float()")
    return t


def _check_qkv(q: object, k: object, v: object | None) -> None:
    """Validate q, k (and v when given) against the (B, H, N, D) contract."""
    named = {"q": _check_tensor("q", q, "(B, Hq, Nq, D)"), "k": _check_tensor("k", k, "(B, Hkv, Nk, D)")}
    if v is not None:
        named["v"] = _check_tensor("v", v, "(B, Hkv, Nk, Dv)")

    def listing(attr) -> str:
        return ", ".join(f"{n} {attr(t)}" for n, t in named.items())

    if len({t.dtype for t in named.values()}) > 1:
        raise TypeError(
            f"{', '.join(named)} must share one dtype; got {listing(lambda t: t.dtype)}. "
            f"Cast them with .to(q.dtype)."
        )
    if len({t.device for t in named.values()}) > 1:
        raise ValueError(
            f"{', '.join(named)} must be on one device; got {listing(lambda t: t.device)}. "
            f"Move them with .to(q.device)."
        )
    if len({t.shape[0] for t in named.values()}) > 1:
        raise ValueError(
            f"{', '.join(named)} must have the same batch size B (dim 0); got "
            f"{listing(lambda t: t.shape[0])}"
        )
    q, k = named["q"], named["k"]
    if v is not None:
        v = named["v"]
        if k.shape[1] != v.shape[1]:
            raise ValueError(
                f"k and v must have the same number of heads Hkv (dim 1); got k {k.shape[1]}, "
                f"v {v.shape[1]} (shapes {_shape(k)} and {_shape(v)})"
            )
        if k.shape[2] != v.shape[2]:
            raise ValueError(
                f"k and v must have the same length Nk (dim 2); got k {k.shape[2]}, v {v.shape[2]} "
                f"(shapes {_shape(k)} and {_shape(v)})"
            )
    if q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q and k must have the same head dim D (dim 3); got q {q.shape[3]}, k {k.shape[3]} "
            f"(shapes {_shape(q)} and {_shape(k)})"
        )
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"the query heads Hq={q.shape[1]} must be a multiple of the key/value heads "
            f"Hkv={k.shape[1]} (grouped-query attention); got q {_shape(q)}, k {_shape(k)}"
        )


def _check_mask(mask: object, q: Tensor, k: Tensor) -> Tensor | None:
    """Validate ``mask`` and return it as a 4-D tensor broadcastable to (B, Hq, Nq, Nk)."""
    if mask is None:
        return None
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"mask must be a torch.Tensor broadcastable to (B, Hq, Nq, Nk) = {target}; got "
            f"{type(mask).__name__}"
        )
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"mask must be bool (True = may attend) or floating point (added to the scores); got "
            f"dtype {mask.dtype}. Use mask.bool() for a 0/1 mask."
        )
    if mask.device != q.device:
        raise ValueError(f"mask is on {mask.device} but q is on {q.device}; move it with .to(q.device)")
    shape = _shape(mask)
    fits = len(shape) <= 4 and all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))
    if not fits:
        raise ValueError(
            f"mask of shape {shape} is not broadcastable to (B, Hq, Nq, Nk) = {target}; each "
            f"dimension must be 1 or the target size"
        )
    return mask.reshape((1,) * (4 - len(shape)) + shape)


def _check_key_padding(key_padding_mask: object, k: Tensor) -> Tensor | None:
    if key_padding_mask is None:
        return None
    expected = (k.shape[0], k.shape[2])
    if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
        seen = (
            f"dtype {key_padding_mask.dtype}" if isinstance(key_padding_mask, Tensor)
            else type(key_padding_mask).__name__
        )
        raise TypeError(
            f"key_padding_mask must be a bool tensor of shape (B, Nk) = {expected}, True for "
            f"real tokens; got {seen}. From a 0/1 attention mask use attention_mask.bool()."
        )
    if _shape(key_padding_mask) != expected:
        raise ValueError(
            f"key_padding_mask must have shape (B, Nk) = {expected}; got {_shape(key_padding_mask)}"
        )
    if key_padding_mask.device != k.device:
        raise ValueError(
            f"key_padding_mask is on {key_padding_mask.device} but k is on {k.device}; move it "
            f"with .to(k.device)"
        )
    return key_padding_mask


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}")
    return value


def _check_scale(scale: object, head_dim: int) -> float:
    default = f"None (meaning 1/sqrt(D) = {1 / math.sqrt(head_dim):.4g})"
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a number or {default}; got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, or {default}; got {scale!r}")
    return float(scale)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int; got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def _check_focus(focus: object, nk: int, device: torch.device) -> Tensor | None:
    """Validate ``focus`` key positions and return them as a (F,) int64 tensor."""
    if focus is None:
        return None
    if isinstance(focus, Tensor):
        if focus.dtype.is_floating_point or focus.dtype.is_complex or focus.dtype == torch.bool:
            raise TypeError(f"focus must hold integer key positions; got a tensor of dtype {focus.dtype}")
        index = focus.to(device=device, dtype=torch.long).reshape(-1)
    else:
        items = [focus] if isinstance(focus, numbers.Integral) else focus
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in items
        ):
            held = (
                f" holding {sorted({type(i).__name__ for i in items})}"
                if isinstance(items, Sequence) and not isinstance(items, (str, bytes)) else ""
            )
            raise TypeError(
                f"focus must be an int, a sequence of ints or an integer tensor of key positions; "
                f"got {type(focus).__name__} {focus!r}{held}"
            )
        index = torch.tensor([int(i) for i in items], dtype=torch.long, device=device)
    bad = (index < 0) | (index >= nk)
    if bool(bad.any()):
        raise ValueError(f"focus positions must lie in 0 .. Nk-1 = {nk - 1}; got {index[bad].tolist()}")
    return index


def _check_global_tokens(global_tokens: object, window: Window, nk: int) -> tuple[int, ...]:
    """Validate ``global_tokens`` and return them as sorted, distinct key positions."""
    if global_tokens is None:
        return ()
    if window is None:
        raise ValueError(
            "global_tokens exempt positions from the window, but window is None (every token "
            "already sees every other); pass window=(left, right) too"
        )
    if isinstance(global_tokens, Tensor):
        if global_tokens.dtype == torch.bool:
            if global_tokens.dim() != 1 or global_tokens.shape[0] != nk:
                raise ValueError(
                    f"a bool global_tokens must have shape (Nk,) = ({nk},); got "
                    f"{_shape(global_tokens)}"
                )
            positions = global_tokens.nonzero().flatten().tolist()
        elif global_tokens.dtype.is_floating_point or global_tokens.dtype.is_complex:
            raise TypeError(
                f"global_tokens must hold integer key positions or be a (Nk,) bool tensor; got "
                f"dtype {global_tokens.dtype}"
            )
        else:
            positions = global_tokens.reshape(-1).tolist()
    else:
        items = [global_tokens] if isinstance(global_tokens, numbers.Integral) else global_tokens
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in items
        ):
            raise TypeError(
                f"global_tokens must be an int, a sequence of ints, an integer tensor of key "
                f"positions or a (Nk,) bool tensor; got {type(global_tokens).__name__} {global_tokens!r}"
            )
        positions = [int(i) for i in items]
    bad = [p for p in positions if not 0 <= p < nk]
    if bad:
        raise ValueError(f"global_tokens positions must lie in 0 .. Nk-1 = {nk - 1}; got {bad}")
    return tuple(sorted(set(positions)))


def build_spec(
    q: object,
    k: object,
    v: object | None,
    *,
    causal: object,
    window: Window,
    mask: object,
    key_padding_mask: object,
    scale: object,
    global_tokens: object = None,
) -> tuple[MaskSpec, float]:
    """Validate a call's arguments and describe its masking once for every backend.

    Returns the :class:`MaskSpec` and the scale (1/sqrt(D) when ``scale`` is None).
    """
    _check_qkv(q, k, v)
    causal = _check_flag("causal", causal)
    left, right = normalize_window(window, causal)
    spec = MaskSpec(
        nq=q.shape[2],
        nk=k.shape[2],
        left=left,
        right=right,
        mask=_check_mask(mask, q, k),
        key_padding_mask=_check_key_padding(key_padding_mask, k),
        causal=causal,
        global_tokens=_check_global_tokens(global_tokens, window, k.shape[2]),
    )
    return spec, _check_scale(scale, q.shape[3])


def zero_unread_keys(k: Tensor, v: Tensor | None, spec: MaskSpec) -> tuple[Tensor, Tensor | None]:
    """Replace keys and values that no query sees by zeros.

    Their contents must not matter, but 0 * NaN = NaN would carry a NaN in padding
    into visible outputs and gradients. Gradients of the zeroed entries are zero.
    """
    unread = spec.unread_keys(k.device)  # (B|1, Hq|1, Nk)
    if unread is None:
        return k, v
    num_kv_heads = k.shape[1]
    if unread.shape[1] != 1 and unread.shape[1] != num_kv_heads:
        # A key/value head is unread only when all the query heads sharing it skip it.
        unread = unread.unflatten(1, (num_kv_heads, -1)).all(dim=2)
    unread = unread.unsqueeze(-1)  # (B|1, Hkv|1, Nk, 1)
    k = k.masked_fill(unread, 0.0)
    v = None if v is None else v.masked_fill(unread, 0.0)
    return k, v


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    window: Window = None,
    mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    global_tokens: Sequence[int] | Tensor | None = None,
    backend: str = "auto",
    options: object | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Scaled dot-product attention: each query's output is a weighted average of values.

    ``out[b, h, i] = sum_j softmax_j(q[b, h, i] . k[b, h', j] * scale + bias) v[b, h', j]``
    over the keys j that query i may see, with h' = h // (Hq // Hkv).

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys. Hq must be a multiple of Hkv (grouped-query attention;
            Hkv = 1 is multi-query attention).
        v: (B, Hkv, Nk, Dv) values.
        causal: each query sees only keys at or before its own position. Bottom-right
            aligned, as FlashAttention and a KV cache need: the queries are the *last*
            Nq of the Nk positions, query i sits at position i + Nk - Nq. (PyTorch's
            ``is_causal`` is top-left aligned; the two agree only when Nq == Nk.)
        window: ``(left, right)``: the query at position p sees keys p - left .. p + right,
            inclusive; None on a side is unbounded; an int w means (w, w); with causal
            right is 0. Hugging Face / Mistral ``sliding_window=W`` is ``window=(W - 1, 0)``
            with ``causal=True``.
        mask: broadcastable to (B, Hq, Nq, Nk). Bool: True = may attend (as SDPA).
            Float: added to the scores (-inf hides a key).
        key_padding_mask: (B, Nk) bool, True = real token, False = padding.
        scale: multiplies q k^T; None means 1/sqrt(D).
        global_tokens: key positions (ints, an integer tensor, or an (Nk,) bool tensor)
            exempt from ``window``, as Longformer's and BigBird's global attention: a
            global position sees every key and every query sees it, causality still
            applying. Needs ``window``.
        backend: "auto" (the fastest exact backend that supports the call), or one of
            :func:`qkv.available_backends` ("reference", "sdpa", "tiled", "sliding",
            the Triton GPU kernel "triton", the approximate "linear", "performer",
            "nystrom", "linformer", and the sequence-parallel "ring", where q, k, v are
            this process's slice of a sequence split across torch.distributed ranks:
            :mod:`qkv.distributed`).
        options: the backend's options object, e.g. ``PerformerOptions(features=256)``
            for "performer" (see :mod:`qkv.attention.approximate`),
            ``TritonOptions(deterministic=True)`` for "triton" or ``RingOptions(group=g)``
            for "ring"; None: its defaults.
        return_lse: also return the log-sum-exp of each query's scores.

    Returns:
        out (B, Hq, Nq, Dv) in q's dtype; with ``return_lse``, (out, lse) where lse is
        (B, Hq, Nq) float32 (float64 for float64 inputs). A query that sees no key gets
        an output of zeros, an LSE of -inf and zero gradients, never NaN. Keys that no
        query sees (padding) are never read: NaN there does not reach any output.

    Raises:
        TypeError, ValueError: a malformed argument (the message names it and the fix),
            or a backend asked for something it cannot do (the message names the
            backends that can).

    Example:
        >>> q = k = v = torch.randn(1, 8, 128, 64)
        >>> out = qkv.attention(q, k, v, causal=True)  # (1, 8, 128, 64)
    """
    spec, scale = build_spec(
        q, k, v, causal=causal, window=window, mask=mask,
        key_padding_mask=key_padding_mask, scale=scale, global_tokens=global_tokens,
    )
    return_lse = _check_flag("return_lse", return_lse)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string such as 'auto'; got {type(backend).__name__}")
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, spec.float_bias)
    )
    needs = CallNeeds(
        return_lse=return_lse,
        grad=wants_grad,
        mask=spec.mask is not None,
        key_padding=spec.key_padding_mask is not None,
        causal=causal,
        window=window is not None,
        device=q.device.type,
        global_tokens=bool(spec.global_tokens),
    )
    if backend == "auto" and options is not None:
        raise ValueError(
            f"options ({type(options).__name__}) belong to one backend; name it with backend=... "
            f"rather than 'auto'"
        )
    chosen = resolve_backend(backend, needs)
    chosen.check_options(options)
    if (spec.nq == 0 or spec.nk == 0) and not chosen.sequence_parallel:
        return _empty_result(q, k, v, return_lse)
    k, v = zero_unread_keys(k, v, spec)
    return chosen.call(q, k, v, spec, scale, return_lse, options)


class _NothingToAttend(torch.autograd.Function):
    """Attention with zero-length queries or keys: zeros out (B, Hq, Nq, Dv), and zero
    gradients for q, k and v, so that backward works as for any other call."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        ctx.inputs = [(t.shape, t.dtype, t.device) for t in (q, k, v)]
        return q.new_zeros(q.shape[:3] + (v.shape[3],))

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.inputs)


def _empty_result(q: Tensor, k: Tensor, v: Tensor, return_lse: bool) -> Tensor | tuple[Tensor, Tensor]:
    """Zero-length queries or keys: zeros (with zero gradients) and an LSE of -inf."""
    out = _NothingToAttend.apply(q, k, v)
    if not return_lse:
        return out
    lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.promote_types(q.dtype, torch.float32),
                     device=q.device)
    return out, lse


def attention_weights(
    q: Tensor,
    k: Tensor,
    *,
    causal: bool = False,
    window: Window = None,
    mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    global_tokens: Sequence[int] | Tensor | None = None,
) -> Tensor:
    """The attention probabilities, materialised: fine for short sequences.

    Arguments as :func:`attention`, without values. Memory is B * Hq * Nq * Nk
    elements; for long sequences use :func:`attention_stats`.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys.

    Returns:
        (B, Hq, Nq, Nk) weights; each visible row sums to 1, a row with no visible key
        is all zeros.
    """
    spec, scale = build_spec(
        q, k, None, causal=causal, window=window, mask=mask,
        key_padding_mask=key_padding_mask, scale=scale, global_tokens=global_tokens,
    )
    k, _ = zero_unread_keys(k, None, spec)
    weights, _ = reference_weights(q, k, spec, scale)
    return weights


def attention_stats(
    q: Tensor,
    k: Tensor,
    *,
    causal: bool = False,
    window: Window = None,
    mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    global_tokens: Sequence[int] | Tensor | None = None,
    topk: int = 8,
    focus: Sequence[int] | Tensor | None = None,
    block_size: int | tuple[int, int] = (256, 1024),
) -> AttentionStats:
    """Summaries of the attention weights in O((Nq + Nk) * H * topk) memory.

    Exact (same numbers as :func:`attention_weights`, up to rounding) but never holds
    more than one (B, Hq, block_q, block_k) tile of weights, so it can inspect
    attention over tens of thousands of tokens.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys.
        causal, window, mask, key_padding_mask, scale, global_tokens: as :func:`attention`.
        topk: how many most-attended keys to keep per query (capped at Nk).
        focus: key positions (0 .. Nk-1) whose weights to report for every query.
        block_size: tile size, (query rows, keys) or one int for both; the default
            suits a CPU (wide key tiles make top-k cheaper per key).

    Returns:
        :class:`AttentionStats` with ``entropy`` (B, Hq, Nq), ``topk_index`` and
        ``topk_weight`` (B, Hq, Nq, k), ``received`` (B, Hq, Nk), ``focus_weight``
        (B, Hq, Nq, F) or None, and ``lse`` (B, Hq, Nq).
    """
    spec, scale = build_spec(
        q, k, None, causal=causal, window=window, mask=mask,
        key_padding_mask=key_padding_mask, scale=scale, global_tokens=global_tokens,
    )
    topk = _check_positive_int("topk", topk)
    if isinstance(block_size, (tuple, list)) and len(block_size) == 2:
        block_q, block_k = (_check_positive_int("block_size", b) for b in block_size)
    else:
        block_q = block_k = _check_positive_int("block_size", block_size)
    focus_index = _check_focus(focus, spec.nk, q.device)
    k, _ = zero_unread_keys(k, None, spec)
    with torch.no_grad():
        return streaming_stats(q, k, spec, scale, topk, focus_index, block_q, block_k)

"""The public attention functions: one signature, validated once, many backends.

Layout is (B, H, N, D), as PyTorch SDPA and FlexAttention. ``q`` is (B, Hq, Nq, D),
``k`` is (B, Hkv, Nk, D) and ``v`` is (B, Hkv, Nk, Dv); Hq a multiple of Hkv means
grouped-query attention (Hkv = 1 is multi-query attention).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from qkv.functional.costs import CallShape
from qkv.functional.masks import MaskSpec, clamp_window, keep_read, normalize_window
from qkv.functional.reference import reference_weights
from qkv.functional.registry import Backend, CallNeeds, registered, resolve_backend
from qkv.functional.stats import AttentionStats, streaming_stats

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
    if q.shape[3] == 0 or k.shape[3] == 0:
        raise ValueError(
            f"q and k must have a head dim D >= 1 (dim 3); got q {_shape(q)}, k {_shape(k)}. "
            f"A zero-width head has no scores to attend by."
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
    """``scale`` as a float; None means 1/sqrt(D) (``head_dim`` >= 1, checked with the tensors)."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    default = f"None (meaning 1/sqrt(D) = {1 / math.sqrt(head_dim):.4g})"
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
    clamp: bool = True,
) -> tuple[MaskSpec, float]:
    """Validate a call's arguments and describe its masking once for every backend.

    Returns the :class:`MaskSpec` and the scale (1/sqrt(D) when ``scale`` is None). Window
    bounds wider than q and k reach are clamped to them (:func:`clamp_window`) unless
    ``clamp`` is False: ring attention's q and k are one rank's slice of a longer sequence.
    """
    _check_qkv(q, k, v)
    causal = _check_flag("causal", causal)
    left, right = normalize_window(window, causal)
    if clamp:
        left, right = clamp_window(left, right, nq=q.shape[2], nk=k.shape[2])
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
    Which keys are unread comes from shapes and masks, never from reading a tensor on the
    host, so this never waits for a device.
    """
    return _zero_unread(k, v, spec.read_keys(k.device))


def _zero_unread(k: Tensor, v: Tensor | None, read: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Zero the keys and values that ``read`` (bool, broadcastable to (B, Hq, Nk)) leaves False."""
    if read is None:
        return k, v
    num_kv_heads = k.shape[1]
    if read.shape[1] != 1 and read.shape[1] != num_kv_heads:
        # A key/value head is read when any of the query heads sharing it reads it.
        read = read.unflatten(1, (num_kv_heads, -1)).any(dim=2)
    read = read.unsqueeze(-1)  # (B|1, Hkv|1, Nk, 1)
    if v is None:
        return keep_read((k,), read)[0], None
    k, v = keep_read((k, v), read)
    return k, v


# ---- the per-call path: everything that depends only on shapes and options, once per signature ----

PLAN_CACHE_SIZE = 256  # call signatures remembered (a model has a few: one per layer shape and mask kind)
_PLANS: dict[tuple, _Plan] = {}


class _Plan:
    """What :func:`attention` decided for one call signature: the validated structure, the
    backend, and how to run it. Holds no tensor of the caller's."""

    __slots__ = ("backend", "keys", "mask_shape", "read", "runner", "scale", "spec")

    def __init__(self, backend: Backend, spec: MaskSpec, scale: float, runner: Callable | None,
                 read: Tensor | None, mask_shape: tuple[int, ...] | None, keys: str) -> None:
        self.backend = backend  # the registry's record (checked to be current on every call)
        self.spec = spec  # the structure; the call's mask and key padding are put in per call
        self.scale = scale
        self.runner = runner  # run(q, k, v, spec) prepared by the backend, or None: backend.call
        self.read = read  # keys some query reads through the structure, (1, 1, Nk), or None: all
        self.mask_shape = mask_shape  # the 4-D shape a lower-dimensional mask is viewed as
        # What to do with the keys before the backend runs: "all" (every key is read), "structure"
        # (zero those the structure hides, self.read), "padding" (zero the key padding, nothing
        # else hides keys), "masks" (a mask or padding with each call: zero what they hide) or
        # "none" (B, Hq, Nq or Nk is zero: nothing to attend).
        self.keys = keys


def _call_key(q: object, k: object, v: object, causal: object, window: object, mask: object,
              key_padding_mask: object, scale: object, backend: object, return_lse: object,
              options: object) -> tuple | None:
    """Everything the validation and the backend choice read, as a hashable key; None when some
    argument is of a kind the cache does not take (it then goes through the full checks).

    Scalars must have exactly their documented types (True == 1 in a key, but causal=1 is an
    error), and tensors must be plain ``torch.Tensor``s.
    """
    if type(q) is not Tensor or type(k) is not Tensor or type(v) is not Tensor:
        return None
    if type(causal) is not bool or type(return_lse) is not bool or type(backend) is not str:
        return None
    if not (scale is None or type(scale) is float or type(scale) is int):
        return None
    if not (window is None or type(window) is int or (
            type(window) is tuple and len(window) == 2 and all(w is None or type(w) is int for w in window))):
        return None
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    mask_key = kpm_key = None
    if mask is not None:
        if type(mask) is not Tensor:
            return None
        mask_key = (mask.shape, mask.dtype, mask.device)
        grad = grad or (torch.is_grad_enabled() and mask.requires_grad)
    if key_padding_mask is not None:
        if type(key_padding_mask) is not Tensor:
            return None
        kpm_key = (key_padding_mask.shape, key_padding_mask.dtype, key_padding_mask.device)
    return (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, causal, window,
            scale, backend, return_lse, type(options), grad, mask_key, kpm_key)


def call_shape(q: Tensor, k: Tensor, v: Tensor) -> CallShape:
    """The sizes the cost model reads, from validated q (B, Hq, Nq, D), k, v (B, Hkv, Nk, Dv)."""
    return CallShape(batch=q.shape[0], q_heads=q.shape[1], kv_heads=k.shape[1], nq=q.shape[2], nk=k.shape[2],
                     head_dim=q.shape[3], value_dim=v.shape[3], device=q.device.type)


def _call_needs(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, causal: bool, window: Window,
                return_lse: bool) -> CallNeeds:
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, spec.float_bias)
    )
    return CallNeeds(
        return_lse=return_lse,
        grad=wants_grad,
        mask=spec.mask is not None,
        key_padding=spec.key_padding_mask is not None,
        causal=causal,
        window=window is not None,
        device=q.device.type,
        global_tokens=bool(spec.global_tokens),
    )


def _validated_call(q, k, v, causal, window, mask, key_padding_mask, scale, global_tokens, backend, options,
                    return_lse) -> tuple[MaskSpec, float, CallNeeds, Backend]:
    """Every check of :func:`attention`'s arguments; the spec (with the call's tensors), the scale,
    the call's needs and the backend that serves it."""
    spec, scale = build_spec(
        q, k, v, causal=causal, window=window, mask=mask,
        key_padding_mask=key_padding_mask, scale=scale, global_tokens=global_tokens,
        clamp=backend != "ring",  # a rank's slice is not the whole sequence
    )
    return_lse = _check_flag("return_lse", return_lse)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string such as 'auto'; got {type(backend).__name__}")
    needs = _call_needs(q, k, v, spec, causal, window, return_lse)
    if backend == "auto" and options is not None:
        raise ValueError(
            f"options ({type(options).__name__}) belong to one backend; name it with backend=... "
            f"rather than 'auto'"
        )
    chosen = resolve_backend(backend, needs, spec, call_shape(q, k, v))
    chosen.check_options(options)
    return spec, scale, needs, chosen


def _make_plan(q, k, v, causal, window, mask, key_padding_mask, scale, global_tokens, backend, options,
               return_lse) -> _Plan:
    spec, scale, _needs, chosen = _validated_call(q, k, v, causal, window, mask, key_padding_mask, scale,
                                                  global_tokens, backend, options, return_lse)
    # Nothing to attend: no queries, no keys, no batch or no query heads (kernels may divide by these).
    empty = (0 in (spec.nq, spec.nk, q.shape[0], q.shape[1])) and not chosen.sequence_parallel
    runner = None
    if chosen.runner is not None and not return_lse and not empty:
        runner = chosen.runner(spec, scale, call_shape(q, k, v), q.dtype)
    structure = spec.with_tensors(None, None)
    read = structure.read_keys(q.device)
    mask_shape = None if mask is None or mask.dim() == 4 else spec.mask.shape
    if empty:
        keys = "none"
    elif spec.mask is None and spec.key_padding_mask is not None and read is None:
        keys = "padding"
    elif spec.mask is not None or spec.key_padding_mask is not None:
        keys = "masks"
    else:
        keys = "all" if read is None else "structure"
    return _Plan(chosen, structure, scale, runner, read, mask_shape, keys)


def _remember(key: tuple, plan: _Plan) -> None:
    if len(_PLANS) >= PLAN_CACHE_SIZE:
        del _PLANS[next(iter(_PLANS))]  # the oldest signature
    _PLANS[key] = plan


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
        backend: "auto" (the exact backend estimated fastest for this call, see
            :func:`qkv.explain_dispatch`), or one of
            :func:`qkv.available_backends` ("reference", "sdpa", "tiled", "sliding",
            the Triton GPU kernel "triton", the approximate "linear", "performer",
            "nystrom", "linformer", and the sequence-parallel "ring", where q, k, v are
            this process's slice of a sequence split across torch.distributed ranks:
            :mod:`qkv.distributed`).
        options: the backend's options object, e.g. ``PerformerOptions(features=256)``
            for "performer" (see :mod:`qkv.functional.approximate`),
            ``TritonOptions(block_m=128, block_n=64)`` for "triton" or ``RingOptions(group=g)``
            for "ring"; None: its defaults.
        return_lse: also return the log-sum-exp of each query's scores.

    Returns:
        out (B, Hq, Nq, Dv) in q's dtype; with ``return_lse``, (out, lse) where lse is
        (B, Hq, Nq) float32 (float64 for float64 inputs). A query that sees no key gets
        an output of zeros, an LSE of -inf and zero gradients, never NaN, even when its
        query holds NaN. Keys that no query sees (padding) are never read: NaN there does
        not reach any output. B, Hq, Nq, Nk or Dv may be 0 (an empty result; zeros when
        only Nk is 0). A window wider than the sequence costs what the sequence allows.

    Raises:
        TypeError, ValueError: a malformed argument (the message names it and the fix),
            e.g. a head dim D of 0 (ValueError), or a backend asked for something it
            cannot do (the message names the backends that can).

    The checks that depend only on shapes, dtypes, devices and options, and the choice of
    backend, run once per call signature and are remembered (the last
    ``PLAN_CACHE_SIZE`` signatures); a call never reads a tensor's values on the host.

    Example:
        >>> q = k = v = torch.randn(1, 8, 128, 64)
        >>> out = qkv.attention(q, k, v, causal=True)  # (1, 8, 128, 64)
    """
    if (mask is None and window is None and global_tokens is None and type(q) is Tensor and type(k) is Tensor
            and type(v) is Tensor and type(causal) is bool and type(return_lse) is bool
            and (scale is None or type(scale) is float) and type(backend) is str):
        # the commonest calls (a model's layers), keyed inline as _call_key would key them
        kpm_key = (None if key_padding_mask is None else
                   (key_padding_mask.shape, key_padding_mask.dtype, key_padding_mask.device)
                   if type(key_padding_mask) is Tensor else False)  # False: not a tensor, the full checks say so
        key = None if kpm_key is False else (
            q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, causal, None, scale,
            backend, return_lse, type(options),
            torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad), None, kpm_key)
    elif global_tokens is None:
        key = _call_key(q, k, v, causal, window, mask, key_padding_mask, scale, backend, return_lse, options)
    else:
        key = None
    plan = None if key is None else _PLANS.get(key)
    if plan is None or registered(plan.backend.name) is not plan.backend:
        plan = _make_plan(q, k, v, causal, window, mask, key_padding_mask, scale, global_tokens, backend,
                          options, return_lse)
        if key is not None:
            _remember(key, plan)
    keys = plan.keys
    if keys == "all" and plan.runner is not None:
        return plan.runner(q, k, v, plan.spec)
    spec = plan.spec
    if keys == "padding":
        spec = spec.with_tensors(None, key_padding_mask)
        read_shape = (key_padding_mask.shape[0], 1, spec.nk, 1)  # (B, 1, Nk, 1)
        read = (key_padding_mask.view(read_shape) if key_padding_mask.is_contiguous()
                else key_padding_mask.reshape(read_shape))
        k, v = keep_read((k, v), read)
    elif keys == "masks":
        if plan.mask_shape is not None:
            mask = mask.view(plan.mask_shape) if mask.is_contiguous() else mask.reshape(plan.mask_shape)
        spec = spec.with_tensors(mask, key_padding_mask)
        k, v = _zero_unread(k, v, spec.read_keys(k.device))
    elif keys == "structure":
        k, v = _zero_unread(k, v, plan.read)
    elif keys == "none":
        return _empty_result(q, k, v, return_lse)
    if plan.runner is not None:
        return plan.runner(q, k, v, spec)
    return plan.backend.call(q, k, v, spec, plan.scale, return_lse, options)


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

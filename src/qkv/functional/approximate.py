"""What the approximate backends share: their contract, checks and pieces.

Exact attention costs O(Nq * Nk) time and memory for the score matrix. The approximate
methods trade exactness for cost that grows linearly in the sequence length, one file each:
:mod:`~qkv.functional.linear` (Katharopoulos et al., 2020), :mod:`~qkv.functional.performer`
(FAVOR+, Choromanski et al., 2021), :mod:`~qkv.functional.nystrom` (Xiong et al., 2021) and
:mod:`~qkv.functional.linformer` (Wang et al., 2020). Each runs through the one signature,
``qkv.attention(q, k, v, ..., backend=name, options=...)``, and is judged by its error
against exact attention, which falls as its budget (feature count, landmarks, projected
length) grows (tests/functional/test_approximate.py; measured in BENCHMARKS.md).

All four take the usual layout (q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv)),
grouped-query attention without copying keys and values (queries are viewed as
(B, Hkv, G, Nq, D), G = Hq // Hkv), ``scale`` as in softmax attention, and
``key_padding_mask``: padded keys and values never reach a real output (their features,
landmark weights or projection columns are zeroed, not merely their contents), and a
query that sees no real key returns zeros. None of them honours ``mask=``, ``window=`` or
``global_tokens=``, nor returns the log-sum-exp (there is no softmax normaliser to
return): :func:`qkv.attention` refuses such calls and names the backends that can serve
them. float16/bfloat16 inputs are computed in float32 and rounded once at the end.

Causal linear and Performer attention use chunked prefix sums: the key positions are cut
into chunks of C; queries whose positions fall in a chunk get the running state of the
earlier chunks (a (m, Dv) matrix) plus a masked (C, C) product inside the chunk, so no
(N, N) matrix exists and autograd keeps O(N m Dv / C + C^2) per head. Causal is
bottom-right aligned, as everywhere in qkv: query i sits at position i + Nk - Nq.

Each backend also has a ``*_weights(q, k, spec, scale, options)`` function returning the
(B, Hq, Nq, Nk) matrix it effectively applies to the values (``weights @ v`` equals the
output): normalised phi(q) phi(k)^T for linear and Performer, F pinv(A) B for Nystrom,
softmax(Q K'^T) F for Linformer. It materialises Nq * Nk entries: for small N only
(hooks on ``attn.weights`` use it).

Example:
    >>> import torch, qkv
    >>> q, k, v = torch.randn(3, 1, 4, 512, 32).unbind(0)  # (B, H, N, D)
    >>> q, k = q / 2, k / 2  # FAVOR+ wants modest scale * |q| |k|: its variance grows like exp(|x + y|^2)
    >>> exact = qkv.attention(q, k, v)
    >>> def error(out):
    ...     return ((out - exact).norm() / exact.norm()).item()
    >>> few, many = (qkv.attention(q, k, v, backend="performer", options=qkv.PerformerOptions(features=m))
    ...              for m in (16, 256))
    >>> error(many) < error(few)
    True
    >>> qkv.attention(q, k, v, backend="nystrom", options=qkv.NystromOptions(landmarks=32)).shape
    torch.Size([1, 4, 512, 32])
    >>> qkv.attention(q, k, v, causal=True, backend="linear").shape  # chunked prefix sums
    torch.Size([1, 4, 512, 32])
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from qkv.functional.masks import MaskSpec
from qkv.functional.tiled import compute_dtype

__all__ = ["NEG_INF", "blind_queries_zeroed", "causal_prefix_mix", "causal_visible", "check_call", "check_eps",
           "check_positive_int", "check_seed", "drop_padding", "grouped", "kernel_attention", "kernel_weights",
           "real_keys", "safe_softmax", "split_scale", "ungroup"]

NEG_INF = float("-inf")


# ---- checks of the methods' options ------------------------------------------------------
def check_positive_int(owner: str, name: str, value: object, meaning: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}.{name} must be an int >= {minimum} ({meaning}); got {type(value).__name__} "
                        f"{value!r}")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum} ({meaning}); got {value!r}")


def check_seed(owner: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}.seed must be an int (it seeds a torch.Generator); got {type(value).__name__} "
                        f"{value!r}")


def check_eps(owner: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}.eps must be a finite number > 0 (added to the normaliser, so that a small "
                         f"one cannot blow up the output); got {value!r}")










# ---- shared pieces --------------------------------------------------------------------
def check_call(name: str, spec: MaskSpec, return_lse: bool, causal_ok: bool) -> None:
    """Refuse what an approximate backend cannot honour (qkv.attention refuses it earlier)."""
    unsupported = []
    if return_lse:
        unsupported.append("return_lse=True")
    if spec.mask is not None:
        unsupported.append("mask=")
    if spec.left is not None or (spec.right is not None and not (spec.causal and spec.right == 0)):
        unsupported.append("window=")
    if spec.global_tokens:
        unsupported.append("global_tokens=")
    if spec.causal and not causal_ok:
        unsupported.append("causal=True")
    if unsupported:
        raise ValueError(f"backend={name!r} cannot honour {', '.join(unsupported)}; call it through "
                         f"qkv.attention, which names the backends that can")


def grouped(q: Tensor, k: Tensor, v: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """(B, Hq, Nq, D), (B, Hkv, Nk, D), (B, Hkv, Nk, Dv) to (B, Hkv, G, Nq, D), (B, Hkv, 1, Nk, D),
    (B, Hkv, 1, Nk, Dv) in the compute dtype (views, no copies for float32/float64)."""
    dtype = compute_dtype(q.dtype)
    q5 = q.to(dtype).unflatten(1, (k.shape[1], -1))
    return q5, k.to(dtype).unsqueeze(2), None if v is None else v.to(dtype).unsqueeze(2)


def real_keys(spec: MaskSpec) -> Tensor | None:
    """(B, 1, 1, Nk, 1) bool, True for real keys; None without padding."""
    kpm = spec.key_padding_mask
    return None if kpm is None else kpm[:, None, None, :, None]


def drop_padding(x: Tensor, real: Tensor | None) -> Tensor:
    """Zero padded rows of a (B, Hkv, 1, Nk, *) tensor (masked_fill, so NaN there cannot leak)."""
    return x if real is None else x.masked_fill(~real, 0.0)


def blind_queries_zeroed(q: Tensor, spec: MaskSpec) -> Tensor:
    """``q`` (B, Hq, Nq, D) with zeros in the rows that see no key: every key padded, or (causal)
    no real key at or before the query's position. Their output is zero whatever the query holds,
    and so is their gradient, which a NaN query would otherwise turn into NaN (0 * NaN) through
    the feature map."""
    padding = spec.key_padding_mask  # (B, Nk), True = real
    if spec.causal:
        positions = torch.arange(spec.nq, device=q.device) + spec.offset  # (Nq,)
        before_key_0 = positions < 0
        if padding is None:
            blind = before_key_0[:, None]  # (Nq, 1)
        else:
            real_so_far = padding.cumsum(dim=-1) > 0  # (B, Nk): a real key at or before each position
            blind = (~real_so_far[:, positions.clamp(min=0)] | before_key_0)[:, None, :, None]  # (B, 1, Nq, 1)
    elif padding is not None:
        blind = ~padding.any(dim=-1)[:, None, None, None]  # (B, 1, 1, 1)
    else:
        return q
    return q.masked_fill(blind, 0.0)


def split_scale(scale: float) -> tuple[float, float]:
    """(a, b) with a * b = scale and |a| = |b|: q * a and k * b carry the scale evenly."""
    root = math.sqrt(abs(scale))
    return root, math.copysign(root, scale)


def causal_visible(nq: int, nk: int, q_range: tuple[int, int], k_range: tuple[int, int],
                    device: torch.device) -> Tensor:
    """(bq, bk) bool: query i (position i + nk - nq) sees key j when j <= its position."""
    positions = torch.arange(*q_range, device=device) + (nk - nq)
    keys = torch.arange(*k_range, device=device)
    return keys[None, :] <= positions[:, None]


def safe_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last dim; a row that is all -inf gives zeros, not NaN."""
    # The row maximum is -inf only for such rows: one small reduction instead of a full compare.
    empty = scores.detach().amax(dim=-1, keepdim=True) == NEG_INF  # (..., 1)
    if not bool(empty.any()):
        return torch.softmax(scores, dim=-1)
    return torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)


def ungroup(out5: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, Hkv, G, Nq, X) -> (B, Hq, Nq, X) in ``dtype``."""
    return out5.flatten(1, 2).to(dtype)


# ---- kernelised attention (linear, Performer) -------------------------------------------
def causal_prefix_mix(phi_q: Tensor, phi_k: Tensor, values: Tensor, chunk: int) -> Tensor:
    """sum_{j <= p_i} (phi_q_i . phi_k_j) values_j for every query, in chunks.

    Query i sits at position p_i = i + Nk - Nq (bottom-right). Key positions are cut into
    chunks [s, s + C); the queries at positions in a chunk read the state
    S = sum_{j < s} phi_k_j values_j^T of the earlier chunks plus a masked (C, C) product
    inside the chunk. Queries at positions < 0 (Nq > Nk) see nothing and get zeros.

    Args:
        phi_q: (B, Hkv, G, Nq, M) query features.
        phi_k: (B, Hkv, 1, Nk, M) key features.
        values: (B, Hkv, 1, Nk, Dv) what is mixed (the values with a column of ones appended
            gives the normaliser in the last column).
        chunk: C, key positions per chunk.

    Returns:
        (B, Hkv, G, Nq, Dv).
    """
    nq, nk = phi_q.shape[-2], phi_k.shape[-2]
    offset = nk - nq
    state = phi_k.new_zeros(phi_k.shape[:-2] + (phi_k.shape[-1], values.shape[-1]))  # (B, Hkv, 1, M, Dv)
    parts = []
    blind = min(max(-offset, 0), nq)  # queries before key 0
    if blind:
        parts.append(phi_q.new_zeros(phi_q.shape[:-2] + (blind, values.shape[-1])))
    for start in range(0, nk, chunk):
        end = min(start + chunk, nk)
        k_c, v_c = phi_k[..., start:end, :], values[..., start:end, :]  # (B, Hkv, 1, c, M), (.., c, Dv)
        q_start, q_end = max(start - offset, 0), end - offset
        if q_end > q_start:
            q_c = phi_q[..., q_start:q_end, :]  # (B, Hkv, G, cq, M)
            inner = torch.matmul(q_c, k_c.transpose(-2, -1))  # (B, Hkv, G, cq, c)
            visible = causal_visible(nq, nk, (q_start, q_end), (start, end), inner.device)
            inner = inner.masked_fill(~visible, 0.0)
            parts.append(torch.matmul(q_c, state) + torch.matmul(inner, v_c))  # (B, Hkv, G, cq, Dv)
        state = state + torch.matmul(k_c.transpose(-2, -1), v_c)  # (B, Hkv, 1, M, Dv)
    if not parts:  # no queries
        return phi_q.new_zeros(phi_q.shape[:-1] + (values.shape[-1],))
    return torch.cat(parts, dim=-2)


def normalise(num: Tensor, den: Tensor, eps: Tensor | float) -> Tensor:
    """num / (den + eps); a row with no visible key (num = den = 0) gives zeros, never 0/0."""
    den = den + eps
    return num / den.masked_fill(den == 0, 1.0)


def kernel_attention(phi_q: Tensor, phi_k: Tensor, v5: Tensor, causal: bool, chunk: int, eps: Tensor | float
                      ) -> Tensor:
    """out_i = sum_j K_ij v_j / (sum_j K_ij + eps) with K_ij = phi_q_i . phi_k_j (masked when causal).

    phi_q (B, Hkv, G, Nq, M), phi_k (B, Hkv, 1, Nk, M) (zero for padded keys),
    v5 (B, Hkv, 1, Nk, Dv), eps a number or broadcastable to (B, Hkv, G, Nq, 1).
    Returns (B, Hkv, G, Nq, Dv).
    """
    ones = v5.new_ones(v5.shape[:-1] + (1,))
    v_ext = torch.cat([v5, ones], dim=-1)  # (B, Hkv, 1, Nk, Dv + 1): the last column sums the kernel
    if causal:
        mixed = causal_prefix_mix(phi_q, phi_k, v_ext, chunk)  # (B, Hkv, G, Nq, Dv + 1)
    else:
        state = torch.matmul(phi_k.transpose(-2, -1), v_ext)  # (B, Hkv, 1, M, Dv + 1)
        mixed = torch.matmul(phi_q, state)  # (B, Hkv, G, Nq, Dv + 1)
    return normalise(mixed[..., :-1], mixed[..., -1:], eps)


def kernel_weights(phi_q: Tensor, phi_k: Tensor, causal: bool, eps: Tensor | float) -> Tensor:
    """The normalised kernel matrix (B, Hkv, G, Nq, Nk) that :func:`kernel_attention` applies."""
    kernel = torch.matmul(phi_q, phi_k.transpose(-2, -1))  # (B, Hkv, G, Nq, Nk)
    if causal:
        nq, nk = kernel.shape[-2:]
        kernel = kernel.masked_fill(~causal_visible(nq, nk, (0, nq), (0, nk), kernel.device), 0.0)
    return normalise(kernel, kernel.sum(dim=-1, keepdim=True), eps)

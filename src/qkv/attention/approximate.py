"""Approximate attention: linear, Performer (FAVOR+), Nystrom here, and Linformer in :mod:`qkv.attention.linformer`.

Exact attention costs O(Nq * Nk) time and memory for the score matrix. The four methods
here trade exactness for cost that grows linearly in the sequence length. Each runs
through the one signature, ``qkv.attention(q, k, v, ..., backend=name, options=...)``,
and is judged by its measured error against exact attention, which falls as its budget
(feature count, landmarks, projected length) grows; see tests/attention/test_approximate.py.

All four take the usual layout (q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv)),
grouped-query attention without copying keys and values (queries are viewed as
(B, Hkv, G, Nq, D), G = Hq // Hkv), ``scale`` as in softmax attention, and
``key_padding_mask``: padded keys and values never reach a real output (their features,
landmark weights or projection columns are zeroed, not merely their contents), and a
query that sees no real key returns zeros. None of them honours ``mask=``, ``window=`` or
``global_tokens=``, nor returns the log-sum-exp (there is no softmax normaliser to
return): :func:`qkv.attention` refuses such calls and names the backends that can serve
them. float16/bfloat16 inputs are computed in float32 and rounded once at the end.

Methods (N = Nq ~ Nk, D = head dim, Dv = value dim):

``"linear"``: linear attention, Katharopoulos et al., "Transformers are RNNs" (ICML 2020).
    The softmax kernel exp(q.k) is replaced by phi(q).phi(k) with phi(x) = elu(x) + 1,
    applied to ``sqrt(scale) * q`` and ``sqrt(scale) * k`` (the scale is split evenly so
    it acts as a temperature on both sides; the paper uses no scale). It is a different
    kernel, not an estimate of softmax, so its error does not shrink with any budget.
    out_i = phi(q_i) S / phi(q_i) z with S = sum_j phi(k_j) v_j^T and z = sum_j phi(k_j).
    Cost O(N D Dv) time, O(D Dv) state. Causal: chunked prefix sums (see below).
    Options :class:`LinearOptions`.

``"performer"``: FAVOR+, Choromanski et al., "Rethinking Attention with Performers"
    (ICLR 2021). Positive orthogonal random features
    phi(x) = exp(w_r . x - |x|^2 / 2) / sqrt(m), r = 1..m, give an unbiased estimate
    phi(x).phi(y) of exp(x . y); with x = sqrt(scale) q and y = sqrt(scale) k it
    estimates the softmax kernel exp(scale q . k). The rows w_r are blocks of Gaussian
    matrices orthogonalised by QR, each row's norm redrawn from chi(D) (the paper's
    construction), from a ``torch.Generator`` seeded with ``seed``: the same matrix for
    every call with the same (features, D, seed). Before exp, a per-query-row maximum is
    subtracted from the query exponents and one maximum over all keys and features from
    the key exponents (as the official implementation); both cancel in the ratio (in
    causal mode too, although the key maximum spans later keys), and ``eps`` is rescaled
    with them, so it is added to the normaliser in the units of exp(scale q . k). The
    estimator's variance falls like 1/m but grows like exp(|x + y|^2): where
    scale |q| |k| is large (standard normal q, k with D >= 16; pretrained models such as
    MiniLM) many features are needed, and the error falls slowly with m (measured in the
    tests). Cost O(N m (D + Dv)). Causal: chunked prefix sums.
    Options :class:`PerformerOptions`.

``"nystrom"``: Nystromformer, Xiong et al., "A Nystrom-Based Algorithm for Approximating
    Self-Attention" (AAAI 2021). Landmarks Q~ and K~ are segment means of the scaled
    queries and of the keys; out = F pinv(A) (B V) with F = softmax(Q K~^T),
    A = softmax(Q~ K~^T), B = softmax(Q~ K^T), and pinv(A) by the paper's iteration
    Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4 from Z0 = A^T / (||A||_1 ||A||_inf)
    (the max column sum times the max row sum, per matrix). Lengths that are not a
    multiple of the landmark count are split into segments whose sizes differ by at
    most one (position j belongs to segment floor(j m / N)), rather than padded. Key
    segment means are taken over real keys only; a segment with no real key is no
    landmark (masked out of F and A). With landmarks >= Nk every key is its own landmark,
    F = softmax(Q K^T) and F pinv(A) B = F: F is then applied as it is, which is exact
    attention for every head dim (no pseudo-inverse is formed). ``pinv_iterations=0``
    asks for the exact pseudo-inverse (``torch.linalg.pinv``, an SVD; NaN rather than an
    error for a matrix holding NaN); with fewer landmarks than keys that is not
    an improvement: A is often nearly singular, the truncated iteration acts as a
    regulariser, and on MiniLM the exact pinv (or 12+ iterations) gives larger errors
    than the paper's 6. Query landmarks use every query row (the call has no query
    padding), so with fewer landmarks than keys a NaN in a query or a real key reaches every
    output row of its batch entry and head group through the landmarks; a row with no real
    key is still zero. Cost O(N m (D + Dv) + m^3). Non-causal only.
    Options :class:`NystromOptions`.

``"linformer"``: Wang et al., "Linformer: Self-Attention with Linear Complexity" (2020).
    Keys and values are projected along the sequence to k rows, K' = E K and
    V' = F V with E, F of shape (k, Nk); out = softmax(scale Q K'^T) V'. Here E and F
    are fixed random Gaussian matrices with entries N(0, 1/k) from a generator seeded
    with ``seed``, drawn once per (k, Nk, seed) and cached (the paper learns them; so does
    :class:`qkv.nn.LinformerProjection`), or the caller's ``projection``. Padded keys'
    columns of E and F are zeroed (no renormalisation: random rows have random signs,
    so there is no natural total to restore); a projected row that reads no real key
    through either E or F is masked out of the softmax, so identity projections with
    k = Nk give exact masked attention. Cost O(N k (D + Dv)). Non-causal only. Fixed
    random projections do not approximate a given attention closely (the paper trains
    E and F; random ones mix unrelated keys): the measured error falls with k but stays
    above 1 on MiniLM and on random inputs for k < N. Pass learned or structured
    projections (e.g. segment means) through ``projection`` for a usable approximation.
    Options :class:`LinformerOptions`.

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

import functools
import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.attention.masks import MaskSpec

__all__ = [
    "LinearOptions",
    "PerformerOptions",
    "NystromOptions",
    "LinformerOptions",
    "linear_attention",
    "performer_attention",
    "nystrom_attention",
    "linear_weights",
    "performer_weights",
    "nystrom_weights",
    "orthogonal_random_features",
    "iterative_pinv",
    "causal_prefix_mix",
]

NEG_INF = float("-inf")


# ---- options --------------------------------------------------------------------------
def _positive_int(owner: str, name: str, value: object, meaning: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}.{name} must be an int >= {minimum} ({meaning}); got {type(value).__name__} "
                        f"{value!r}")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum} ({meaning}); got {value!r}")


def _seed(owner: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}.seed must be an int (it seeds a torch.Generator); got {type(value).__name__} "
                        f"{value!r}")


def _eps(owner: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}.eps must be a finite number > 0 (added to the normaliser, so that a small "
                         f"one cannot blow up the output); got {value!r}")


@dataclass(frozen=True)
class LinearOptions:
    """Options of the ``"linear"`` backend (Katharopoulos et al., 2020)."""

    chunk: int = 256  # causal only: key positions per chunk of the prefix sums (memory ~ chunk^2)
    eps: float = 1e-6  # added to the normaliser phi(q) . sum_j phi(k_j), as in the paper's code

    def __post_init__(self) -> None:
        _positive_int("LinearOptions", "chunk", self.chunk, "positions per causal chunk")
        _eps("LinearOptions", self.eps)


@dataclass(frozen=True)
class PerformerOptions:
    """Options of the ``"performer"`` backend (FAVOR+, Choromanski et al., 2021)."""

    features: int = 256  # m, the number of random features; variance ~ 1/m, cost ~ m
    seed: int = 0  # seeds the torch.Generator that draws the random matrix (same seed: same matrix)
    chunk: int = 256  # causal only: key positions per chunk of the prefix sums
    eps: float = 1e-6  # added to the normaliser, in the units of the kernel exp(scale q . k)

    def __post_init__(self) -> None:
        _positive_int("PerformerOptions", "features", self.features, "the number of random features m")
        _seed("PerformerOptions", self.seed)
        _positive_int("PerformerOptions", "chunk", self.chunk, "positions per causal chunk")
        _eps("PerformerOptions", self.eps)


@dataclass(frozen=True)
class NystromOptions:
    """Options of the ``"nystrom"`` backend (Nystromformer, Xiong et al., 2021)."""

    landmarks: int = 64  # m, segment means of queries and keys; >= Nk makes the result exact
    pinv_iterations: int = 6  # iterations of the Moore-Penrose approximation; 0: exact torch.linalg.pinv

    def __post_init__(self) -> None:
        _positive_int("NystromOptions", "landmarks", self.landmarks, "the number of landmarks m")
        _positive_int("NystromOptions", "pinv_iterations", self.pinv_iterations,
                      "iterations of the pseudo-inverse; 0 means exact torch.linalg.pinv", minimum=0)


@dataclass(frozen=True, eq=False)  # eq=False: it may hold a tensor, so options compare by identity
class LinformerOptions:
    """Options of the ``"linformer"`` backend (Wang et al., 2020)."""

    k: int = 256  # projected length: keys and values are reduced to k rows
    seed: int = 0  # seeds the random N(0, 1/k) projections when ``projection`` is None
    # None: random projections. A (k, Nk) tensor: E = F = projection. A (2, k, Nk) tensor: E, F.
    projection: Tensor | None = None

    def __post_init__(self) -> None:
        _positive_int("LinformerOptions", "k", self.k, "the projected length")
        _seed("LinformerOptions", self.seed)
        p = self.projection
        if p is None:
            return
        if not isinstance(p, Tensor) or not p.is_floating_point():
            seen = f"dtype {p.dtype}" if isinstance(p, Tensor) else type(p).__name__
            raise TypeError(f"LinformerOptions.projection must be a floating-point tensor of shape (k, Nk) or "
                            f"(2, k, Nk), or None for random projections; got {seen}")
        good = (p.dim() == 2 or (p.dim() == 3 and p.shape[0] == 2)) and p.shape[-2] == self.k
        if not good:
            raise ValueError(f"LinformerOptions.projection must have shape (k, Nk) = ({self.k}, Nk) (E = F) or "
                             f"(2, k, Nk) = (2, {self.k}, Nk) (E and F); got {tuple(p.shape)}. Set k to the "
                             f"projection's rows or reshape it.")


# ---- shared pieces --------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_call(name: str, spec: MaskSpec, return_lse: bool, causal_ok: bool) -> None:
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


def _grouped(q: Tensor, k: Tensor, v: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """(B, Hq, Nq, D), (B, Hkv, Nk, D), (B, Hkv, Nk, Dv) to (B, Hkv, G, Nq, D), (B, Hkv, 1, Nk, D),
    (B, Hkv, 1, Nk, Dv) in the compute dtype (views, no copies for float32/float64)."""
    dtype = _compute_dtype(q.dtype)
    q5 = q.to(dtype).unflatten(1, (k.shape[1], -1))
    return q5, k.to(dtype).unsqueeze(2), None if v is None else v.to(dtype).unsqueeze(2)


def _real_keys(spec: MaskSpec) -> Tensor | None:
    """(B, 1, 1, Nk, 1) bool, True for real keys; None without padding."""
    kpm = spec.key_padding_mask
    return None if kpm is None else kpm[:, None, None, :, None]


def _drop_padding(x: Tensor, real: Tensor | None) -> Tensor:
    """Zero padded rows of a (B, Hkv, 1, Nk, *) tensor (masked_fill, so NaN there cannot leak)."""
    return x if real is None else x.masked_fill(~real, 0.0)


def _blind_queries_zeroed(q: Tensor, spec: MaskSpec) -> Tensor:
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


def _split_scale(scale: float) -> tuple[float, float]:
    """(a, b) with a * b = scale and |a| = |b|: q * a and k * b carry the scale evenly."""
    root = math.sqrt(abs(scale))
    return root, math.copysign(root, scale)


def _causal_visible(nq: int, nk: int, q_range: tuple[int, int], k_range: tuple[int, int],
                    device: torch.device) -> Tensor:
    """(bq, bk) bool: query i (position i + nk - nq) sees key j when j <= its position."""
    positions = torch.arange(*q_range, device=device) + (nk - nq)
    keys = torch.arange(*k_range, device=device)
    return keys[None, :] <= positions[:, None]


def _safe_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last dim; a row that is all -inf gives zeros, not NaN."""
    # The row maximum is -inf only for such rows: one small reduction instead of a full compare.
    empty = scores.detach().amax(dim=-1, keepdim=True) == NEG_INF  # (..., 1)
    if not bool(empty.any()):
        return torch.softmax(scores, dim=-1)
    return torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)


def _ungroup(out5: Tensor, dtype: torch.dtype) -> Tensor:
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
            visible = _causal_visible(nq, nk, (q_start, q_end), (start, end), inner.device)
            inner = inner.masked_fill(~visible, 0.0)
            parts.append(torch.matmul(q_c, state) + torch.matmul(inner, v_c))  # (B, Hkv, G, cq, Dv)
        state = state + torch.matmul(k_c.transpose(-2, -1), v_c)  # (B, Hkv, 1, M, Dv)
    if not parts:  # no queries
        return phi_q.new_zeros(phi_q.shape[:-1] + (values.shape[-1],))
    return torch.cat(parts, dim=-2)


def _normalise(num: Tensor, den: Tensor, eps: Tensor | float) -> Tensor:
    """num / (den + eps); a row with no visible key (num = den = 0) gives zeros, never 0/0."""
    den = den + eps
    return num / den.masked_fill(den == 0, 1.0)


def _kernel_attention(phi_q: Tensor, phi_k: Tensor, v5: Tensor, causal: bool, chunk: int, eps: Tensor | float
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
    return _normalise(mixed[..., :-1], mixed[..., -1:], eps)


def _kernel_weights(phi_q: Tensor, phi_k: Tensor, causal: bool, eps: Tensor | float) -> Tensor:
    """The normalised kernel matrix (B, Hkv, G, Nq, Nk) that :func:`_kernel_attention` applies."""
    kernel = torch.matmul(phi_q, phi_k.transpose(-2, -1))  # (B, Hkv, G, Nq, Nk)
    if causal:
        nq, nk = kernel.shape[-2:]
        kernel = kernel.masked_fill(~_causal_visible(nq, nk, (0, nq), (0, nk), kernel.device), 0.0)
    return _normalise(kernel, kernel.sum(dim=-1, keepdim=True), eps)


def _linear_features(q: Tensor, k: Tensor, spec: MaskSpec, scale: float) -> tuple[Tensor, Tensor]:
    """phi(q) (B, Hkv, G, Nq, D) and phi(k) (B, Hkv, 1, Nk, D), phi(x) = elu(x) + 1, padded keys 0."""
    q5, k5, _ = _grouped(_blind_queries_zeroed(q, spec), k, None)
    real = _real_keys(spec)
    a, b = _split_scale(scale)
    phi_q = F.elu(q5 * a) + 1.0  # (B, Hkv, G, Nq, D)
    phi_k = _drop_padding(F.elu(_drop_padding(k5, real) * b) + 1.0, real)  # (B, Hkv, 1, Nk, D)
    return phi_q, phi_k


def linear_attention(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, return_lse: bool = False, *,
    options: LinearOptions | None = None,
) -> Tensor:
    """Linear attention with phi(x) = elu(x) + 1 (Katharopoulos et al., 2020).

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq a multiple of Hkv.
        v: (B, Hkv, Nk, Dv) values.
        spec: the call's masking (causal and key padding only).
        scale: split as sqrt(|scale|) on q and on k before the feature map.
        return_lse: must be False (there is no softmax normaliser).
        options: :class:`LinearOptions` (None: defaults).

    Returns:
        (B, Hq, Nq, Dv) in q's dtype.
    """
    options = options or LinearOptions()
    _check_call("linear", spec, return_lse, causal_ok=True)
    phi_q, phi_k = _linear_features(q, k, spec, scale)
    _, _, v5 = _grouped(q, k, v)
    out = _kernel_attention(phi_q, phi_k, _drop_padding(v5, _real_keys(spec)), spec.causal, options.chunk,
                            options.eps)
    return _ungroup(out, q.dtype)


def linear_weights(q: Tensor, k: Tensor, spec: MaskSpec, scale: float, options: LinearOptions | None = None
                   ) -> Tensor:
    """The (B, Hq, Nq, Nk) matrix linear attention applies to the values (small N only)."""
    options = options or LinearOptions()
    _check_call("linear", spec, False, causal_ok=True)
    phi_q, phi_k = _linear_features(q, k, spec, scale)
    return _ungroup(_kernel_weights(phi_q, phi_k, spec.causal, options.eps), q.dtype)


@functools.lru_cache(maxsize=32)
def _orthogonal_random_features_cached(features: int, dim: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    blocks = []
    for start in range(0, features, dim):
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        orthogonal, _ = torch.linalg.qr(gaussian)  # (D, D), orthonormal columns
        blocks.append(orthogonal.T[: min(dim, features - start)])  # rows orthonormal
    directions = torch.cat(blocks, dim=0)  # (m, D)
    norms = torch.randn(features, dim, generator=generator, dtype=torch.float64).norm(dim=1)  # (m,) ~ chi(D)
    return norms[:, None] * directions  # (m, D)


def orthogonal_random_features(features: int, dim: int, seed: int) -> Tensor:
    """FAVOR+'s random matrix W (m, D) in float64 on the CPU, deterministic in (m, D, seed).

    Rows come in blocks of D mutually orthogonal directions (QR of a Gaussian D x D matrix;
    the last block is cut to m mod D rows); each row's length is drawn from chi(D), the
    length of a D-dim standard Gaussian, so that every row is marginally N(0, I_D), as
    Choromanski et al. (2021) construct it.
    """
    return _orthogonal_random_features_cached(int(features), int(dim), int(seed)).clone()


def _performer_features(q: Tensor, k: Tensor, spec: MaskSpec, scale: float, options: PerformerOptions
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """Positive random features phi(q) (B, Hkv, G, Nq, m) and phi(k) (B, Hkv, 1, Nk, m), padded keys 0,
    and eps in the units of the stabilised features, (B, Hkv, G, Nq, 1)."""
    q5, k5, _ = _grouped(_blind_queries_zeroed(q, spec), k, None)
    real = _real_keys(spec)
    m = options.features
    w = _orthogonal_random_features_cached(m, q.shape[-1], options.seed).to(q5.device, q5.dtype)  # (m, D)
    a, b = _split_scale(scale)  # x_q = a q, x_k = b k: x_q . x_k = scale q . k
    key = _drop_padding(k5, real)

    # phi(x) = exp(w . x - |x|^2 / 2) / sqrt(m), computed in place on one (N, m) buffer per side,
    # since at long N these elementwise passes, not the matrix products, set the time.
    log_root = 0.5 * math.log(m)
    # Stabilisers: a max per query row, and one max over every real key and feature of a head.
    # Query i's kernel values are all multiplied by exp(-stab_q_i - stab_k), which cancels in
    # num / (den + eps) once eps is expressed in the same units; so the output does not depend
    # on them and they are detached. For a query row, |x|^2 / 2 is a constant: it cancels too.
    # The scales a, b go into w (m x D) rather than into the (N x D) inputs: one pass fewer.
    logit_q = torch.matmul(q5, (a * w).T)  # (B, Hkv, G, Nq, m): w . x_q
    row_max = logit_q.detach().amax(dim=-1, keepdim=True)  # (B, Hkv, G, Nq, 1)
    stab_q = row_max - 0.5 * a * a * q5.detach().pow(2).sum(dim=-1, keepdim=True)
    phi_q = logit_q.sub_(row_max + log_root).exp_()  # exp(w.x - max) / sqrt(m)
    half_norm = 0.5 * b * b * key.pow(2).sum(dim=-1, keepdim=True)  # |x_k|^2 / 2, (B, Hkv, 1, Nk, 1)
    logit_k = torch.matmul(key, (b * w).T).sub_(half_norm)  # (B, Hkv, 1, Nk, m)
    seen = logit_k.detach() if real is None else logit_k.detach().masked_fill(~real, NEG_INF)
    stab_k = seen.amax(dim=(-2, -1), keepdim=True)  # (B, Hkv, 1, 1, 1)
    stab_k = stab_k.masked_fill(stab_k == NEG_INF, 0.0)  # every key padded
    phi_k = _drop_padding(logit_k.sub_(stab_k + log_root).exp_(), real)
    # eps (a floor in the units of the kernel exp(scale q . k)) in the stabilised units, kept finite.
    top = math.log(torch.finfo(q5.dtype).max) - 1.0
    eps = torch.exp((math.log(options.eps) - stab_q - stab_k).clamp(max=top))  # (B, Hkv, G, Nq, 1)
    return phi_q, phi_k, eps


def performer_attention(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, return_lse: bool = False, *,
    options: PerformerOptions | None = None,
) -> Tensor:
    """FAVOR+ attention with positive orthogonal random features (Choromanski et al., 2021).

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq a multiple of Hkv.
        v: (B, Hkv, Nk, Dv) values.
        spec: the call's masking (causal and key padding only).
        scale: the softmax scale; phi(sqrt(scale) q) . phi(sqrt(scale) k) estimates exp(scale q . k).
        return_lse: must be False.
        options: :class:`PerformerOptions` (None: defaults).

    Returns:
        (B, Hq, Nq, Dv) in q's dtype.
    """
    options = options or PerformerOptions()
    _check_call("performer", spec, return_lse, causal_ok=True)
    phi_q, phi_k, eps = _performer_features(q, k, spec, scale, options)
    _, _, v5 = _grouped(q, k, v)
    out = _kernel_attention(phi_q, phi_k, _drop_padding(v5, _real_keys(spec)), spec.causal, options.chunk, eps)
    return _ungroup(out, q.dtype)


def performer_weights(q: Tensor, k: Tensor, spec: MaskSpec, scale: float,
                      options: PerformerOptions | None = None) -> Tensor:
    """The (B, Hq, Nq, Nk) matrix Performer applies to the values (small N only)."""
    options = options or PerformerOptions()
    _check_call("performer", spec, False, causal_ok=True)
    phi_q, phi_k, eps = _performer_features(q, k, spec, scale, options)
    return _ungroup(_kernel_weights(phi_q, phi_k, spec.causal, eps), q.dtype)


# ---- Nystromformer ----------------------------------------------------------------------
def _segment_means(x: Tensor, segments: int, real: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Means of ``segments`` contiguous segments of the rows of x (..., N, D).

    Position j belongs to segment floor(j * segments / N), so sizes differ by at most one.
    With ``real`` (B, 1, 1, N, 1) only real rows are averaged. Returns the means
    (..., segments, D) and which segments hold a real row, (B|1, 1, 1, segments) bool.
    """
    n = x.shape[-2]
    owner = torch.arange(n, device=x.device) * segments // n  # (N,)
    member = F.one_hot(owner, segments).T.to(x.dtype)  # (segments, N)
    if real is not None:
        member = member * real.squeeze(-1).unsqueeze(-2).to(x.dtype)  # (B, 1, 1, segments, N)
        x = x.masked_fill(~real, 0.0)
    counts = member.sum(dim=-1, keepdim=True)  # (..., segments, 1)
    means = torch.matmul(member / counts.clamp_min(1.0), x)  # (..., segments, D)
    valid = counts.squeeze(-1) > 0
    if valid.dim() == 1:
        valid = valid[None, None, None, :]
    return means, valid


def iterative_pinv(a: Tensor, iterations: int) -> Tensor:
    """The Moore-Penrose pseudo-inverse of a (..., r, c) matrix by Nystromformer's iteration.

    Z0 = A^T / (||A||_1 ||A||_inf) (max column sum times max row sum, per matrix), then
    Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4 (Xiong et al., 2021, eq. 13-14).
    A matrix of zeros gives zeros. Returns (..., c, r).
    """
    eye = torch.eye(a.shape[-2], dtype=a.dtype, device=a.device)
    col = a.abs().sum(dim=-2).amax(dim=-1)  # (...,) ||A||_1
    row = a.abs().sum(dim=-1).amax(dim=-1)  # (...,) ||A||_inf
    z = a.transpose(-2, -1) / (col * row).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    for _ in range(iterations):
        az = torch.matmul(a, z)  # (..., r, r)
        z = 0.25 * torch.matmul(z, 13 * eye - torch.matmul(az, 15 * eye - torch.matmul(az, 7 * eye - az)))
    return z


def _exact_pinv(a: Tensor) -> Tensor:
    """``torch.linalg.pinv`` of a (..., r, c) matrix, NaN for a matrix holding NaN or inf (whose SVD
    would raise) rather than an error. Returns (..., c, r)."""
    broken = ~torch.isfinite(a).all(dim=-1, keepdim=True).all(dim=-2, keepdim=True)  # (..., 1, 1)
    return torch.linalg.pinv(a.masked_fill(broken, 0.0)).masked_fill(broken, float("nan"))


def _nystrom_factors(q: Tensor, k: Tensor, spec: MaskSpec, scale: float, options: NystromOptions
                     ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """F (B, Hkv, G, Nq, mk), pinv(A) (B, Hkv, G, mk, mq) and B (B, Hkv, G, mq, Nk).

    With every key a landmark (landmarks >= Nk), F is softmax(Q K^T) itself and F pinv(A) B = F:
    then (F, None, None), and F is applied as it is, exact for every head dim (the SVD behind
    pinv(A) would only add rounding, large where A is ill-conditioned, as at small head dims).
    """
    q5, k5, _ = _grouped(_blind_queries_zeroed(q, spec), k, None)
    q5 = q5 * scale
    real = _real_keys(spec)  # (B, 1, 1, Nk, 1)
    nq, nk = q5.shape[-2], k5.shape[-2]
    mq, mk = min(options.landmarks, nq), min(options.landmarks, nk)
    if mk == nk:
        scores = torch.matmul(q5, _drop_padding(k5, real).transpose(-2, -1))  # (B, Hkv, G, Nq, Nk)
        if real is not None:
            scores = scores.masked_fill(~real.transpose(-2, -1), NEG_INF)
        return _safe_softmax(scores), None, None
    q_land, _ = _segment_means(q5, mq)  # (B, Hkv, G, mq, D)
    k_land, k_valid = _segment_means(k5, mk, real)  # (B, Hkv, 1, mk, D), (B|1, 1, 1, mk)
    k_valid = k_valid.unsqueeze(-2)  # (B|1, 1, 1, 1, mk)
    k5 = _drop_padding(k5, real)
    f = _safe_softmax(torch.matmul(q5, k_land.transpose(-2, -1)).masked_fill(~k_valid, NEG_INF))  # (.., Nq, mk)
    a = _safe_softmax(torch.matmul(q_land, k_land.transpose(-2, -1)).masked_fill(~k_valid, NEG_INF))  # (mq, mk)
    b = torch.matmul(q_land, k5.transpose(-2, -1))  # (B, Hkv, G, mq, Nk)
    if real is not None:
        b = b.masked_fill(~real.transpose(-2, -1), NEG_INF)
    b = _safe_softmax(b)
    iterations = options.pinv_iterations
    a_pinv = _exact_pinv(a) if iterations == 0 else iterative_pinv(a, iterations)  # (B, Hkv, G, mk, mq)
    return f, a_pinv, b


def nystrom_attention(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, return_lse: bool = False, *,
    options: NystromOptions | None = None,
) -> Tensor:
    """Nystromformer attention, F pinv(A) (B V) (Xiong et al., 2021). Non-causal.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq a multiple of Hkv.
        v: (B, Hkv, Nk, Dv) values.
        spec: the call's masking (key padding only).
        scale: multiplies q k^T, as in softmax attention.
        return_lse: must be False.
        options: :class:`NystromOptions` (None: defaults).

    Returns:
        (B, Hq, Nq, Dv) in q's dtype.
    """
    options = options or NystromOptions()
    _check_call("nystrom", spec, return_lse, causal_ok=False)
    f, a_pinv, b = _nystrom_factors(q, k, spec, scale, options)
    _, _, v5 = _grouped(q, k, v)
    v5 = _drop_padding(v5, _real_keys(spec))
    if a_pinv is None:  # every key a landmark: F is the attention itself
        return _ungroup(torch.matmul(f, v5), q.dtype)
    bv = torch.matmul(b, v5)  # (B, Hkv, G, mq, Dv)
    out = torch.matmul(f, torch.matmul(a_pinv, bv))  # (B, Hkv, G, Nq, Dv)
    return _ungroup(out, q.dtype)


def nystrom_weights(q: Tensor, k: Tensor, spec: MaskSpec, scale: float, options: NystromOptions | None = None
                    ) -> Tensor:
    """F pinv(A) B, the (B, Hq, Nq, Nk) matrix Nystromformer applies to the values (small N only)."""
    options = options or NystromOptions()
    _check_call("nystrom", spec, False, causal_ok=False)
    f, a_pinv, b = _nystrom_factors(q, k, spec, scale, options)
    if a_pinv is None:  # every key a landmark: F is the attention itself
        return _ungroup(f, q.dtype)
    return _ungroup(torch.matmul(f, torch.matmul(a_pinv, b)), q.dtype)

"""Nystromformer (Xiong et al., 2021): attention through landmarks and a pseudo-inverse.

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
an improvement: A is often nearly singular, and the truncated iteration acts as a
regulariser (the paper uses 6 iterations). Query landmarks use every query row (the call has no query
padding), so with fewer landmarks than keys a NaN in a query or a real key reaches every
output row of its batch entry and head group through the landmarks; a row with no real
key is still zero. Cost O(N m (D + Dv) + m^3). Non-causal only.
Options :class:`NystromOptions`.

Shared contract and pieces: :mod:`qkv.functional.approximate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.functional.approximate import (
    NEG_INF,
    blind_queries_zeroed,
    check_call,
    check_positive_int,
    drop_padding,
    grouped,
    real_keys,
    safe_softmax,
    ungroup,
)
from qkv.functional.masks import MaskSpec

__all__ = ["NystromOptions", "iterative_pinv", "nystrom_attention", "nystrom_weights"]


@dataclass(frozen=True)
class NystromOptions:
    """Options of the ``"nystrom"`` backend (Nystromformer, Xiong et al., 2021)."""

    landmarks: int = 64  # m, segment means of queries and keys; >= Nk makes the result exact
    pinv_iterations: int = 6  # iterations of the Moore-Penrose approximation; 0: exact torch.linalg.pinv

    def __post_init__(self) -> None:
        check_positive_int("NystromOptions", "landmarks", self.landmarks, "the number of landmarks m")
        check_positive_int("NystromOptions", "pinv_iterations", self.pinv_iterations,
                      "iterations of the pseudo-inverse; 0 means exact torch.linalg.pinv", minimum=0)


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
    q5, k5, _ = grouped(blind_queries_zeroed(q, spec), k, None)
    q5 = q5 * scale
    real = real_keys(spec)  # (B, 1, 1, Nk, 1)
    nq, nk = q5.shape[-2], k5.shape[-2]
    mq, mk = min(options.landmarks, nq), min(options.landmarks, nk)
    if mk == nk:
        scores = torch.matmul(q5, drop_padding(k5, real).transpose(-2, -1))  # (B, Hkv, G, Nq, Nk)
        if real is not None:
            scores = scores.masked_fill(~real.transpose(-2, -1), NEG_INF)
        return safe_softmax(scores), None, None
    q_land, _ = _segment_means(q5, mq)  # (B, Hkv, G, mq, D)
    k_land, k_valid = _segment_means(k5, mk, real)  # (B, Hkv, 1, mk, D), (B|1, 1, 1, mk)
    k_valid = k_valid.unsqueeze(-2)  # (B|1, 1, 1, 1, mk)
    k5 = drop_padding(k5, real)
    f = safe_softmax(torch.matmul(q5, k_land.transpose(-2, -1)).masked_fill(~k_valid, NEG_INF))  # (.., Nq, mk)
    a = safe_softmax(torch.matmul(q_land, k_land.transpose(-2, -1)).masked_fill(~k_valid, NEG_INF))  # (mq, mk)
    b = torch.matmul(q_land, k5.transpose(-2, -1))  # (B, Hkv, G, mq, Nk)
    if real is not None:
        b = b.masked_fill(~real.transpose(-2, -1), NEG_INF)
    b = safe_softmax(b)
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
    check_call("nystrom", spec, return_lse, causal_ok=False)
    f, a_pinv, b = _nystrom_factors(q, k, spec, scale, options)
    _, _, v5 = grouped(q, k, v)
    v5 = drop_padding(v5, real_keys(spec))
    if a_pinv is None:  # every key a landmark: F is the attention itself
        return ungroup(torch.matmul(f, v5), q.dtype)
    bv = torch.matmul(b, v5)  # (B, Hkv, G, mq, Dv)
    out = torch.matmul(f, torch.matmul(a_pinv, bv))  # (B, Hkv, G, Nq, Dv)
    return ungroup(out, q.dtype)


def nystrom_weights(q: Tensor, k: Tensor, spec: MaskSpec, scale: float, options: NystromOptions | None = None
                    ) -> Tensor:
    """F pinv(A) B, the (B, Hq, Nq, Nk) matrix Nystromformer applies to the values (small N only)."""
    options = options or NystromOptions()
    check_call("nystrom", spec, False, causal_ok=False)
    f, a_pinv, b = _nystrom_factors(q, k, spec, scale, options)
    if a_pinv is None:  # every key a landmark: F is the attention itself
        return ungroup(f, q.dtype)
    return ungroup(torch.matmul(f, torch.matmul(a_pinv, b)), q.dtype)

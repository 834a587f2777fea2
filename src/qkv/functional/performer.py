"""Performer (FAVOR+, Choromanski et al., 2021): positive orthogonal random features for the softmax kernel.

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

Shared contract and pieces: :mod:`qkv.functional.approximate`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.functional.approximate import (
    NEG_INF,
    blind_queries_zeroed,
    check_call,
    check_eps,
    check_positive_int,
    check_seed,
    drop_padding,
    grouped,
    kernel_attention,
    kernel_weights,
    real_keys,
    split_scale,
    ungroup,
)
from qkv.functional.masks import MaskSpec

__all__ = ["PerformerOptions", "orthogonal_random_features", "performer_attention", "performer_weights"]


@dataclass(frozen=True)
class PerformerOptions:
    """Options of the ``"performer"`` backend (FAVOR+, Choromanski et al., 2021)."""

    features: int = 256  # m, the number of random features; variance ~ 1/m, cost ~ m
    seed: int = 0  # seeds the torch.Generator that draws the random matrix (same seed: same matrix)
    chunk: int = 256  # causal only: key positions per chunk of the prefix sums
    eps: float = 1e-6  # added to the normaliser, in the units of the kernel exp(scale q . k)

    def __post_init__(self) -> None:
        check_positive_int("PerformerOptions", "features", self.features, "the number of random features m")
        check_seed("PerformerOptions", self.seed)
        check_positive_int("PerformerOptions", "chunk", self.chunk, "positions per causal chunk")
        check_eps("PerformerOptions", self.eps)


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
    q5, k5, _ = grouped(blind_queries_zeroed(q, spec), k, None)
    real = real_keys(spec)
    m = options.features
    w = _orthogonal_random_features_cached(m, q.shape[-1], options.seed).to(q5.device, q5.dtype)  # (m, D)
    a, b = split_scale(scale)  # x_q = a q, x_k = b k: x_q . x_k = scale q . k
    key = drop_padding(k5, real)

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
    phi_k = drop_padding(logit_k.sub_(stab_k + log_root).exp_(), real)
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
    check_call("performer", spec, return_lse, causal_ok=True)
    phi_q, phi_k, eps = _performer_features(q, k, spec, scale, options)
    _, _, v5 = grouped(q, k, v)
    out = kernel_attention(phi_q, phi_k, drop_padding(v5, real_keys(spec)), spec.causal, options.chunk, eps)
    return ungroup(out, q.dtype)


def performer_weights(q: Tensor, k: Tensor, spec: MaskSpec, scale: float,
                      options: PerformerOptions | None = None) -> Tensor:
    """The (B, Hq, Nq, Nk) matrix Performer applies to the values (small N only)."""
    options = options or PerformerOptions()
    check_call("performer", spec, False, causal_ok=True)
    phi_q, phi_k, eps = _performer_features(q, k, spec, scale, options)
    return ungroup(kernel_weights(phi_q, phi_k, spec.causal, eps), q.dtype)

"""Linformer (Wang et al., 2020): keys and values projected along the sequence.

Wang et al., "Linformer: Self-Attention with Linear Complexity" (2020). Keys and values
are projected along the sequence to k rows, K' = E K and V' = F V with E, F of shape
(k, Nk); out = softmax(scale Q K'^T) V'. Here E and F are fixed random Gaussian matrices
with entries N(0, 1/k) from a generator seeded with ``seed``, drawn once per (k, Nk, seed)
and cached (the paper learns them; so does :class:`qkv.nn.LinformerProjection`), or the
caller's ``projection``. Padded keys' columns of E and F are zeroed (no renormalisation:
random rows have random signs, so there is no natural total to restore); a projected row
that reads no real key through either E or F is masked out of the softmax, so identity
projections with k = Nk give exact masked attention. Cost O(N k (D + Dv)). Non-causal
only. Fixed random projections do not approximate a given attention closely (the paper
trains E and F; random ones mix unrelated keys), so the error falls only slowly with k:
pass learned or structured projections (e.g. segment means) through ``projection`` for a
usable approximation. Options :class:`LinformerOptions`.

Shared contract, checks and pieces: :mod:`qkv.functional.approximate`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.functional.approximate import (
    NEG_INF,
    check_call,
    check_positive_int,
    check_seed,
    drop_padding,
    grouped,
    real_keys,
    safe_softmax,
    ungroup,
)
from qkv.functional.masks import MaskSpec

__all__ = ["LinformerOptions", "linformer_attention", "linformer_weights"]


@dataclass(frozen=True, eq=False)  # eq=False: it may hold a tensor, so options compare by identity
class LinformerOptions:
    """Options of the ``"linformer"`` backend (Wang et al., 2020)."""

    k: int = 256  # projected length: keys and values are reduced to k rows
    seed: int = 0  # seeds the random N(0, 1/k) projections when ``projection`` is None
    # None: random projections. A (k, Nk) tensor: E = F = projection. A (2, k, Nk) tensor: E, F.
    projection: Tensor | None = None

    def __post_init__(self) -> None:
        check_positive_int("LinformerOptions", "k", self.k, "the projected length")
        check_seed("LinformerOptions", self.seed)
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


@functools.lru_cache(maxsize=2)
def _random_projections(k: int, nk: int, seed: int) -> Tensor:
    """Linformer's fixed random E and F, (2, k, Nk) float32 with N(0, 1/k) entries, cached.

    A fixed projection is a constant of the layer: drawing it anew at every call would cost
    more than the attention itself at long N.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, k, nk, generator=generator) / math.sqrt(k)


def _linformer_projections(options: LinformerOptions, spec: MaskSpec, device: torch.device,
                           dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor | None]:
    """E and F, (B|1, 1, k, Nk) with padded columns zeroed, and the projected rows that read
    no real key, (B|1, 1, 1, k) bool (None when there are none)."""
    nk = spec.nk
    if options.projection is None:
        pair = _random_projections(options.k, nk, options.seed)
    else:
        p = options.projection
        if p.shape[-1] != nk:
            raise ValueError(f"LinformerOptions.projection has {p.shape[-1]} columns but there are Nk={nk} keys; "
                             f"it must have shape (k, Nk) = ({options.k}, {nk}) or (2, k, Nk)")
        pair = p.expand(2, -1, -1) if p.dim() == 2 else p
    pair = pair.to(device=device, dtype=dtype)  # (2, k, Nk)
    e, f = pair[0][None, None], pair[1][None, None]  # (1, 1, k, Nk)
    kpm = spec.key_padding_mask
    if kpm is None and options.projection is None:  # Gaussian rows: every one reads some key
        return e, f, None
    real = torch.ones(1, 1, 1, nk, dtype=torch.bool, device=device) if kpm is None else kpm[:, None, None, :]
    e, f = e.masked_fill(~real, 0.0), f.masked_fill(~real, 0.0)  # (B|1, 1, k, Nk)
    empty = ~(((e != 0) & real).any(dim=-1) | ((f != 0) & real).any(dim=-1))  # (B|1, 1, k)
    return e, f, (empty.unsqueeze(-2) if bool(empty.any()) else None)


def _project_along_sequence(e: Tensor, x: Tensor) -> Tensor:
    """E x for every head at once: e (B|1, 1, k, Nk), x (B, Hkv, 1, Nk, D) -> (B, Hkv, 1, k, D).

    One (k, Nk) x (Nk, Hkv * D) product per batch row instead of a batched product that
    would copy E for every head.
    """
    batch, heads, _, nk, dim = x.shape
    flat = x.squeeze(2).transpose(1, 2).reshape(batch, nk, heads * dim)  # (B, Nk, Hkv * D)
    projected = torch.matmul(e[:, 0], flat)  # (B, k, Hkv * D)
    return projected.unflatten(-1, (heads, dim)).transpose(1, 2).unsqueeze(2)


def _linformer_mix(q: Tensor, k: Tensor, spec: MaskSpec, scale: float, options: LinformerOptions
                   ) -> tuple[Tensor, Tensor]:
    """softmax(scale Q (E K)^T) (B, Hkv, G, Nq, k) and F (B|1, 1, 1, k, Nk)."""
    q5, k5, _ = grouped(q, k, None)
    e, f, empty = _linformer_projections(options, spec, q.device, q5.dtype)
    k_proj = _project_along_sequence(e, drop_padding(k5, real_keys(spec)))  # (B, Hkv, 1, k, D)
    scores = torch.matmul(q5, (k_proj * scale).transpose(-2, -1))  # (B, Hkv, G, Nq, k)
    if empty is not None:
        scores = scores.masked_fill(empty.unsqueeze(2), NEG_INF)
    return safe_softmax(scores), f.unsqueeze(2)


def linformer_attention(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, return_lse: bool = False, *,
    options: LinformerOptions | None = None,
) -> Tensor:
    """Linformer attention, softmax(scale Q (E K)^T) (F V) (Wang et al., 2020). Non-causal.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq a multiple of Hkv.
        v: (B, Hkv, Nk, Dv) values.
        spec: the call's masking (key padding only).
        scale: multiplies q (E k)^T.
        return_lse: must be False.
        options: :class:`LinformerOptions` (None: defaults); ``projection``, when given,
            is (k, Nk) or (2, k, Nk).

    Returns:
        (B, Hq, Nq, Dv) in q's dtype.
    """
    options = options or LinformerOptions()
    check_call("linformer", spec, return_lse, causal_ok=False)
    weights, f = _linformer_mix(q, k, spec, scale, options)  # (B, Hkv, G, Nq, k), (B|1, 1, 1, k, Nk)
    _, _, v5 = grouped(q, k, v)
    v_proj = _project_along_sequence(f.squeeze(2), drop_padding(v5, real_keys(spec)))  # (B, Hkv, 1, k, Dv)
    return ungroup(torch.matmul(weights, v_proj), q.dtype)


def linformer_weights(q: Tensor, k: Tensor, spec: MaskSpec, scale: float,
                      options: LinformerOptions | None = None) -> Tensor:
    """softmax(scale Q (E K)^T) F, the (B, Hq, Nq, Nk) matrix Linformer applies to the values."""
    options = options or LinformerOptions()
    check_call("linformer", spec, False, causal_ok=False)
    weights, f = _linformer_mix(q, k, spec, scale, options)
    return ungroup(torch.matmul(weights, f), q.dtype)

"""Linear attention (Katharopoulos et al., 2020): the softmax kernel replaced by elu(x) + 1 features.

``"linear"``: linear attention, Katharopoulos et al., "Transformers are RNNs" (ICML 2020).
The softmax kernel exp(q.k) is replaced by phi(q).phi(k) with phi(x) = elu(x) + 1,
applied to ``sqrt(scale) * q`` and ``sqrt(scale) * k`` (the scale is split evenly so
it acts as a temperature on both sides; the paper uses no scale). It is a different
kernel, not an estimate of softmax, so its error does not shrink with any budget.
out_i = phi(q_i) S / phi(q_i) z with S = sum_j phi(k_j) v_j^T and z = sum_j phi(k_j).
Cost O(N D Dv) time, O(D Dv) state. Causal: chunked prefix sums (see below).
Options :class:`LinearOptions`.

Shared contract and pieces: :mod:`qkv.functional.approximate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from qkv.functional.approximate import (
    blind_queries_zeroed,
    check_call,
    check_eps,
    check_positive_int,
    drop_padding,
    grouped,
    kernel_attention,
    kernel_weights,
    real_keys,
    split_scale,
    ungroup,
)
from qkv.functional.masks import MaskSpec

__all__ = ["LinearOptions", "linear_attention", "linear_weights"]


@dataclass(frozen=True)
class LinearOptions:
    """Options of the ``"linear"`` backend (Katharopoulos et al., 2020)."""

    chunk: int = 256  # causal only: key positions per chunk of the prefix sums (memory ~ chunk^2)
    eps: float = 1e-6  # added to the normaliser phi(q) . sum_j phi(k_j), as in the paper's code

    def __post_init__(self) -> None:
        check_positive_int("LinearOptions", "chunk", self.chunk, "positions per causal chunk")
        check_eps("LinearOptions", self.eps)


def _linear_features(q: Tensor, k: Tensor, spec: MaskSpec, scale: float) -> tuple[Tensor, Tensor]:
    """phi(q) (B, Hkv, G, Nq, D) and phi(k) (B, Hkv, 1, Nk, D), phi(x) = elu(x) + 1, padded keys 0."""
    q5, k5, _ = grouped(blind_queries_zeroed(q, spec), k, None)
    real = real_keys(spec)
    a, b = split_scale(scale)
    phi_q = F.elu(q5 * a) + 1.0  # (B, Hkv, G, Nq, D)
    phi_k = drop_padding(F.elu(drop_padding(k5, real) * b) + 1.0, real)  # (B, Hkv, 1, Nk, D)
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
    check_call("linear", spec, return_lse, causal_ok=True)
    phi_q, phi_k = _linear_features(q, k, spec, scale)
    _, _, v5 = grouped(q, k, v)
    out = kernel_attention(phi_q, phi_k, drop_padding(v5, real_keys(spec)), spec.causal, options.chunk,
                            options.eps)
    return ungroup(out, q.dtype)


def linear_weights(q: Tensor, k: Tensor, spec: MaskSpec, scale: float, options: LinearOptions | None = None
                   ) -> Tensor:
    """The (B, Hq, Nq, Nk) matrix linear attention applies to the values (small N only)."""
    options = options or LinearOptions()
    check_call("linear", spec, False, causal_ok=True)
    phi_q, phi_k = _linear_features(q, k, spec, scale)
    return ungroup(kernel_weights(phi_q, phi_k, spec.causal, options.eps), q.dtype)

"""PyTorch's fused ``scaled_dot_product_attention`` with qkv's semantics.

SDPA is the fast exact default. What it does not do by itself, done here: bottom-right
causal alignment when Nq != Nk (PyTorch's ``is_causal`` is top-left), windows and key
padding compiled into one mask, grouped-query attention on every torch >= 2.5, and rows
that see no key returning zeros with zero gradients instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.attention.masks import MaskSpec
from qkv.attention.reference import repeat_kv_heads

__all__ = ["sdpa_attention"]


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, return_lse: bool
) -> Tensor:
    """Exact attention through ``torch.nn.functional.scaled_dot_product_attention``.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq is a multiple of Hkv.
        v: (B, Hkv, Nk, Dv) values.
        spec: the call's masking.
        scale: multiplies q k^T.
        return_lse: must be False (the registry refuses it before this is called).

    Returns:
        (B, Hq, Nq, Dv).
    """
    if return_lse:  # the registry refuses this first; kept as a guard for direct calls
        raise ValueError("the sdpa backend cannot return the LSE; use backend='tiled'")
    out = _masked_sdpa(q, k, v, spec, scale)
    # PyTorch's CPU kernel returns zeros for a query containing NaN; the contract says NaN.
    # A sum is the cheapest test (one fast pass); only then find the rows.
    if torch.isnan(q.sum()):
        query_has_nan = torch.isnan(q).any(dim=-1, keepdim=True)  # (B, H, Nq, 1)
        out = out.masked_fill(query_has_nan, float("nan"))
    return out


def _masked_sdpa(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float) -> Tensor:
    """SDPA on (B, Hq, N, D) queries and (B, Hkv, N, D) keys and values, the spec compiled to a mask.

    Without gradients, grouped-query heads go to SDPA as they are (``enable_gqa``: no copy of the
    keys and values); with gradients they are repeated first, since ``enable_gqa`` sums the
    shared heads' dK and dV less accurately in low precision.
    """
    if q.shape[1] != k.shape[1] and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        k, v = repeat_kv_heads(k, q.shape[1]), repeat_kv_heads(v, q.shape[1])
    options = {"scale": scale, "enable_gqa": True} if q.shape[1] != k.shape[1] else {"scale": scale}
    if spec.is_empty:
        return F.scaled_dot_product_attention(q, k, v, **options)
    if spec.is_plain_causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, **options)

    visible = spec.dense_mask(q.device)  # broadcastable to (B, H, Nq, Nk)
    bias = spec.float_bias
    if visible is None and bias is None:  # e.g. causal with one query: it sees every key
        return F.scaled_dot_product_attention(q, k, v, **options)
    if bias is not None:
        bias = bias.to(q.dtype)
        if visible is not None:
            bias = bias.masked_fill(~visible, float("-inf"))
        row_is_empty = (bias == float("-inf")).all(dim=-1, keepdim=True)  # (.., Nq, 1)
        # A row that sees nothing would softmax to NaN: let it see everything, zero it after.
        attn_mask = bias.masked_fill(row_is_empty, 0.0)
    else:
        row_is_empty = ~visible.any(dim=-1, keepdim=True)  # (.., Nq, 1)
        attn_mask = visible | row_is_empty
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **options)
    if bool(row_is_empty.any()):
        out = out.masked_fill(row_is_empty, 0.0)
    return out

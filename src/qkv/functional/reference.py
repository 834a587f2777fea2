"""Self-attention exactly as the textbook explains it: the oracle for every backend.

Each query asks "what am I looking for?", each key answers "what do I offer?", and
each value is "what I carry". For one query, the step by step recipe is:

1. scores: the dot product of the query with every key, times ``scale``;
2. masking: keys the query may not see get a score of -inf (a float mask is added);
3. weights: a softmax over the keys turns the scores into weights that sum to 1;
4. output: the weighted average of the values.

This file does exactly that, on whole (B, H, Nq, Nk) tensors. It is kept readable
rather than fast and never changes to suit a fast path: every other backend is tested
against it in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qkv.functional.masks import MaskSpec

__all__ = ["attention_scores", "mask_scores", "softmax_weights", "reference_attention"]


def repeat_kv_heads(x: Tensor, num_query_heads: int) -> Tensor:
    """Repeat key/value heads for grouped-query attention.

    Args:
        x: (B, Hkv, N, D) keys or values.
        num_query_heads: Hq, a multiple of Hkv.

    Returns:
        (B, Hq, N, D), query head h reading key/value head h // (Hq // Hkv).
    """
    group = num_query_heads // x.shape[1]
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def attention_scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Step 1: how well each query matches each key.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hq, Nk, D) keys (already repeated for grouped-query attention).
        scale: multiplies the dot products, usually 1/sqrt(D).

    Returns:
        (B, Hq, Nq, Nk) scores.
    """
    return torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, Nq, Nk)


def mask_scores(scores: Tensor, spec: MaskSpec) -> Tensor:
    """Step 2: add the float bias, then hide what each query may not see with -inf.

    A bias of -inf hides its key even where the score is NaN (a NaN query or key there is
    not read, as with a bool mask).

    Args:
        scores: (B, Hq, Nq, Nk).
        spec: the call's masking.

    Returns:
        (B, Hq, Nq, Nk) scores, -inf where a key is hidden from a query.
    """
    if spec.float_bias is not None:
        bias = spec.float_bias.to(scores.dtype)
        scores = (scores + bias).masked_fill(bias == float("-inf"), float("-inf"))
    visible = spec.dense_mask(scores.device)  # broadcastable to (B, H, Nq, Nk)
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    return scores


def softmax_weights(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Step 3: softmax over the keys, exp(score) / sum of exp(scores), and its LSE.

    A query row that sees no key gets weights of 0 and an LSE of -inf, with no NaN in
    the values or in the gradients (the usual softmax would give 0/0).

    Args:
        scores: (B, H, Nq, Nk), -inf where hidden.

    Returns:
        weights (B, H, Nq, Nk) summing to 1 over visible keys, and lse (B, H, Nq).
    """
    # NaN counts as seen, so that a NaN in a visible input still comes out as NaN.
    row_sees_nothing = (scores == float("-inf")).all(dim=-1, keepdim=True)  # (B, H, Nq, 1)
    # Empty rows get finite scores so that neither softmax nor its gradient meets -inf - -inf.
    safe_scores = scores.masked_fill(row_sees_nothing, 0.0)
    weights = torch.softmax(safe_scores, dim=-1).masked_fill(row_sees_nothing, 0.0)
    lse = torch.logsumexp(safe_scores, dim=-1, keepdim=True).masked_fill(row_sees_nothing, float("-inf"))
    return weights, lse.squeeze(-1)


def rows_that_see_no_key(spec: MaskSpec, device: torch.device) -> Tensor | None:
    """Query rows whose every key is hidden: bool broadcastable to (B, Hq, Nq, 1), or None when
    nothing can hide a key. A float bias of -inf hides its key, as a bool mask's False does."""
    visible = spec.dense_mask(device)  # broadcastable to (B, Hq, Nq, Nk)
    if spec.float_bias is not None:
        seen = spec.float_bias != float("-inf")
        visible = seen if visible is None else visible & seen
    return None if visible is None else ~visible.any(dim=-1, keepdim=True)


def reference_weights(q: Tensor, k: Tensor, spec: MaskSpec, scale: float) -> tuple[Tensor, Tensor]:
    """Steps 1-3: the attention weights (B, Hq, Nq, Nk) and the LSE (B, Hq, Nq).

    A query that sees no key asks nothing: it is replaced by zeros first, so that whatever it
    holds (NaN included) reaches neither its own row nor, through the gradients, the keys.
    """
    blind = rows_that_see_no_key(spec, q.device)
    if blind is not None:
        q = q.masked_fill(blind, 0.0)
    k = repeat_kv_heads(k, q.shape[1])
    scores = attention_scores(q, k, scale)  # (B, H, Nq, Nk)
    scores = mask_scores(scores, spec)
    return softmax_weights(scores)


def reference_attention(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, return_lse: bool
) -> Tensor | tuple[Tensor, Tensor]:
    """The whole mechanism: each query's output is the weighted average of the values.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq is a multiple of Hkv.
        v: (B, Hkv, Nk, Dv) values.
        spec: the call's masking.
        scale: multiplies q k^T.
        return_lse: also return the LSE.

    Returns:
        out (B, Hq, Nq, Dv), and lse (B, Hq, Nq) in float32 (float64 for float64
        inputs) when ``return_lse``.
    """
    weights, lse = reference_weights(q, k, spec, scale)  # (B, H, Nq, Nk), (B, H, Nq)
    v = repeat_kv_heads(v, q.shape[1])
    out = torch.matmul(weights, v)  # step 4: (B, H, Nq, Dv)
    if return_lse:
        return out, lse.to(torch.promote_types(lse.dtype, torch.float32))
    return out

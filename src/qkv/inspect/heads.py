"""What each attention head looks at (Clark et al., 2019).

"What Does BERT Look At? An Analysis of BERT's Attention" (BlackboxNLP 2019) found that
many heads have simple, position- or token-based habits: attending to the previous or
the next token, to the token itself, to [CLS], to [SEP] (a "no-op" when the head's
function does not apply) or to punctuation. :func:`head_roles` measures each habit for
every head of one sentence; :func:`attention_share` shows a row of attention with such
tokens set apart, so the rest of the distribution can be read.

Every function here is pure: tensors in, tensors out, nothing stored.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from qkv.inspect.rollout import _check_index, _check_weights

__all__ = ["head_roles", "attention_share", "AttentionShare", "HEAD_ROLES", "ROLE_NAMES"]

# The keys of head_roles' result, in reading order.
HEAD_ROLES = ("previous", "next", "self", "cls", "sep", "punctuation", "special")
# What each role's share is attention to, in words, for legends and labels ("first" replaces
# "cls" in causal models, explain's report). "special" overlaps "cls" and "sep".
ROLE_NAMES = {"previous": "the previous token", "next": "the next token", "self": "itself", "cls": "[CLS]",
              "first": "the first token", "sep": "[SEP]", "punctuation": "punctuation",
              "special": "all special tokens"}


def _check_mask(name: str, mask: object, size: int) -> Tensor:
    """A (N,) bool tensor, or a clear error naming the argument."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a (N,) bool tensor; got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = the position is one of them); got dtype {mask.dtype}")
    if tuple(mask.shape) != (size,):
        raise ValueError(f"{name} must have shape (N,) = ({size},), one entry per token; got {tuple(mask.shape)}")
    return mask


def _masked_mean(values: Tensor, queries: Tensor) -> Tensor:
    """Mean of values (L, H, N) over the queries where ``queries`` (N,) is True → (L, H).

    NaN where no query qualifies (the mean of nothing).
    """
    chosen = queries.to(values.dtype)  # (N,)
    return (values * chosen).sum(-1) / chosen.sum()  # (L, H)


def head_roles(
    weights: Tensor,
    special_mask: Tensor,
    punctuation_mask: Tensor,
    cls_index: int = 0,
    sep_mask: Tensor | None = None,
    query_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """How strongly each head shows each of Clark et al.'s attention habits.

    Each role is an average over queries i (those with ``query_mask[i]``) of W[l, h, i, :]:

    * "previous": the weight on i - 1, over queries i >= 1 whose previous token is also a
      query (so padding never counts);
    * "next": the weight on i + 1, over queries i <= N - 2 whose next token is a query;
    * "self": the weight on i itself;
    * "cls": the weight on position cls_index;
    * "sep": the total weight on the positions of sep_mask;
    * "punctuation": the total weight on the positions of punctuation_mask;
    * "special": the total weight on the positions of special_mask.

    Each is in [0, 1]; a head whose every query puts all of its weight on the previous
    token has previous = 1. A role no query qualifies for ("previous" and "next" with a
    single token) is NaN.

    Args:
        weights: attention probabilities of ONE sentence, (L, H, N, N): layers, heads,
            queries (rows), keys (columns). Rows sum to 1, or to 0 for a masked query.
        special_mask: (N,) bool, True at special tokens ([CLS], [SEP], ...).
        punctuation_mask: (N,) bool, True at punctuation tokens.
        cls_index: position of [CLS] (negative counts from the end).
        sep_mask: (N,) bool, True at [SEP] tokens. Default: special_mask without
            cls_index.
        query_mask: (N,) bool, True at the queries to average over (the real tokens).
            Default: every position.

    Returns:
        dict from each name in HEAD_ROLES to an (L, H) tensor, in weights' dtype (at
        least float32).

    Raises:
        TypeError: weights is not a floating-point tensor; a mask is not a bool tensor;
            cls_index is not an int.
        ValueError: weights is not (L, H, N, N) probabilities; a mask is not (N,);
            cls_index is outside [-N, N); query_mask selects no query.
    """
    weights = _check_weights(weights, allow_3d=False)  # (L, H, N, N)
    N = weights.shape[-1]
    special = _check_mask("special_mask", special_mask, N).to(weights.device)  # (N,)
    punctuation = _check_mask("punctuation_mask", punctuation_mask, N).to(weights.device)  # (N,)
    cls = _check_index("cls_index", cls_index, N)
    if sep_mask is None:
        sep = special.clone()  # (N,)
        sep[cls] = False
    else:
        sep = _check_mask("sep_mask", sep_mask, N).to(weights.device)  # (N,)
    if query_mask is None:
        queries = torch.ones(N, dtype=torch.bool, device=weights.device)  # (N,)
    else:
        queries = _check_mask("query_mask", query_mask, N).to(weights.device)  # (N,)
        if not queries.any():
            raise ValueError("query_mask must select at least one query (True at the real tokens); it is all False")

    W = weights.to(torch.promote_types(weights.dtype, torch.float32))  # (L, H, N, N)
    diagonal = W.diagonal(dim1=-2, dim2=-1)  # (L, H, N): W[..., i, i]
    below = W.diagonal(offset=-1, dim1=-2, dim2=-1)  # (L, H, N - 1): W[..., i, i - 1] for i = 1..N-1
    above = W.diagonal(offset=1, dim1=-2, dim2=-1)  # (L, H, N - 1): W[..., i, i + 1] for i = 0..N-2
    pair = queries[1:] & queries[:-1]  # (N - 1,): both i and its neighbour are queries
    return {
        "previous": _masked_mean(below, pair),  # (L, H)
        "next": _masked_mean(above, pair),  # (L, H)
        "self": _masked_mean(diagonal, queries),  # (L, H)
        "cls": _masked_mean(W[..., cls], queries),  # (L, H)
        "sep": _masked_mean((W * sep.to(W.dtype)).sum(-1), queries),  # (L, H)
        "punctuation": _masked_mean((W * punctuation.to(W.dtype)).sum(-1), queries),  # (L, H)
        "special": _masked_mean((W * special.to(W.dtype)).sum(-1), queries),  # (L, H)
    }


class AttentionShare(NamedTuple):
    """A row of attention split into excluded tokens and the rest."""

    excluded: Tensor  # (...): share of the row's weight on excluded tokens, in [0, 1]
    kept: Tensor  # (..., N): the rest, renormalised to sum to 1; zeros where excluded


def attention_share(weights_row: Tensor, exclude_mask: Tensor) -> AttentionShare:
    """Split attention rows into the share on excluded tokens and the rest, renormalised.

    Attention to [CLS], [SEP] and punctuation often dominates a row and hides how the rest
    is spread; this sets those tokens apart. With total = the row's sum:

        excluded = (weight on excluded tokens) / total
        kept     = row with excluded tokens zeroed, divided by its new sum,

    so excluded + (1 - excluded) = 1 and kept sums to 1. A row whose weight is all on
    excluded tokens (or all zero) gives kept = zeros; an all-zero row gives excluded = 0.

    Args:
        weights_row: (..., N) non-negative attention rows, e.g. weights[l, h, i] or the
            rows of a rollout.
        exclude_mask: bool, (N,) or broadcastable to (..., N): True at tokens to set apart.

    Returns:
        AttentionShare(excluded (...), kept (..., N)), in weights_row's dtype (at least
        float32).

    Raises:
        TypeError: weights_row is not a floating-point tensor; exclude_mask is not bool.
        ValueError: weights_row has no token dimension or holds negative or non-finite
            values; exclude_mask does not broadcast to weights_row's shape.
    """
    if not isinstance(weights_row, Tensor):
        raise TypeError(f"weights_row must be a (..., N) torch.Tensor; got {type(weights_row).__name__}")
    if not weights_row.is_floating_point():
        raise TypeError(f"weights_row must be floating point; got dtype {weights_row.dtype}. Cast it with .float()")
    if weights_row.dim() == 0 or weights_row.shape[-1] == 0:
        raise ValueError(f"weights_row must have shape (..., N) with N >= 1; got {tuple(weights_row.shape)}")
    if not torch.isfinite(weights_row).all() or (weights_row < 0).any():
        raise ValueError("weights_row must hold finite, non-negative attention weights")
    if not isinstance(exclude_mask, Tensor) or exclude_mask.dtype != torch.bool:
        kind = exclude_mask.dtype if isinstance(exclude_mask, Tensor) else type(exclude_mask).__name__
        raise TypeError(f"exclude_mask must be a bool tensor (True = set the token apart); got {kind}")
    try:  # numpy's: torch.broadcast_shapes loads torch's symbolic-shape machinery on first use
        shape = torch.Size(np.broadcast_shapes(tuple(exclude_mask.shape), tuple(weights_row.shape)))
    except ValueError:
        shape = None
    if shape != weights_row.shape:
        raise ValueError(
            f"exclude_mask of shape {tuple(exclude_mask.shape)} must broadcast to weights_row's shape "
            f"{tuple(weights_row.shape)} (for example (N,) = ({weights_row.shape[-1]},))"
        )
    w = weights_row.to(torch.promote_types(weights_row.dtype, torch.float32))  # (..., N)
    excluded_mask = exclude_mask.to(w.device)  # broadcastable to (..., N)
    kept = w.masked_fill(excluded_mask, 0.0)  # (..., N)
    on_excluded = (w - kept).sum(-1)  # (...)
    total = w.sum(-1)  # (...)
    excluded = on_excluded / total.where(total > 0, torch.ones_like(total))  # (...); 0 for an all-zero row
    kept_total = kept.sum(-1, keepdim=True)  # (..., 1)
    kept = kept / kept_total.where(kept_total > 0, torch.ones_like(kept_total))  # (..., N)
    return AttentionShare(excluded=excluded, kept=kept)

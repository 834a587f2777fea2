"""Attention statistics over long sequences without materialising the weights.

For 16k tokens and 8 heads the weights take 8.6 GB in float32; the statistics a person
wants to read (where does each token look, how spread out is its attention, which
tokens draw attention, how much goes to a chosen word) fit in O((Nq + Nk) * H * k).
They are computed tile by tile, as the tiled backend computes attention: a first pass
over a query block's key tiles finds the LSE (running max and sum) and the top-k
scores; a second pass turns each tile's scores into exact probabilities with that LSE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.functional.masks import MaskSpec
from qkv.functional.tiled import NEG_INF, key_blocks, lse_dtype, split_groups, tile_scores

__all__ = ["AttentionStats", "streaming_stats"]


@dataclass(frozen=True)
class AttentionStats:
    """Per-query and per-key summaries of the attention weights.

    Weights of hidden keys are 0; a query that sees no key has entropy 0, LSE -inf,
    top-k index -1 and weight 0 everywhere.
    """

    entropy: Tensor  # (B, Hq, Nq) entropy of each query's weights, in nats
    topk_index: Tensor  # (B, Hq, Nq, k) int64 key positions, most attended first; -1 if hidden
    topk_weight: Tensor  # (B, Hq, Nq, k) their weights
    received: Tensor  # (B, Hq, Nk) attention each key receives, summed over queries
    focus_weight: Tensor | None  # (B, Hq, Nq, F) weight each query gives each focus key
    lse: Tensor  # (B, Hq, Nq) log-sum-exp of each query's scores


def merge_topk(
    best_score: Tensor, best_index: Tensor, scores: Tensor, offset: int, topk: int
) -> tuple[Tensor, Tensor]:
    """Merge a tile's scores into the running top-k.

    Args:
        best_score: (..., k) running best scores, sorted descending.
        best_index: (..., k) their key positions.
        scores: (..., bk) the tile's scores, for keys offset .. offset + bk - 1.
        offset: position of the tile's first key.
        topk: k.
    """
    tile_best, tile_index = scores.topk(min(topk, scores.shape[-1]), dim=-1)
    merged_score = torch.cat([best_score, tile_best], dim=-1)
    merged_index = torch.cat([best_index, tile_index + offset], dim=-1)
    best_score, order = merged_score.topk(topk, dim=-1)
    return best_score, merged_index.gather(-1, order)


def streaming_stats(
    q: Tensor,
    k: Tensor,
    spec: MaskSpec,
    scale: float,
    topk: int,
    focus: Tensor | None,
    block_q: int = 512,
    block_k: int = 512,
) -> AttentionStats:
    """Compute :class:`AttentionStats` tile by tile.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq is a multiple of Hkv.
        spec: the call's masking.
        scale: multiplies q k^T.
        topk: keys kept per query (at most Nk).
        focus: (F,) int64 key positions, or None.
        block_q: query rows per tile.
        block_k: keys per tile.
    """
    _batch, _num_q_heads, nq, _ = q.shape
    nk = k.shape[2]
    topk = min(topk, nk)
    q5, k5, _ = split_groups(q, k, k[..., :0], scale)  # q5: (B, Hkv, G, Nq, D)
    dtype = q5.dtype
    grouped = q5.shape[:-1]  # (B, Hkv, G, Nq)
    entropy = torch.zeros(grouped, dtype=dtype, device=q.device)
    lse = torch.full(grouped, NEG_INF, dtype=lse_dtype(q.dtype), device=q.device)
    topk_score = torch.full(grouped + (topk,), NEG_INF, dtype=dtype, device=q.device)
    topk_index = torch.full(grouped + (topk,), -1, dtype=torch.long, device=q.device)
    received = torch.zeros(grouped[:-1] + (nk,), dtype=dtype, device=q.device)
    focus_weight = None
    if focus is not None:
        focus_weight = torch.zeros(grouped + (focus.numel(),), dtype=dtype, device=q.device)
    needs_clamp = not spec.is_empty  # -inf scores would make p * log p = 0 * -inf

    for qs in range(0, nq, block_q):
        qe = min(qs + block_q, nq)
        q_tile = q5[..., qs:qe, :]
        key_tiles = key_blocks(spec, qs, qe, block_k)
        # Pass 1: the LSE by an online max and sum, and the top-k scores.
        row_max = torch.full(grouped[:-1] + (qe - qs,), NEG_INF, dtype=dtype, device=q.device)
        row_sum = torch.zeros_like(row_max)  # (B, Hkv, G, bq)
        best_score = topk_score[..., qs:qe, :].clone()  # (B, Hkv, G, bq, k), sorted
        best_index = topk_index[..., qs:qe, :].clone()
        for ks, ke in key_tiles:
            scores = tile_scores(q_tile, k5[..., ks:ke, :], spec, (qs, qe, ks, ke))
            tile_max = scores.amax(dim=-1)  # (B, Hkv, G, bq)
            # Only rows whose best new score beats their current k-th best can change.
            improves = tile_max > best_score[..., -1]
            if bool(improves.all()):
                best_score, best_index = merge_topk(best_score, best_index, scores, ks, topk)
            elif bool(improves.any()):
                best_score[improves], best_index[improves] = merge_topk(
                    best_score[improves], best_index[improves], scores[improves], ks, topk
                )
            new_max = torch.maximum(row_max, tile_max)
            shift = new_max.masked_fill(new_max == NEG_INF, 0.0)
            row_sum.mul_(torch.exp(row_max - shift)).add_(
                scores.sub_(shift.unsqueeze(-1)).exp_().sum(dim=-1)
            )
            row_max = new_max
        seen = row_sum != 0
        block_lse = torch.where(seen, row_max + torch.log(row_sum), NEG_INF)  # (B, Hkv, G, bq)
        lse[..., qs:qe] = block_lse.to(lse.dtype)
        topk_score[..., qs:qe, :] = best_score
        topk_index[..., qs:qe, :] = best_index.masked_fill(best_score == NEG_INF, -1)

        # Pass 2: exact probabilities p = exp(s - lse) for entropy, received and focus.
        # log p = (s - max) - log(sum): subtracting the max first keeps float32 rounding at the
        # level of the softmax itself rather than of |lse|. Empty rows: p = exp(-inf) = 0.
        max_shift = row_max.masked_fill(~seen, float("inf")).unsqueeze(-1)  # (B, Hkv, G, bq, 1)
        log_sum = torch.log(row_sum.masked_fill(~seen, 1.0)).unsqueeze(-1)
        for ks, ke in key_tiles:
            log_probs = tile_scores(q_tile, k5[..., ks:ke, :], spec, (qs, qe, ks, ke))
            log_probs.sub_(max_shift).sub_(log_sum)
            if needs_clamp:
                log_probs.clamp_(min=torch.finfo(dtype).min)
            probs = torch.exp(log_probs)  # (B, Hkv, G, bq, bk)
            entropy[..., qs:qe] -= torch.linalg.vecdot(probs, log_probs)
            received[..., ks:ke] += probs.sum(dim=-2)
            if focus is not None:
                inside = (focus >= ks) & (focus < ke)
                if bool(inside.any()):
                    focus_weight[..., qs:qe, inside] = probs[..., focus[inside] - ks]

    def heads(t: Tensor) -> Tensor:  # (B, Hkv, G, ...) -> (B, Hq, ...)
        return t.flatten(1, 2)

    topk_weight = torch.exp(topk_score - lse.to(dtype).unsqueeze(-1).masked_fill(
        lse.unsqueeze(-1) == NEG_INF, float("inf")))
    out_dtype = q.dtype
    return AttentionStats(
        entropy=heads(entropy).to(out_dtype),
        topk_index=heads(topk_index),
        topk_weight=heads(topk_weight).to(out_dtype),
        received=heads(received).to(out_dtype),
        focus_weight=None if focus_weight is None else heads(focus_weight).to(out_dtype),
        lse=heads(lse),
    )

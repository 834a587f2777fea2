"""The FlashAttention algorithm in plain PyTorch: exact attention in tiles.

Keys and values are visited block by block. For each query block the softmax is
computed *online*: a running maximum ``m`` and a running sum ``l`` are rescaled each
time a new key block raises the maximum, so the full (Nq, Nk) score matrix never
exists (Dao et al., 2022; Milakov & Gimelshein, 2018). The forward saves only the
output and the log-sum-exp ``lse = m + log(l)``; the backward recomputes every tile's
probabilities from the LSE, as FlashAttention-2 does (Dao, 2023). Tiles that a causal
mask or a window hides entirely are skipped, forward and backward.

Grouped-query attention is handled without copying keys and values: queries are
viewed as (B, Hkv, G, N, D) with G = Hq // Hkv, and keys as (B, Hkv, 1, N, D).
Half-precision inputs are computed in float32 and rounded once at the end.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from qkv.functional.masks import BlockVisibility, MaskSpec, slice_tile

__all__ = ["tiled_attention", "DEFAULT_BLOCK_Q", "DEFAULT_BLOCK_K"]

DEFAULT_BLOCK_Q = 256  # query rows per tile (tuned on a 2-core CPU: see BENCHMARKS)
DEFAULT_BLOCK_K = 512  # keys per tile
NEG_INF = float("-inf")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate half precision in float32, as FlashAttention does."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The LSE is float32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def group_heads(t: Tensor | None, num_kv_heads: int) -> Tensor | None:
    """View a (b, Hq|1, r, c) mask or bias tile as (b, Hkv|1, G|1, r, c).

    A 2-D (r, c) tile (causal/window structure alone) broadcasts as it is.
    """
    if t is None or t.dim() == 2:
        return t
    if t.shape[1] == 1:
        return t.unsqueeze(2)
    return t.unflatten(1, (num_kv_heads, t.shape[1] // num_kv_heads))


def key_blocks(spec: MaskSpec, q_start: int, q_end: int, block_k: int) -> list[tuple[int, int]]:
    """(k_start, k_end) of every key block that queries q_start .. q_end - 1 may see.

    Only the blocks the causal/window band touches are visited, plus the blocks holding
    global keys (every block when a global query is among the rows), so a sliding
    window costs O(N * w), not O(N^2), in block bookkeeping too.
    """
    first, last = q_start + spec.offset, q_end - 1 + spec.offset  # positions of the rows
    low = 0 if spec.left is None else max(0, first - spec.left)
    high = spec.nk - 1 if spec.right is None else min(spec.nk - 1, last + spec.right)
    starts = set(range(low // block_k * block_k, high + 1, block_k)) if low <= high else set()
    if spec.global_tokens:
        if spec.globals_in(first, last + 1):
            starts = set(range(0, spec.nk, block_k))
        else:
            starts.update(g // block_k * block_k for g in spec.global_tokens)
    blocks = [(ks, min(ks + block_k, spec.nk)) for ks in sorted(starts)]
    return [(ks, ke) for ks, ke in blocks
            if spec.block_visibility(q_start, q_end, ks, ke) is not BlockVisibility.EMPTY]


def tiles(
    spec: MaskSpec, block_q: int, block_k: int, outer: str = "q"
) -> Iterator[tuple[int, int, int, int]]:
    """Yield (q_start, q_end, k_start, k_end) for every tile not hidden by the structure.

    ``outer`` names the loop that changes slowest: "q" (forward) or "k" (backward).
    """
    pairs = [
        (qs, min(qs + block_q, spec.nq), ks, ke)
        for qs in range(0, spec.nq, block_q)
        for ks, ke in key_blocks(spec, qs, min(qs + block_q, spec.nq), block_k)
    ]
    if outer == "k":
        pairs.sort(key=lambda tile: (tile[2], tile[0]))
    yield from pairs


def tile_scores(
    q_tile: Tensor, k_tile: Tensor, spec: MaskSpec, tile: tuple[int, int, int, int]
) -> Tensor:
    """Masked scores of one tile.

    Args:
        q_tile: (B, Hkv, G, bq, D) queries, already multiplied by the scale.
        k_tile: (B, Hkv, 1, bk, D) keys.
        spec: the call's masking.
        tile: (q_start, q_end, k_start, k_end).

    Returns:
        (B, Hkv, G, bq, bk) scores, -inf where hidden.
    """
    num_kv_heads = k_tile.shape[1]
    scores = torch.matmul(q_tile, k_tile.transpose(-2, -1))  # (B, Hkv, G, bq, bk)
    bias = group_heads(spec.tile_bias(*tile), num_kv_heads)
    if bias is not None:
        bias = bias.to(scores.dtype)
        scores += bias
        scores.masked_fill_(bias == NEG_INF, NEG_INF)  # -inf hides its key even where the score is NaN
    visible = group_heads(spec.tile_mask(*tile, device=scores.device), num_kv_heads)
    if visible is not None:
        scores.masked_fill_(~visible, NEG_INF)
    return scores


def split_groups(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(B, Hq, Nq, D), (B, Hkv, Nk, D), (B, Hkv, Nk, Dv) to the grouped compute layout.

    Returns q * scale as (B, Hkv, G, Nq, D), k as (B, Hkv, 1, Nk, D), v as (B, Hkv, 1, Nk, Dv),
    all in the compute dtype.
    """
    dtype = compute_dtype(q.dtype)
    num_kv_heads = k.shape[1]
    q_grouped = (q.to(dtype) * scale).unflatten(1, (num_kv_heads, -1))
    return q_grouped, k.to(dtype).unsqueeze(2), v.to(dtype).unsqueeze(2)


def tiled_forward(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, block_q: int, block_k: int
) -> tuple[Tensor, Tensor]:
    """Online-softmax forward. Shapes as :func:`tiled_attention`; returns (out, lse)."""
    batch, num_q_heads, nq, _ = q.shape
    _num_kv_heads, dv = k.shape[1], v.shape[-1]
    q5, k5, v5 = split_groups(q, k, v, scale)
    out = torch.zeros(q5.shape[:-1] + (dv,), dtype=q5.dtype, device=q.device)  # (B,Hkv,G,Nq,Dv)
    lse = torch.full(q5.shape[:-1], NEG_INF, dtype=lse_dtype(q.dtype), device=q.device)

    for qs in range(0, nq, block_q):
        qe = min(qs + block_q, nq)
        row_max = torch.full(q5.shape[:-2] + (qe - qs,), NEG_INF, dtype=q5.dtype, device=q.device)
        row_sum = torch.zeros_like(row_max)  # (B, Hkv, G, bq)
        acc = out[..., qs:qe, :]  # (B, Hkv, G, bq, Dv), accumulated in place
        for ks, ke in key_blocks(spec, qs, qe, block_k):
            tile = (qs, qe, ks, ke)
            scores = tile_scores(q5[..., qs:qe, :], k5[..., ks:ke, :], spec, tile)
            new_max = torch.maximum(row_max, scores.amax(dim=-1))  # (B, Hkv, G, bq)
            # A row that has seen only -inf keeps a finite shift, so exp never meets -inf - -inf.
            shift = new_max.masked_fill(new_max == NEG_INF, 0.0)
            rescale = torch.exp(row_max - shift)  # (B, Hkv, G, bq)
            probs = scores.sub_(shift.unsqueeze(-1)).exp_()  # (B, Hkv, G, bq, bk), unnormalised
            row_sum.mul_(rescale).add_(probs.sum(dim=-1))
            acc.mul_(rescale.unsqueeze(-1)).add_(torch.matmul(probs, v5[..., ks:ke, :]))
            row_max = new_max
        seen = row_sum != 0  # rows with no visible key keep out = 0, lse = -inf; NaN stays
        acc.div_(torch.where(seen, row_sum, 1.0).unsqueeze(-1))
        lse[..., qs:qe] = torch.where(seen, row_max + torch.log(row_sum), NEG_INF).to(lse.dtype)

    out = out.flatten(1, 2).to(q.dtype)  # (B, Hq, Nq, Dv)
    return out, lse.flatten(1, 2).reshape(batch, num_q_heads, nq)


def reduce_to_shape(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a gradient over the dimensions that ``shape`` broadcasts (size 1)."""
    dims = [i for i, (g, s) in enumerate(zip(grad.shape, shape)) if s == 1 and g != 1]
    return grad.sum(dim=dims, keepdim=True) if dims else grad


def tiled_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    grad_out: Tensor,
    grad_lse: Tensor | None,
    spec: MaskSpec,
    scale: float,
    block_q: int,
    block_k: int,
    bias_needs_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """FlashAttention-2 backward: recompute each tile's probabilities from the LSE.

    Returns (grad_q, grad_k, grad_v, grad_bias); grad_bias is None unless asked for.
    """
    num_kv_heads = k.shape[1]
    # Rows that saw no key (lse = -inf) read nothing: their queries, NaN or not, must not reach dk.
    q = q.masked_fill((lse == NEG_INF).unsqueeze(-1), 0.0)
    q5, k5, v5 = split_groups(q, k, v, scale)
    dtype = q5.dtype
    grad_out5 = grad_out.to(dtype).unflatten(1, (num_kv_heads, -1))  # (B, Hkv, G, Nq, Dv)
    out5 = out.to(dtype).unflatten(1, (num_kv_heads, -1))
    # delta_i = sum_j P_ij dP_ij = dO_i . O_i; a gradient flowing into the LSE adds P * dlse.
    delta = (grad_out5 * out5).sum(dim=-1)  # (B, Hkv, G, Nq)
    if grad_lse is not None:
        delta = delta - grad_lse.to(dtype).unflatten(1, (num_kv_heads, -1))
    # Rows that saw nothing have lse = -inf; +inf makes their probabilities exp(-inf) = 0.
    lse5 = lse.to(dtype).unflatten(1, (num_kv_heads, -1))
    lse5 = lse5.masked_fill(lse5 == NEG_INF, float("inf"))

    grad_q5 = torch.zeros_like(q5)  # (B, Hkv, G, Nq, D), w.r.t. the scaled queries
    grad_k5 = torch.zeros_like(k5)  # (B, Hkv, 1, Nk, D)
    grad_v5 = torch.zeros_like(v5)  # (B, Hkv, 1, Nk, Dv)
    bias = spec.float_bias
    grad_bias = torch.zeros_like(bias, dtype=dtype) if bias_needs_grad else None

    for tile in tiles(spec, block_q, block_k, outer="k"):
        qs, qe, ks, ke = tile
        q_tile, k_tile, v_tile = q5[..., qs:qe, :], k5[..., ks:ke, :], v5[..., ks:ke, :]
        grad_out_tile = grad_out5[..., qs:qe, :]  # (B, Hkv, G, bq, Dv)
        probs = tile_scores(q_tile, k_tile, spec, tile)
        probs = probs.sub_(lse5[..., qs:qe].unsqueeze(-1)).exp_()  # (B, Hkv, G, bq, bk)
        # Summing over the G query heads that share a key head is a sum over rows.
        grad_v5[..., ks:ke, :] += torch.matmul(
            probs.transpose(-2, -1), grad_out_tile
        ).sum(dim=2, keepdim=True)
        grad_scores = torch.matmul(grad_out_tile, v_tile.transpose(-2, -1))  # dP
        grad_scores.sub_(delta[..., qs:qe].unsqueeze(-1)).mul_(probs)  # dS = P * (dP - delta)
        grad_q5[..., qs:qe, :] += torch.matmul(grad_scores, k_tile)
        grad_k5[..., ks:ke, :] += torch.matmul(grad_scores.transpose(-2, -1), q_tile).sum(
            dim=2, keepdim=True
        )
        if grad_bias is not None:
            target = slice_tile(grad_bias, qs, qe, ks, ke)
            target += reduce_to_shape(grad_scores.flatten(1, 2), target.shape)

    grad_q = (grad_q5 * scale).flatten(1, 2).to(q.dtype)
    grad_k = grad_k5.squeeze(2).to(k.dtype)
    grad_v = grad_v5.squeeze(2).to(v.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return grad_q, grad_k, grad_v, grad_bias


class TiledAttention(torch.autograd.Function):
    """Autograd wrapper: saves (q, k, v, out, lse), never the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, bias, spec, scale, block_q, block_k):
        out, lse = tiled_forward(q, k, v, spec, scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.spec, ctx.scale, ctx.blocks = spec, scale, (block_q, block_k)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        bias_needs_grad = ctx.needs_input_grad[3]
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grad_q, grad_k, grad_v, grad_bias = tiled_backward(
            q, k, v, out, lse, grad_out, grad_lse, ctx.spec, ctx.scale, *ctx.blocks,
            bias_needs_grad=bias_needs_grad,
        )
        return grad_q, grad_k, grad_v, grad_bias, None, None, None, None


def tiled_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: MaskSpec,
    scale: float,
    return_lse: bool,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact attention by tiles with an online softmax (the FlashAttention algorithm).

    Memory is O((Nq + Nk) * D) plus one (B, Hq, block_q, block_k) tile.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq is a multiple of Hkv.
        v: (B, Hkv, Nk, Dv) values.
        spec: the call's masking.
        scale: multiplies q k^T.
        return_lse: also return the LSE (B, Hq, Nq), float32 (float64 for float64 inputs).
        block_q: query rows per tile.
        block_k: keys per tile.

    Returns:
        out (B, Hq, Nq, Dv), and lse when ``return_lse``.
    """
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite; got {scale}")
    out, lse = TiledAttention.apply(q, k, v, spec.float_bias, spec, scale, block_q, block_k)
    return (out, lse) if return_lse else out

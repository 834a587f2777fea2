"""FlashAttention-2 as Triton kernels: forward, backward, causal, windows, key padding, GQA.

The algorithm is :mod:`qkv.attention.tiled`'s (Dao, 2023), written as GPU programs: one
program per (query block, head) streams key blocks through an online softmax in
registers and writes only the output and the log-sum-exp; the backward recomputes each
tile's probabilities from the LSE, in three kernels: a preprocessing pass for
delta = rowsum(dO * O); one program per (key block, key/value head) that accumulates dK
and dV over the query heads of its group (grouped-query attention reads each key/value
head once, never a copy); and one program per (query block, head) for dQ. No atomics
anywhere, so gradients are bitwise reproducible (a second pass for dQ recomputes the
scores once more, and still runs faster than FlashAttention-2's atomic float32 adds).

Key blocks that the causal/window band hides are never visited; blocks it shows whole
run without any mask arithmetic; only the blocks it cuts through build a mask. Scores
live in the base-2 domain (``s * scale * log2(e)``, ``exp2``), as in FlashAttention's
kernels; the LSE is stored in natural log like every other qkv backend.

This module imports Triton at import time: use it through ``backend="triton"``
(:mod:`qkv.attention.triton_backend` imports it lazily). With ``TRITON_INTERPRET=1``
set before the first import, the same kernels run on CPU tensors under Triton's
interpreter, which is how CI tests them.

Integer arithmetic note: positions may be negative (more queries than keys), and Triton
divides integers like C (towards zero) on a GPU but like Python (towards -inf) in the
interpreter, so every division below is taken of a value clamped at 0 first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.jit import JITFunction

from qkv.attention.masks import MaskSpec
from qkv.attention.tiled import lse_dtype

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # older Triton: the pointer path only
    TensorDescriptor = None

__all__ = ["flash_forward", "flash_backward", "TritonFlashAttention", "INTERPRETED", "tma_unsupported_reason"]

LOG2E = tl.constexpr(1.4426950408889634)  # 1 / ln 2: natural-log scores to base 2
LN2 = tl.constexpr(0.6931471805599453)

# Block sizes used when autotuning is off (interpreter, or sizes chosen in the options).
INTERPRETER_BLOCKS = (16, 16)


# ---------------------------------------------------------------------------------------
# Which blocks a band touches
# ---------------------------------------------------------------------------------------
@triton.jit
def _cdiv_nonneg(x, d):
    """ceil(x / d) for x >= 0 (clamped), d > 0."""
    return (tl.maximum(x, 0) + d - 1) // d


@triton.jit
def _no_whole_blocks_when_empty(lo, full_lo, full_hi, hi):
    """With no whole block, the first masked range covers everything: lo .. hi.

    tl.where rather than a branch: the bounds may be compile-time ints on one path and
    run-time values on the other, which a compiled ``if`` cannot merge.
    """
    empty = full_lo >= full_hi
    end = tl.maximum(hi, lo)
    return lo, tl.where(empty, end, full_lo), tl.where(empty, end, full_hi), hi


@triton.jit
def _key_blocks_of_query_block(
    first_pos, last_pos, nk, window_left, window_right,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Key ranges [lo, full_lo) masked, [full_lo, full_hi) whole, [full_hi, hi) masked.

    Queries at positions first_pos .. last_pos see keys p - left .. p + right (< nk).
    A whole block is seen by every one of those queries and lies below nk.
    """
    lo = 0
    hi = nk
    if HAS_LEFT:
        lo = tl.maximum(first_pos - window_left, 0)
    if HAS_RIGHT:
        hi = tl.minimum(hi, last_pos + window_right + 1)
    lo = lo // BLOCK_N * BLOCK_N
    full_lo = lo
    full_hi = nk // BLOCK_N * BLOCK_N
    if HAS_LEFT:
        full_lo = tl.maximum(lo, _cdiv_nonneg(last_pos - window_left, BLOCK_N) * BLOCK_N)
    if HAS_RIGHT:
        full_hi = tl.minimum(full_hi, tl.maximum(first_pos + window_right + 1, 0) // BLOCK_N * BLOCK_N)
    return _no_whole_blocks_when_empty(lo, full_lo, full_hi, hi)


@triton.jit
def _query_blocks_of_key_block(
    start_n, nq, nk, offset, window_left, window_right,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Query ranges [lo, full_lo) masked, [full_lo, full_hi) whole, [full_hi, hi) masked.

    Key j is seen by positions j - right .. j + left, i.e. rows p - offset.
    """
    lo = 0
    hi = nq
    if HAS_RIGHT:
        lo = tl.maximum(start_n - window_right - offset, 0)
    if HAS_LEFT:
        hi = tl.minimum(hi, start_n + BLOCK_N - 1 + window_left - offset + 1)
    lo = lo // BLOCK_M * BLOCK_M
    full_lo = lo
    full_hi = nq // BLOCK_M * BLOCK_M
    if HAS_RIGHT:  # the block's last key must be <= the first row's position + right
        full_lo = tl.maximum(lo, _cdiv_nonneg(start_n + BLOCK_N - 1 - window_right - offset, BLOCK_M) * BLOCK_M)
    if HAS_LEFT:  # the block's first key must be >= the last row's position - left
        full_hi = tl.minimum(full_hi, tl.maximum(start_n + window_left - offset + 1, 0) // BLOCK_M * BLOCK_M)
    full_hi = tl.where(start_n + BLOCK_N > nk, 0, full_hi)  # a key block past nk is never whole
    return _no_whole_blocks_when_empty(lo, full_lo, full_hi, hi)


@triton.jit
def _dot(a, b, ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b accumulated in ACC_DTYPE.

    PRECISION "emulate-bf16" (bfloat16 under Triton 3.9's interpreter, which multiplies
    bfloat16 matrices as if their bits were integers) multiplies in float32: products of
    bfloat16 numbers are exact in float32, so this is what a GPU's tensor cores compute.
    """
    if PRECISION == "emulate-bf16":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee", out_dtype=ACC_DTYPE)
    return tl.dot(a, b, input_precision=PRECISION, out_dtype=ACC_DTYPE)


@triton.jit
def _dot_into(acc, a, b, PRECISION: tl.constexpr):
    """acc + a @ b, accumulated in place by the matrix unit (no separate addition)."""
    if PRECISION == "emulate-bf16":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _cast(x, dtype: tl.constexpr, PRECISION: tl.constexpr):
    """x rounded to ``dtype`` to nearest, ties to even, as a GPU rounds.

    Triton 3.9's interpreter truncates float32 to bfloat16 (a bias that grows with every
    sum), so under "emulate-bf16" the rounding is done on the bits first.
    """
    if PRECISION == "emulate-bf16":
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        rounded = bits.to(tl.float32, bitcast=True)
        x = tl.where(x != x, x, rounded)  # NaN stays NaN
    return x.to(dtype)


@triton.jit
def _load_tile(ptrs, first_ok, second_ok, CHECK_FIRST: tl.constexpr, CHECK_SECOND: tl.constexpr):
    """Load a 2-D tile, masking (with zeros) only along the dimensions that can run out.

    Blocks inside the band and head dims equal to their power-of-two block load unmasked,
    which keeps the loads of the hot loops vectorised.
    """
    if CHECK_FIRST and CHECK_SECOND:
        return tl.load(ptrs, mask=first_ok[:, None] & second_ok[None, :], other=0.0)
    if CHECK_FIRST:
        return tl.load(ptrs, mask=first_ok[:, None], other=0.0)
    if CHECK_SECOND:
        return tl.load(ptrs, mask=second_ok[None, :], other=0.0)
    return tl.load(ptrs)


@triton.jit
def _visible(
    rows, cols, nq, nk, offset, window_left, window_right, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
):
    """(len(rows), len(cols)) bool: in bounds and inside the causal/window band."""
    positions = rows[:, None] + offset
    visible = (rows[:, None] < nq) & (cols[None, :] < nk)
    if HAS_LEFT:
        visible &= cols[None, :] >= positions - window_left
    if HAS_RIGHT:
        visible &= cols[None, :] <= positions + window_right
    return visible


@triton.jit
def _scores(
    q, k_t, rows, cols, key_in, pad_base, nq, nk, offset, window_left, window_right,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PADDING: tl.constexpr, MASKED: tl.constexpr,
    ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """Unscaled scores ``q @ k_t`` of a (BM, BN) tile, -inf where hidden.

    The callers scale inside the exponent, ``exp2(fma(s, scale * log2(e), -shift))``: one
    fused operation per score instead of two. This needs ``qk_scale > 0``, which
    :class:`TritonFlashAttention` guarantees.
    """
    scores = _dot(q, k_t, ACC_DTYPE, PRECISION)
    if MASKED:
        visible = _visible(rows, cols, nq, nk, offset, window_left, window_right, HAS_LEFT, HAS_RIGHT)
        scores = tl.where(visible, scores, float("-inf"))
    if HAS_PADDING:
        keep = tl.load(pad_base + cols, mask=key_in, other=0)
        scores = tl.where(keep[None, :] != 0, scores, float("-inf"))
    return scores


# ---------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------
@triton.jit
def _forward_key_range(
    acc, row_max, row_sum, q, k_base, v_base, pad_base, desc_k, desc_v, b32, kv_head32, rows, offs_n, offs_d,
    offs_dv, start, end, nq, nk, offset, head_dim, value_dim, qk_scale, window_left, window_right,
    stride_kn, stride_kd, stride_vn, stride_vd,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PADDING: tl.constexpr, MASKED: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
):
    """Online softmax over the key blocks start .. end of one query block.

    With ``USE_TMA`` the K and V tiles come through tensor descriptors (Hopper's bulk copy
    engine, which zero-fills rows past Nk and columns past D): one copy per tile instead of
    an address per element, which leaves the threads' issue slots to the softmax.
    """
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        key_in = cols < nk
        if USE_TMA:
            k_t = tl.trans(desc_k.load([b32, kv_head32, start_n, 0]).reshape(BLOCK_N, BLOCK_D))  # (D, BN)
        else:
            k_t = _load_tile(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                             offs_d < head_dim, key_in, not EVEN_D, MASKED)  # (D, BN)
        scores = _scores(q, k_t, rows, cols, key_in, pad_base, nq, nk, offset, window_left, window_right,
                         HAS_LEFT, HAS_RIGHT, HAS_PADDING, MASKED, ACC_DTYPE, PRECISION)  # (BM, BN)
        new_max = tl.maximum(row_max, tl.max(scores, 1) * qk_scale)  # (BM,), base 2
        # A row that has seen only -inf keeps a finite shift: exp2 never meets -inf - -inf.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        rescale = tl.exp2(row_max - shift)
        probs = tl.exp2(tl.fma(scores, qk_scale, -shift[:, None]))  # (BM, BN), unnormalised
        row_sum = row_sum * rescale + tl.sum(probs, 1)
        if USE_TMA:
            v = desc_v.load([b32, kv_head32, start_n, 0]).reshape(BLOCK_N, BLOCK_DV)  # (BN, Dv)
        else:
            v = _load_tile(v_base + cols[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                           key_in, offs_dv < value_dim, MASKED, not EVEN_DV)  # (BN, Dv)
        acc = _dot_into(acc * rescale[:, None], _cast(probs, v.dtype, PRECISION), v, PRECISION)
        row_max = new_max
    return acc, row_max, row_sum


@triton.jit
def _forward_kernel(
    Q, K, V, Out, Lse, KeyPadding, DescK, DescV,  # DescK/DescV: K and V's tensor descriptors, or None
    qk_scale,  # scale * log2(e)
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_lb, stride_lh, stride_pb,
    num_q_heads, group_size, nq, nk, head_dim, value_dim, window_left, window_right,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PADDING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr,
    ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Last query blocks first: under a causal mask they see the most keys, and starting the
    # longest programs first keeps the last wave of the grid short.
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    batch_head = tl.program_id(1)
    b = (batch_head // num_q_heads).to(tl.int64)  # int64: offsets of large tensors pass 2**31
    h = (batch_head % num_q_heads).to(tl.int64)
    kv_head = h // group_size
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offset = nk - nq  # position of query 0 among the keys (bottom-right alignment)

    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=(rows[:, None] < nq) & (offs_d[None, :] < head_dim), other=0.0)  # (BM, D)
    k_base = K + b * stride_kb + kv_head * stride_kh
    v_base = V + b * stride_vb + kv_head * stride_vh
    pad_base = KeyPadding + b * stride_pb
    b32, kv_head32 = b.to(tl.int32), kv_head.to(tl.int32)  # descriptor coordinates

    row_max = tl.full([BLOCK_M], float("-inf"), dtype=ACC_DTYPE)
    row_sum = tl.zeros([BLOCK_M], dtype=ACC_DTYPE)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=ACC_DTYPE)
    lo, full_lo, full_hi, hi = _key_blocks_of_query_block(
        start_m + offset, start_m + BLOCK_M - 1 + offset, nk, window_left, window_right,
        HAS_LEFT, HAS_RIGHT, BLOCK_N)
    acc, row_max, row_sum = _forward_key_range(
        acc, row_max, row_sum, q, k_base, v_base, pad_base, DescK, DescV, b32, kv_head32, rows, offs_n, offs_d,
        offs_dv, lo, full_lo, nq, nk, offset, head_dim, value_dim, qk_scale, window_left, window_right,
        stride_kn, stride_kd, stride_vn, stride_vd,
        HAS_LEFT, HAS_RIGHT, HAS_PADDING, True, EVEN_D, EVEN_DV, BLOCK_N, BLOCK_D, BLOCK_DV, ACC_DTYPE,
        PRECISION, USE_TMA)
    acc, row_max, row_sum = _forward_key_range(
        acc, row_max, row_sum, q, k_base, v_base, pad_base, DescK, DescV, b32, kv_head32, rows, offs_n, offs_d,
        offs_dv, full_lo, full_hi, nq, nk, offset, head_dim, value_dim, qk_scale, window_left, window_right,
        stride_kn, stride_kd, stride_vn, stride_vd,
        HAS_LEFT, HAS_RIGHT, HAS_PADDING, False, EVEN_D, EVEN_DV, BLOCK_N, BLOCK_D, BLOCK_DV, ACC_DTYPE,
        PRECISION, USE_TMA)
    acc, row_max, row_sum = _forward_key_range(
        acc, row_max, row_sum, q, k_base, v_base, pad_base, DescK, DescV, b32, kv_head32, rows, offs_n, offs_d,
        offs_dv, full_hi, hi, nq, nk, offset, head_dim, value_dim, qk_scale, window_left, window_right,
        stride_kn, stride_kd, stride_vn, stride_vd,
        HAS_LEFT, HAS_RIGHT, HAS_PADDING, True, EVEN_D, EVEN_DV, BLOCK_N, BLOCK_D, BLOCK_DV, ACC_DTYPE,
        PRECISION, USE_TMA)

    # Rows that saw no key keep out = 0 and lse = -inf; a NaN input still comes out as NaN.
    seen = row_sum != 0
    safe_sum = tl.where(seen, row_sum, 1.0)
    out = acc / safe_sum[:, None]
    lse = tl.where(seen, (row_max + tl.log2(safe_sum)) * LN2, float("-inf"))
    row_in = rows < nq
    tl.store(Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + offs_dv[None, :] * stride_od,
             _cast(out, Out.dtype.element_ty, PRECISION), mask=row_in[:, None] & (offs_dv[None, :] < value_dim))
    tl.store(Lse + b * stride_lb + h * stride_lh + rows, lse.to(Lse.dtype.element_ty), mask=row_in)


# ---------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------
@triton.jit
def _delta_kernel(
    Out, DO, GradLse, Delta,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_lb, stride_lh,
    num_q_heads, nq, value_dim,
    HAS_GRAD_LSE: tl.constexpr, BLOCK_DV: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta = rowsum(dO * O) - dLSE for one block of query rows: the backward's preprocessing pass.

    A gradient flowing into the LSE adds P * dLSE to dS, which is the same as subtracting
    it from delta.
    """
    batch_head = tl.program_id(1)
    b = (batch_head // num_q_heads).to(tl.int64)
    h = (batch_head % num_q_heads).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_in = rows < nq
    tile_in = row_in[:, None] & (offs_dv[None, :] < value_dim)
    out = tl.load(Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + offs_dv[None, :] * stride_od,
                  mask=tile_in, other=0.0).to(ACC_DTYPE)  # (BM, Dv)
    grad_out = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_don
                       + offs_dv[None, :] * stride_dod, mask=tile_in, other=0.0).to(ACC_DTYPE)  # (BM, Dv)
    delta = tl.sum(out * grad_out, 1)  # (BM,)
    if HAS_GRAD_LSE:
        delta -= tl.load(GradLse + b * stride_lb + h * stride_lh + rows, mask=row_in, other=0.0).to(ACC_DTYPE)
    tl.store(Delta + b * stride_lb + h * stride_lh + rows, delta, mask=row_in)


@triton.jit
def _backward_query_range(
    dk, dv, k, v, keep, cols, q_base, do_base, lse_base, delta_base, offs_m, offs_d, offs_dv,
    start, end, nq, nk, offset, head_dim, value_dim, qk_scale, window_left, window_right,
    stride_qn, stride_qd, stride_don, stride_dod,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PADDING: tl.constexpr, MASKED: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr, BLOCK_M: tl.constexpr,
    ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """dK, dV of one key block from the query blocks start .. end of one query head."""
    for start_m in range(start, end, BLOCK_M):
        rows = start_m + offs_m
        row_in = rows < nq
        q = _load_tile(q_base + rows[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                       row_in, offs_d < head_dim, MASKED, not EVEN_D)  # (BM, D)
        grad_out = _load_tile(do_base + rows[:, None] * stride_don + offs_dv[None, :] * stride_dod,
                              row_in, offs_dv < value_dim, MASKED, not EVEN_DV)  # (BM, Dv)
        lse = tl.load(lse_base + rows, mask=row_in, other=float("-inf")).to(ACC_DTYPE)
        # Rows that saw nothing have lse = -inf; +inf makes their probabilities exp2(-inf) = 0.
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
        delta = tl.load(delta_base + rows, mask=row_in, other=0.0).to(ACC_DTYPE)
        scores_t = _dot(k, tl.trans(q), ACC_DTYPE, PRECISION)  # (BN, BM), unscaled
        if MASKED:
            positions = rows[None, :] + offset
            visible_t = row_in[None, :] & (cols[:, None] < nk)
            if HAS_LEFT:
                visible_t &= cols[:, None] >= positions - window_left
            if HAS_RIGHT:
                visible_t &= cols[:, None] <= positions + window_right
            scores_t = tl.where(visible_t, scores_t, float("-inf"))
        if HAS_PADDING:
            scores_t = tl.where(keep[:, None] != 0, scores_t, float("-inf"))
        probs_t = tl.exp2(tl.fma(scores_t, qk_scale, -lse2[None, :]))  # (BN, BM)
        dv = _dot_into(dv, _cast(probs_t, grad_out.dtype, PRECISION), grad_out, PRECISION)
        dp_t = _dot(v, tl.trans(grad_out), ACC_DTYPE, PRECISION)  # (BN, BM)
        ds_t = probs_t * (dp_t - delta[None, :])  # dS = P * (dP - delta), transposed
        dk = _dot_into(dk, _cast(ds_t, q.dtype, PRECISION), q, PRECISION)
    return dk, dv


@triton.jit
def _backward_kv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV, KeyPadding,
    qk_scale, sm_scale,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_lb, stride_lh, stride_pb,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    num_kv_heads, group_size, nq, nk, head_dim, value_dim, window_left, window_right,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PADDING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr,
    ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    batch_head = tl.program_id(1)
    b = (batch_head // num_kv_heads).to(tl.int64)
    kv_head = (batch_head % num_kv_heads).to(tl.int64)
    cols = start_n + tl.arange(0, BLOCK_N)
    col_in = cols < nk
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offset = nk - nq

    k = tl.load(K + b * stride_kb + kv_head * stride_kh + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=col_in[:, None] & (offs_d[None, :] < head_dim), other=0.0)  # (BN, D)
    v = tl.load(V + b * stride_vb + kv_head * stride_vh + cols[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                mask=col_in[:, None] & (offs_dv[None, :] < value_dim), other=0.0)  # (BN, Dv)
    keep = cols  # unused unless HAS_PADDING
    if HAS_PADDING:
        keep = tl.load(KeyPadding + b * stride_pb + cols, mask=col_in, other=0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC_DTYPE)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=ACC_DTYPE)
    lo, full_lo, full_hi, hi = _query_blocks_of_key_block(
        start_n, nq, nk, offset, window_left, window_right, HAS_LEFT, HAS_RIGHT, BLOCK_M, BLOCK_N)

    # Grouped-query attention: the G query heads of this key/value head, one after another.
    for g in range(group_size):
        h = kv_head * group_size + g
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        lse_base = Lse + b * stride_lb + h * stride_lh
        delta_base = Delta + b * stride_lb + h * stride_lh
        dk, dv = _backward_query_range(
            dk, dv, k, v, keep, cols, q_base, do_base, lse_base, delta_base, offs_m, offs_d, offs_dv,
            lo, full_lo, nq, nk, offset, head_dim, value_dim, qk_scale, window_left, window_right,
            stride_qn, stride_qd, stride_don, stride_dod,
            HAS_LEFT, HAS_RIGHT, HAS_PADDING, True, EVEN_D, EVEN_DV, BLOCK_M, ACC_DTYPE, PRECISION)
        dk, dv = _backward_query_range(
            dk, dv, k, v, keep, cols, q_base, do_base, lse_base, delta_base, offs_m, offs_d, offs_dv,
            full_lo, full_hi, nq, nk, offset, head_dim, value_dim, qk_scale, window_left, window_right,
            stride_qn, stride_qd, stride_don, stride_dod,
            HAS_LEFT, HAS_RIGHT, HAS_PADDING, False, EVEN_D, EVEN_DV, BLOCK_M, ACC_DTYPE, PRECISION)
        dk, dv = _backward_query_range(
            dk, dv, k, v, keep, cols, q_base, do_base, lse_base, delta_base, offs_m, offs_d, offs_dv,
            full_hi, hi, nq, nk, offset, head_dim, value_dim, qk_scale, window_left, window_right,
            stride_qn, stride_qd, stride_don, stride_dod,
            HAS_LEFT, HAS_RIGHT, HAS_PADDING, True, EVEN_D, EVEN_DV, BLOCK_M, ACC_DTYPE, PRECISION)

    dk = dk * sm_scale
    tl.store(DK + b * stride_dkb + kv_head * stride_dkh + cols[:, None] * stride_dkn + offs_d[None, :],
             _cast(dk, DK.dtype.element_ty, PRECISION), mask=col_in[:, None] & (offs_d[None, :] < head_dim))
    tl.store(DV + b * stride_dvb + kv_head * stride_dvh + cols[:, None] * stride_dvn + offs_dv[None, :],
             _cast(dv, DV.dtype.element_ty, PRECISION), mask=col_in[:, None] & (offs_dv[None, :] < value_dim))


@triton.jit
def _backward_q_key_range(
    dq, q, grad_out, lse2, delta, k_base, v_base, pad_base, rows, offs_n, offs_d, offs_dv,
    start, end, nq, nk, offset, head_dim, value_dim, qk_scale, window_left, window_right,
    stride_kn, stride_kd, stride_vn, stride_vd,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PADDING: tl.constexpr, MASKED: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr, BLOCK_N: tl.constexpr, ACC_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dQ of one query block from the key blocks start .. end."""
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        key_in = cols < nk
        k_t = _load_tile(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                         offs_d < head_dim, key_in, not EVEN_D, MASKED)  # (D, BN)
        v_t = _load_tile(v_base + cols[None, :] * stride_vn + offs_dv[:, None] * stride_vd,
                         offs_dv < value_dim, key_in, not EVEN_DV, MASKED)  # (Dv, BN)
        scores = _scores(q, k_t, rows, cols, key_in, pad_base, nq, nk, offset, window_left, window_right,
                         HAS_LEFT, HAS_RIGHT, HAS_PADDING, MASKED, ACC_DTYPE, PRECISION)  # (BM, BN)
        probs = tl.exp2(tl.fma(scores, qk_scale, -lse2[:, None]))
        dp = _dot(grad_out, v_t, ACC_DTYPE, PRECISION)  # (BM, BN)
        ds = probs * (dp - delta[:, None])
        dq = _dot_into(dq, _cast(ds, k_t.dtype, PRECISION), tl.trans(k_t), PRECISION)
    return dq


@triton.jit
def _backward_q_kernel(
    Q, K, V, DO, Lse, Delta, DQ, KeyPadding,
    qk_scale, sm_scale,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_lb, stride_lh, stride_pb,
    stride_dqb, stride_dqh, stride_dqn,
    num_q_heads, group_size, nq, nk, head_dim, value_dim, window_left, window_right,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PADDING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr,
    ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M  # longest first, as in the forward
    batch_head = tl.program_id(1)
    b = (batch_head // num_q_heads).to(tl.int64)
    h = (batch_head % num_q_heads).to(tl.int64)
    kv_head = h // group_size
    rows = start_m + tl.arange(0, BLOCK_M)
    row_in = rows < nq
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offset = nk - nq

    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=row_in[:, None] & (offs_d[None, :] < head_dim), other=0.0)
    grad_out = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_don
                       + offs_dv[None, :] * stride_dod,
                       mask=row_in[:, None] & (offs_dv[None, :] < value_dim), other=0.0)
    lse = tl.load(Lse + b * stride_lb + h * stride_lh + rows, mask=row_in, other=float("-inf")).to(ACC_DTYPE)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
    delta = tl.load(Delta + b * stride_lb + h * stride_lh + rows, mask=row_in, other=0.0).to(ACC_DTYPE)
    k_base = K + b * stride_kb + kv_head * stride_kh
    v_base = V + b * stride_vb + kv_head * stride_vh
    pad_base = KeyPadding + b * stride_pb
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC_DTYPE)
    lo, full_lo, full_hi, hi = _key_blocks_of_query_block(
        start_m + offset, start_m + BLOCK_M - 1 + offset, nk, window_left, window_right,
        HAS_LEFT, HAS_RIGHT, BLOCK_N)
    dq = _backward_q_key_range(
        dq, q, grad_out, lse2, delta, k_base, v_base, pad_base, rows, offs_n, offs_d, offs_dv,
        lo, full_lo, nq, nk, offset, head_dim, value_dim, qk_scale, window_left, window_right,
        stride_kn, stride_kd, stride_vn, stride_vd,
        HAS_LEFT, HAS_RIGHT, HAS_PADDING, True, EVEN_D, EVEN_DV, BLOCK_N, ACC_DTYPE, PRECISION)
    dq = _backward_q_key_range(
        dq, q, grad_out, lse2, delta, k_base, v_base, pad_base, rows, offs_n, offs_d, offs_dv,
        full_lo, full_hi, nq, nk, offset, head_dim, value_dim, qk_scale, window_left, window_right,
        stride_kn, stride_kd, stride_vn, stride_vd,
        HAS_LEFT, HAS_RIGHT, HAS_PADDING, False, EVEN_D, EVEN_DV, BLOCK_N, ACC_DTYPE, PRECISION)
    dq = _backward_q_key_range(
        dq, q, grad_out, lse2, delta, k_base, v_base, pad_base, rows, offs_n, offs_d, offs_dv,
        full_hi, hi, nq, nk, offset, head_dim, value_dim, qk_scale, window_left, window_right,
        stride_kn, stride_kd, stride_vn, stride_vd,
        HAS_LEFT, HAS_RIGHT, HAS_PADDING, True, EVEN_D, EVEN_DV, BLOCK_N, ACC_DTYPE, PRECISION)
    tl.store(DQ + b * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqn + offs_d[None, :],
             _cast(dq * sm_scale, DQ.dtype.element_ty, PRECISION), mask=row_in[:, None] & (offs_d[None, :] < head_dim))


# ---------------------------------------------------------------------------------------
# Launching: block sizes, autotuning, the autograd function
# ---------------------------------------------------------------------------------------
# Triton decides when a function is decorated (TRITON_INTERPRET): its own library (tl.max,
# tl.sum) when Triton is imported, these kernels when this module is. Both must agree.
INTERPRETED = not isinstance(_forward_kernel, JITFunction)
LIBRARY_INTERPRETED = not isinstance(tl.max, JITFunction)
MIXED = INTERPRETED != LIBRARY_INTERPRETED

def _configs(shapes: list[tuple[int, int, int, int]], pre_hook=None) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s, pre_hook=pre_hook)
            for m, n, w, s in shapes]


# Tile shapes tried per GPU and shape, (BLOCK_M, BLOCK_N, warps, pipeline stages), a few per
# class of call: each one tried costs a compile on a shape's first call. Wide heads get
# smaller tiles so that a pipelined stage of K and V fits in shared memory; a band (a window
# on both sides, e.g. causal + window) gives each program few blocks, so its list holds tiles
# small enough for two to four programs per multiprocessor, which hide each other's start and
# end.
_FORWARD_SHAPES = {
    "small": [(128, 128, 8, 3), (128, 64, 4, 3)],
    "medium": [(128, 64, 8, 3), (128, 128, 8, 3)],
    "wide": [(128, 32, 8, 2), (64, 64, 4, 2)],
    "band": [(64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2), (32, 64, 4, 2), (128, 64, 8, 2)],
}
# dK/dV by key block (BLOCK_N keys stay in registers; BLOCK_M query rows per step).
_BACKWARD_KV_SHAPES = {
    "small": [(64, 128, 8, 2), (32, 128, 4, 3)],
    "medium": [(64, 128, 8, 2)],
    "wide": [(32, 64, 4, 2), (16, 64, 4, 2)],
    "band": [(32, 64, 4, 2), (16, 64, 4, 2), (32, 32, 4, 2), (64, 64, 4, 2)],
}
# dQ by query block (BLOCK_M rows stay; BLOCK_N keys per step): the transposed tiles.
_BACKWARD_Q_SHAPES = {
    "small": [(128, 64, 8, 2), (128, 32, 4, 3)],
    "medium": [(128, 64, 8, 2)],
    "wide": [(64, 32, 4, 2), (32, 32, 4, 2)],
    "band": [(64, 64, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2), (32, 32, 4, 2)],
}


def _call_class(meta: dict) -> str:
    """Which tile list a call draws from: by head dim, and "band" for two-sided windows."""
    head_dim = max(meta["BLOCK_D"], meta["BLOCK_DV"])
    if head_dim > 128:
        return "wide"
    if meta["HAS_LEFT"] and meta["HAS_RIGHT"]:
        return "band"
    return "small" if head_dim <= 64 else "medium"


def _pruner(shapes: dict[str, list[tuple[int, int, int, int]]]):
    """Autotuning prune: only the configurations of the call's class."""
    by_class = {name: {str(config) for config in _configs(listed)} for name, listed in shapes.items()}

    def prune(configs, named_args, **meta):
        keep = by_class[_call_class({**named_args, **meta})]
        return [config for config in configs if str(config) in keep]
    return prune


def _all_configs(shapes: dict[str, list[tuple[int, int, int, int]]], pre_hook=None) -> list[triton.Config]:
    unique = dict.fromkeys(shape for listed in shapes.values() for shape in listed)
    return _configs(list(unique), pre_hook)


def _shape_descriptor_blocks(args: dict) -> None:
    """Give K's and V's tensor descriptors (when the call uses them) the tile of the config
    about to run: (1, 1, BLOCK_N, head dim block)."""
    if args.get("DescK") is not None:
        args["DescK"].block_shape = [1, 1, args["BLOCK_N"], args["BLOCK_D"]]
        args["DescV"].block_shape = [1, 1, args["BLOCK_N"], args["BLOCK_DV"]]


_TUNING_KEY = ["nq", "nk", "head_dim", "value_dim", "group_size", "HAS_LEFT", "HAS_RIGHT", "HAS_PADDING"]
_TUNED: dict[str, object] = {}


def _tuned(name: str):
    """The autotuned launcher of a kernel, built on first use (GPU only)."""
    if name not in _TUNED:
        pre_hook = None
        if name == "forward":
            shapes, kernel, extra, pre_hook = _FORWARD_SHAPES, _forward_kernel, {}, _shape_descriptor_blocks
        elif name == "backward_kv":
            shapes, kernel, extra = _BACKWARD_KV_SHAPES, _backward_kv_kernel, {}
        else:
            shapes, kernel, extra = _BACKWARD_Q_SHAPES, _backward_q_kernel, {}
        _TUNED[name] = triton.autotune(_all_configs(shapes, pre_hook), key=_TUNING_KEY,
                                       prune_configs_by={"early_config_prune": _pruner(shapes)}, **extra)(kernel)
    return _TUNED[name]


def _launch(name: str, kernel, rows: int, programs: int, blocks: tuple[int, int] | None, args, meta) -> None:
    """Launch ``kernel`` over (blocks of ``rows``, ``programs``), autotuned unless ``blocks`` is given.

    ``rows`` counts queries for forward/dQ kernels and keys for the dK/dV kernel; the
    block that tiles them is BLOCK_M or BLOCK_N respectively.
    """
    tiled_by = "BLOCK_N" if name == "backward_kv" else "BLOCK_M"
    if blocks is None and INTERPRETED:
        blocks = INTERPRETER_BLOCKS
    if blocks is not None:
        block_m, block_n = blocks
        size = block_n if tiled_by == "BLOCK_N" else block_m
        if name == "forward":
            _shape_descriptor_blocks({**dict(zip(kernel.arg_names, args)), **meta, "BLOCK_N": block_n})
        kernel[(triton.cdiv(rows, size), programs)](*args, **meta, BLOCK_M=block_m, BLOCK_N=block_n,
                                                     num_warps=4, num_stages=2)
        return
    _tuned(name)[lambda config: (triton.cdiv(rows, config[tiled_by]), programs)](*args, **meta)


def _precision(dtype: torch.dtype) -> str:
    """How the kernels' matrix products round (see :func:`_dot`)."""
    if dtype in (torch.float32, torch.float64):
        return "ieee"  # float32 inputs must not be rounded to TF32 (the 2x rule)
    if dtype == torch.bfloat16 and INTERPRETED:
        return "emulate-bf16"
    return "tf32"  # ignored for float16/bfloat16: tensor cores take them as they are


def _geometry(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec) -> dict:
    """Constexpr and scalar arguments shared by every kernel."""
    dtype = q.dtype
    # A bound wider than every distance in the call does not bind; clamping keeps it in int32.
    reach = spec.nq + spec.nk + 1
    block_d = max(16, triton.next_power_of_2(q.shape[-1]))
    block_dv = max(16, triton.next_power_of_2(v.shape[-1]))
    return {
        "meta": {
            "HAS_LEFT": spec.left is not None,
            "HAS_RIGHT": spec.right is not None,
            "HAS_PADDING": spec.key_padding_mask is not None,
            "BLOCK_D": block_d,
            "BLOCK_DV": block_dv,
            "EVEN_D": block_d == q.shape[-1],  # no head-dim masks in the hot loops
            "EVEN_DV": block_dv == v.shape[-1],
            "ACC_DTYPE": tl.float64 if dtype == torch.float64 else tl.float32,
            "PRECISION": _precision(dtype),
        },
        "window": (min(spec.left or 0, reach), min(spec.right or 0, reach)),
        "group_size": q.shape[1] // k.shape[1],
    }


def _key_padding(spec: MaskSpec, k: Tensor) -> tuple[Tensor, int]:
    """The key padding mask as (B, Nk) int8 and its batch stride (a 1-element dummy without one)."""
    if spec.key_padding_mask is None:
        return torch.ones(1, dtype=torch.int8, device=k.device), 0
    padding = spec.key_padding_mask.to(device=k.device, dtype=torch.int8).contiguous()
    return padding, padding.stride(0)


def tma_unsupported_reason(k: Tensor, v: Tensor) -> str | None:
    """Why K and V cannot be read through tensor descriptors here, or None when they can.

    ``k``: (B, Hkv, Nk, D); ``v``: (B, Hkv, Nk, Dv).
    """
    if TensorDescriptor is None:
        return f"this Triton ({triton.__version__}) has no host tensor descriptors"
    if k.device.type == "cuda" and torch.cuda.get_device_capability(k.device)[0] < 9:
        return "tensor descriptors (TMA) need a Hopper or newer GPU (compute capability 9.0+)"
    if k.dtype not in (torch.float16, torch.bfloat16):
        return f"the descriptor path reads float16/bfloat16; got {k.dtype}"
    for name, tensor in (("k", k), ("v", v)):
        if tensor.stride(-1) != 1:
            return f"{name}'s last dimension is not contiguous (stride {tensor.stride(-1)})"
        if tensor.data_ptr() % 16 or any(stride * tensor.element_size() % 16 for stride in tensor.stride()[:-1]):
            return f"{name}'s address and strides must be multiples of 16 bytes; got strides {tensor.stride()}"
    return None


def _descriptors(k: Tensor, v: Tensor, meta: dict) -> tuple[object, object]:
    """Tensor descriptors over the whole (B, Hkv, Nk, D) K and V; the tile is set per config."""
    block_n = INTERPRETER_BLOCKS[1]  # replaced by _shape_descriptor_blocks before each launch
    return (TensorDescriptor(k, list(k.shape), list(k.stride()), [1, 1, block_n, meta["BLOCK_D"]]),
            TensorDescriptor(v, list(v.shape), list(v.stride()), [1, 1, block_n, meta["BLOCK_DV"]]))


def flash_forward(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, blocks: tuple[int, int] | None = None,
    tma: bool = False,
) -> tuple[Tensor, Tensor]:
    """Run the forward kernel.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq is a multiple of Hkv.
        v: (B, Hkv, Nk, Dv) values.
        spec: the call's masking (causal/window and key padding only).
        scale: multiplies q k^T; must be > 0 (:class:`TritonFlashAttention` maps the others).
        blocks: (BLOCK_M, BLOCK_N) to use instead of autotuning.
        tma: read K and V through tensor descriptors (see :func:`tma_unsupported_reason`).

    Returns:
        out (B, Hq, Nq, Dv) in q's dtype and lse (B, Hq, Nq) in float32 (float64 for float64).
    """
    batch, num_q_heads, nq, head_dim = q.shape
    nk, value_dim = k.shape[2], v.shape[-1]
    geometry = _geometry(q, k, v, spec)
    out = torch.empty(batch, num_q_heads, nq, value_dim, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, num_q_heads, nq, dtype=lse_dtype(q.dtype), device=q.device)
    padding, stride_pb = _key_padding(spec, k)
    desc_k, desc_v = _descriptors(k, v, geometry["meta"]) if tma else (None, None)
    args = (q, k, v, out, lse, padding, desc_k, desc_v, scale * LOG2E.value,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), lse.stride(0), lse.stride(1), stride_pb,
            num_q_heads, geometry["group_size"], nq, nk, head_dim, value_dim, *geometry["window"])
    _launch("forward", _forward_kernel, nq, batch * num_q_heads, blocks, args,
            {**geometry["meta"], "USE_TMA": tma})
    return out, lse


def _delta(out: Tensor, grad_out: Tensor, grad_lse: Tensor | None, meta: dict) -> Tensor:
    """rowsum(dO * O) - dLSE, (B, Hq, Nq) in the accumulation dtype, by :func:`_delta_kernel`."""
    batch, num_q_heads, nq, value_dim = out.shape
    delta = torch.empty(batch, num_q_heads, nq, dtype=lse_dtype(out.dtype), device=out.device)
    lse_like = delta if grad_lse is None else grad_lse.to(delta.dtype).expand_as(delta).contiguous()
    block_m = INTERPRETER_BLOCKS[0] if INTERPRETED else 64
    _delta_kernel[(triton.cdiv(nq, block_m), batch * num_q_heads)](
        out, grad_out, lse_like, delta, *out.stride(), *grad_out.stride(), lse_like.stride(0), lse_like.stride(1),
        num_q_heads, nq, value_dim, HAS_GRAD_LSE=grad_lse is not None, BLOCK_DV=meta["BLOCK_DV"],
        ACC_DTYPE=meta["ACC_DTYPE"], BLOCK_M=block_m)
    return delta


def flash_backward(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor, grad_lse: Tensor | None,
    spec: MaskSpec, scale: float, blocks: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the backward kernels: (grad_q, grad_k, grad_v), shaped and typed as q, k, v.

    ``out`` is (B, Hq, Nq, Dv) and ``lse`` (B, Hq, Nq), as the forward returned them;
    ``grad_out`` is (B, Hq, Nq, Dv); ``grad_lse`` (B, Hq, Nq) or None. ``scale`` > 0.
    """
    batch, num_q_heads, nq, head_dim = q.shape
    num_kv_heads, nk, value_dim = k.shape[1], k.shape[2], v.shape[-1]
    geometry = _geometry(q, k, v, spec)
    delta = _delta(out, grad_out, grad_lse, geometry["meta"])  # (B, Hq, Nq)
    padding, stride_pb = _key_padding(spec, k)
    grad_q = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    grad_k = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    common = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), lse.stride(0), lse.stride(1), stride_pb)
    sm_scale = float(scale)
    sizes = (geometry["group_size"], nq, nk, head_dim, value_dim, *geometry["window"])
    kv_args = (q, k, v, grad_out, lse, delta, grad_k, grad_v, padding, sm_scale * LOG2E.value, sm_scale,
               *common, *grad_k.stride()[:3], *grad_v.stride()[:3], num_kv_heads, *sizes)
    _launch("backward_kv", _backward_kv_kernel, nk, batch * num_kv_heads, blocks, kv_args, geometry["meta"])
    q_args = (q, k, v, grad_out, lse, delta, grad_q, padding, sm_scale * LOG2E.value, sm_scale,
              *common, *grad_q.stride()[:3], num_q_heads, *sizes)
    _launch("backward_q", _backward_q_kernel, nq, batch * num_q_heads, blocks, q_args, geometry["meta"])
    return grad_q, grad_k, grad_v


class TritonFlashAttention(torch.autograd.Function):
    """Autograd wrapper: saves (q, k, v, out, lse), never the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, spec, scale, blocks, tma=False):
        # The kernels scale inside exp2 and need a positive scale: q k^T * s equals
        # (-q) k^T * |s|, and s = 0 equals zero queries at scale 1 (every score 0).
        q_sign = 1.0 if scale > 0 else (-1.0 if scale < 0 else 0.0)
        kernel_q = q if q_sign == 1.0 else q * q_sign
        kernel_scale = abs(scale) if scale != 0 else 1.0
        out, lse = flash_forward(kernel_q, k, v, spec, kernel_scale, blocks, tma)
        ctx.save_for_backward(kernel_q, k, v, out, lse)
        ctx.spec, ctx.scale, ctx.q_sign, ctx.blocks = spec, kernel_scale, q_sign, blocks
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grad_q, grad_k, grad_v = flash_backward(q, k, v, out, lse, grad_out, grad_lse, ctx.spec, ctx.scale,
                                                ctx.blocks)
        if ctx.q_sign != 1.0:
            grad_q = grad_q * ctx.q_sign
        return grad_q, grad_k, grad_v, None, None, None, None

"""FlashAttention-2 as Triton kernels: forward, backward, causal, windows, key padding, GQA.

The algorithm is :mod:`qkv.functional.tiled`'s (Dao, 2023), written as GPU programs: one
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
(:mod:`qkv.functional.triton_backend` imports it lazily; :mod:`qkv.functional.triton_launch`
launches the kernels). With ``TRITON_INTERPRET=1``
set before the first import, the same kernels run on CPU tensors under Triton's
interpreter, which is how CI tests them.

Integer arithmetic note: positions may be negative (more queries than keys), and Triton
divides integers like C (towards zero) on a GPU but like Python (towards -inf) in the
interpreter, so every division below is taken of a value clamped at 0 first.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

__all__ = ["INTERPRETED", "MIXED"]

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
# Interpreter or compiled (the launcher lives in qkv.functional.triton_launch)
# ---------------------------------------------------------------------------------------
# Triton decides when a function is decorated (TRITON_INTERPRET): its own library (tl.max,
# tl.sum) when Triton is imported, these kernels when this module is. Both must agree.
INTERPRETED = not isinstance(_forward_kernel, JITFunction)
LIBRARY_INTERPRETED = not isinstance(tl.max, JITFunction)
MIXED = INTERPRETED != LIBRARY_INTERPRETED

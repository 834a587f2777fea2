"""Ring attention: exact attention over a sequence split across torch.distributed ranks.

When the keys and values of one sequence no longer fit one process, each of the P ranks
of a process group keeps the queries, keys and values of its own slice of the sequence.
The key/value slices travel around a ring (rank r sends to r + 1 and receives from
r - 1) with batched point-to-point ``send``/``recv``; while one slice is in flight, the
rank attends to the slice in hand. Each (query slice, key slice) pair gives a partial
result, and partials merge through their log-sum-exps (Liu et al., 2023, "Ring Attention
with Blockwise Transformers"; Brandon et al., 2023, "Striped Attention").

    rank 0: q0 k0 v0    step 0: each rank attends to its own slice, sends it on
    rank 1: q1 k1 v1    step s: rank r holds the slice of rank r - s (mod P)
    rank 2: q2 k2 v2    after P - 1 steps every query has seen every key

Exactness. ``lse = log sum_j exp(s_j)`` of a query's scores over a set of keys is all a
merge needs: two partials (out_a, lse_a) and (out_b, lse_b) over disjoint key sets give
``lse = logaddexp(lse_a, lse_b)`` and ``out = e^(lse_a - lse) out_a + e^(lse_b - lse) out_b``.
Each rank keeps the merged partial of its queries as a running maximum, sum and weighted
sum (:class:`_RunningSoftmax`, the LSE held as ``max + log(sum)``) and merges every tile of
every key chunk into it as it arrives, the online softmax of the tiled backend carried
across the ring; it normalises once, at the end. A partial whose keys are all hidden has
LSE -inf and weight 0; no NaN is made.

Positions. Queries sit at the same positions as keys (self-attention). With
``layout="contiguous"`` rank r holds positions ``sum(n_0 .. n_{r-1})`` onwards, its own
length n_r (slices may be uneven). With ``layout="zigzag"`` the sequence is cut in 2P
segments and rank r holds segments r and 2P - 1 - r (its first ceil(n_r / 2) tokens, then
its last floor(n_r / 2)): under a causal mask every rank then has the same work.

Skipping. Causal and window masks are known to every rank from the lengths alone: a key
slice that no query of a rank can see is not computed there, and a slice travels only as
far round the ring as the last rank that needs it.

Memory. Slices travel in chunks of ``chunk_size`` keys (the ring runs once per chunk
index), through two message buffers allocated once per call (one in hand, one
arriving); scores are computed tile by tile into one reused scratch tile. Beyond its own
q, k, v and output a rank holds two chunks of keys/values and one tile, and allocates
nothing else per step (fresh temporaries would fragment the heap and inflate the
resident set).

Backward. The gradient is FlashAttention-2's, pair by pair, from the final output and
LSE (:func:`qkv.functional.tiled.tiled_backward`): keys and values travel the ring again,
each with an accumulator of its dK and dV that every rank on the way adds to; the last
rank that needs a slice sends the accumulated dK, dV back to its owner.

Failures. Every wait has a timeout (``timeout=``, else the process group's); a peer
that raised or died makes the others raise a RuntimeError naming the rank, the step and
the peer, never hang.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import torch
from torch import Tensor

from qkv.distributed.layout import (
    LAYOUTS,
    Run,
    _check_layout,
    _pair_spec,
    _restrict,
    _visible,
    slice_lengths,
    slice_positions,
)
from qkv.distributed.ring_plan import (
    DEFAULT_CHUNK_SIZE,
    TAG_GRAD,
    TAG_KV,
    TAG_RETURN,
    RingComm,
    RingOptions,
    RingPlan,
    RingStats,
    check_chunk_size,
    check_timeout,
    make_plan,
    message_buffers,
    message_size,
    pack_message,
    unpack_message,
)
from qkv.functional.api import build_spec, zero_unread_keys
from qkv.functional.masks import MaskSpec
from qkv.functional.registry import Backend, register
from qkv.functional.tiled import (
    DEFAULT_BLOCK_K,
    DEFAULT_BLOCK_Q,
    compute_dtype,
    group_heads,
    lse_dtype,
    tiled_backward,
    tiles,
)

__all__ = [
    "ring_attention",
    "RingOptions",
    "RingStats",
    "LAYOUTS",
    "DEFAULT_CHUNK_SIZE",
    "ROW_BLOCK",
    "slice_lengths",
    "slice_positions",
]

ROW_BLOCK = 1024  # query rows per backward call: bounds the gradient temporaries
NEG_INF = float("-inf")


# ---- the local work on one chunk -----------------------------------------------------------


def _pairs(plan: RingPlan, q_runs: Sequence[Run], k_runs: Sequence[Run]):
    """(row slice, q_start, key run) for every visible (query row block, key run) pair."""
    for q_run in q_runs:
        for k_run in k_runs:
            if not _visible(q_run.start, q_run.length, k_run.start, k_run.length, plan.left, plan.right):
                continue
            for r0 in range(0, q_run.length, ROW_BLOCK):
                r1 = min(r0 + ROW_BLOCK, q_run.length)
                if _visible(q_run.start + r0, r1 - r0, k_run.start, k_run.length, plan.left, plan.right):
                    yield slice(q_run.local + r0, q_run.local + r1), q_run.start + r0, k_run


def _pair_inputs(plan: RingPlan, rows: slice, q_start: int, k_run: Run, k: Tensor, v: Tensor,
                 pad: Tensor | None) -> tuple[MaskSpec, Tensor, Tensor]:
    keys = slice(k_run.local, k_run.local + k_run.length)
    pad_part = None if pad is None else pad[:, keys]
    if pad_part is not None and bool(pad_part.all()):
        pad_part = None
    spec = _pair_spec(q_start, rows.stop - rows.start, k_run.start, k_run.length, plan.left, plan.right, pad_part)
    k_part, v_part = zero_unread_keys(k[:, :, keys], v[:, :, keys], spec)
    return spec, k_part, v_part


class _RunningSoftmax:
    """The merged partials of this rank's queries: a running maximum, sum and weighted sum.

    ``(row_max, row_sum)`` is an LSE, ``lse = row_max + log(row_sum)``, kept apart so that
    merging one more partial, the attention to one more tile of keys with its own maximum
    m' and sum l', is a rescaling: ``m = max(row_max, m')``, ``row_sum = e^(row_max - m)
    row_sum + e^(m' - m) l'``, the same for ``acc``. A tile whose keys are all hidden has
    m' = -inf and weight 0; a row that has seen only such tiles keeps the shift 0, so no
    ``-inf - -inf`` is ever formed and no NaN appears. This is the online softmax of the
    tiled backend, carried across the chunks of every ring step; the output is normalised
    once, at the end.

    Shapes, with G = Hq // Hkv: acc (B, Hkv, G, n, Dv), row_max and row_sum (B, Hkv, G, n).
    """

    def __init__(self, q: Tensor, v: Tensor) -> None:
        dtype, heads = compute_dtype(q.dtype), v.shape[1]
        batch, _, n, _ = q.shape
        groups = q.shape[1] // heads
        self.acc = torch.zeros(batch, heads, groups, n, v.shape[3], dtype=dtype, device=q.device)
        self.row_max = torch.full((batch, heads, groups, n), NEG_INF, dtype=dtype, device=q.device)
        self.row_sum = torch.zeros_like(self.row_max)
        # Scratch for one tile's scores and its probabilities times the values, reused by every
        # tile: allocating them afresh fragments the heap and inflates the resident set.
        tile = batch * heads * groups * DEFAULT_BLOCK_Q
        self.scores_buffer = torch.empty(tile * DEFAULT_BLOCK_K, dtype=dtype, device=q.device)
        self.values_buffer = torch.empty(tile * v.shape[3], dtype=dtype, device=q.device)
        self.score_elements = 0  # (query, key) pairs scored, per batch element and head

    def scores(self, q_tile: Tensor, k_tile: Tensor) -> Tensor:
        """q_tile (B, Hkv, G, bq, D) @ k_tile (B, Hkv, 1, bk, D)^T into the scratch: (B, Hkv, G, bq, bk)."""
        shape = q_tile.shape[:-1] + (k_tile.shape[-2],)
        out = self.scores_buffer[:shape.numel()].view(shape)
        return torch.matmul(q_tile, k_tile.transpose(-2, -1), out=out)

    def add_tile(self, rows: slice, scores: Tensor, v_tile: Tensor) -> None:
        """Merge one tile: scores (B, Hkv, G, bq, bk), -inf where hidden; v_tile (B, Hkv, 1, bk, Dv)."""
        row_max = self.row_max[..., rows]  # views: updated in place
        new_max = torch.maximum(row_max, scores.amax(dim=-1))
        shift = new_max.masked_fill(new_max == NEG_INF, 0.0)
        rescale = torch.exp(row_max - shift)  # (B, Hkv, G, bq)
        probs = scores.sub_(shift.unsqueeze(-1)).exp_()  # (B, Hkv, G, bq, bk), unnormalised
        self.row_sum[..., rows].mul_(rescale).add_(probs.sum(dim=-1))
        shape = probs.shape[:-1] + (v_tile.shape[-1],)
        weighted = torch.matmul(probs, v_tile, out=self.values_buffer[:shape.numel()].view(shape))
        self.acc[..., rows, :].mul_(rescale.unsqueeze(-1)).add_(weighted)
        row_max.copy_(new_max)

    def result(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """out (B, Hq, n, Dv) in the compute dtype (normalised in place) and lse (B, Hq, n)."""
        seen = self.row_sum != 0  # rows that saw no key: out 0, lse -inf; a NaN stays NaN
        self.acc.div_(torch.where(seen, self.row_sum, 1.0).unsqueeze(-1))
        lse = torch.where(seen, self.row_max + torch.log(self.row_sum), NEG_INF).to(lse_dtype(dtype))
        return self.acc.flatten(1, 2), lse.flatten(1, 2)


def _attend_chunk(plan: RingPlan, q: Tensor, k: Tensor, v: Tensor, pad: Tensor | None,
                  k_runs: Sequence[Run], state: _RunningSoftmax) -> None:
    """Merge the attention of this rank's queries to one key/value chunk into ``state``.

    q: (B, Hq, n, D) this rank's queries in the compute dtype; k, v: the chunk's keys
    (B, Hkv, c, D) and values (B, Hkv, c, Dv); pad: its (B, c) padding or None. Every
    (query run, key run) pair is one :class:`MaskSpec`, visited tile by tile as the tiled
    backend does; tiles the causal/window band hides are skipped.
    """
    heads, dtype = k.shape[1], state.acc.dtype
    q5 = q.unflatten(1, (heads, -1))  # (B, Hkv, G, n, D)
    for q_run in plan.runs[plan.rank]:
        for k_run in k_runs:
            if not _visible(q_run.start, q_run.length, k_run.start, k_run.length, plan.left, plan.right):
                continue
            keys = slice(k_run.local, k_run.local + k_run.length)
            pad_part = None if pad is None or bool(pad[:, keys].all()) else pad[:, keys]
            spec = _pair_spec(q_run.start, q_run.length, k_run.start, k_run.length, plan.left, plan.right,
                              pad_part)
            k5, v5 = k[:, :, keys].to(dtype).unsqueeze(2), v[:, :, keys].to(dtype).unsqueeze(2)
            for qs, qe, ks, ke in tiles(spec, DEFAULT_BLOCK_Q, DEFAULT_BLOCK_K):
                rows = slice(q_run.local + qs, q_run.local + qe)
                scores = state.scores(q5[..., rows, :], k5[..., ks:ke, :]).mul_(plan.scale)  # (B,Hkv,G,bq,bk)
                v_tile = v5[..., ks:ke, :]
                visible = group_heads(spec.tile_mask(qs, qe, ks, ke, device=scores.device), heads)
                if visible is not None:
                    scores.masked_fill_(~visible, NEG_INF)
                    # Keys no row of the tile sees: zero their values, as 0 * NaN would be NaN.
                    unread = ~visible.any(dim=-2).unsqueeze(-1)  # (..., bk, 1)
                    if bool(unread.any()):
                        v_tile = v_tile.masked_fill(unread, 0.0)
                state.add_tile(rows, scores, v_tile)
                state.score_elements += (qe - qs) * (ke - ks)


def _grad_chunk(plan: RingPlan, saved: dict, k: Tensor, v: Tensor, pad: Tensor | None,
                k_runs: Sequence[Run], grad_k: Tensor, grad_v: Tensor) -> None:
    """Add this rank's queries' share of dK, dV of one chunk (and their dQ) from the final LSE."""
    q, out, lse, grad_out, grad_lse, grad_q = (saved[name] for name in
                                               ("q", "out", "lse", "grad_out", "grad_lse", "grad_q"))
    dtype = out.dtype
    for rows, q_start, k_run in _pairs(plan, plan.runs[plan.rank], k_runs):
        spec, k_part, v_part = _pair_inputs(plan, rows, q_start, k_run, k, v, pad)
        keys = slice(k_run.local, k_run.local + k_run.length)
        dq, dk, dv, _ = tiled_backward(
            q[:, :, rows], k_part.to(dtype), v_part.to(dtype), out[:, :, rows], lse[:, :, rows],
            grad_out[:, :, rows], None if grad_lse is None else grad_lse[:, :, rows], spec, plan.scale,
            DEFAULT_BLOCK_Q, DEFAULT_BLOCK_K, bias_needs_grad=False,
        )
        grad_q[:, :, rows] += dq
        grad_k[:, :, keys] += dk
        grad_v[:, :, keys] += dv


# ---- the ring, forward and backward ----------------------------------------------------------


def _forward(plan: RingPlan, q: Tensor, k: Tensor, v: Tensor, pad: Tensor | None,
             stats: RingStats) -> tuple[Tensor, Tensor]:
    """out (B, Hq, n, Dv) in the compute dtype and lse (B, Hq, n) of this rank's queries."""
    rank, world = plan.rank, plan.world
    state = _RunningSoftmax(q, v)
    input_dtype, q = q.dtype, q.to(state.acc.dtype)
    comm = RingComm(plan, stats, "forward")
    after, before = (rank + 1) % world, (rank - 1) % world
    buffers = message_buffers(plan, k, v) if plan.world > 1 else []
    for index in range(plan.chunks):
        held, current = None, 0  # the message in hand (None: the own slice) and its buffer
        for step in range(plan.steps):
            owner = plan.slice_at(rank, step)
            lo, hi = plan.chunk(owner, index)
            active = plan.holds(rank, step) and lo < hi
            if active:
                k_c, v_c, pad_c = _slice_in_hand(plan, held, k, v, pad, lo, hi)
                if plan.forwards(rank, step):
                    if held is None:
                        held = pack_message(plan, buffers[current], k_c, v_c, pad_c)
                    comm.send(held, after, plan.tag(TAG_KV, owner, index), f"keys/values of rank {owner}")
            incoming = None
            if plan.forwards(before, step):
                next_owner = plan.slice_at(rank, step + 1)
                n_lo, n_hi = plan.chunk(next_owner, index)
                if n_lo < n_hi:  # arrives in the other buffer while this one is read and sent
                    incoming = buffers[1 - current][:message_size(plan, k, v, n_hi - n_lo)]
                    comm.recv(incoming, before, plan.tag(TAG_KV, next_owner, index),
                              f"keys/values of rank {next_owner}")
            works = comm.start(step, index)
            if active and plan.needs[rank][owner]:
                _attend_chunk(plan, q, k_c, v_c, pad_c, _restrict(plan.runs[owner], lo, hi), state)
            comm.wait(works)
            held, current = incoming, 1 - current
    stats.score_elements += state.score_elements
    return state.result(input_dtype)


def _slice_in_hand(plan: RingPlan, held: Tensor | None, k: Tensor, v: Tensor, pad: Tensor | None, lo: int,
                   hi: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Keys, values and padding of the chunk in hand: views of the own slice when ``held`` is None
    (copied into a message only if it travels on), else the received message unpacked."""
    if held is None:
        return k[:, :, lo:hi], v[:, :, lo:hi], (None if pad is None else pad[:, lo:hi])
    return unpack_message(plan, held, k, v, hi - lo)


def _backward(plan: RingPlan, saved: dict, k: Tensor, v: Tensor, pad: Tensor | None,
              stats: RingStats) -> tuple[Tensor, Tensor, Tensor]:
    """dQ, dK, dV (compute dtype) of this rank's slices; every rank must call it."""
    rank, world = plan.rank, plan.world
    dtype = saved["out"].dtype
    grad_k = torch.zeros(k.shape, dtype=dtype, device=k.device)
    grad_v = torch.zeros(v.shape, dtype=dtype, device=v.device)
    comm = RingComm(plan, stats, "backward")
    after, before = (rank + 1) % world, (rank - 1) % world
    last = plan.reach[rank] + 1  # the step at which this rank's dK, dV come home
    batch, heads, d, dv = k.shape[0], k.shape[1], k.shape[3], v.shape[3]

    def grad_buffer(rows: int, zero: bool = True) -> Tensor:
        make = torch.zeros if zero else torch.empty
        return make(batch * heads * rows * (d + dv), dtype=dtype, device=k.device)

    def grad_views(buffer: Tensor, rows: int) -> tuple[Tensor, Tensor]:
        split = batch * heads * rows * d
        return buffer[:split].view(batch, heads, rows, d), buffer[split:].view(batch, heads, rows, dv)

    buffers = message_buffers(plan, k, v) if plan.world > 1 else []
    for index in range(plan.chunks):
        held, current = None, 0  # received keys/values in hand (None: the own slice) and its buffer
        finished = None  # (buffer, owner) dK/dV accumulator completed at the previous step
        for step in range(plan.steps + 1):
            owner = plan.slice_at(rank, step)
            lo, hi = plan.chunk(owner, index)
            active = step < plan.steps and plan.holds(rank, step) and lo < hi
            if active:
                k_c, v_c, pad_c = _slice_in_hand(plan, held, k, v, pad, lo, hi)
                if plan.forwards(rank, step):
                    if held is None:
                        held = pack_message(plan, buffers[current], k_c, v_c, pad_c)
                    comm.send(held, after, plan.tag(TAG_KV, owner, index), f"keys/values of rank {owner}")
            # The accumulator finished at step - 1 goes to the next rank, or home from the last one.
            if finished is not None:
                buffer, done_owner = finished
                if plan.forwards(rank, step - 1):
                    comm.send(buffer, after, plan.tag(TAG_GRAD, done_owner, index),
                              f"the dK/dV accumulator of rank {done_owner}")
                else:
                    comm.send(buffer, done_owner, plan.tag(TAG_RETURN, done_owner, index),
                              f"the finished dK/dV of rank {done_owner}")
            incoming = None
            if plan.forwards(before, step):
                next_owner = plan.slice_at(rank, step + 1)
                n_lo, n_hi = plan.chunk(next_owner, index)
                if n_lo < n_hi:
                    incoming = buffers[1 - current][:message_size(plan, k, v, n_hi - n_lo)]
                    comm.recv(incoming, before, plan.tag(TAG_KV, next_owner, index),
                              f"keys/values of rank {next_owner}")
            grad_in = None  # the accumulator of the slice in hand, from the previous rank
            if active and step >= 1:
                grad_in = grad_buffer(hi - lo, zero=False)
                comm.recv(grad_in, before, plan.tag(TAG_GRAD, owner, index),
                          f"the dK/dV accumulator of rank {owner}")
            home = None
            own_lo, own_hi = plan.chunk(rank, index)
            if step == last and plan.reach[rank] >= 1 and own_lo < own_hi:
                home = grad_buffer(own_hi - own_lo, zero=False)
                source = (rank + plan.reach[rank]) % world
                comm.recv(home, source, plan.tag(TAG_RETURN, rank, index), "the finished dK/dV of this rank")
            works = comm.start(step, index)
            local = None
            if active and plan.needs[rank][owner]:
                local = grad_buffer(hi - lo)
                _grad_chunk(plan, saved, k_c, v_c, pad_c, _restrict(plan.runs[owner], lo, hi),
                            *grad_views(local, hi - lo))
            comm.wait(works)
            if home is not None:
                grad_k[:, :, own_lo:own_hi], grad_v[:, :, own_lo:own_hi] = grad_views(home, own_hi - own_lo)
            finished = None
            if active:
                total = local if grad_in is None else (grad_in if local is None else grad_in.add_(local))
                if step == 0 and not plan.forwards(rank, 0):
                    if total is not None:  # nobody else needs this chunk: its gradient is complete
                        grad_k[:, :, lo:hi], grad_v[:, :, lo:hi] = grad_views(total, hi - lo)
                else:
                    finished = (grad_buffer(hi - lo) if total is None else total, owner)
            held, current = incoming, 1 - current
    stats.backward_slice_sends += sum(plan.forwards(rank, s) for s in range(plan.steps))
    return saved["grad_q"], grad_k, grad_v


class _RingFunction(torch.autograd.Function):
    """Autograd wrapper: saves this rank's q, k, v, output and LSE; the backward is a ring too."""

    @staticmethod
    def forward(ctx, q, k, v, pad, plan, stats):
        out, lse = _forward(plan, q, k, v, pad, stats)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.pad, ctx.plan, ctx.stats = pad, plan, stats
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        dtype = out.dtype
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        saved = {
            "q": q.to(dtype), "out": out, "lse": lse, "grad_out": grad_out.to(dtype),
            "grad_lse": grad_lse, "grad_q": torch.zeros(q.shape, dtype=dtype, device=q.device),
        }
        grad_q, grad_k, grad_v = _backward(ctx.plan, saved, k, v, ctx.pad, ctx.stats)
        ctx.stats.steps.append(ctx.plan.steps + 1)
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None, None, None


def ring_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    window: int | tuple[int | None, int | None] | None = None,
    key_padding_mask: Tensor | None = None,
    group: object | None = None,
    return_lse: bool = False,
    layout: str = "contiguous",
    scale: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    timeout: float | datetime.timedelta | None = None,
    stats: RingStats | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact self-attention over a sequence split across the ranks of a process group.

    Every rank of ``group`` calls this at the same time with its own slice of the
    sequence (slices may be uneven; see the module docstring for which positions a rank
    holds). The result on each rank is exactly what :func:`qkv.attention` gives for the
    rank's queries on the whole sequence. Runs in one process when torch.distributed is
    not initialised (``group=None``).

    Args:
        q: (B, Hq, n_r, D) this rank's queries.
        k: (B, Hkv, n_r, D) this rank's keys; Hq a multiple of Hkv (grouped-query attention).
        v: (B, Hkv, n_r, Dv) this rank's values.
        causal: each query sees keys at or before its own global position.
        window: ``(left, right)``: the query at global position p sees keys p - left ..
            p + right, inclusive, as :func:`qkv.attention`; an int w means (w, w).
        key_padding_mask: (B, n_r) bool, True for this rank's real tokens. Ranks may
            differ in passing one.
        group: the torch.distributed process group (None: the default group).
        return_lse: also return the LSE (B, Hq, n_r), float32 (float64 for float64).
        layout: "contiguous" (rank r holds the r-th run of positions) or "zigzag"
            (segments r and 2P - 1 - r of 2P: balanced causal work).
        scale: multiplies q k^T; None means 1/sqrt(D).
        chunk_size: keys per message; a rank holds two chunks of keys/values in flight.
        timeout: seconds to wait for a peer before raising (None: the process group's).
        stats: a :class:`RingStats` to fill with what this rank sent and computed.

    Returns:
        out (B, Hq, n_r, Dv) in q's dtype, and lse when ``return_lse``. A query that sees
        no key gets zeros and an LSE of -inf. Differentiable: the backward is a ring as
        well, and every rank must run it.

    Raises:
        ValueError, TypeError: a malformed argument, or ranks that disagree on anything
            but the sequence length (every rank raises the same error).
        RuntimeError: a peer raised, exited or timed out; names this rank, the step and the peer.
    """
    if stats is not None and not isinstance(stats, RingStats):
        raise TypeError(f"stats must be a qkv.distributed.RingStats or None; got {type(stats).__name__}")
    spec, scale = build_spec(q, k, v, causal=causal, window=window, mask=None,
                             key_padding_mask=key_padding_mask, scale=scale, clamp=False)
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be True or False; got {type(return_lse).__name__} {return_lse!r}")
    return _ring(q, k, v, spec, scale, return_lse, group=group, layout=layout, chunk_size=chunk_size,
                 timeout=timeout, stats=stats)


def _ring(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, return_lse: bool, *,
          group: object | None, layout: str, chunk_size: int, timeout: object,
          stats: RingStats | None) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`ring_attention` after validation (also the ``backend="ring"`` entry point)."""
    if spec.nq != spec.nk:
        raise ValueError(
            f"ring_attention is self-attention over one split sequence: q and k must hold the same "
            f"positions, so the same length (dim 2); got q {tuple(q.shape)}, k {tuple(k.shape)}. "
            f"A KV cache cannot be used with the ring backend."
        )
    if spec.mask is not None or spec.global_tokens:
        raise ValueError("ring_attention honours causal, window and key_padding_mask only; drop mask= "
                         "and global_tokens=")
    layout = _check_layout(layout)
    chunk_size = check_chunk_size(chunk_size)
    timeout = check_timeout(timeout)
    plan = make_plan(q, k, v, spec.left, spec.right, spec.causal, spec.key_padding_mask, scale, group,
                      layout, chunk_size, timeout)
    stats = RingStats() if stats is None else stats
    stats.rank, stats.world_size, stats.chunks, stats.lengths = plan.rank, plan.world, plan.chunks, plan.lengths
    stats.slices_attended = sum(plan.needs[plan.rank])
    stats.slices_skipped = plan.world - stats.slices_attended
    stats.forward_slice_sends += sum(plan.forwards(plan.rank, s) for s in range(plan.steps))
    stats.steps.append(plan.steps)
    pad = spec.key_padding_mask
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        out, lse = _RingFunction.apply(q, k, v, pad, plan, stats)
    else:
        out, lse = _forward(plan, q, k, v, pad, stats)
        out = out.to(q.dtype)
    return (out, lse) if return_lse else out


def _ring_backend(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, return_lse: bool,
                  options: RingOptions) -> Tensor | tuple[Tensor, Tensor]:
    """``qkv.attention(..., backend="ring", options=RingOptions(...))``."""
    return _ring(q, k, v, spec, scale, return_lse, group=options.group, layout=options.layout,
                 chunk_size=options.chunk_size, timeout=options.timeout, stats=None)


register(
    Backend(
        name="ring",
        fn=_ring_backend,
        description="sequence-parallel exact attention: key/value slices travel a torch.distributed ring",
        returns_lse=True,
        supports_mask=False,
        supports_global_tokens=False,
        auto_rank=None,
        options_type=RingOptions,
        sequence_parallel=True,
    )
)

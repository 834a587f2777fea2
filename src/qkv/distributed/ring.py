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
LSE (:func:`qkv.attention.tiled.tiled_backward`): keys and values travel the ring again,
each with an accumulator of its dK and dV that every rank on the way adds to; the last
rank that needs a slice sends the accumulated dK, dV back to its owner.

Failures. Every wait has a timeout (``timeout=``, else the process group's); a peer
that raised or died makes the others raise a RuntimeError naming the rank, the step and
the peer, never hang.
"""

from __future__ import annotations

import datetime
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qkv.attention.api import build_spec, zero_unread_keys
from qkv.attention.masks import MaskSpec
from qkv.attention.registry import Backend, register
from qkv.attention.tiled import (
    DEFAULT_BLOCK_K,
    DEFAULT_BLOCK_Q,
    compute_dtype,
    group_heads,
    lse_dtype,
    tiled_backward,
    tiles,
)
from qkv.distributed.layout import (
    LAYOUTS,
    Run,
    _check_layout,
    _pair_spec,
    _restrict,
    _visible,
    slice_lengths,
    slice_positions,
    slice_runs,
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

DEFAULT_CHUNK_SIZE = 1024  # keys per message: bounds the key/value buffers a rank holds
ROW_BLOCK = 1024  # query rows per backward call: bounds the gradient temporaries
NEG_INF = float("-inf")
_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_TAG_KV, _TAG_GRAD, _TAG_RETURN = 0, 1, 2


# ---- options, statistics, the plan ------------------------------------------------------


@dataclass(frozen=True)
class RingOptions:
    """Options of ``backend="ring"`` (and of :meth:`MultiHeadAttention.set_backend("ring", ...)`).

    ``qkv.attention(q, k, v, backend="ring", options=RingOptions(group=g))`` is
    :func:`ring_attention` on this rank's slices.
    """

    group: object | None = None  # torch.distributed ProcessGroup; None: the default group
    layout: str = "contiguous"  # "contiguous" or "zigzag": which positions each rank holds
    chunk_size: int = DEFAULT_CHUNK_SIZE  # keys per message
    timeout: float | None = None  # seconds to wait for a peer; None: the process group's

    def __post_init__(self) -> None:
        _check_layout(self.layout)
        _check_chunk_size(self.chunk_size)
        _check_timeout(self.timeout)


@dataclass
class RingStats:
    """What one rank did in one call (filled in by :func:`ring_attention` when passed ``stats=``).

    A "slice send" is one hop of one rank's key/value slice to the next rank; it takes
    ``chunks`` messages. Without masks every rank makes P - 1 slice sends per forward.
    """

    rank: int = 0
    world_size: int = 1
    chunks: int = 1  # messages per slice
    lengths: tuple[int, ...] = ()  # tokens held by each rank
    slices_attended: int = 0  # key slices (own included) this rank's queries attended to
    slices_skipped: int = 0  # key slices a causal/window mask hid from every query here
    score_elements: int = 0  # (query, key) scores computed in the forward (whole tiles): the work
    forward_slice_sends: int = 0  # hops of key/value slices sent by this rank in the forward
    forward_messages_sent: int = 0
    forward_messages_received: int = 0
    backward_slice_sends: int = 0  # hops of key/value slices (with dK, dV) in the backward
    backward_messages_sent: int = 0  # keys/values, dK/dV accumulators and returns to owners
    backward_messages_received: int = 0
    bytes_sent: int = 0  # forward and backward
    wait_seconds: float = 0.0  # time blocked on messages after the local work of a step (not overlapped)
    steps: list[int] = field(default_factory=list)  # ring steps run per call (forward, backward)


@dataclass(frozen=True)
class _Plan:
    """Everything every rank knows about the call, from the gathered lengths."""

    rank: int
    world: int
    group: object | None
    lengths: tuple[int, ...]
    runs: tuple[tuple[Run, ...], ...]  # per rank
    left: int | None
    right: int | None
    scale: float
    chunks: int
    padded: bool  # some rank has a key padding mask: every message carries one
    needs: tuple[tuple[bool, ...], ...]  # needs[t][j]: some query of rank t sees a key of slice j
    reach: tuple[int, ...]  # reach[j]: slice j visits ranks j + 1 .. j + reach[j]
    timeout: datetime.timedelta | None

    @property
    def steps(self) -> int:
        return max(self.reach) + 1

    def slice_at(self, rank: int, step: int) -> int:
        """The slice rank ``rank`` holds at ring step ``step``."""
        return (rank - step) % self.world

    def holds(self, rank: int, step: int) -> bool:
        return step == 0 or step <= self.reach[self.slice_at(rank, step)]

    def forwards(self, rank: int, step: int) -> bool:
        """Whether ``rank`` sends the slice in hand at ``step`` to the next rank."""
        return self.holds(rank, step) and step + 1 <= self.reach[self.slice_at(rank, step)]

    def chunk(self, owner: int, index: int) -> tuple[int, int]:
        """Local rows lo, hi of chunk ``index`` of rank ``owner``'s slice."""
        n = self.lengths[owner]
        return index * n // self.chunks, (index + 1) * n // self.chunks

    def peer(self, group_rank: int) -> int:
        return group_rank % self.world

    def tag(self, kind: int, owner: int, index: int) -> int:
        return (kind * self.world + owner) * self.chunks + index


def _check_chunk_size(chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (keys per message); got {chunk_size!r}")
    return int(chunk_size)


def _check_timeout(timeout: object) -> datetime.timedelta | None:
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
        raise ValueError(
            f"timeout must be a positive number of seconds, a timedelta or None (the process "
            f"group's timeout); got {timeout!r}"
        )
    return datetime.timedelta(seconds=float(timeout))


def _group_info(group: object | None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) when torch.distributed is not running."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise ValueError(
                "group was given but torch.distributed is not initialised; call "
                "torch.distributed.init_process_group(...) first (or pass group=None to run "
                "in this process alone)"
            )
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _gather_call(values: list[float], device: torch.device, group: object | None, world: int) -> list[list[float]]:
    """All-gather one small vector from every rank (one collective per call)."""
    import torch.distributed as dist

    mine = torch.tensor(values, dtype=torch.float64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine, group=group)
    return [t.tolist() for t in everyone]


_AGREED = ("batch size B", "query heads Hq", "key/value heads Hkv", "head dim D", "value dim Dv",
           "dtype", "causal", "window left", "window right", "layout", "chunk_size", "scale",
           "need for gradients (every rank must run the backward ring, or none)")


def _make_plan(
    q: Tensor, k: Tensor, v: Tensor, left: int | None, right: int | None, causal: bool,
    key_padding_mask: Tensor | None, scale: float, group: object | None, layout: str,
    chunk_size: int, timeout: datetime.timedelta | None,
) -> _Plan:
    rank, world = _group_info(group)
    n = q.shape[2]
    if world == 1:
        rows = [[float(n), float(key_padding_mask is not None)]]
    else:
        agreed = [q.shape[0], q.shape[1], k.shape[1], q.shape[3], v.shape[3], _DTYPES.index(q.dtype)
                  if q.dtype in _DTYPES else -1, float(causal), -1 if left is None else left,
                  -1 if right is None else right, LAYOUTS.index(layout), chunk_size, scale,
                  float(torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))]
        rows = _gather_call([float(n), float(key_padding_mask is not None), *agreed], q.device, group, world)
        for index, name in enumerate(_AGREED):
            seen = [row[2 + index] for row in rows]
            if len(set(seen)) > 1:
                if name == "dtype":
                    seen = [str(_DTYPES[int(x)]) if x >= 0 else "another dtype" for x in seen]
                raise ValueError(
                    f"ring_attention: every rank must pass the same {name}; ranks passed "
                    f"{dict(enumerate(seen))}. Only the sequence length may differ between ranks."
                )
    lengths = tuple(int(row[0]) for row in rows)
    if min(lengths) == 0:
        raise ValueError(
            f"ring_attention: every rank must hold at least one token; the ranks hold {list(lengths)}. "
            f"Use fewer processes or split the sequence with qkv.distributed.split_sequence."
        )
    runs = tuple(tuple(r) for r in slice_runs(lengths, layout))
    needs = tuple(
        tuple(
            any(_visible(a.start, a.length, b.start, b.length, left, right) for a in runs[t] for b in runs[j])
            for j in range(world)
        )
        for t in range(world)
    )
    reach = tuple(
        max((d for d in range(1, world) if needs[(j + d) % world][j]), default=0) for j in range(world)
    )
    chunks = max(1, -(-max(lengths) // chunk_size))
    return _Plan(rank=rank, world=world, group=group, lengths=lengths, runs=runs, left=left, right=right,
                 scale=scale, chunks=chunks, padded=any(row[1] for row in rows), needs=needs, reach=reach,
                 timeout=timeout)


# ---- messages -----------------------------------------------------------------------------


class _Comm:
    """Batched point-to-point messages of one ring step, with timeouts and clear errors."""

    def __init__(self, plan: _Plan, stats: RingStats, phase: str) -> None:
        self.plan, self.stats, self.phase = plan, stats, phase
        self.ops: list = []
        self.what: list[str] = []

    def send(self, tensor: Tensor, to: int, tag: int, what: str) -> None:
        import torch.distributed as dist

        self.ops.append(dist.P2POp(dist.isend, tensor, group=self.plan.group, group_peer=to, tag=tag))
        self.what.append(f"sending {what} to rank {to}")
        self.stats.bytes_sent += tensor.numel() * tensor.element_size()
        if self.phase == "forward":
            self.stats.forward_messages_sent += 1
        else:
            self.stats.backward_messages_sent += 1

    def recv(self, tensor: Tensor, source: int, tag: int, what: str) -> None:
        import torch.distributed as dist

        self.ops.append(dist.P2POp(dist.irecv, tensor, group=self.plan.group, group_peer=source, tag=tag))
        self.what.append(f"receiving {what} from rank {source}")
        if self.phase == "forward":
            self.stats.forward_messages_received += 1
        else:
            self.stats.backward_messages_received += 1

    def start(self, step: int, chunk: int) -> list:
        """Post every message of the step; returns the handles for :meth:`wait`."""
        self.step, self.chunk = step, chunk
        if not self.ops:
            return []
        import torch.distributed as dist

        try:
            works = dist.batch_isend_irecv(self.ops)
        except RuntimeError as error:
            raise self._failure(0, error) from error
        return works

    def wait(self, works: list) -> None:
        start = time.perf_counter()
        for index, work in enumerate(works):
            try:
                if self.plan.timeout is None:
                    work.wait()
                else:
                    work.wait(timeout=self.plan.timeout)
            except RuntimeError as error:
                raise self._failure(index, error) from error
        self.ops, self.what = [], []
        self.stats.wait_seconds += time.perf_counter() - start

    def _failure(self, index: int, error: Exception) -> RuntimeError:
        plan = self.plan
        doing = self.what[index] if index < len(self.what) else "exchanging slices"
        return RuntimeError(
            f"ring_attention {self.phase} failed on rank {plan.rank} of {plan.world} at ring step "
            f"{self.step} of {plan.steps} (chunk {self.chunk + 1} of {plan.chunks}) while {doing}: "
            f"a peer rank raised, exited or is too slow (timeout "
            f"{'of the process group' if plan.timeout is None else plan.timeout}). Check the other "
            f"ranks' errors. Cause: {error}"
        )


def _message_size(plan: _Plan, k: Tensor, v: Tensor, rows: int) -> int:
    """Elements of one message: k (B, Hkv, rows, D), v (B, Hkv, rows, Dv) and, if used, padding (B, rows)."""
    batch, heads = k.shape[0], k.shape[1]
    return batch * heads * rows * (k.shape[3] + v.shape[3]) + (batch * rows if plan.padded else 0)


def _pack(plan: _Plan, buffer: Tensor, k: Tensor, v: Tensor, pad: Tensor | None) -> Tensor:
    """Copy a chunk's keys, values (and padding, 1 = real token) into the front of ``buffer``."""
    rows = k.shape[2]
    message = buffer[:_message_size(plan, k, v, rows)]
    k_part, v_part, _ = _unpack(plan, message, k, v, rows)
    k_part.copy_(k)
    v_part.copy_(v)
    if plan.padded:
        keep = message[k_part.numel() + v_part.numel():]
        keep.copy_(pad.reshape(-1)) if pad is not None else keep.fill_(1)
    return message


def _unpack(plan: _Plan, message: Tensor, k: Tensor, v: Tensor, rows: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Views of a message's keys (B, Hkv, rows, D), values (B, Hkv, rows, Dv), padding (B, rows) bool."""
    batch, heads, d, dv = k.shape[0], k.shape[1], k.shape[3], v.shape[3]
    nk, nv = batch * heads * rows * d, batch * heads * rows * dv
    k_part = message[:nk].view(batch, heads, rows, d)
    v_part = message[nk:nk + nv].view(batch, heads, rows, dv)
    pad = message[nk + nv:nk + nv + batch * rows].view(batch, rows) != 0 if plan.padded else None
    return k_part, v_part, pad


def _message_buffers(plan: _Plan, k: Tensor, v: Tensor) -> list[Tensor]:
    """The two message buffers a rank cycles through (one in hand, one arriving), sized for the
    largest chunk it ever receives or sends, allocated once per call."""
    rows = max((hi - lo for owner in range(plan.world) for index in range(plan.chunks)
                for lo, hi in [plan.chunk(owner, index)]), default=0)
    return [k.new_empty(_message_size(plan, k, v, rows)) for _ in range(2)]


# ---- the local work on one chunk -----------------------------------------------------------


def _pairs(plan: _Plan, q_runs: Sequence[Run], k_runs: Sequence[Run]):
    """(row slice, q_start, key run) for every visible (query row block, key run) pair."""
    for q_run in q_runs:
        for k_run in k_runs:
            if not _visible(q_run.start, q_run.length, k_run.start, k_run.length, plan.left, plan.right):
                continue
            for r0 in range(0, q_run.length, ROW_BLOCK):
                r1 = min(r0 + ROW_BLOCK, q_run.length)
                if _visible(q_run.start + r0, r1 - r0, k_run.start, k_run.length, plan.left, plan.right):
                    yield slice(q_run.local + r0, q_run.local + r1), q_run.start + r0, k_run


def _pair_inputs(plan: _Plan, rows: slice, q_start: int, k_run: Run, k: Tensor, v: Tensor,
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


def _attend_chunk(plan: _Plan, q: Tensor, k: Tensor, v: Tensor, pad: Tensor | None,
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


def _grad_chunk(plan: _Plan, saved: dict, k: Tensor, v: Tensor, pad: Tensor | None,
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


def _forward(plan: _Plan, q: Tensor, k: Tensor, v: Tensor, pad: Tensor | None,
             stats: RingStats) -> tuple[Tensor, Tensor]:
    """out (B, Hq, n, Dv) in the compute dtype and lse (B, Hq, n) of this rank's queries."""
    rank, world = plan.rank, plan.world
    state = _RunningSoftmax(q, v)
    input_dtype, q = q.dtype, q.to(state.acc.dtype)
    comm = _Comm(plan, stats, "forward")
    after, before = (rank + 1) % world, (rank - 1) % world
    buffers = _message_buffers(plan, k, v) if plan.world > 1 else []
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
                        held = _pack(plan, buffers[current], k_c, v_c, pad_c)
                    comm.send(held, after, plan.tag(_TAG_KV, owner, index), f"keys/values of rank {owner}")
            incoming = None
            if plan.forwards(before, step):
                next_owner = plan.slice_at(rank, step + 1)
                n_lo, n_hi = plan.chunk(next_owner, index)
                if n_lo < n_hi:  # arrives in the other buffer while this one is read and sent
                    incoming = buffers[1 - current][:_message_size(plan, k, v, n_hi - n_lo)]
                    comm.recv(incoming, before, plan.tag(_TAG_KV, next_owner, index),
                              f"keys/values of rank {next_owner}")
            works = comm.start(step, index)
            if active and plan.needs[rank][owner]:
                _attend_chunk(plan, q, k_c, v_c, pad_c, _restrict(plan.runs[owner], lo, hi), state)
            comm.wait(works)
            held, current = incoming, 1 - current
    stats.score_elements += state.score_elements
    return state.result(input_dtype)


def _slice_in_hand(plan: _Plan, held: Tensor | None, k: Tensor, v: Tensor, pad: Tensor | None, lo: int,
                   hi: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Keys, values and padding of the chunk in hand: views of the own slice when ``held`` is None
    (copied into a message only if it travels on), else the received message unpacked."""
    if held is None:
        return k[:, :, lo:hi], v[:, :, lo:hi], (None if pad is None else pad[:, lo:hi])
    return _unpack(plan, held, k, v, hi - lo)


def _backward(plan: _Plan, saved: dict, k: Tensor, v: Tensor, pad: Tensor | None,
              stats: RingStats) -> tuple[Tensor, Tensor, Tensor]:
    """dQ, dK, dV (compute dtype) of this rank's slices; every rank must call it."""
    rank, world = plan.rank, plan.world
    dtype = saved["out"].dtype
    grad_k = torch.zeros(k.shape, dtype=dtype, device=k.device)
    grad_v = torch.zeros(v.shape, dtype=dtype, device=v.device)
    comm = _Comm(plan, stats, "backward")
    after, before = (rank + 1) % world, (rank - 1) % world
    last = plan.reach[rank] + 1  # the step at which this rank's dK, dV come home
    batch, heads, d, dv = k.shape[0], k.shape[1], k.shape[3], v.shape[3]

    def grad_buffer(rows: int, zero: bool = True) -> Tensor:
        make = torch.zeros if zero else torch.empty
        return make(batch * heads * rows * (d + dv), dtype=dtype, device=k.device)

    def grad_views(buffer: Tensor, rows: int) -> tuple[Tensor, Tensor]:
        split = batch * heads * rows * d
        return buffer[:split].view(batch, heads, rows, d), buffer[split:].view(batch, heads, rows, dv)

    buffers = _message_buffers(plan, k, v) if plan.world > 1 else []
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
                        held = _pack(plan, buffers[current], k_c, v_c, pad_c)
                    comm.send(held, after, plan.tag(_TAG_KV, owner, index), f"keys/values of rank {owner}")
            # The accumulator finished at step - 1 goes to the next rank, or home from the last one.
            if finished is not None:
                buffer, done_owner = finished
                if plan.forwards(rank, step - 1):
                    comm.send(buffer, after, plan.tag(_TAG_GRAD, done_owner, index),
                              f"the dK/dV accumulator of rank {done_owner}")
                else:
                    comm.send(buffer, done_owner, plan.tag(_TAG_RETURN, done_owner, index),
                              f"the finished dK/dV of rank {done_owner}")
            incoming = None
            if plan.forwards(before, step):
                next_owner = plan.slice_at(rank, step + 1)
                n_lo, n_hi = plan.chunk(next_owner, index)
                if n_lo < n_hi:
                    incoming = buffers[1 - current][:_message_size(plan, k, v, n_hi - n_lo)]
                    comm.recv(incoming, before, plan.tag(_TAG_KV, next_owner, index),
                              f"keys/values of rank {next_owner}")
            grad_in = None  # the accumulator of the slice in hand, from the previous rank
            if active and step >= 1:
                grad_in = grad_buffer(hi - lo, zero=False)
                comm.recv(grad_in, before, plan.tag(_TAG_GRAD, owner, index),
                          f"the dK/dV accumulator of rank {owner}")
            home = None
            own_lo, own_hi = plan.chunk(rank, index)
            if step == last and plan.reach[rank] >= 1 and own_lo < own_hi:
                home = grad_buffer(own_hi - own_lo, zero=False)
                source = (rank + plan.reach[rank]) % world
                comm.recv(home, source, plan.tag(_TAG_RETURN, rank, index), "the finished dK/dV of this rank")
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
                             key_padding_mask=key_padding_mask, scale=scale)
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
    chunk_size = _check_chunk_size(chunk_size)
    timeout = _check_timeout(timeout)
    plan = _make_plan(q, k, v, spec.left, spec.right, spec.causal, spec.key_padding_mask, scale, group,
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

"""What every rank of a ring attention call agrees on, and the messages the ranks pass.

:func:`make_plan` gathers every rank's length and call (shapes, dtype, mask, layout) and
checks that they agree; the :class:`RingPlan` then tells each rank, from the lengths alone,
which slice it holds at each ring step, which slices its queries need and how far each
slice travels. :class:`RingComm` sends and receives one step's messages with timeouts and
errors that name the peer; a message packs one chunk of keys and values (and the key
padding mask, when some rank has one) into one flat buffer. :mod:`qkv.distributed.ring`
does the attention.
"""

from __future__ import annotations

import datetime
import numbers
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qkv.distributed.layout import LAYOUTS, Run, _check_layout, _visible, slice_runs

__all__ = ["DEFAULT_CHUNK_SIZE", "RingComm", "RingOptions", "RingPlan", "RingStats", "TAG_GRAD", "TAG_KV",
           "TAG_RETURN", "check_chunk_size", "check_timeout", "group_info", "make_plan", "message_buffers",
           "message_size", "pack_message", "unpack_message"]

DEFAULT_CHUNK_SIZE = 1024  # keys per message: bounds the key/value buffers a rank holds
_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
TAG_KV, TAG_GRAD, TAG_RETURN = 0, 1, 2


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
        check_chunk_size(self.chunk_size)
        check_timeout(self.timeout)


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
class RingPlan:
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


def check_chunk_size(chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (keys per message); got {chunk_size!r}")
    return int(chunk_size)


def check_timeout(timeout: object) -> datetime.timedelta | None:
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


def group_info(group: object | None) -> tuple[int, int]:
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


def gather_call(values: list[float], device: torch.device, group: object | None, world: int) -> list[list[float]]:
    """All-gather one small vector from every rank (one collective per call)."""
    import torch.distributed as dist

    mine = torch.tensor(values, dtype=torch.float64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine, group=group)
    return [t.tolist() for t in everyone]


_AGREED = ("batch size B", "query heads Hq", "key/value heads Hkv", "head dim D", "value dim Dv",
           "dtype", "causal", "window left", "window right", "layout", "chunk_size", "scale",
           "need for gradients (every rank must run the backward ring, or none)")


def make_plan(
    q: Tensor, k: Tensor, v: Tensor, left: int | None, right: int | None, causal: bool,
    key_padding_mask: Tensor | None, scale: float, group: object | None, layout: str,
    chunk_size: int, timeout: datetime.timedelta | None,
) -> RingPlan:
    rank, world = group_info(group)
    n = q.shape[2]
    if world == 1:
        rows = [[float(n), float(key_padding_mask is not None)]]
    else:
        agreed = [q.shape[0], q.shape[1], k.shape[1], q.shape[3], v.shape[3], _DTYPES.index(q.dtype)
                  if q.dtype in _DTYPES else -1, float(causal), -1 if left is None else left,
                  -1 if right is None else right, LAYOUTS.index(layout), chunk_size, scale,
                  float(torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))]
        rows = gather_call([float(n), float(key_padding_mask is not None), *agreed], q.device, group, world)
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
    return RingPlan(rank=rank, world=world, group=group, lengths=lengths, runs=runs, left=left, right=right,
                 scale=scale, chunks=chunks, padded=any(row[1] for row in rows), needs=needs, reach=reach,
                 timeout=timeout)


# ---- messages -----------------------------------------------------------------------------


class RingComm:
    """Batched point-to-point messages of one ring step, with timeouts and clear errors."""

    def __init__(self, plan: RingPlan, stats: RingStats, phase: str) -> None:
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


def message_size(plan: RingPlan, k: Tensor, v: Tensor, rows: int) -> int:
    """Elements of one message: k (B, Hkv, rows, D), v (B, Hkv, rows, Dv) and, if used, padding (B, rows)."""
    batch, heads = k.shape[0], k.shape[1]
    return batch * heads * rows * (k.shape[3] + v.shape[3]) + (batch * rows if plan.padded else 0)


def pack_message(plan: RingPlan, buffer: Tensor, k: Tensor, v: Tensor, pad: Tensor | None) -> Tensor:
    """Copy a chunk's keys, values (and padding, 1 = real token) into the front of ``buffer``."""
    rows = k.shape[2]
    message = buffer[:message_size(plan, k, v, rows)]
    k_part, v_part, _ = unpack_message(plan, message, k, v, rows)
    k_part.copy_(k)
    v_part.copy_(v)
    if plan.padded:
        keep = message[k_part.numel() + v_part.numel():]
        keep.copy_(pad.reshape(-1)) if pad is not None else keep.fill_(1)
    return message


def unpack_message(plan: RingPlan, message: Tensor, k: Tensor, v: Tensor,
                   rows: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Views of a message's keys (B, Hkv, rows, D), values (B, Hkv, rows, Dv), padding (B, rows) bool."""
    batch, heads, d, dv = k.shape[0], k.shape[1], k.shape[3], v.shape[3]
    nk, nv = batch * heads * rows * d, batch * heads * rows * dv
    k_part = message[:nk].view(batch, heads, rows, d)
    v_part = message[nk:nk + nv].view(batch, heads, rows, dv)
    pad = message[nk + nv:nk + nv + batch * rows].view(batch, rows) != 0 if plan.padded else None
    return k_part, v_part, pad


def message_buffers(plan: RingPlan, k: Tensor, v: Tensor) -> list[Tensor]:
    """The two message buffers a rank cycles through (one in hand, one arriving), sized for the
    largest chunk it ever receives or sends, allocated once per call."""
    rows = max((hi - lo for owner in range(plan.world) for index in range(plan.chunks)
                for lo, hi in [plan.chunk(owner, index)]), default=0)
    return [k.new_empty(message_size(plan, k, v, rows)) for _ in range(2)]

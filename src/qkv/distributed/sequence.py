"""Running a model sequence-parallel: split inputs, global positions, pooled outputs.

Each rank of a process group holds a slice of the tokens. Everything a transformer does
is per token except attention, so a model runs sequence-parallel when its attention
layers use the ring backend and its position embeddings see global positions::

    ids = split_sequence(batch.input_ids, dim=1, group=group)          # (B, n_r)
    mask = split_sequence(batch.attention_mask, dim=1, group=group)    # (B, n_r)
    positions = sequence_positions(ids.shape[1], group=group)          # (n_r,)
    with sequence_parallel(model, group=group):
        hidden = model(ids, mask, positions=positions).last_hidden_state  # (B, n_r, d)
    pooled = sequence_mean(hidden, mask, group=group)                  # (B, d), on every rank

:func:`sentence_embedding` does all of this for a BERT sentence encoder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.distributed.layout import _check_layout, slice_lengths, slice_positions, slice_runs
from qkv.distributed.ring_plan import DEFAULT_CHUNK_SIZE, group_info

__all__ = [
    "split_sequence",
    "gather_sequence",
    "gather_lengths",
    "sequence_positions",
    "sequence_parallel",
    "sequence_mean",
    "sentence_embedding",
]


def gather_lengths(n_local: int, group: object | None = None, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's number of tokens (one all-gather); ``[n_local]`` without torch.distributed."""
    _, world = group_info(group)
    if world == 1:
        return [int(n_local)]
    import torch.distributed as dist

    mine = torch.tensor([int(n_local)], dtype=torch.long, device=device)
    everyone = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine, group=group)
    return [int(t.item()) for t in everyone]


def split_sequence(
    x: Tensor, dim: int = 2, *, group: object | None = None, layout: str = "contiguous",
    rank: int | None = None, world_size: int | None = None,
) -> Tensor:
    """This rank's slice of a whole sequence: the positions :func:`ring_attention` expects it to hold.

    Args:
        x: a tensor whose dimension ``dim`` runs over the N positions of the sequence,
            e.g. q (B, H, N, D) with dim=2, or input ids (B, N) with dim=1.
        dim: the sequence dimension.
        group: the process group (None: the default one, or this process alone).
        layout: "contiguous" or "zigzag" (see :mod:`qkv.distributed.ring`).
        rank, world_size: override the group's (e.g. to split in a parent process).

    Returns:
        The rank's slice along ``dim`` (a copy for "zigzag", a view for "contiguous"):
        ``slice_lengths(N, P, layout)[rank]`` positions.
    """
    _check_layout(layout)
    if rank is None or world_size is None:
        group_rank, group_world = group_info(group)
        rank = group_rank if rank is None else rank
        world_size = group_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in 0 .. world_size - 1 = {world_size - 1}; got {rank}")
    lengths = slice_lengths(x.shape[dim], world_size, layout)
    runs = slice_runs(lengths, layout)[rank]
    pieces = [x.narrow(dim, run.start, run.length) for run in runs]
    if not pieces:
        return x.narrow(dim, 0, 0)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)


def gather_sequence(
    x: Tensor, dim: int = 2, *, group: object | None = None, layout: str = "contiguous"
) -> Tensor:
    """The whole sequence from every rank's slice (the inverse of :func:`split_sequence`).

    Slices may be uneven; every rank gets the whole tensor. Not differentiable.

    Args:
        x: this rank's slice, its positions along ``dim``; other dimensions equal on every rank.

    Returns:
        The tensor with the N = sum of the slice lengths positions in global order along ``dim``.
    """
    _check_layout(layout)
    _, world = group_info(group)
    if world == 1:
        return x
    import torch.distributed as dist

    lengths = gather_lengths(x.shape[dim], group, x.device)
    longest = max(lengths)
    moved = x.movedim(dim, 0).contiguous()
    padded = moved.new_zeros((longest,) + tuple(moved.shape[1:]))
    padded[: moved.shape[0]] = moved
    everyone = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(everyone, padded, group=group)
    whole = moved.new_empty((sum(lengths),) + tuple(moved.shape[1:]))
    for rank, runs in enumerate(slice_runs(lengths, layout)):
        for run in runs:
            whole[run.start:run.start + run.length] = everyone[rank][run.local:run.local + run.length]
    return whole.movedim(0, dim)


def sequence_positions(
    n_local: int, *, group: object | None = None, layout: str = "contiguous",
    device: torch.device | str = "cpu",
) -> Tensor:
    """(n_local,) int64 global positions of this rank's tokens (one all-gather of the lengths).

    Pass them as ``positions=`` to a model so that its position embeddings (learned or
    rotary) see where each token sits in the whole sequence.
    """
    _check_layout(layout)
    rank, _ = group_info(group)
    lengths = gather_lengths(n_local, group, device)
    return slice_positions(lengths, rank, layout).to(device)


@contextlib.contextmanager
def sequence_parallel(
    model: torch.nn.Module, *, group: object | None = None, layout: str = "contiguous",
    chunk_size: int = DEFAULT_CHUNK_SIZE, timeout: float | None = None,
) -> Iterator[torch.nn.Module]:
    """Make every attention layer of ``model`` use the ring backend inside the block.

    Window options the layers already have are kept; the previous backends come back
    on exit. Equivalent to ``model.set_attention("ring", group=group, ...)`` on a
    :class:`qkv.nn.TransformerStack`, but for any module holding
    :class:`qkv.nn.MultiHeadAttention` layers.
    """
    from qkv.nn.attention import MultiHeadAttention

    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no qkv.nn.MultiHeadAttention layer to make sequence-parallel")
    saved = [(layer.backend, dict(layer.options)) for layer in layers]
    try:
        for layer, (_, options) in zip(layers, saved):
            kept = {name: value for name, value in options.items() if name in ("window", "scale")}
            layer.set_backend("ring", group=group, layout=layout, chunk_size=chunk_size, timeout=timeout, **kept)
        yield model
    finally:
        for layer, (backend, options) in zip(layers, saved):
            layer.backend, layer.options = backend, options


def sequence_mean(hidden: Tensor, attention_mask: Tensor | None = None, *, group: object | None = None) -> Tensor:
    """Mean over the real tokens of a sequence split across ranks; the same result on every rank.

    Args:
        hidden: (B, n_r, d) this rank's token vectors.
        attention_mask: (B, n_r) bool or 0/1, True for real tokens (None: all real).
        group: the process group.

    Returns:
        (B, d): sum of the real tokens' vectors over all ranks / their number (an all-reduce,
        differentiable).
    """
    weights = hidden.new_ones(hidden.shape[:2]) if attention_mask is None else attention_mask.to(hidden.dtype)
    summed = torch.cat([(hidden * weights.unsqueeze(-1)).sum(dim=1), weights.sum(dim=1, keepdim=True)], dim=-1)
    _, world = group_info(group)
    if world > 1:
        summed = _SumOverRanks.apply(summed, group)
    return summed[:, :-1] / summed[:, -1:].clamp(min=1e-9)


def _all_reduce(t: Tensor, group: object | None) -> Tensor:
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


class _SumOverRanks(torch.autograd.Function):
    """A differentiable all-reduce (sum). Every rank's output is the sum of every rank's
    input, so each input's gradient is the sum of every rank's output gradient: another
    all-reduce. (torch.distributed.nn.functional.all_reduce does this but is deprecated.)"""

    @staticmethod
    def forward(ctx, t: Tensor, group: object | None) -> Tensor:
        ctx.group = group
        return _all_reduce(t, group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _all_reduce(grad.contiguous(), ctx.group), None


def sentence_embedding(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, *,
    group: object | None = None, layout: str = "contiguous", chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Sequence-parallel sentence embeddings of a BERT encoder (mean pooling, L2-normalised).

    The same vectors as ``model.sentence_embedding(ids, mask)`` in one process.

    Args:
        model: a BERT sentence encoder (e.g. ``qkv.load("minilm")``).
        input_ids: (B, n_r) this rank's token ids (:func:`split_sequence` with dim=1).
        attention_mask: (B, n_r) this rank's mask, True for real tokens.
        group, layout, chunk_size: as :func:`qkv.distributed.ring_attention`.

    Returns:
        (B, d_model) unit vectors, on every rank.
    """
    positions = sequence_positions(input_ids.shape[1], group=group, layout=layout, device=input_ids.device)
    with sequence_parallel(model, group=group, layout=layout, chunk_size=chunk_size):
        hidden = model(input_ids, attention_mask, positions=positions).last_hidden_state  # (B, n_r, d)
    return F.normalize(sequence_mean(hidden, attention_mask, group=group), p=2, dim=-1)

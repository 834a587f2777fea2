"""Who holds which positions of a sequence split across ranks, and which (query, key) pairs they see.

:mod:`qkv.distributed.ring` passes keys and values around the ring; this module says
which positions each rank holds (``contiguous`` slices, or ``zigzag``: two half-slices
from opposite ends, so a causal mask leaves every rank the same work) and gives each pair
of slices its mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.functional.masks import MaskSpec

__all__ = ["LAYOUTS", "Run", "slice_lengths", "slice_runs", "slice_positions"]

LAYOUTS = ("contiguous", "zigzag")


def _check_layout(layout: object) -> str:
    if layout not in LAYOUTS:
        raise ValueError(
            f"layout must be one of {LAYOUTS} (which positions each rank holds); got {layout!r}"
        )
    return layout


@dataclass(frozen=True)
class Run:
    """A contiguous piece of a rank's slice: ``length`` rows from local row ``local``,
    at global positions ``start`` onwards."""

    local: int
    length: int
    start: int


def slice_lengths(n: int, world_size: int, layout: str = "contiguous") -> list[int]:
    """How many tokens each of ``world_size`` ranks holds when a length-``n`` sequence is split.

    Contiguous: as ``torch.tensor_split`` (the first ``n % P`` ranks hold one more).
    Zigzag: rank r holds segments r and 2P - 1 - r of ``tensor_split(n, 2P)``.
    """
    _check_layout(layout)
    if layout == "contiguous":
        return [n // world_size + (r < n % world_size) for r in range(world_size)]
    segments = [n // (2 * world_size) + (s < n % (2 * world_size)) for s in range(2 * world_size)]
    return [segments[r] + segments[2 * world_size - 1 - r] for r in range(world_size)]


def slice_runs(lengths: Sequence[int], layout: str) -> list[list[Run]]:
    """Per rank, the runs of its slice: which global positions its local rows hold."""
    world = len(lengths)
    if layout == "contiguous":
        runs, start = [], 0
        for n in lengths:
            runs.append([Run(0, n, start)] if n else [])
            start += n
        return runs
    firsts = [(n + 1) // 2 for n in lengths]
    seconds = [n // 2 for n in lengths]
    order = [(r, 0) for r in range(world)] + [(r, 1) for r in reversed(range(world))]
    starts, position = {}, 0
    for r, half in order:
        starts[r, half] = position
        position += firsts[r] if half == 0 else seconds[r]
    runs = []
    for r in range(world):
        pieces = [Run(0, firsts[r], starts[r, 0]), Run(firsts[r], seconds[r], starts[r, 1])]
        runs.append([p for p in pieces if p.length])
    return runs


def slice_positions(lengths: Sequence[int], rank: int, layout: str = "contiguous") -> Tensor:
    """(lengths[rank],) int64 global positions of rank ``rank``'s tokens."""
    _check_layout(layout)
    runs = slice_runs(lengths, layout)[rank]
    if not runs:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(run.start, run.start + run.length) for run in runs])


def _restrict(runs: Sequence[Run], lo: int, hi: int) -> list[Run]:
    """The runs covering local rows lo .. hi - 1, re-based so that row lo is row 0."""
    pieces = []
    for run in runs:
        a, b = max(lo, run.local), min(hi, run.local + run.length)
        if a < b:
            pieces.append(Run(a - lo, b - a, run.start + a - run.local))
    return pieces


def _visible(q_start: int, nq: int, k_start: int, nk: int, left: int | None, right: int | None) -> bool:
    """Whether any query at q_start .. q_start + nq - 1 sees any key at k_start .. k_start + nk - 1.

    The keys seen by some query form one interval, [q_start - left, q_last + right].
    """
    if nq == 0 or nk == 0:
        return False
    lowest = -math.inf if left is None else q_start - left
    highest = math.inf if right is None else q_start + nq - 1 + right
    return k_start <= highest and k_start + nk - 1 >= lowest


def _pair_spec(
    q_start: int, nq: int, k_start: int, nk: int, left: int | None, right: int | None,
    key_padding_mask: Tensor | None,
) -> MaskSpec:
    """The :class:`MaskSpec` of queries at q_start.. against keys at k_start.., in local indices.

    A spec places query i at key index i + nk - nq; the pair's query i is at global
    position q_start + i and key j at k_start + j, so the window bounds shift by the
    difference (they may become negative: a band that starts after the diagonal).
    """
    shift = (q_start - k_start) - (nk - nq)
    return MaskSpec(
        nq=nq, nk=nk,
        left=None if left is None else left - shift,
        right=None if right is None else right + shift,
        key_padding_mask=key_padding_mask,
    )



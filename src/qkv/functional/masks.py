"""One description of what each query may see, compiled for every backend.

A call to :func:`qkv.attention` may combine four kinds of masking: bottom-right
``causal``, an inclusive ``window=(left, right)``, an arbitrary ``mask`` (bool, True =
may attend, or float, added to the scores) and a ``key_padding_mask`` (True = real
token). :class:`MaskSpec` holds all of them once, validated, and each backend asks it
for the form it needs: a dense boolean mask (SDPA), a per-block mask and a verdict on
whether a block can be skipped (tiled), or the scores filled in place (reference).
Nothing is ever dropped: a backend that cannot honour a field raises before it runs.

Positions. Queries are the *last* Nq of the Nk key positions, as in FlashAttention and
a KV cache: query ``i`` sits at position ``p = i + Nk - Nq``. ``causal`` lets it see keys
``j <= p``; ``window=(left, right)`` lets it see ``p - left <= j <= p + right``.

Global tokens (Longformer, BigBird) lift the window, not causality: a global position
sees every key the causal rule allows, and every query the causal rule allows sees it::

    visible(p, j) = causal_ok(p, j) and (in_window(p, j) or p in G or j in G)
"""

from __future__ import annotations

import bisect
import numbers
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

__all__ = ["MaskSpec", "BlockVisibility", "normalize_window", "clamp_window", "slice_tile", "keep_read", "padding_view"]

# Structure masks (causal/window/globals) depend only on the shapes and options, so they are built
# once per (spec, device) and reused; the largest are rebuilt per call rather than kept alive.
CACHED_MASK_MAX_BYTES = 16 * 2**20  # a mask larger than this is never cached
CACHED_MASKS_MAX_BYTES = 64 * 2**20  # all cached masks together
_STRUCTURE_MASKS: OrderedDict[tuple, Tensor | None] = OrderedDict()


def slice_tile(t: Tensor, q_start: int, q_end: int, k_start: int, k_end: int) -> Tensor:
    """The tile [q_start:q_end, k_start:k_end] of a (..., Nq|1, Nk|1) tensor.

    Dimensions of size 1 are broadcast, so they are kept whole rather than sliced.
    """
    rows = slice(None) if t.shape[-2] == 1 else slice(q_start, q_end)
    cols = slice(None) if t.shape[-1] == 1 else slice(k_start, k_end)
    return t[..., rows, cols]


class BlockVisibility(Enum):
    """How much of a (query block, key block) tile the causal/window structure shows."""

    EMPTY = "empty"  # no query in the block sees any key in the block: skip the tile
    FULL = "full"  # every pair is visible: no structural mask needed
    PARTIAL = "partial"  # build the mask for this tile


def normalize_window(
    window: int | tuple[int | None, int | None] | None, causal: bool
) -> tuple[int | None, int | None]:
    """Turn ``window`` and ``causal`` into inclusive ``(left, right)`` bounds.

    ``None`` on a side means unbounded. An int ``w`` means ``(w, w)``; ``causal=True``
    sets ``right`` to 0. A Hugging Face / Mistral ``sliding_window=W`` (each token sees
    W tokens including itself) is ``window=(W - 1, 0)`` with ``causal=True``.

    Raises:
        TypeError: ``window`` is not None, an int or a pair.
        ValueError: a bound is negative.
    """
    if window is None:
        left, right = None, None
    elif isinstance(window, bool) or not isinstance(window, (numbers.Integral, tuple, list)):
        raise TypeError(
            f"window must be None, an int w (meaning (w, w)) or a pair (left, right) of "
            f"non-negative ints or None; got {type(window).__name__} {window!r}"
        )
    elif isinstance(window, numbers.Integral):
        left, right = int(window), int(window)
    else:
        if len(window) != 2:
            raise ValueError(
                f"window must be a pair (left, right); got {len(window)} values {tuple(window)!r}"
            )
        left, right = window
    for side, bound in (("left", left), ("right", right)):
        if bound is None:
            continue
        if isinstance(bound, bool) or not isinstance(bound, numbers.Integral):
            raise TypeError(
                f"window {side} bound must be a non-negative int or None (unbounded); "
                f"got {type(bound).__name__} {bound!r}"
            )
        if bound < 0:
            raise ValueError(
                f"window {side} bound must be >= 0 (the number of positions seen on that "
                f"side, inclusive); got {bound}. Use None for an unbounded side."
            )
    if causal:
        right = 0
    return (None if left is None else int(left)), (None if right is None else int(right))


def clamp_window(left: int | None, right: int | None, *, nq: int, nk: int) -> tuple[int | None, int | None]:
    """Window bounds no wider than the sequence: the same visibility, sized by N rather than w.

    Queries sit at positions Nk - Nq .. Nk - 1 and keys at 0 .. Nk - 1, so a left bound of
    Nk - 1 and a right bound of Nq - 1 already reach every key; wider ones change nothing but
    would make band backends allocate in proportion to the window.
    """
    if left is not None:
        left = min(left, max(nk - 1, 0))
    if right is not None:
        right = min(right, max(nq - 1, 0))
    return left, right


@dataclass(frozen=True)
class MaskSpec:
    """Everything that decides which keys each query sees, for one attention call.

    Fields are validated by :func:`qkv.attention` before a spec is built.
    """

    nq: int  # number of queries
    nk: int  # number of keys
    left: int | None = None  # a query at position p sees keys >= p - left (None: all)
    right: int | None = None  # ... and keys <= p + right (None: all; 0 when causal)
    mask: Tensor | None = None  # bool or float, broadcastable to (B, Hq, Nq, Nk)
    key_padding_mask: Tensor | None = None  # (B, Nk) bool, True = real token
    causal: bool = False  # keys after the query's position are hidden (kept apart for globals)
    global_tokens: tuple[int, ...] = ()  # sorted key positions exempt from the window

    def __post_init__(self) -> None:
        # Globals change nothing unless a window bound goes beyond what causality hides.
        window_binds = self.left is not None or (self.right is not None and not self.causal)
        if self.global_tokens and not window_binds:
            object.__setattr__(self, "global_tokens", ())

    # ---- what the spec contains -------------------------------------------------
    @property
    def offset(self) -> int:
        """Position of query 0 among the keys (bottom-right alignment)."""
        return self.nk - self.nq

    @property
    def has_structure(self) -> bool:
        """True when causal or a window restricts the visible keys."""
        return self.left is not None or self.right is not None

    def globals_in(self, start: int, end: int) -> bool:
        """True when a global position lies in [start, end)."""
        i = bisect.bisect_left(self.global_tokens, start)
        return i < len(self.global_tokens) and self.global_tokens[i] < end

    def global_index(self, device: torch.device) -> Tensor:
        """The global positions as a (G,) int64 tensor."""
        return torch.tensor(self.global_tokens, dtype=torch.long, device=device)

    @property
    def bool_mask(self) -> Tensor | None:
        """The user's mask when it is boolean, else None."""
        if self.mask is not None and self.mask.dtype == torch.bool:
            return self.mask
        return None

    @property
    def float_bias(self) -> Tensor | None:
        """The user's mask when it is a float bias added to the scores, else None."""
        if self.mask is not None and self.mask.dtype != torch.bool:
            return self.mask
        return None

    @property
    def is_empty(self) -> bool:
        """True when no masking of any kind applies."""
        return not self.has_structure and self.mask is None and self.key_padding_mask is None

    @property
    def hides_structure(self) -> bool:
        """True when causal/window hide some (query, key) pair (causal with one query hides none)."""
        return self.has_structure and self.block_visibility(0, self.nq, 0, self.nk) is not BlockVisibility.FULL

    @property
    def hides_pairs(self) -> bool:
        """True when some (query, key) pair is hidden: a mask, key padding, or the structure."""
        return self.mask is not None or self.key_padding_mask is not None or self.hides_structure

    @property
    def is_plain_causal(self) -> bool:
        """Only causal masking with Nq == Nk, which PyTorch's ``is_causal`` means too."""
        return (
            self.left is None
            and self.right == 0
            and self.mask is None
            and self.key_padding_mask is None
            and self.nq == self.nk
        )

    # ---- structure (causal / window) --------------------------------------------
    def structure_mask(
        self, q_start: int, q_end: int, k_start: int, k_end: int, device: torch.device
    ) -> Tensor | None:
        """Causal/window visibility of a tile: (q_end - q_start, k_end - k_start) bool.

        Returns None when the spec has no structure.
        """
        if not self.has_structure:
            return None
        positions = torch.arange(q_start + self.offset, q_end + self.offset, device=device)
        return self.pair_structure(positions, torch.arange(k_start, k_end, device=device))

    def pair_structure(self, positions: Tensor, keys: Tensor) -> Tensor:
        """Causal/window/global visibility of query ``positions`` (n,) to ``keys`` (m,): (n, m).

        Positions are key positions (query ``i`` sits at ``i + offset``); keys are any
        key indices, not necessarily contiguous.
        """
        positions, keys = positions[:, None], keys[None, :]
        visible = torch.ones(positions.shape[0], keys.shape[1], dtype=torch.bool, device=keys.device)
        if self.left is not None:
            visible &= keys >= positions - self.left
        if self.right is not None:
            visible &= keys <= positions + self.right
        if self.global_tokens:
            table = self.global_index(keys.device)
            exempt = torch.isin(positions, table) | torch.isin(keys, table)  # (n, m)
            if self.causal:
                exempt &= keys <= positions
            visible |= exempt
        return visible

    def block_visibility(
        self, q_start: int, q_end: int, k_start: int, k_end: int
    ) -> BlockVisibility:
        """Whether the causal/window structure hides, shows or cuts through a tile."""
        first_position = q_start + self.offset
        last_position = q_end - 1 + self.offset
        lowest_seen = -(10**18) if self.left is None else first_position - self.left
        highest_seen = 10**18 if self.right is None else last_position + self.right
        hidden = k_end - 1 < lowest_seen or k_start > highest_seen
        if hidden and self.global_tokens:
            exempt = self.globals_in(first_position, last_position + 1) or self.globals_in(k_start, k_end)
            causally_hidden = self.causal and k_start > last_position
            hidden = causally_hidden or not exempt
        if hidden:
            return BlockVisibility.EMPTY
        always_low = -(10**18) if self.left is None else last_position - self.left
        always_high = 10**18 if self.right is None else first_position + self.right
        if k_start >= always_low and k_end - 1 <= always_high:
            return BlockVisibility.FULL
        return BlockVisibility.PARTIAL

    # ---- everything together ----------------------------------------------------
    def tile_mask(
        self, q_start: int, q_end: int, k_start: int, k_end: int, device: torch.device
    ) -> Tensor | None:
        """Boolean visibility of a tile from structure, bool mask and key padding.

        Shape broadcastable to (B, Hq, q_end - q_start, k_end - k_start); None when all
        of it is visible. The float bias is not included (see :meth:`tile_bias`).
        """
        visible = None
        if self.block_visibility(q_start, q_end, k_start, k_end) is not BlockVisibility.FULL:
            visible = self.structure_mask(q_start, q_end, k_start, k_end, device)
        if self.bool_mask is not None:
            part = slice_tile(self.bool_mask, q_start, q_end, k_start, k_end)
            visible = part if visible is None else visible & part
        if self.key_padding_mask is not None:
            part = self.key_padding_mask[:, None, None, k_start:k_end]  # (B, 1, 1, bk)
            visible = part if visible is None else visible & part
        return visible

    def tile_bias(self, q_start: int, q_end: int, k_start: int, k_end: int) -> Tensor | None:
        """The float bias of a tile, broadcastable to (B, Hq, bq, bk), or None."""
        if self.float_bias is None:
            return None
        return slice_tile(self.float_bias, q_start, q_end, k_start, k_end)

    @property
    def structure_key(self) -> tuple:
        """Everything the causal/window/global structure depends on (no tensors)."""
        return self.nq, self.nk, self.left, self.right, self.causal, self.global_tokens

    def dense_structure(self, device: torch.device) -> Tensor | None:
        """The causal/window/global visibility of every pair, (Nq, Nk) bool, or None when
        the structure hides nothing. Built once per (structure, device) and reused (read-only)."""
        if not self.has_structure:
            return None
        key = (*self.structure_key, device)
        if key in _STRUCTURE_MASKS:
            _STRUCTURE_MASKS.move_to_end(key)
            return _STRUCTURE_MASKS[key]
        full = self.block_visibility(0, self.nq, 0, self.nk) is BlockVisibility.FULL
        visible = None if full else self.structure_mask(0, self.nq, 0, self.nk, device)
        _remember_mask(key, visible)
        return visible

    def dense_mask(self, device: torch.device) -> Tensor | None:
        """Boolean visibility of every pair, broadcastable to (B, Hq, Nq, Nk), or None.

        The structure part comes from :meth:`dense_structure` (cached); the result may be
        that cached tensor itself, so callers must not modify it in place.
        """
        visible = self.dense_structure(device)
        if self.bool_mask is not None:
            visible = self.bool_mask if visible is None else visible & self.bool_mask
        if self.key_padding_mask is not None:
            part = padding_view(self.key_padding_mask, -1, 1, 1, -2)  # (B, 1, 1, Nk)
            visible = part if visible is None else visible & part
        return visible

    def with_tensors(self, mask: Tensor | None, key_padding_mask: Tensor | None) -> MaskSpec:
        """This spec with the call's ``mask`` and ``key_padding_mask`` (validated) in place.

        A cheap copy for the per-call path: a cached spec holds the structure, each call
        brings its own tensors.
        """
        spec = object.__new__(MaskSpec)
        spec.__dict__.update(self.__dict__, mask=mask, key_padding_mask=key_padding_mask)
        return spec

    @property
    def structure_hides_keys(self) -> bool:
        """True when causal/window leave some keys unseen by every query (known from shapes)."""
        if not self.has_structure or self.nq == 0:
            return False
        lowest, highest = self._read_range()
        return lowest > 0 or highest < self.nk - 1

    def _read_range(self) -> tuple[int, int]:
        """The lowest and highest key position some query may read through the structure."""
        lowest = 0 if self.left is None else self.offset - self.left
        highest = self.nk - 1 if self.right is None else self.nk - 1 + self.right
        if self.globals_in(self.offset, self.nk):  # a global query reads every key it may
            lowest, highest = 0, self.nk - 1
        return lowest, highest

    def read_keys(self, device: torch.device) -> Tensor | None:
        """Keys that some query can see: bool broadcastable to (B, Hq, Nk), True = read.

        Returns None when the structure hides no key and there is no bool mask or key
        padding. Decided from shapes and masks alone, never by reading a tensor on the host
        (no device synchronisation), so a mask that happens to hide nothing still gives a
        tensor. The structure's part is built once per (structure, device).
        """
        read = None
        if self.structure_hides_keys:
            key = ("read", *self.structure_key, device)
            read = _STRUCTURE_MASKS.get(key)
            if read is None:
                lowest, highest = self._read_range()
                keys = torch.arange(self.nk, device=device)
                window_read = (keys >= lowest) & (keys <= highest)
                if self.global_tokens:
                    window_read |= torch.isin(keys, self.global_index(device))
                read = window_read[None, None, :]  # (1, 1, Nk)
                _remember_mask(key, read)
        if self.bool_mask is not None:
            seen = self.bool_mask.any(dim=-2)  # (B|1, Hq|1, Nk|1)
            read = seen if read is None else read & seen
        if self.key_padding_mask is not None:
            seen = self.key_padding_mask[:, None, :]  # (B, 1, Nk)
            read = seen if read is None else read & seen
        return read

    def unread_keys(self, device: torch.device) -> Tensor | None:
        """Keys that no query can see: bool broadcastable to (B, Hq, Nk), True = unread.

        Backends zero these keys and values before use, so that NaN or huge numbers
        in padding never reach a visible output or a gradient (0 * NaN is NaN).
        None when :meth:`read_keys` is None.
        """
        read = self.read_keys(device)
        return None if read is None else ~read


def _cached_mask_bytes() -> int:
    return sum(0 if t is None else t.numel() for t in _STRUCTURE_MASKS.values())


def _remember_mask(key: tuple, mask: Tensor | None) -> None:
    """Keep a structure mask for reuse unless it is too large; drop the oldest over the budget."""
    if mask is not None and mask.numel() > CACHED_MASK_MAX_BYTES:
        return
    _STRUCTURE_MASKS[key] = mask
    while _cached_mask_bytes() > CACHED_MASKS_MAX_BYTES:
        _STRUCTURE_MASKS.popitem(last=False)


_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def keep_read(tensors: tuple[Tensor, ...], read: Tensor) -> tuple[Tensor, ...]:
    """The ``tensors`` with zeros wherever ``read`` (bool, broadcastable) is False, NaN included.

    Without gradients each tensor's bits, viewed as integers, are multiplied by ``read`` (0 or 1):
    one vectorised integer op per tensor, several times faster on the CPU than ``masked_fill``
    with a broadcast mask, and all-zero bits are +0.0. With gradients it is ``torch.where``,
    whose gradient is zero where nothing is read.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return tuple(torch.where(read, t, 0.0) for t in tensors)
    return tuple(t.masked_fill(~read, 0.0) if t.dtype.itemsize not in _INT_OF_WIDTH
                 else t.view(_INT_OF_WIDTH[t.dtype.itemsize]).mul(read).view(t.dtype) for t in tensors)


def padding_view(key_padding_mask: Tensor, *dims: int) -> Tensor:
    """A (B, Nk) key padding mask viewed with size-1 dimensions: ``dims`` is the new shape with -1
    for B and -2 for Nk, e.g. (-1, 1, 1, -2) for (B, 1, 1, Nk). A view when the mask is contiguous
    (cheaper per call than indexing), a reshaped copy otherwise."""
    batch, nk = key_padding_mask.shape
    shape = [batch if d == -1 else nk if d == -2 else d for d in dims]
    return key_padding_mask.view(shape) if key_padding_mask.is_contiguous() else key_padding_mask.reshape(shape)

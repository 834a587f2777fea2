"""Sliding-window exact attention: each query block meets only the keys its window touches.

With ``window=(left, right)`` the query at position p sees keys p - left .. p + right,
so attention over N tokens costs O(N * w) time and memory (w = left + right + 1)
instead of O(N^2). Queries are cut into blocks of ``block`` rows; the keys that block
can see form one contiguous *band* of ``block + left + right`` keys::

    keys    0 .............................................. N
    block 0 [=====band 0=====]
    block 1       [=====band 1=====]
    block 2             [=====band 2=====]

The bands overlap, so they are read through a strided view of the keys and values
rather than copied, and all blocks go through PyTorch's fused CPU attention kernel at
once, as a batch of (block x band) problems with a mask that cuts each band to the exact
window (and hides key padding): one (block, span) mask for every interior block, own
masks and zero-padded keys for the few blocks at the edges.

Everything the fused band path does not cover (gradients, global tokens, a user mask,
a float bias, an unbounded side, values narrower or wider than queries, a GPU) runs the
block-sparse FlashAttention algorithm of :mod:`qkv.functional.tiled`, forward and
backward, which visits only the key blocks each query block's window touches
(:func:`qkv.functional.tiled.key_blocks`). Both are exact and tested against the
reference in float64.

Global tokens (Longformer, BigBird): ``global_tokens=`` positions see every key and are
seen by every query (causality still applies); they cost O(N * G) more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.functional.masks import MaskSpec
from qkv.functional.tiled import NEG_INF, lse_dtype, tiled_attention

__all__ = ["sliding_attention", "DEFAULT_BAND_BLOCK"]

DEFAULT_BAND_BLOCK = 32  # rows per band: fastest of 32/64/128 at N=8K on 2 cores (66/71/76 ms)
GENERAL_BLOCKS = (128, 128)  # (query rows, keys) per tile on the block-sparse path and backward

_fused = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


class Segment:
    """A run of query blocks that go through the fused kernel in one call.

    Block ``i`` holds query rows ``i * block .. (i + 1) * block - 1`` (past Nq: zero
    rows); its band is the ``span = block + left + right`` keys starting at key position
    ``i * block + offset - left``. Interior blocks have every band key inside 0 .. Nk-1
    and real rows only, so one (block, span) mask serves them all and their bands are a
    strided view of the keys; the few blocks at the edges get their own masks and
    zero-padded copies of their keys.
    """

    def __init__(self, spec: MaskSpec, block: int, first: int, count: int, interior: bool) -> None:
        self.spec, self.block, self.first, self.count, self.interior = spec, block, first, count, interior
        self.span = block + spec.left + spec.right
        self.key_start = first * block + spec.offset - spec.left  # band `first`'s first key position

    @staticmethod
    def split(spec: MaskSpec, block: int) -> list[Segment]:
        """Front edge, interior and back edge segments covering every query block."""
        num_blocks = -(-spec.nq // block)
        span = block + spec.left + spec.right
        lo = max(0, -(-(spec.left - spec.offset) // block))  # first band starting at key >= 0
        hi = min(spec.nq // block, (spec.nk - span - spec.offset + spec.left) // block + 1)
        if lo >= hi:  # short sequences: no interior block
            return [Segment(spec, block, 0, num_blocks, interior=False)]
        parts = [(0, lo, False), (lo, hi - lo, True), (hi, num_blocks - hi, False)]
        return [Segment(spec, block, first, count, interior) for first, count, interior in parts if count]

    @property
    def rows(self) -> slice:
        """The query rows of this segment (clipped to Nq)."""
        return slice(self.first * self.block, min((self.first + self.count) * self.block, self.spec.nq))

    def key_bands(self, t: Tensor) -> Tensor:
        """(H, Nk, D) keys or values -> (count, H, span, D) bands, overlapping."""
        heads, nk, dim = t.shape
        if self.interior:
            source, offset = t, self.key_start
        else:  # the keys this segment reads, zero-padded where bands stick out
            low, high = self.key_start, self.key_start + (self.count - 1) * self.block + self.span
            inside = t[:, max(low, 0) : max(min(high, nk), 0)]
            front = min(max(-low, 0), high - low)
            source = F.pad(inside, (0, 0, front, high - low - front - inside.shape[1]))
            offset = 0
        stride_h, stride_n, stride_d = source.stride()
        return source.as_strided(
            (self.count, heads, self.span, dim),
            (self.block * stride_n, stride_h, stride_n, stride_d),
            source.storage_offset() + offset * stride_n,
        )

    def visible(self, key_padding: Tensor | None, device: torch.device) -> Tensor:
        """Which band keys each query row sees: (count or 1, block, span) bool."""
        spec = self.spec
        rows = torch.arange(self.block, device=device).view(1, -1, 1)
        band = torch.arange(self.span, device=device).view(1, 1, -1)
        if self.interior and key_padding is None:
            blocks = torch.zeros(1, 1, 1, dtype=torch.long, device=device)  # the same for all
        else:
            blocks = torch.arange(self.count, device=device).view(-1, 1, 1)
        positions = (self.first + blocks) * self.block + rows + spec.offset  # (n, block, 1)
        keys = self.key_start + blocks * self.block + band  # (n, 1, span)
        seen = (keys >= positions - spec.left) & (keys <= positions + spec.right)
        if not self.interior:
            seen &= (keys >= 0) & (keys < spec.nk)
        if key_padding is not None:
            seen &= key_padding[keys.clamp(0, spec.nk - 1)]
        return seen

    def masks(self, key_padding: Tensor | None, groups: int, dtype: torch.dtype,
              device: torch.device) -> tuple[Tensor, Tensor | None]:
        """The kernel's additive mask (n, 1, G * block, span) and the rows that may see nothing.

        Rows with no visible key (n, G * block) are shown every key, since the kernel
        would return NaN, and zeroed afterwards; None for interior blocks without key
        padding, whose rows always see their window.
        """
        seen = self.visible(key_padding, device)  # (n, block, span)
        empty = None
        if not (self.interior and key_padding is None):  # interior rows always see their window
            # Which rows are empty is not read on the host (that would wait for the device).
            row_empty = ~seen.any(dim=-1)  # (n, block)
            seen = seen | row_empty.unsqueeze(-1)
            empty = row_empty.repeat(1, groups)
        mask = torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill_(~seen, NEG_INF)
        return mask.repeat(1, groups, 1).unsqueeze(1), empty

    def query_bands(self, t: Tensor, num_kv_heads: int) -> Tensor:
        """Rows (Hq, Nq, X) -> (count, Hkv, G * block, X): a block's G query heads stacked."""
        groups = t.shape[0] // num_kv_heads
        t = t[:, self.rows]
        if t.shape[1] < self.count * self.block:  # the last block is short: zero rows
            t = F.pad(t, (0, 0, 0, self.count * self.block - t.shape[1]))
        t = t.unflatten(1, (self.count, self.block)).transpose(0, 1)  # (n, Hq, block, X)
        if groups == 1:
            return t
        return t.unflatten(1, (num_kv_heads, groups)).flatten(2, 3)  # (n, Hkv, G * block, X)

    def put_rows(self, bands: Tensor, dest: Tensor) -> None:
        """Write (count, Hkv, G * block, X) band rows into ``dest`` rows (Hq, Nq, X)."""
        count, width, heads = bands.shape[0], bands.shape[3], dest.shape[0]
        rows = bands.reshape(count, heads, self.block, width).transpose(0, 1).flatten(1, 2)
        dest[:, self.rows] = rows[:, : self.rows.stop - self.rows.start]


def fused_bands(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, block: int
                ) -> tuple[Tensor, Tensor]:
    """Band attention through PyTorch's fused CPU flash kernel (forward only).

    Shapes as :func:`sliding_attention`; returns (out, lse).
    """
    segments = Segment.split(spec, block)
    num_kv_heads, groups = k.shape[1], q.shape[1] // k.shape[1]
    out = q.new_empty(q.shape[:3] + (v.shape[3],))  # (B, Hq, Nq, Dv)
    lse = torch.empty(q.shape[:3], dtype=lse_dtype(q.dtype), device=q.device)  # (B, Hq, Nq)
    for b in range(q.shape[0]):
        key_padding = None if spec.key_padding_mask is None else spec.key_padding_mask[b]
        for segment in segments:
            mask, empty = segment.masks(key_padding, groups, q.dtype, q.device)
            band_out, band_lse = _fused(
                segment.query_bands(q[b], num_kv_heads),
                segment.key_bands(k[b]),
                segment.key_bands(v[b]),
                0.0, False, attn_mask=mask, scale=scale,
            )  # (n, Hkv, G * block, Dv), (n, Hkv, G * block)
            if empty is not None:
                band_out = band_out.masked_fill(empty[:, None, :, None], 0.0)
                band_lse = band_lse.masked_fill(empty[:, None, :], NEG_INF)
            segment.put_rows(band_out, out[b])
            segment.put_rows(band_lse.unsqueeze(-1), lse[b].unsqueeze(-1))
    return out, lse


def fused_bands_apply(spec: MaskSpec, q: Tensor, k: Tensor, v: Tensor) -> bool:
    """True when the call fits the fused band path; otherwise the tiled path runs it.

    The band path needs a finite window on both sides, no user mask or global tokens,
    a CPU tensor, values as wide as queries, PyTorch's fused CPU kernel, and no
    gradient: PyTorch's fused CPU backward misses the 2x error rule on some float32
    windows, so training runs the block-sparse tiled forward and backward instead.
    """
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return (
        _fused is not None
        and q.device.type == "cpu"
        and v.shape[-1] == q.shape[-1]
        and q.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        and spec.left is not None
        and spec.right is not None
        and spec.mask is None
        and not spec.global_tokens
        and not needs_grad
    )


def sliding_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: MaskSpec,
    scale: float,
    return_lse: bool,
    block: int = DEFAULT_BAND_BLOCK,
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact attention inside a sliding window, in O(N * w) time and memory.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq is a multiple of Hkv.
        v: (B, Hkv, Nk, Dv) values.
        spec: the call's masking; ``window=(left, right)`` is what makes this fast.
        scale: multiplies q k^T.
        return_lse: also return the LSE (B, Hq, Nq).
        block: query rows per band on the fused path.

    Returns:
        out (B, Hq, Nq, Dv), and lse (B, Hq, Nq) when ``return_lse``.
    """
    if fused_bands_apply(spec, q, k, v):
        out, lse = fused_bands(q, k, v, spec, scale, block)
        return (out, lse) if return_lse else out
    return tiled_attention(q, k, v, spec, scale, return_lse, *GENERAL_BLOCKS)

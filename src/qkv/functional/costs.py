"""The cost model behind ``backend="auto"``: how long each exact backend would take for a call.

Each estimate counts the work a backend does for the call, in the way its algorithm does
it, and prices it:

- ``units``: (query, key) pairs computed x batch x query heads x (D + Dv). SDPA computes every
  pair of the (Nq, Nk) matrix once it is given a mask (the hidden ones too), about half of
  them for plain causal attention (its kernels skip the blocks above the diagonal); ``tiled``
  and ``triton`` compute the tiles a window or causal mask does not hide; ``sliding`` computes
  its bands of ``block + left + right`` keys.
- ``mask elements``: a dense (Nq, Nk) mask SDPA must be given (built, converted, read).
- ``tiles``: pieces of work driven by a Python loop (``tiled``'s tiles, ``sliding``'s band
  segments), each with a fixed cost.
- a fixed cost per call, and a factor for the backward pass when gradients are needed.

The prices (:data:`PRICES`) are calibrated from ``qkv bench attention`` (BENCHMARKS.md): on the
CPU from the float32 sweep on 2 cores (B=1, H=8, D=64, N = 512..64K, full, causal and windowed),
on CUDA from the bfloat16 sweep and ``qkv bench triton`` on an H200. They are meant to rank
backends, not to predict times to better than a few tens of percent.
"""

from __future__ import annotations

from dataclasses import dataclass

from qkv.functional.masks import MaskSpec
from qkv.functional.sliding import DEFAULT_BAND_BLOCK, GENERAL_BLOCKS
from qkv.functional.tiled import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q

__all__ = ["CallShape", "Estimate", "Prices", "PRICES", "sdpa_estimate", "tiled_estimate", "sliding_estimate",
           "triton_estimate", "tile_work"]

TRITON_BLOCKS = (128, 64)  # typical autotuned (query rows, keys) of the Triton kernel on a GPU


@dataclass(frozen=True)
class CallShape:
    """The sizes of one attention call (what the cost model reads besides the mask structure)."""

    batch: int
    q_heads: int
    kv_heads: int
    nq: int
    nk: int
    head_dim: int  # D
    value_dim: int  # Dv
    device: str  # device type: "cpu", "cuda", ...

    @property
    def units_per_pair(self) -> int:
        """Work of one (query, key) pair over the batch and heads: B * Hq * (D + Dv)."""
        return self.batch * self.q_heads * (self.head_dim + self.value_dim)


@dataclass(frozen=True)
class Estimate:
    """A backend's estimated time for one call, and how it would run it."""

    seconds: float
    how: str


@dataclass(frozen=True)
class Prices:
    """Seconds per unit of work for one backend on one device type."""

    per_unit: float  # per pair x B x Hq x (D + Dv), no mask
    per_call: float  # fixed cost of a call (Python, launches)
    per_unit_masked: float | None = None  # per unit when a dense mask is applied (None: per_unit)
    per_mask_element: float = 0.0  # building and reading one element of a dense (Nq, Nk) mask
    per_tile: float = 0.0  # one tile or band segment of a Python loop
    grad_factor: float = 3.5  # forward + backward time / forward time


# (backend, device type) -> prices; calibrated as the module docstring says.
PRICES: dict[tuple[str, str], Prices] = {
    # CPU: SDPA 170 ms full at 4K (1.7e10 units); a window's dense mask adds ~4 ns per element.
    ("sdpa", "cpu"): Prices(per_unit=1.0e-11, per_call=20e-6, per_mask_element=4e-9, grad_factor=3.5),
    ("tiled", "cpu"): Prices(per_unit=1.35e-11, per_call=0.3e-3, per_tile=40e-6, grad_factor=3.2),
    ("sliding", "cpu"): Prices(per_unit=1.4e-11, per_call=0.2e-3, per_tile=0.1e-3, grad_factor=3.2),
    # Under Triton's interpreter (the CPU, for tests) the kernel is orders of magnitude slower.
    ("triton", "cpu"): Prices(per_unit=1e-7, per_call=1.0, grad_factor=8.0),
    # CUDA (H200, bfloat16): FlashAttention/cuDNN behind SDPA without a mask; the memory-efficient
    # kernel and a materialised mask with one.
    ("sdpa", "cuda"): Prices(per_unit=3.1e-15, per_call=0.1e-3, per_unit_masked=1.5e-14, per_mask_element=3e-12,
                             grad_factor=3.8),
    ("triton", "cuda"): Prices(per_unit=5e-15, per_call=0.4e-3, grad_factor=8.0),
    ("tiled", "cuda"): Prices(per_unit=3e-14, per_call=0.5e-3, per_tile=0.4e-3, grad_factor=1.6),
    ("sliding", "cuda"): Prices(per_unit=3e-14, per_call=0.5e-3, per_tile=0.4e-3, grad_factor=1.6),
}


def _prices(backend: str, device: str) -> Prices:
    """The backend's prices on this device type (CUDA's for other accelerators)."""
    return PRICES.get((backend, device)) or PRICES[(backend, "cuda")]


def tile_work(spec: MaskSpec, block_q: int, block_k: int) -> tuple[int, int]:
    """(pairs, tiles) a block-sparse pass computes: per query block, the key blocks from the
    lowest to the highest key its window or causal mask lets it see (all of them with global
    tokens); counted per query block, never per tile."""
    nq, nk = spec.nq, spec.nk
    if nq == 0 or nk == 0:
        return 0, 0
    key_blocks = -(-nk // block_k)
    if not spec.has_structure or spec.global_tokens:
        return nq * nk, -(-nq // block_q) * key_blocks
    pairs = tiles = 0
    for q_start in range(0, nq, block_q):
        q_end = min(q_start + block_q, nq)
        first, last = q_start + spec.offset, q_end - 1 + spec.offset
        low = 0 if spec.left is None else max(0, first - spec.left)
        high = nk - 1 if spec.right is None else min(nk - 1, last + spec.right)
        if low > high:
            continue
        start, stop = low // block_k * block_k, min(nk, (high // block_k + 1) * block_k)
        pairs += (q_end - q_start) * (stop - start)
        tiles += -(-(stop - start) // block_k)
    return pairs, tiles


def _priced(prices: Prices, units: int, grad: bool, masked_elements: int = 0, tiles: int = 0,
            masked: bool = False) -> float:
    per_unit = prices.per_unit_masked if masked and prices.per_unit_masked is not None else prices.per_unit
    seconds = prices.per_call + units * per_unit + masked_elements * prices.per_mask_element + tiles * prices.per_tile
    return seconds * (prices.grad_factor if grad else 1.0)


def sdpa_estimate(spec: MaskSpec, shape: CallShape, grad: bool) -> Estimate:
    """SDPA: the whole (Nq, Nk) matrix, half of it for plain causal; a dense mask for anything
    else (windows, bottom-right causal with Nq != Nk, padding, user masks)."""
    prices = _prices("sdpa", shape.device)
    if not spec.hides_pairs or spec.is_plain_causal:
        pairs = shape.nq * shape.nk // (2 if spec.is_plain_causal else 1)
        how = "is_causal, no mask" if spec.is_plain_causal else "no mask"
        return Estimate(_priced(prices, pairs * shape.units_per_pair, grad), how)
    elements = _mask_elements(spec, shape)
    seconds = _priced(prices, shape.nq * shape.nk * shape.units_per_pair, grad, elements, masked=True)
    return Estimate(seconds, f"every (query, key) pair and a mask of {elements:,} elements")


def _mask_elements(spec: MaskSpec, shape: CallShape) -> int:
    """Elements of the mask SDPA is given: the padding alone is (B, 1, 1, Nk); a causal/window
    structure is (Nq, Nk), and (B, 1, Nq, Nk) once combined with padding; a user mask adds its own."""
    structure = spec.has_structure and spec.hides_structure
    elements = shape.nq * shape.nk if structure else 0
    if spec.key_padding_mask is not None:
        elements = shape.batch * (elements or shape.nk)
    if spec.mask is not None:
        elements = max(elements, spec.mask.numel(), shape.nq * shape.nk)
    return elements


def tiled_estimate(spec: MaskSpec, shape: CallShape, grad: bool,
                   blocks: tuple[int, int] = (DEFAULT_BLOCK_Q, DEFAULT_BLOCK_K)) -> Estimate:
    """The tiled FlashAttention algorithm: the tiles causal/window leave, a Python loop over them."""
    pairs, tiles = tile_work(spec, *blocks)
    seconds = _priced(_prices("tiled", shape.device), pairs * shape.units_per_pair, grad, tiles=tiles)
    return Estimate(seconds, f"{tiles:,} tiles of {blocks[0]} x {blocks[1]}, {pairs:,} pairs")


def sliding_estimate(spec: MaskSpec, shape: CallShape, grad: bool) -> Estimate:
    """Bands of ``block + left + right`` keys through the fused CPU kernel (forward, finite window,
    no user mask or globals, Dv == D); otherwise the block-sparse tiled path with its blocks."""
    fused = (shape.device == "cpu" and not grad and spec.left is not None and spec.right is not None
             and spec.mask is None and not spec.global_tokens and shape.value_dim == shape.head_dim)
    if not fused:
        pairs, tiles = tile_work(spec, *GENERAL_BLOCKS)
        seconds = _priced(_prices("sliding", shape.device), pairs * shape.units_per_pair, grad, tiles=tiles)
        return Estimate(seconds, f"block-sparse tiles ({tiles:,} of {GENERAL_BLOCKS[0]} x {GENERAL_BLOCKS[1]})")
    block = DEFAULT_BAND_BLOCK
    rows = -(-shape.nq // block) * block
    pairs = rows * (block + spec.left + spec.right)
    segments = 3 * shape.batch  # front edge, interior, back edge per sequence
    seconds = _priced(_prices("sliding", shape.device), pairs * shape.units_per_pair, grad, tiles=segments)
    return Estimate(seconds, f"bands of {block + spec.left + spec.right} keys, {pairs:,} pairs")


def triton_estimate(spec: MaskSpec, shape: CallShape, grad: bool) -> Estimate:
    """The Triton kernel: the blocks causal/window leave, no mask materialised, on the GPU."""
    pairs, _ = tile_work(spec, *TRITON_BLOCKS)
    seconds = _priced(_prices("triton", shape.device), pairs * shape.units_per_pair, grad)
    return Estimate(seconds, f"blocks causal/window leave ({pairs:,} pairs), no mask")

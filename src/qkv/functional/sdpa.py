"""PyTorch's fused ``scaled_dot_product_attention`` with qkv's semantics.

SDPA is the fast exact default. What it does not do by itself, done here: bottom-right
causal alignment when Nq != Nk (PyTorch's ``is_causal`` is top-left), windows and key
padding compiled into one mask, grouped-query attention on every torch >= 2.5, and rows
that see no key returning zeros with zero gradients instead of NaN (their queries are
zeroed first, where a mask, key padding or the structure can empty a row, so that not even
a NaN query reaches the output or dk).

Per call it adds almost nothing: :func:`sdpa_runner` decides once per call signature
which form of SDPA call serves it (no mask, ``is_causal``, or a mask built from the cached
structure and the call's padding), and whether PyTorch's kernel needs either repair below.
Nothing reads a tensor's values on the host (no device synchronisation).

Two behaviours of PyTorch's kernels are probed once per (device type, dtype), on a tiny
call, rather than assumed, since they differ between versions and kernels:

- a row whose mask hides every key: recent kernels return zeros with zero gradients, as the
  contract asks; otherwise such rows are shown every key and zeroed afterwards;
- a query holding NaN: the CPU kernel returns zeros instead of NaN for rows shorter than one
  vector register (Nk < 16 with AVX-512) when no mask is given; those calls carry the NaN
  into the output themselves.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.functional.costs import CallShape
from qkv.functional.masks import MaskSpec, keep_read
from qkv.functional.reference import repeat_kv_heads

__all__ = ["sdpa_attention", "sdpa_runner"]

# Row lengths probed one by one for the NaN behaviour; longer rows behave as this one.
_PROBED_ROW_LENGTHS = 64


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, return_lse: bool
) -> Tensor:
    """Exact attention through ``torch.nn.functional.scaled_dot_product_attention``.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq is a multiple of Hkv.
        v: (B, Hkv, Nk, Dv) values.
        spec: the call's masking.
        scale: multiplies q k^T.
        return_lse: must be False (the registry refuses it before this is called).

    Returns:
        (B, Hq, Nq, Dv).
    """
    if return_lse:  # the registry refuses this first; kept as a guard for direct calls
        raise ValueError("the sdpa backend cannot return the LSE; use backend='tiled'")
    shape = CallShape(q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], v.shape[3],
                      q.device.type)
    return sdpa_runner(spec, scale, shape, q.dtype)(q, k, v, spec)


def sdpa_runner(spec: MaskSpec, scale: float, shape: CallShape, dtype: torch.dtype | None = None
                ) -> Callable[[Tensor, Tensor, Tensor, MaskSpec], Tensor]:
    """SDPA prepared for one call signature: ``run(q, k, v, spec)`` -> (B, Hq, Nq, Dv).

    ``spec`` gives the structure (causal/window, and whether a mask or key padding come with
    each call); ``run`` receives the call's spec with its tensors. The structure's dense mask
    is cached (:meth:`MaskSpec.dense_structure`).
    """
    device = torch.device(shape.device)
    dtype = dtype or torch.get_default_dtype()
    groups = shape.q_heads // max(shape.kv_heads, 1)
    sdpa = F.scaled_dot_product_attention

    def heads(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if groups == 1:
            return k, v
        return repeat_kv_heads(k, shape.q_heads), repeat_kv_heads(v, shape.q_heads)

    row_length = min(shape.nk, _PROBED_ROW_LENGTHS)
    if not spec.hides_pairs or spec.is_plain_causal:
        is_causal = spec.is_plain_causal
        repair_nan = not _carries_query_nan(shape.device, dtype, "causal" if is_causal else "plain", row_length)
        if groups == 1 and not repair_nan:  # the common case: nothing but the call itself
            if scale == 1.0 / math.sqrt(shape.head_dim):  # SDPA's own default, computed the same way
                if is_causal:
                    return lambda q, k, v, spec: sdpa(q, k, v, is_causal=True)
                return lambda q, k, v, spec: sdpa(q, k, v)
            return lambda q, k, v, spec: sdpa(q, k, v, is_causal=is_causal, scale=scale)

        def run_unmasked(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec) -> Tensor:
            k, v = heads(k, v)
            out = sdpa(q, k, v, is_causal=is_causal, scale=scale)
            return _carry_query_nan(q, out) if repair_nan else out

        return run_unmasked

    zeroes_empty_rows = _zeroes_hidden_rows(shape.device, dtype)
    structure_empties_rows = _structure_may_empty_rows(spec)
    repair_nan = not _carries_query_nan(shape.device, dtype, "masked", row_length)
    if (zeroes_empty_rows and not repair_nan and groups == 1 and spec.mask is None and not spec.hides_structure
            and spec.key_padding_mask is not None):
        # key padding alone, the commonest mask: SDPA's (B, 1, 1, Nk) form is a view of it
        padding_shape = (shape.batch, 1, 1, shape.nk)

        def run_padded(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec) -> Tensor:
            padding = spec.key_padding_mask
            mask = padding.view(padding_shape) if padding.is_contiguous() else padding.reshape(padding_shape)
            sees_a_key = mask.any(dim=-1, keepdim=True)  # (B, 1, 1, 1): False where every key is padding
            return sdpa(keep_read((q,), sees_a_key)[0], k, v, attn_mask=mask, scale=scale)  # blind queries zeroed

        return run_padded

    def run_masked(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec) -> Tensor:
        out, row_is_empty = masked(q, *heads(k, v), spec)
        return _carry_query_nan(q, out, row_is_empty) if repair_nan else out

    def masked(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec) -> tuple[Tensor, Tensor | None]:
        """The output and the rows that see no key ((.., Nq, 1) bool, or None: every row sees one)."""
        visible = spec.dense_mask(device)  # broadcastable to (B, H, Nq, Nk)
        bias = spec.float_bias
        if bias is None and zeroes_empty_rows:
            if visible is None:  # e.g. a bool mask broadcast from fewer dimensions
                return sdpa(q, k, v, scale=scale), None
            if spec.mask is None and spec.key_padding_mask is None and not structure_empties_rows:
                return sdpa(q, k, v, attn_mask=visible, scale=scale), None  # every row sees a key
            row_is_empty = ~visible.any(dim=-1, keepdim=True)  # (.., Nq, 1)
            return sdpa(_blind_queries_zeroed(q, row_is_empty), k, v, attn_mask=visible, scale=scale), row_is_empty
        if bias is not None:
            bias = bias.to(q.dtype)
            if visible is not None:
                bias = bias.masked_fill(~visible, float("-inf"))
            row_is_empty = (bias == float("-inf")).all(dim=-1, keepdim=True)  # (.., Nq, 1)
            # A row that sees nothing would softmax to NaN: let it see everything, zero it after.
            attn_mask = bias.masked_fill(row_is_empty, 0.0)
        else:
            row_is_empty = ~visible.any(dim=-1, keepdim=True)  # (.., Nq, 1)
            attn_mask = visible | row_is_empty
        out = sdpa(_blind_queries_zeroed(q, row_is_empty), k, v, attn_mask=attn_mask, scale=scale)
        return out.masked_fill(row_is_empty, 0.0), row_is_empty

    return run_masked


def _blind_queries_zeroed(q: Tensor, row_is_empty: Tensor) -> Tensor:
    """``q`` (B, H, Nq, D) with zeros in the rows that see no key (``row_is_empty``, broadcastable to
    (B, H, Nq, 1)): such a row's output is zero whatever its query holds, and so is its gradient, which a
    NaN query would otherwise turn into NaN (0 * NaN) on the way back through the kernel."""
    return keep_read((q,), ~row_is_empty)[0]


def _structure_may_empty_rows(spec: MaskSpec) -> bool:
    """Whether causal/window alone can leave a query row with no key, from the shapes: a band leaves
    only its first or last rows empty, so those two are checked (on the CPU, O(Nk)); with global tokens,
    any row may be."""
    if not spec.has_structure or spec.nq == 0 or spec.nk == 0:
        return False
    if spec.global_tokens:
        return True
    positions = torch.tensor([spec.offset, spec.nk - 1])  # of the first and the last query
    return not bool(spec.pair_structure(positions, torch.arange(spec.nk)).any(dim=-1).all())


def _carry_query_nan(q: Tensor, out: Tensor, row_is_empty: Tensor | None = None) -> Tensor:
    """``out`` with NaN in every row whose query holds a NaN and sees some key (what the contract
    asks: a row that sees no key stays zero)."""
    query_has_nan = torch.isnan(q).any(dim=-1, keepdim=True)  # (B, H, Nq, 1)
    if row_is_empty is not None:
        query_has_nan = query_has_nan & ~row_is_empty
    return out.masked_fill(query_has_nan, float("nan"))


@functools.cache
def _carries_query_nan(device_type: str, dtype: torch.dtype, form: str, nk: int) -> bool:
    """Whether SDPA, called in ``form`` ("plain", "causal" or "masked": with a bool mask) with Nk
    keys, returns NaN for a query that holds NaN (probed once on a tiny call)."""
    q = torch.zeros(1, 1, nk, 8, dtype=dtype, device=device_type)
    q[0, 0, -1, 0] = float("nan")
    k = torch.ones(1, 1, nk, 8, dtype=dtype, device=device_type)
    mask = torch.ones(nk, nk, dtype=torch.bool, device=device_type) if form == "masked" else None
    with torch.no_grad():
        try:
            out = F.scaled_dot_product_attention(q, k, k, attn_mask=mask, is_causal=form == "causal")
        except RuntimeError:  # no kernel for this dtype on this device: the call itself will say so
            return True
    return bool(torch.isnan(out[0, 0, -1]).all())


@functools.cache
def _zeroes_hidden_rows(device_type: str, dtype: torch.dtype) -> bool:
    """Whether SDPA gives a row that a bool mask hides entirely zeros, with zero gradients and no
    NaN anywhere (probed once on a tiny call)."""
    q, k, v = (torch.ones(1, 1, 2, 8, dtype=dtype, device=device_type, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True, True], [False, False]], device=device_type)
    with torch.enable_grad():
        try:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            grads = torch.autograd.grad(out.sum(), (q, k, v))
        except RuntimeError:  # no kernel for this dtype on this device: take the safe path
            return False
    finite = all(bool(torch.isfinite(t).all()) for t in (out, *grads))
    return finite and bool((out[0, 0, 1] == 0).all()) and bool((grads[0][0, 0, 1] == 0).all())

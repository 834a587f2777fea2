"""Launching qkv's Triton FlashAttention kernels: tile lists, autotuning, the autograd function.

The kernels live in :mod:`qkv.functional.triton_flash`; this module chooses their tiles
(a few candidates per kind of call, autotuned per GPU and shape), builds the tensor
descriptors of the opt-in TMA path, launches the forward and the three backward kernels,
and wraps them in :class:`TritonFlashAttention`. Like the kernels, it imports Triton at
import time: use it through ``backend="triton"``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from qkv.functional.masks import MaskSpec
from qkv.functional.tiled import lse_dtype
from qkv.functional.triton_flash import (
    INTERPRETED,
    INTERPRETER_BLOCKS,
    LOG2E,
    _backward_kv_kernel,
    _backward_q_kernel,
    _delta_kernel,
    _forward_kernel,
)

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # older Triton: the pointer path only
    TensorDescriptor = None

__all__ = ["flash_forward", "flash_backward", "TritonFlashAttention", "tma_unsupported_reason"]


def _configs(shapes: list[tuple[int, int, int, int]], pre_hook=None) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s, pre_hook=pre_hook)
            for m, n, w, s in shapes]


# Tile shapes tried per GPU and shape, (BLOCK_M, BLOCK_N, warps, pipeline stages), a few per
# class of call: each one tried costs a compile on a shape's first call. Wide heads get
# smaller tiles so that a pipelined stage of K and V fits in shared memory; a band (a window
# on both sides, e.g. causal + window) gives each program few blocks, so its list holds tiles
# small enough for two to four programs per multiprocessor, which hide each other's start and
# end.
_FORWARD_SHAPES = {
    "small": [(128, 128, 8, 3), (128, 64, 4, 3)],
    "medium": [(128, 64, 8, 3), (128, 128, 8, 3)],
    "wide": [(128, 32, 8, 2), (64, 64, 4, 2)],
    "band": [(64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2), (32, 64, 4, 2), (128, 64, 8, 2)],
}
# dK/dV by key block (BLOCK_N keys stay in registers; BLOCK_M query rows per step).
_BACKWARD_KV_SHAPES = {
    "small": [(64, 128, 8, 2), (32, 128, 4, 3)],
    "medium": [(64, 128, 8, 2)],
    "wide": [(32, 64, 4, 2), (16, 64, 4, 2)],
    "band": [(32, 64, 4, 2), (16, 64, 4, 2), (32, 32, 4, 2), (64, 64, 4, 2)],
}
# dQ by query block (BLOCK_M rows stay; BLOCK_N keys per step): the transposed tiles.
_BACKWARD_Q_SHAPES = {
    "small": [(128, 64, 8, 2), (128, 32, 4, 3)],
    "medium": [(128, 64, 8, 2)],
    "wide": [(64, 32, 4, 2), (32, 32, 4, 2)],
    "band": [(64, 64, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2), (32, 32, 4, 2)],
}


def _call_class(meta: dict) -> str:
    """Which tile list a call draws from: by head dim, and "band" for two-sided windows."""
    head_dim = max(meta["BLOCK_D"], meta["BLOCK_DV"])
    if head_dim > 128:
        return "wide"
    if meta["HAS_LEFT"] and meta["HAS_RIGHT"]:
        return "band"
    return "small" if head_dim <= 64 else "medium"


def _pruner(shapes: dict[str, list[tuple[int, int, int, int]]]):
    """Autotuning prune: only the configurations of the call's class."""
    by_class = {name: {str(config) for config in _configs(listed)} for name, listed in shapes.items()}

    def prune(configs, named_args, **meta):
        keep = by_class[_call_class({**named_args, **meta})]
        return [config for config in configs if str(config) in keep]
    return prune


def _all_configs(shapes: dict[str, list[tuple[int, int, int, int]]], pre_hook=None) -> list[triton.Config]:
    unique = dict.fromkeys(shape for listed in shapes.values() for shape in listed)
    return _configs(list(unique), pre_hook)


def _shape_descriptor_blocks(args: dict) -> None:
    """Give K's and V's tensor descriptors (when the call uses them) the tile of the config
    about to run: (1, 1, BLOCK_N, head dim block)."""
    if args.get("DescK") is not None:
        args["DescK"].block_shape = [1, 1, args["BLOCK_N"], args["BLOCK_D"]]
        args["DescV"].block_shape = [1, 1, args["BLOCK_N"], args["BLOCK_DV"]]


_TUNING_KEY = ["nq", "nk", "head_dim", "value_dim", "group_size", "HAS_LEFT", "HAS_RIGHT", "HAS_PADDING"]
_TUNED: dict[str, object] = {}


def _tuned(name: str):
    """The autotuned launcher of a kernel, built on first use (GPU only)."""
    if name not in _TUNED:
        pre_hook = None
        if name == "forward":
            shapes, kernel, extra, pre_hook = _FORWARD_SHAPES, _forward_kernel, {}, _shape_descriptor_blocks
        elif name == "backward_kv":
            shapes, kernel, extra = _BACKWARD_KV_SHAPES, _backward_kv_kernel, {}
        else:
            shapes, kernel, extra = _BACKWARD_Q_SHAPES, _backward_q_kernel, {}
        _TUNED[name] = triton.autotune(_all_configs(shapes, pre_hook), key=_TUNING_KEY,
                                       prune_configs_by={"early_config_prune": _pruner(shapes)}, **extra)(kernel)
    return _TUNED[name]


def _launch(name: str, kernel, rows: int, programs: int, blocks: tuple[int, int] | None, args, meta) -> None:
    """Launch ``kernel`` over (blocks of ``rows``, ``programs``), autotuned unless ``blocks`` is given.

    ``rows`` counts queries for forward/dQ kernels and keys for the dK/dV kernel; the
    block that tiles them is BLOCK_M or BLOCK_N respectively.
    """
    tiled_by = "BLOCK_N" if name == "backward_kv" else "BLOCK_M"
    if blocks is None and INTERPRETED:
        blocks = INTERPRETER_BLOCKS
    if blocks is not None:
        block_m, block_n = blocks
        size = block_n if tiled_by == "BLOCK_N" else block_m
        if name == "forward":
            _shape_descriptor_blocks({**dict(zip(kernel.arg_names, args)), **meta, "BLOCK_N": block_n})
        kernel[(triton.cdiv(rows, size), programs)](*args, **meta, BLOCK_M=block_m, BLOCK_N=block_n,
                                                     num_warps=4, num_stages=2)
        return
    _tuned(name)[lambda config: (triton.cdiv(rows, config[tiled_by]), programs)](*args, **meta)


def _precision(dtype: torch.dtype) -> str:
    """How the kernels' matrix products round (see :func:`_dot`)."""
    if dtype in (torch.float32, torch.float64):
        return "ieee"  # float32 inputs must not be rounded to TF32 (the 2x rule)
    if dtype == torch.bfloat16 and INTERPRETED:
        return "emulate-bf16"
    return "tf32"  # ignored for float16/bfloat16: tensor cores take them as they are


def _geometry(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec) -> dict:
    """Constexpr and scalar arguments shared by every kernel."""
    dtype = q.dtype
    # A bound wider than every distance in the call does not bind; clamping keeps it in int32.
    reach = spec.nq + spec.nk + 1
    block_d = max(16, triton.next_power_of_2(q.shape[-1]))
    block_dv = max(16, triton.next_power_of_2(v.shape[-1]))
    return {
        "meta": {
            "HAS_LEFT": spec.left is not None,
            "HAS_RIGHT": spec.right is not None,
            "HAS_PADDING": spec.key_padding_mask is not None,
            "BLOCK_D": block_d,
            "BLOCK_DV": block_dv,
            "EVEN_D": block_d == q.shape[-1],  # no head-dim masks in the hot loops
            "EVEN_DV": block_dv == v.shape[-1],
            "ACC_DTYPE": tl.float64 if dtype == torch.float64 else tl.float32,
            "PRECISION": _precision(dtype),
        },
        "window": (min(spec.left or 0, reach), min(spec.right or 0, reach)),
        "group_size": q.shape[1] // k.shape[1],
    }


def _key_padding(spec: MaskSpec, k: Tensor) -> tuple[Tensor, int]:
    """The key padding mask as (B, Nk) int8 and its batch stride (a 1-element dummy without one)."""
    if spec.key_padding_mask is None:
        return torch.ones(1, dtype=torch.int8, device=k.device), 0
    padding = spec.key_padding_mask.to(device=k.device, dtype=torch.int8).contiguous()
    return padding, padding.stride(0)


def tma_unsupported_reason(k: Tensor, v: Tensor) -> str | None:
    """Why K and V cannot be read through tensor descriptors here, or None when they can.

    ``k``: (B, Hkv, Nk, D); ``v``: (B, Hkv, Nk, Dv).
    """
    if TensorDescriptor is None:
        return f"this Triton ({triton.__version__}) has no host tensor descriptors"
    if k.device.type == "cuda" and torch.cuda.get_device_capability(k.device)[0] < 9:
        return "tensor descriptors (TMA) need a Hopper or newer GPU (compute capability 9.0+)"
    if k.dtype not in (torch.float16, torch.bfloat16):
        return f"the descriptor path reads float16/bfloat16; got {k.dtype}"
    for name, tensor in (("k", k), ("v", v)):
        if tensor.stride(-1) != 1:
            return f"{name}'s last dimension is not contiguous (stride {tensor.stride(-1)})"
        if tensor.data_ptr() % 16 or any(stride * tensor.element_size() % 16 for stride in tensor.stride()[:-1]):
            return f"{name}'s address and strides must be multiples of 16 bytes; got strides {tensor.stride()}"
    return None


def _descriptors(k: Tensor, v: Tensor, meta: dict) -> tuple[object, object]:
    """Tensor descriptors over the whole (B, Hkv, Nk, D) K and V; the tile is set per config."""
    block_n = INTERPRETER_BLOCKS[1]  # replaced by _shape_descriptor_blocks before each launch
    return (TensorDescriptor(k, list(k.shape), list(k.stride()), [1, 1, block_n, meta["BLOCK_D"]]),
            TensorDescriptor(v, list(v.shape), list(v.stride()), [1, 1, block_n, meta["BLOCK_DV"]]))


def flash_forward(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, blocks: tuple[int, int] | None = None,
    tma: bool = False,
) -> tuple[Tensor, Tensor]:
    """Run the forward kernel.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq is a multiple of Hkv.
        v: (B, Hkv, Nk, Dv) values.
        spec: the call's masking (causal/window and key padding only).
        scale: multiplies q k^T; must be > 0 (:class:`TritonFlashAttention` maps the others).
        blocks: (BLOCK_M, BLOCK_N) to use instead of autotuning.
        tma: read K and V through tensor descriptors (see :func:`tma_unsupported_reason`).

    Returns:
        out (B, Hq, Nq, Dv) in q's dtype and lse (B, Hq, Nq) in float32 (float64 for float64).
    """
    batch, num_q_heads, nq, head_dim = q.shape
    nk, value_dim = k.shape[2], v.shape[-1]
    geometry = _geometry(q, k, v, spec)
    out = torch.empty(batch, num_q_heads, nq, value_dim, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, num_q_heads, nq, dtype=lse_dtype(q.dtype), device=q.device)
    padding, stride_pb = _key_padding(spec, k)
    desc_k, desc_v = _descriptors(k, v, geometry["meta"]) if tma else (None, None)
    args = (q, k, v, out, lse, padding, desc_k, desc_v, scale * LOG2E.value,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), lse.stride(0), lse.stride(1), stride_pb,
            num_q_heads, geometry["group_size"], nq, nk, head_dim, value_dim, *geometry["window"])
    _launch("forward", _forward_kernel, nq, batch * num_q_heads, blocks, args,
            {**geometry["meta"], "USE_TMA": tma})
    return out, lse


def _delta(out: Tensor, grad_out: Tensor, grad_lse: Tensor | None, meta: dict) -> Tensor:
    """rowsum(dO * O) - dLSE, (B, Hq, Nq) in the accumulation dtype, by :func:`_delta_kernel`."""
    batch, num_q_heads, nq, value_dim = out.shape
    delta = torch.empty(batch, num_q_heads, nq, dtype=lse_dtype(out.dtype), device=out.device)
    lse_like = delta if grad_lse is None else grad_lse.to(delta.dtype).expand_as(delta).contiguous()
    block_m = INTERPRETER_BLOCKS[0] if INTERPRETED else 64
    _delta_kernel[(triton.cdiv(nq, block_m), batch * num_q_heads)](
        out, grad_out, lse_like, delta, *out.stride(), *grad_out.stride(), lse_like.stride(0), lse_like.stride(1),
        num_q_heads, nq, value_dim, HAS_GRAD_LSE=grad_lse is not None, BLOCK_DV=meta["BLOCK_DV"],
        ACC_DTYPE=meta["ACC_DTYPE"], BLOCK_M=block_m)
    return delta


def flash_backward(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor, grad_lse: Tensor | None,
    spec: MaskSpec, scale: float, blocks: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the backward kernels: (grad_q, grad_k, grad_v), shaped and typed as q, k, v.

    ``out`` is (B, Hq, Nq, Dv) and ``lse`` (B, Hq, Nq), as the forward returned them;
    ``grad_out`` is (B, Hq, Nq, Dv); ``grad_lse`` (B, Hq, Nq) or None. ``scale`` > 0.
    """
    batch, num_q_heads, nq, head_dim = q.shape
    num_kv_heads, nk, value_dim = k.shape[1], k.shape[2], v.shape[-1]
    geometry = _geometry(q, k, v, spec)
    delta = _delta(out, grad_out, grad_lse, geometry["meta"])  # (B, Hq, Nq)
    padding, stride_pb = _key_padding(spec, k)
    grad_q = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    grad_k = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    common = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), lse.stride(0), lse.stride(1), stride_pb)
    sm_scale = float(scale)
    sizes = (geometry["group_size"], nq, nk, head_dim, value_dim, *geometry["window"])
    kv_args = (q, k, v, grad_out, lse, delta, grad_k, grad_v, padding, sm_scale * LOG2E.value, sm_scale,
               *common, *grad_k.stride()[:3], *grad_v.stride()[:3], num_kv_heads, *sizes)
    _launch("backward_kv", _backward_kv_kernel, nk, batch * num_kv_heads, blocks, kv_args, geometry["meta"])
    q_args = (q, k, v, grad_out, lse, delta, grad_q, padding, sm_scale * LOG2E.value, sm_scale,
              *common, *grad_q.stride()[:3], num_q_heads, *sizes)
    _launch("backward_q", _backward_q_kernel, nq, batch * num_q_heads, blocks, q_args, geometry["meta"])
    return grad_q, grad_k, grad_v


class TritonFlashAttention(torch.autograd.Function):
    """Autograd wrapper: saves (q, k, v, out, lse), never the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, spec, scale, blocks, tma=False):
        # The kernels scale inside exp2 and need a positive scale: q k^T * s equals
        # (-q) k^T * |s|, and s = 0 equals zero queries at scale 1 (every score 0).
        q_sign = 1.0 if scale > 0 else (-1.0 if scale < 0 else 0.0)
        kernel_q = q if q_sign == 1.0 else q * q_sign
        kernel_scale = abs(scale) if scale != 0 else 1.0
        out, lse = flash_forward(kernel_q, k, v, spec, kernel_scale, blocks, tma)
        ctx.save_for_backward(kernel_q, k, v, out, lse)
        ctx.spec, ctx.scale, ctx.q_sign, ctx.blocks = spec, kernel_scale, q_sign, blocks
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        # Rows that saw no key (lse = -inf) read nothing: their queries, NaN or not, must not reach dk.
        q = q.masked_fill((lse == float("-inf")).unsqueeze(-1), 0.0)
        grad_q, grad_k, grad_v = flash_backward(q, k, v, out, lse, grad_out, grad_lse, ctx.spec, ctx.scale,
                                                ctx.blocks)
        if ctx.q_sign != 1.0:
            grad_q = grad_q * ctx.q_sign
        return grad_q, grad_k, grad_v, None, None, None, None

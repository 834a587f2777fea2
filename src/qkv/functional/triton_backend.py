"""The ``"triton"`` backend: qkv's FlashAttention-2 kernel in Triton, imported only when used.

Importing qkv never imports Triton. :func:`unavailable_reason` says, without importing
it, why the kernel cannot run on a device type (Triton missing, no CUDA GPU, or a CPU
without Triton's interpreter); :func:`triton_attention` imports
:mod:`qkv.functional.triton_launch` (and with it the kernels of
:mod:`qkv.functional.triton_flash`) on its first call.

On the CPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1`` set before
the first call): slow, exact in float64, and how the tests check it without a GPU.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.functional.masks import MaskSpec

__all__ = ["TritonOptions", "triton_attention", "unavailable_reason"]

_KERNEL_MODULE = "qkv.functional.triton_flash"


@dataclass(frozen=True)
class TritonOptions:
    """Options of the Triton kernel (``qkv.attention(..., backend="triton", options=...)``)."""

    # Query rows and keys per tile; None: autotuned per GPU and shape (16 x 16 under the
    # interpreter). Powers of two >= 16, both or neither.
    block_m: int | None = None
    block_n: int | None = None
    # Read K and V in the forward through tensor descriptors (Hopper's bulk copy engine):
    # None: the default; True: required (refused with the reason where it cannot be used,
    # e.g. before Hopper or for float32); False: per-element loads.
    tma: bool | None = None

    def __post_init__(self) -> None:
        if (self.block_m is None) != (self.block_n is None):
            raise ValueError(
                f"TritonOptions: give both block_m and block_n or neither; got block_m={self.block_m}, "
                f"block_n={self.block_n}"
            )
        for name in ("block_m", "block_n"):
            size = getattr(self, name)
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 16
                                     or size & (size - 1)):
                raise ValueError(
                    f"TritonOptions: {name} must be a power of two >= 16 (Triton tiles are powers of two and its "
                    f"matrix products need 16); got {size!r}"
                )

    @property
    def blocks(self) -> tuple[int, int] | None:
        return None if self.block_m is None else (self.block_m, self.block_n)


def _interpreter_on() -> bool:
    """Whether Triton runs (or, once imported, will run) kernels under its interpreter.

    Triton fixes this when it is imported (its library functions are decorated then), so
    the environment variable counts only until then.
    """
    kernels = sys.modules.get(_KERNEL_MODULE)
    if kernels is not None:
        return kernels.INTERPRETED
    language = sys.modules.get("triton.language")
    if language is not None:
        from triton.runtime.jit import JITFunction

        return not isinstance(language.max, JITFunction)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def unavailable_reason(device_type: str) -> str | None:
    """Why the kernel cannot run on ``device_type`` here, or None when it can."""
    if importlib.util.find_spec("triton") is None:
        return "import Triton: it is not installed (pip install triton)"
    kernels = sys.modules.get(_KERNEL_MODULE)
    if kernels is not None and kernels.MIXED:
        return ("run: TRITON_INTERPRET changed between importing Triton and qkv's kernel; set it (or not) in the "
                "environment before Python starts")
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return "run: no CUDA GPU is available (torch.cuda.is_available() is False)"
        if _interpreter_on():
            return "run on CUDA under Triton's interpreter (TRITON_INTERPRET=1); unset it to use the GPU"
        return None
    if device_type == "cpu":
        if not _interpreter_on():
            return ("run on the CPU: Triton kernels run on the CPU only under Triton's interpreter; set "
                    "TRITON_INTERPRET=1 in the environment before Python starts (slow; meant for tests), or use a "
                    "CUDA GPU")
        return None
    return f"run on device type {device_type!r} (CUDA GPUs, or the CPU under TRITON_INTERPRET=1)"


def triton_attention(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, return_lse: bool,
    options: TritonOptions | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact attention by qkv's FlashAttention-2 Triton kernel.

    Honours bottom-right ``causal``, ``window``, ``key_padding_mask`` and grouped-query
    heads; not ``mask=`` or ``global_tokens=`` (use "tiled" or "sliding"). Head dims up to
    256 run at speed on a GPU. Memory is O((Nq + Nk) * D): no (Nq, Nk) matrix is stored,
    forward or backward.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq is a multiple of Hkv.
        v: (B, Hkv, Nk, Dv) values.
        spec: the call's masking.
        scale: multiplies q k^T.
        return_lse: also return the LSE (B, Hq, Nq), float32 (float64 for float64 inputs).
        options: :class:`TritonOptions` (fixed block sizes, tensor-descriptor loads).

    Returns:
        out (B, Hq, Nq, Dv) in q's dtype, and lse when ``return_lse``.
    """
    options = options or TritonOptions()
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite; got {scale}")
    if spec.mask is not None or spec.global_tokens:
        raise ValueError("backend='triton' honours causal, window and key_padding_mask only; "
                         "use backend='tiled' or 'sliding' for mask= or global_tokens=")
    reason = unavailable_reason(q.device.type)
    if reason is not None:
        raise RuntimeError(f"backend='triton' cannot {reason}")
    from qkv.functional.triton_launch import TritonFlashAttention, tma_unsupported_reason

    tma = bool(options.tma)
    if tma:
        why = tma_unsupported_reason(k, v)
        if why is not None:
            raise ValueError(f"TritonOptions(tma=True) cannot be honoured: {why}; use tma=None or False")
    out, lse = TritonFlashAttention.apply(q, k, v, spec, float(scale), options.blocks, tma)
    return (out, lse) if return_lse else out

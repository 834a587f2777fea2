"""Compile qkv's Triton kernels for a Hopper GPU (sm_90) on a machine without one.

Run by test_triton.py in a fresh interpreter without TRITON_INTERPRET: Triton's
compiler and ptxas (shipped in its wheel) need no GPU, and they catch what the
interpreter cannot (type errors of compiled control flow, resources, PTX assembly).

The arguments are specialised as Triton's launcher specialises them at run time for
contiguous tensors (unit strides become constants, pointers and the other strides are
known multiples of 16), so the code compiled here is the code a GPU would run. Prints
one line per kernel: its shared memory and how many Hopper warpgroup matrix products
(``wgmma``), asynchronous copies (``cp.async``) and atomics its PTX holds.
"""

from __future__ import annotations

import re

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from qkv.functional import triton_flash, triton_launch

TARGET = GPUTarget("cuda", 90, 32)


def compile_kernel(fn, pointers: dict[str, str], meta: dict, config: triton.Config) -> None:
    meta = {**meta, **config.kwargs}
    unit = {name: 1 for name in fn.arg_names if name.startswith("stride_") and name.endswith("d")}
    constants = {**meta, **unit}
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in constants:
            signature[name] = "constexpr"
            continue
        if name in pointers:
            signature[name] = pointers[name]
        elif name in ("qk_scale", "sm_scale"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
        if name in pointers or name.startswith("stride_"):
            attrs[(index,)] = [["tt.divisibility", 16]]
    constexprs = {(fn.arg_names.index(name),): value for name, value in constants.items()}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(source, target=TARGET, options={"num_warps": config.num_warps,
                                                            "num_stages": config.num_stages})
    ptx = kernel.asm["ptx"]
    counts = {
        "wgmma": len(re.findall(r"\bwgmma\.mma_async", ptx)),
        "mma.sync": len(re.findall(r"\bmma\.sync", ptx)),
        "cp.async": len(re.findall(r"\bcp\.async\.c[ag]", ptx)),
        "tma": len(re.findall(r"\bcp\.async\.bulk\.tensor", ptx)),
        "atom": len(re.findall(r"\b(?:atom|red)\.global", ptx)),
    }
    described = " ".join(f"{name}={count}" for name, count in counts.items())
    reads = " USE_TMA" if meta.get("USE_TMA") else ""
    print(f"{fn.__name__}{reads} {pointers['Q'].lstrip('*')} {config.kwargs} warps={config.num_warps} "
          f"stages={config.num_stages} shared={kernel.metadata.shared} {described}", flush=True)


def main() -> None:
    assert not triton_flash.INTERPRETED, "run without TRITON_INTERPRET"
    medium = triton_launch._configs
    forward = medium(triton_launch._FORWARD_SHAPES["medium"])[0]
    backward_kv = medium(triton_launch._BACKWARD_KV_SHAPES["medium"])[0]
    backward_q = medium(triton_launch._BACKWARD_Q_SHAPES["medium"])[0]
    for dtype, precision in (("bf16", "tf32"), ("fp32", "ieee")):
        tensors = {"Q": f"*{dtype}", "K": f"*{dtype}", "V": f"*{dtype}", "Out": f"*{dtype}", "Lse": "*fp32",
                   "KeyPadding": "*i8", "DO": f"*{dtype}", "Delta": "*fp32", "DQ": "*fp32", "DK": f"*{dtype}",
                   "DV": f"*{dtype}"}
        causal = {"HAS_LEFT": False, "HAS_RIGHT": True, "HAS_PADDING": False, "BLOCK_D": 128, "BLOCK_DV": 128,
                  "EVEN_D": True, "EVEN_DV": True, "ACC_DTYPE": tl.float32, "PRECISION": precision}
        window = {**causal, "HAS_LEFT": True, "HAS_PADDING": True, "BLOCK_D": 64, "BLOCK_DV": 64, "EVEN_D": False}
        compile_kernel(triton_flash._forward_kernel, tensors, {**causal, "USE_TMA": False}, forward)
        if dtype == "fp32":  # float32 differs only in the products' precision
            continue
        compile_kernel(triton_flash._forward_kernel, tensors, {**window, "USE_TMA": False}, forward)
        tile = f"tensordesc<{dtype}[1, 1, {forward.kwargs['BLOCK_N']}, 128]>"
        descriptors = {"DescK": tile, "DescV": tile}
        compile_kernel(triton_flash._forward_kernel, {**tensors, **descriptors}, {**causal, "USE_TMA": True}, forward)
        compile_kernel(triton_flash._backward_kv_kernel, tensors, causal, backward_kv)
        compile_kernel(triton_flash._backward_q_kernel, {**tensors, "DQ": f"*{dtype}"}, window, backward_q)
        compile_kernel(triton_flash._delta_kernel, {**tensors, "GradLse": "*fp32"},
                       {"HAS_GRAD_LSE": True, "BLOCK_DV": 128, "ACC_DTYPE": tl.float32},
                       triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=1))


if __name__ == "__main__":
    main()

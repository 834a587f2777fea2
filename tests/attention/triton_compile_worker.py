"""Compile qkv's Triton kernels for a Hopper GPU (sm_90) on a machine without one.

Run by test_triton.py in a fresh interpreter without TRITON_INTERPRET: Triton's
compiler and ptxas (shipped in its wheel) need no GPU, and they catch what the
interpreter cannot (type errors of compiled control flow, resources, PTX assembly).
Prints one line per kernel compiled.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from qkv.attention import triton_flash

TARGET = GPUTarget("cuda", 90, 32)


def compile_kernel(fn, pointers: dict[str, str], meta: dict, config: triton.Config):
    meta = {**meta, **config.kwargs}
    signature = {}
    for name in fn.arg_names:
        if name in meta:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        elif name in ("qk_scale", "sm_scale"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    constexprs = {(fn.arg_names.index(name),): value for name, value in meta.items()}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    kernel = triton.compile(source, target=TARGET, options={"num_warps": config.num_warps,
                                                            "num_stages": config.num_stages})
    print(f"{fn.__name__} {meta} shared={kernel.metadata.shared}", flush=True)


def main() -> None:
    assert not triton_flash.INTERPRETED, "run without TRITON_INTERPRET"
    for dtype, precision in (("bf16", "tf32"), ("fp32", "ieee")):
        tensors = {"Q": f"*{dtype}", "K": f"*{dtype}", "V": f"*{dtype}", "Out": f"*{dtype}", "Lse": "*fp32",
                   "KeyPadding": "*i8", "DO": f"*{dtype}", "Delta": "*fp32", "DQ": "*fp32", "DK": f"*{dtype}",
                   "DV": f"*{dtype}"}
        causal = {"HAS_LEFT": False, "HAS_RIGHT": True, "HAS_PADDING": False, "BLOCK_D": 128, "BLOCK_DV": 128,
                  "EVEN_D": True, "EVEN_DV": True, "ACC_DTYPE": tl.float32, "PRECISION": precision}
        window = {**causal, "HAS_LEFT": True, "HAS_PADDING": True, "BLOCK_D": 64, "BLOCK_DV": 64, "EVEN_D": False}
        forward, backward = triton_flash._forward_configs()[0], triton_flash._backward_configs()[0]
        compile_kernel(triton_flash._forward_kernel, tensors, causal, forward)
        if dtype == "fp32":  # float32 differs only in the products' precision
            continue
        compile_kernel(triton_flash._forward_kernel, tensors, window, forward)
        compile_kernel(triton_flash._backward_kv_kernel, tensors, {**window, "ATOMIC_DQ": True}, backward)
        compile_kernel(triton_flash._backward_q_kernel, {**tensors, "DQ": f"*{dtype}"}, causal, backward)


if __name__ == "__main__":
    main()

"""How every backend is judged: the float64 oracle and the 2x rule.

The rule (from FlashAttention's test suite): a backend's max error against the oracle (the
reference backend in float64 on the same inputs) is at most twice the error of the plain
reference computed in the backend's own dtype, plus a tiny floor; the same for the gradients
dq, dk and dv. The tests apply it to every backend, ``qkv bench triton`` applies it on a GPU at
full size, and a new backend can be checked with it::

    from qkv.functional.oracle import two_x_rule

    checks = two_x_rule(lambda q, k, v: my_attention(q, k, v, causal=True), q, k, v, torch.bfloat16, causal=True)
    assert all(check.ok for check in checks), checks

Which factor each dtype and device uses (:func:`rule_factors`), and why:

- 2 for every backend in every dtype on the CPU, and in half precision (bfloat16, float16) on
  CUDA. There the fast kernels accumulate in float32 while the plain reference rounds every
  step in the low dtype, so the plain reference's error dominates and twice it bounds a
  correct kernel (FlashAttention tests only half precision this way).
- SDPA on CUDA in float32 runs PyTorch's memory-efficient kernel (FlashAttention and cuDNN
  take only half precision). It computes in float32 like the plain float32 reference, so the
  two errors are peers, both rounding-level: the kernel's backward accumulates dQ, dK and dV
  over key and query blocks in another order than the reference's matrix products, and twice
  the reference's error does not bound it. The factors are PyTorch's own for this kernel against its math
  reference (``test_mem_efficient_attention_attn_mask_vs_math_ref_grads`` in PyTorch's
  test/test_transformers.py): out 4, dq 160, dk 25, dv 8. qkv's own float32 code on CUDA
  (``tiled``) keeps 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qkv.functional.api import attention

__all__ = ["ERROR_FLOOR", "RuleCheck", "outputs_and_grads", "rule_factors", "two_x_rule", "MEMORY_EFFICIENT_FACTORS"]

# Added to twice the plain reference's error: where that error is zero (a constant row, say),
# a backend that sums in another order is still allowed its dtype's rounding.
ERROR_FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 2e-3, torch.float16: 2e-4}

TWO_X = {"out": 2.0, "dq": 2.0, "dk": 2.0, "dv": 2.0}
# PyTorch's factors for its memory-efficient SDPA kernel against its math reference (see above).
MEMORY_EFFICIENT_FACTORS = {"out": 4.0, "dq": 160.0, "dk": 25.0, "dv": 8.0}


def rule_factors(device_type: str, dtype: torch.dtype, backend: str) -> dict[str, float]:
    """The factor on the plain reference's error for out, dq, dk and dv of ``backend`` run in
    ``dtype`` on ``device_type`` (the module docstring says why): 2, except SDPA in float32 on
    CUDA, served by PyTorch's memory-efficient kernel, which gets PyTorch's own factors."""
    if device_type == "cuda" and dtype == torch.float32 and backend == "sdpa":
        return dict(MEMORY_EFFICIENT_FACTORS)
    return dict(TWO_X)


def outputs_and_grads(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grad_out_seed: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``fn(q, k, v)`` on detached copies, backpropagate a fixed random output gradient.

    Args:
        fn: attention as a function of q, k, v; returns the output (B, Hq, Nq, Dv).
        q: (B, Hq, Nq, D). k: (B, Hkv, Nk, D). v: (B, Hkv, Nk, Dv). Left untouched.
        grad_out_seed: seeds the output gradient (drawn on the CPU in float64, then cast to
            the output's device and dtype, so every dtype and device gets the same one).

    Returns:
        (out, dq, dk, dv), shaped as (out, q, k, v).
    """
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    generator = torch.Generator().manual_seed(grad_out_seed)
    grad_out = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.device, out.dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return (out.detach(), *grads)


@dataclass(frozen=True)
class RuleCheck:
    """One output (or gradient) judged by the 2x rule."""

    name: str  # "out", "dq", "dk" or "dv"
    dtype: torch.dtype  # the dtype the tested backend returned it in
    error: float  # max |tested - oracle|
    plain_error: float  # max |plain reference in the tested dtype - oracle|
    bound: float  # factor * plain_error + ERROR_FLOOR[dtype]
    has_nan: bool  # a NaN in the tested result (the inputs here have none)
    factor: float = 2.0  # what multiplies the plain reference's error (rule_factors)

    @property
    def ok(self) -> bool:
        return not self.has_nan and self.error <= self.bound

    def describe(self) -> str:
        """One line: the error, its bound and where the bound comes from."""
        return (f"{self.name} ({str(self.dtype).removeprefix('torch.')}): error {self.error:.3g}, bound "
                f"{self.bound:.3g} ({self.factor:g} x the plain reference's {self.plain_error:.3g} + floor)"
                f"{', NaN in the result' if self.has_nan else ''}: {'ok' if self.ok else 'FAILED'}")


def two_x_rule(
    tested: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dtype: torch.dtype,
    *,
    grads: bool = True,
    factors: dict[str, float] | None = None,
    **masking,
) -> list[RuleCheck]:
    """Judge ``tested`` against the float64 oracle by the 2x rule, for its output and gradients.

    Args:
        tested: the attention under test as a function of q, k, v (called with ``dtype``
            tensors); returns the output (B, Hq, Nq, Dv) and is differentiable if ``grads``.
        q: (B, Hq, Nq, D). k: (B, Hkv, Nk, D). v: (B, Hkv, Nk, Dv), in any floating dtype;
            the oracle runs on their float64 copies, ``tested`` and the plain reference on
            their ``dtype`` copies.
        dtype: the dtype under test (float64, float32, bfloat16 or float16).
        grads: also judge dq, dk, dv (one fixed random output gradient, see
            :func:`outputs_and_grads`).
        factors: the factor on the plain reference's error per result ("out", "dq", "dk",
            "dv"); None: 2 for each. :func:`rule_factors` gives the one a backend, dtype and
            device use.
        **masking: the keywords of :func:`qkv.attention` that ``tested`` applies too (causal,
            window, mask, key_padding_mask, scale, ...), given to the oracle and the plain reference.

    Returns:
        One :class:`RuleCheck` per result: out, then dq, dk, dv with ``grads``.
    """
    if dtype not in ERROR_FLOOR:
        raise ValueError(f"dtype must be one of {list(ERROR_FLOOR)}; got {dtype}")

    def reference(q_: torch.Tensor, k_: torch.Tensor, v_: torch.Tensor) -> torch.Tensor:
        return attention(q_, k_, v_, backend="reference", **masking)

    exact = [t.double() for t in (q, k, v)]
    low = [t.to(dtype) for t in (q, k, v)]
    if grads:
        truth, plain, ours = (outputs_and_grads(fn, *inputs) for fn, inputs in
                              ((reference, exact), (reference, low), (tested, low)))
    else:
        with torch.no_grad():
            truth, plain, ours = (reference(*exact),), (reference(*low),), (tested(*low),)
    factors = {**TWO_X, **(factors or {})}
    checks = []
    for name, t, p, o in zip(("out", "dq", "dk", "dv"), truth, plain, ours):
        plain_error = (p.double() - t).abs().max().item()
        checks.append(RuleCheck(name=name, dtype=o.dtype, error=(o.double() - t).abs().max().item(),
                                plain_error=plain_error, bound=factors[name] * plain_error + ERROR_FLOOR[dtype],
                                has_nan=bool(torch.isnan(o).any()), factor=factors[name]))
    return checks

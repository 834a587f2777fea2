"""How every backend is judged: the float64 oracle and the 2x rule.

The rule (from FlashAttention's test suite): a backend's max error against the oracle (the
reference backend in float64 on the same inputs) is at most twice the error of the plain
reference computed in the backend's own dtype, plus a tiny floor; the same for the gradients
dq, dk and dv. The tests apply it to every backend, ``qkv bench triton`` applies it on a GPU at
full size, and a new backend can be checked with it::

    from qkv.attention.oracle import two_x_rule

    checks = two_x_rule(lambda q, k, v: my_attention(q, k, v, causal=True), q, k, v, torch.bfloat16, causal=True)
    assert all(check.ok for check in checks), checks
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qkv.attention.api import attention

__all__ = ["ERROR_FLOOR", "RuleCheck", "outputs_and_grads", "two_x_rule"]

# Added to twice the plain reference's error: where that error is zero (a constant row, say),
# a backend that sums in another order is still allowed its dtype's rounding.
ERROR_FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 2e-3, torch.float16: 2e-4}


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
    bound: float  # 2 * plain_error + ERROR_FLOOR[dtype]
    has_nan: bool  # a NaN in the tested result (the inputs here have none)

    @property
    def ok(self) -> bool:
        return not self.has_nan and self.error <= self.bound

    def describe(self) -> str:
        """One line: the error, its bound and where the bound comes from."""
        return (f"{self.name} ({str(self.dtype).removeprefix('torch.')}): error {self.error:.3g}, bound "
                f"{self.bound:.3g} (2 x the plain reference's {self.plain_error:.3g} + floor)"
                f"{', NaN in the result' if self.has_nan else ''}: {'ok' if self.ok else 'FAILED'}")


def two_x_rule(
    tested: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dtype: torch.dtype,
    *,
    grads: bool = True,
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
    checks = []
    for name, t, p, o in zip(("out", "dq", "dk", "dv"), truth, plain, ours):
        plain_error = (p.double() - t).abs().max().item()
        checks.append(RuleCheck(name=name, dtype=o.dtype, error=(o.double() - t).abs().max().item(),
                                plain_error=plain_error, bound=2 * plain_error + ERROR_FLOOR[dtype],
                                has_nan=bool(torch.isnan(o).any())))
    return checks

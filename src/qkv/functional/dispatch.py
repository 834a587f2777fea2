"""Why ``auto`` picks a backend: :func:`explain_dispatch` shows the choice for a call without running it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from qkv.functional.api import Window, _validated_call, call_shape
from qkv.functional.registry import Candidate, dispatch_costs

__all__ = ["DispatchPlan", "explain_dispatch"]


@dataclass(frozen=True)
class DispatchPlan:
    """Which backend a call of :func:`attention` runs, and why (see :func:`explain_dispatch`)."""

    backend: str  # the backend the call runs
    requested: str  # what the call asked for ("auto" or a backend's name)
    candidates: tuple[Candidate, ...]  # every backend "auto" may pick: estimated time, or why it cannot
    reason: str  # one sentence

    def __str__(self) -> str:
        lines = [self.reason, "candidates (estimated time per call, how it would run):"]
        lines += [f"  {'*' if c.name == self.backend else ' '} {c.describe()}" for c in self.candidates]
        return "\n".join(lines)


def explain_dispatch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    window: Window = None,
    mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    global_tokens: Sequence[int] | Tensor | None = None,
    backend: str = "auto",
    return_lse: bool = False,
) -> DispatchPlan:
    """Which backend :func:`attention` runs for this call, and why, without running it.

    Takes the arguments of :func:`attention` (gradients are needed when grad mode is on and
    an input requires grad, as in the call). ``"auto"`` picks, among the exact backends that
    can serve the call (device, LSE, gradients, masks), the one with the lowest estimated
    time (:mod:`qkv.functional.costs`): the work each would do (the (query, key) pairs it
    computes, the dense mask it needs, the tiles it loops over) priced by measurements from
    ``qkv bench attention``.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys.
        v: (B, Hkv, Nk, Dv) values.
        causal, window, mask, key_padding_mask, scale, global_tokens, backend, return_lse:
            as :func:`attention`.

    Returns:
        A :class:`DispatchPlan`; ``print(plan)`` shows every candidate with its estimated time.

    Example:
        >>> q = k = v = torch.randn(1, 8, 8192, 64)
        >>> print(qkv.explain_dispatch(q, k, v, window=(256, 256)))  # auto picks sliding
    """
    spec, _scale, needs, chosen = _validated_call(q, k, v, causal, window, mask, key_padding_mask, scale,
                                                  global_tokens, backend, None, return_lse)
    candidates = tuple(dispatch_costs(needs, spec, call_shape(q, k, v)))
    if backend != "auto":
        reason = f"backend={backend!r} was asked for; it can serve this call"
    else:
        picked = next(c for c in candidates if c.name == chosen.name)
        others = [c for c in candidates if c.seconds is not None and c.name != chosen.name]
        versus = f"; next: {others[0].name}, {others[0].time_text}" if others else ""
        reason = (f"auto picks {chosen.name}: the lowest estimated time among the exact backends that can serve "
                  f"this call ({picked.time_text}{versus})")
    return DispatchPlan(backend=chosen.name, requested=backend, candidates=candidates, reason=reason)

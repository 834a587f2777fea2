"""Attention backends, what each can do, and how ``"auto"`` chooses among them.

Every backend has the same signature, ``fn(q, k, v, spec, scale, return_lse)`` (plus
``options=`` for a backend with an options type, such as Performer's feature count), and a
:class:`Backend` record of its capabilities. :func:`resolve_backend` refuses a call a
backend cannot honour, naming the backends that can. The backends of this package are
declared at the end of this module, all in one table; a backend that lives above it
(ring attention, in :mod:`qkv.distributed.ring`) registers itself with :func:`register`.

How ``"auto"`` chooses: among the exact backends that ``auto`` may pick and that support
the call (device, LSE, gradients, masks), the one with the lowest estimated time. Each
such backend has an ``estimate(spec, shape, grad)`` (:mod:`qkv.functional.costs`) that
counts the work it would do for this call (the (query, key) pairs it computes, which is
all Nq x Nk for SDPA with a mask but only the band for ``sliding``; the tiles or band
segments it loops over in Python; the dense mask it must build) and prices it with
constants calibrated from ``qkv bench attention`` on a 2-core CPU and an H200.
:func:`dispatch_costs` lists every candidate with its estimate or the reason it cannot
serve the call; ``qkv.explain_dispatch`` shows them for a call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from qkv.functional.costs import CallShape, Estimate, sdpa_estimate, sliding_estimate, tiled_estimate, triton_estimate
from qkv.functional.linear import LinearOptions, linear_attention, linear_weights
from qkv.functional.linformer import LinformerOptions, linformer_attention, linformer_weights
from qkv.functional.masks import MaskSpec
from qkv.functional.nystrom import NystromOptions, nystrom_attention, nystrom_weights
from qkv.functional.performer import PerformerOptions, performer_attention, performer_weights
from qkv.functional.reference import reference_attention
from qkv.functional.sdpa import sdpa_attention, sdpa_runner
from qkv.functional.sliding import sliding_attention
from qkv.functional.tiled import tiled_attention
from qkv.functional.triton_backend import TritonOptions, triton_attention, unavailable_reason

__all__ = ["Backend", "register", "registered", "get_backend", "available_backends", "resolve_backend", "CallNeeds",
           "Candidate", "dispatch_costs"]

BackendFn = Callable[[Tensor, Tensor, Tensor, MaskSpec, float, bool], "Tensor | tuple[Tensor, Tensor]"]
# runner(spec, scale, shape) -> run(q, k, v, spec): the backend prepared once for a call signature
Runner = Callable[[MaskSpec, float, CallShape], Callable[[Tensor, Tensor, Tensor, MaskSpec], Tensor]]


@dataclass(frozen=True)
class Backend:
    """A named attention implementation and the arguments it honours."""

    name: str  # the value of ``backend=``
    fn: BackendFn  # fn(q, k, v, spec, scale, return_lse)
    description: str  # one line for listings
    exact: bool = True  # computes softmax attention exactly (up to rounding)
    returns_lse: bool = False  # can return the log-sum-exp
    supports_grad: bool = True  # differentiable w.r.t. q, k, v (and a float mask)
    supports_mask: bool = True  # honours ``mask=`` (bool and float)
    supports_key_padding: bool = True  # honours ``key_padding_mask=``
    supports_causal: bool = True  # honours ``causal=True``
    supports_window: bool = True  # honours ``window=``
    supports_global_tokens: bool = True  # honours ``global_tokens=``
    devices: frozenset[str] = frozenset({"cpu", "cuda"})  # device types it runs on
    auto_rank: int | None = None  # "auto" may pick it (ties go to the lower rank); None: never picked
    # estimate(spec, shape, grad) -> Estimate: the time this backend would take for a call, for "auto"
    estimate: Callable[[MaskSpec, CallShape, bool], Estimate] | None = None
    # runner(spec, scale, shape): a forward without LSE prepared once per call signature (e.g. SDPA's
    # mask form chosen ahead); None: fn is called
    runner: Runner | None = None
    options_type: type | None = None  # frozen dataclass of backend options; None: takes none
    # For approximate backends: weights_fn(q, k, spec, scale, options) -> (B, Hq, Nq, Nk), the
    # mixing matrix the backend applies to the values (small N only). None: softmax weights.
    weights_fn: Callable[..., Tensor] | None = None
    # q, k, v are this process's slice of a sequence split across torch.distributed ranks
    # (qkv.distributed's "ring"): every rank must call it, even with no tokens, and
    # explicit scores or weights (hooks) would see only the local keys.
    sequence_parallel: bool = False
    # unavailable(device_type) -> why the backend cannot run there in this process (a missing
    # package, no GPU), phrased after "cannot"; None: it can. Checked without importing it.
    unavailable: Callable[[str], str | None] | None = None

    def call(
        self, q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, return_lse: bool,
        options: object | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Run the backend, with its default options when ``options`` is None."""
        if self.options_type is None:
            return self.fn(q, k, v, spec, scale, return_lse)
        return self.fn(q, k, v, spec, scale, return_lse, options=options or self.options_type())

    def check_options(self, options: object | None) -> None:
        """Raise unless ``options`` is None or an instance of this backend's options type."""
        if options is None:
            return
        if self.options_type is None:
            takers = [b.name for b in _REGISTRY.values() if b.options_type is not None]
            raise ValueError(
                f"backend={self.name!r} takes no options; got {type(options).__name__}. "
                f"Backends with options: {takers}"
            )
        if not isinstance(options, self.options_type):
            raise TypeError(
                f"options for backend={self.name!r} must be a {self.options_type.__name__}; got "
                f"{type(options).__name__}"
            )


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add (or replace) a backend in the registry."""
    _REGISTRY[backend.name] = backend
    return backend


# registered(name) -> the registry's record of that name, or None (a bound method: cheap per call)
registered: Callable[[str], Backend | None] = _REGISTRY.get


def available_backends() -> list[str]:
    """Names accepted by ``backend=``, besides "auto"."""
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend called ``name``; ValueError listing the known ones otherwise."""
    if name == "auto":
        raise ValueError(
            "backend='auto' is not one backend: each call picks the fastest exact backend that can serve it "
            f"(see qkv.functional.registry.resolve_backend); get_backend takes one of {available_backends()}"
        )
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown backend={name!r}; choose one of {['auto', *available_backends()]}"
        )
    return _REGISTRY[name]


@dataclass(frozen=True)
class CallNeeds:
    """What one attention call asks of a backend."""

    return_lse: bool
    grad: bool
    mask: bool
    key_padding: bool
    causal: bool
    window: bool
    device: str | None  # device type; None: not known yet (a module may still move), not checked
    global_tokens: bool = False

    def unmet_by(self, backend: Backend) -> str | None:
        """A phrase naming the first need ``backend`` cannot meet, or None."""
        if self.device is not None and self.device not in backend.devices:
            return f"run on device type {self.device!r}"
        if self.device is not None and backend.unavailable is not None:
            reason = backend.unavailable(self.device)
            if reason is not None:
                return reason
        checks = [
            (self.return_lse, backend.returns_lse, "return the log-sum-exp (return_lse=True)"),
            (self.grad, backend.supports_grad, "compute gradients (inputs require grad)"),
            (self.mask, backend.supports_mask, "honour mask="),
            (self.key_padding, backend.supports_key_padding, "honour key_padding_mask="),
            (self.causal, backend.supports_causal, "honour causal=True"),
            (self.window, backend.supports_window, "honour window="),
            (self.global_tokens, backend.supports_global_tokens, "honour global_tokens="),
        ]
        for needed, supported, phrase in checks:
            if needed and not supported:
                return phrase
        return None


@dataclass(frozen=True)
class Candidate:
    """One backend "auto" may pick, judged for one call."""

    name: str
    seconds: float | None  # estimated time of the call; None: it cannot serve the call
    how: str  # how it would run the call, or why it cannot ("cannot ...")

    @property
    def time_text(self) -> str:
        """The estimated time, readable ("1.2 ms"), or "-"."""
        return "-" if self.seconds is None else _format_seconds(self.seconds)

    def describe(self) -> str:
        return f"{self.name:8s} {self.time_text:>10s}  {self.how}"


def _format_seconds(seconds: float) -> str:
    for unit, size in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= size or unit == "us":
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def dispatch_costs(needs: CallNeeds, spec: MaskSpec | None = None, shape: CallShape | None = None
                   ) -> list[Candidate]:
    """Every backend "auto" may pick, cheapest first: its estimated time for this call
    (``spec`` and ``shape``), or why it cannot serve it (those last).

    Without ``spec`` and ``shape`` nothing is estimated: the candidates able to serve the
    call come in their ``auto_rank`` order.
    """
    eligible = sorted((b for b in _REGISTRY.values() if b.auto_rank is not None and b.exact),
                      key=lambda b: b.auto_rank)
    able, unable = [], []
    for backend in eligible:
        unmet = needs.unmet_by(backend)
        if unmet is not None:
            unable.append(Candidate(backend.name, None, f"cannot {unmet}"))
        elif spec is None or shape is None or backend.estimate is None:
            able.append((math.inf, backend.auto_rank, Candidate(backend.name, None, "not estimated")))
        else:
            estimate = backend.estimate(spec, shape, needs.grad)
            able.append((estimate.seconds, backend.auto_rank, Candidate(backend.name, estimate.seconds,
                                                                        estimate.how)))
    return [c for *_, c in sorted(able, key=lambda item: item[:2])] + unable


def resolve_backend(name: str, needs: CallNeeds, spec: MaskSpec | None = None,
                    shape: CallShape | None = None) -> Backend:
    """The backend to run: ``name`` if it can serve the call, or for "auto" the exact backend
    with the lowest estimated time for it (:func:`dispatch_costs`; without ``spec`` and
    ``shape``, the first able one in ``auto_rank`` order).

    Raises:
        ValueError: the named backend cannot meet a need; the message names the
            backends that can.
    """
    if name == "auto":
        candidates = dispatch_costs(needs, spec, shape)
        if candidates and not candidates[0].how.startswith("cannot "):
            return _REGISTRY[candidates[0].name]
        raise ValueError(
            f"no exact backend can serve this call on device type {needs.device!r}: "
            f"{', '.join(f'{c.name} {c.how}' for c in candidates)}"
        )
    backend = get_backend(name)
    unmet = needs.unmet_by(backend)
    if unmet is not None:
        able = [b.name for b in _REGISTRY.values() if needs.unmet_by(b) is None]
        raise ValueError(
            f"backend={name!r} cannot {unmet}; backends that can serve this call: "
            f"{able or 'none'}"
        )
    return backend


register(
    Backend(
        name="reference",
        fn=reference_attention,
        description="the mechanism step by step on whole (Nq, Nk) matrices; the oracle",
        returns_lse=True,
        auto_rank=None,
    )
)
register(
    Backend(
        name="sdpa",
        fn=sdpa_attention,
        description="torch.nn.functional.scaled_dot_product_attention (fused, fast exact)",
        returns_lse=False,
        auto_rank=0,
        estimate=sdpa_estimate,
        runner=sdpa_runner,
    )
)
register(
    Backend(
        name="tiled",
        fn=tiled_attention,
        description="FlashAttention algorithm in PyTorch: tiles, online softmax, LSE",
        returns_lse=True,
        auto_rank=1,
        estimate=tiled_estimate,
    )
)
register(
    Backend(
        name="sliding",
        fn=sliding_attention,
        description="exact attention in a sliding window by bands of keys, O(N * w); global tokens",
        returns_lse=True,
        auto_rank=2,
        estimate=sliding_estimate,
    )
)

register(
    Backend(
        name="triton",
        fn=triton_attention,
        description="FlashAttention-2 kernel in Triton: GPU, or CPU under TRITON_INTERPRET=1 (tests)",
        returns_lse=True,
        supports_mask=False,
        supports_global_tokens=False,
        auto_rank=3,
        estimate=triton_estimate,
        options_type=TritonOptions,
        unavailable=unavailable_reason,
    )
)


# Approximate backends (qkv.functional.approximate): never picked by "auto", no LSE, no
# mask=/window=/global_tokens=; key padding always, causal where the method allows it.
def _register_approximate(name: str, fn: BackendFn, description: str, options_type: type,
                          weights_fn: Callable[..., Tensor], causal: bool) -> None:
    register(
        Backend(
            name=name,
            fn=fn,
            description=description,
            exact=False,
            supports_mask=False,
            supports_causal=causal,
            supports_window=False,
            supports_global_tokens=False,
            options_type=options_type,
            weights_fn=weights_fn,
        )
    )


_register_approximate("linear", linear_attention,
                      "linear attention, phi(x) = elu(x) + 1 (Katharopoulos et al., 2020); O(N D Dv)",
                      LinearOptions, linear_weights, causal=True)
_register_approximate("performer", performer_attention,
                      "FAVOR+ positive orthogonal random features (Choromanski et al., 2021); O(N m D)",
                      PerformerOptions, performer_weights, causal=True)
_register_approximate("nystrom", nystrom_attention,
                      "Nystromformer: landmarks and a pseudo-inverse (Xiong et al., 2021); O(N m D), non-causal",
                      NystromOptions, nystrom_weights, causal=False)
_register_approximate("linformer", linformer_attention,
                      "Linformer: keys and values projected to k rows (Wang et al., 2020); O(N k D), non-causal",
                      LinformerOptions, linformer_weights, causal=False)

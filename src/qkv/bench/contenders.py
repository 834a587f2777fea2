"""What the attention benchmarks measure, declared as data: contenders, masking variants, inputs.

:data:`CONTENDERS` is the one table of contenders (add a row to add one), each a
:class:`Contender` in a mode; :func:`make_variants` the masking variants (full, causal, window
(w, w), causal window (w, 0)). :func:`build` turns a contender into a run on given inputs:

- peers a user would otherwise pick: ``naive`` (the whole (N, N) matrix, softmax, weighted
  sum), ``sdpa (torch)`` (a direct ``scaled_dot_product_attention`` call: ``is_causal``, or
  the equivalent bool mask for a window), ``flex (compiled)`` (``torch.compile(flex_attention)``
  with the variant's block mask; block-mask and compile time kept apart from the run), and on
  CUDA the kernels behind SDPA pinned with ``torch.nn.attention.sdpa_kernel``: FlashAttention,
  cuDNN and memory-efficient;
- every qkv backend through ``qkv.attention``: reference, sdpa, tiled, auto, sliding (window
  variants only: without a window it is tiled), triton, linear, performer, nystrom, linformer
  (each backend's default options);
- forward + backward of naive, SDPA, tiled, sliding, triton (and FlashAttention on CUDA), and
  ``qkv.attention_stats``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import qkv
from qkv.functional import get_backend
from qkv.functional.masks import MaskSpec, normalize_window

__all__ = ["Variant", "make_variants", "VARIANTS", "Contender", "CONTENDERS", "Setup", "build",
           "make_inputs", "naive_attention", "visible_mask", "sdpa_call", "flex_mask_mod", "mode_run", "DTYPES"]

WINDOW = 256
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Variant:
    """Which keys each query sees: causal or not, with or without a window."""

    key: str  # its name on the command line
    causal: bool
    window: int | None  # w: (w, w), or (w, 0) when causal

    @property
    def name(self) -> str:
        if self.window is None:
            return "causal" if self.causal else "full"
        return f"{'causal, ' if self.causal else ''}window {self.window}"

    @property
    def pair(self) -> tuple[int, int] | None:
        """The window as qkv's (left, right), or None."""
        return None if self.window is None else normalize_window(self.window, self.causal)

    def describe(self) -> dict:
        return {"key": self.key, "name": self.name, "causal": self.causal,
                "window": None if self.pair is None else list(self.pair)}


def make_variants(window: int = WINDOW) -> dict[str, Variant]:
    """The four variants, keyed by their command-line names."""
    return {"full": Variant("full", False, None), "causal": Variant("causal", True, None),
            "window": Variant("window", False, window), "causal-window": Variant("causal-window", True, window)}


VARIANTS = make_variants()


@dataclass(frozen=True)
class Contender:
    """One way to compute (an approximation of) attention, in one mode."""

    name: str  # row label
    kind: str  # "qkv" (qkv.attention), "sdpa", "flex", "naive", "stats" (qkv.attention_stats)
    backend: str | None = None  # kind "qkv": the backend= name
    mode: str = "fwd"  # "fwd", "fwd+bwd" or "stats"
    kernel: str | None = None  # kind "sdpa": the SDPBackend member it is pinned to (CUDA kernels)
    exact: bool = False  # computes exact softmax attention
    memory_factor: float = 0.0  # peak bytes / (H * N * N * 4), to skip points that cannot fit
    max_n: int | None = None  # not run above this N on the CPU
    quick_max_n: int | None = None  # the same in --quick runs (None: max_n)
    limit_note: str = ""  # why max_n
    needs_window: bool = False  # run only in the variants with a window
    dense_mask: bool = False  # builds a dense (N, N) mask for a window (naive: for causal too)
    tile_loop: bool = False  # a Python loop over tiles: on a GPU its time follows the tile count

    def resolved_options(self) -> object | None:
        """The options dataclass this contender passes (None for backends without options)."""
        if self.kind != "qkv" or self.backend == "auto":
            return None
        options_type = get_backend(self.backend).options_type
        return None if options_type is None else options_type()

    def describe(self) -> dict:
        """The JSON description of this contender: what exactly was called."""
        return {"name": self.name, "mode": self.mode, "kind": self.kind, "backend": self.backend,
                "kernel": self.kernel, "exact": self.exact}

    def options_dict(self) -> dict | None:
        options = self.resolved_options()
        return None if options is None else asdict(options)


CONTENDERS = (
    Contender("naive", "naive", exact=True, memory_factor=2.0, dense_mask=True),
    Contender("sdpa (torch)", "sdpa", exact=True, dense_mask=True),
    Contender("sdpa flash (cuda)", "sdpa", kernel="FLASH_ATTENTION", exact=True),
    Contender("sdpa cudnn (cuda)", "sdpa", kernel="CUDNN_ATTENTION", exact=True, dense_mask=True),
    Contender("sdpa efficient (cuda)", "sdpa", kernel="EFFICIENT_ATTENTION", exact=True, dense_mask=True),
    Contender("flex (compiled)", "flex", exact=True, max_n=16384, quick_max_n=256,
              limit_note="on the CPU, create_block_mask evaluates the whole (N, N) mask: 26 s and 17 GB at 32K"),
    Contender("qkv reference", "qkv", backend="reference", exact=True, memory_factor=4.0,
              max_n=8192, limit_note="the same (N, N) matrices as naive, slower"),
    Contender("qkv sdpa", "qkv", backend="sdpa", exact=True, dense_mask=True),
    Contender("qkv tiled", "qkv", backend="tiled", exact=True, tile_loop=True),
    Contender("qkv auto", "qkv", backend="auto", exact=True, dense_mask=True),
    Contender("qkv sliding", "qkv", backend="sliding", exact=True, needs_window=True, tile_loop=True),
    Contender("qkv triton", "qkv", backend="triton", exact=True),
    Contender("qkv linear", "qkv", backend="linear"),
    Contender("qkv performer", "qkv", backend="performer"),
    Contender("qkv nystrom", "qkv", backend="nystrom"),
    Contender("qkv linformer", "qkv", backend="linformer"),
    Contender("naive", "naive", mode="fwd+bwd", exact=True, memory_factor=4.0, dense_mask=True),
    Contender("sdpa (torch)", "sdpa", mode="fwd+bwd", exact=True, dense_mask=True),
    Contender("sdpa flash (cuda)", "sdpa", mode="fwd+bwd", kernel="FLASH_ATTENTION", exact=True),
    Contender("qkv tiled", "qkv", backend="tiled", mode="fwd+bwd", exact=True, tile_loop=True),
    Contender("qkv sliding", "qkv", backend="sliding", mode="fwd+bwd", exact=True, needs_window=True,
              tile_loop=True),
    Contender("qkv triton", "qkv", backend="triton", mode="fwd+bwd", exact=True),
    Contender("qkv attention_stats", "stats", mode="stats", exact=True, tile_loop=True),
)
BASELINE = ("sdpa (torch)", "fwd")  # the exact baseline every ratio is taken against (time / its time)


def make_inputs(n: int, heads: int, head_dim: int, dtype: torch.dtype, device: str, seed: int = 0):
    """q, k, v of shape (1, heads, n, head_dim), seeded."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = (1, heads, n, head_dim)
    return [torch.randn(shape, generator=generator).to(device=device, dtype=dtype) for _ in range(3)]


def visible_mask(n_q: int, n_k: int, causal: bool, window: tuple[int, int] | None,
                 device: torch.device | str) -> torch.Tensor | None:
    """(Nq, Nk) bool, True where a query may attend (SDPA's convention), with qkv's meaning of
    ``causal`` (bottom-right) and ``window=(left, right)``; None when every pair is visible."""
    left, right = normalize_window(window, causal)
    return MaskSpec(n_q, n_k, left, right, causal=causal).dense_mask(torch.device(device))


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                    window: tuple[int, int] | None = None) -> torch.Tensor:
    """What one writes first: the whole (B, H, N, N) score matrix, softmax, weighted sum.

    q: (B, H, Nq, D); k: (B, H, Nk, D); v: (B, H, Nk, Dv); returns (B, H, Nq, Dv).
    """
    scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, Nq, Nk)
    visible = visible_mask(q.shape[-2], k.shape[-2], causal, window, q.device) if causal or window else None
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def mode_run(make_call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Callable[[], object]],
             q, k, v, mode: str) -> Callable[[], object]:
    """One complete run in ``mode`` of the call ``make_call(q, k, v)`` builds.

    "fwd" and "stats": the call on detached inputs without autograd, returning what it returns. "fwd+bwd": the
    call on copies of q, k, v that require grad, then backward of a fixed random output
    gradient; the gradients are dropped at the end of each run (so that a measured run
    counts them), and it returns None.
    """
    if mode != "fwd+bwd":
        call = make_call(q.detach(), k.detach(), v.detach())  # no autograd: e.g. FlexAttention on the CPU has none

        def run_without_grad():
            with torch.no_grad():
                return call()
        return run_without_grad

    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    grad_out = torch.randn_like(v)
    call = make_call(q, k, v)

    def run_with_grad():
        call().backward(grad_out)
        for t in (q, k, v):
            t.grad = None
    return run_with_grad


def sdpa_call(q, k, v, causal: bool, window: tuple[int, int] | None,
              kernel: str | None = None) -> Callable[[], torch.Tensor]:
    """A direct ``scaled_dot_product_attention`` call: ``is_causal`` without a window, else the
    equivalent bool mask (built here, outside any timing); ``kernel`` pins the SDPBackend."""
    if window is None:
        call = functools.partial(F.scaled_dot_product_attention, q, k, v, is_causal=causal)
    else:
        mask = visible_mask(q.shape[-2], k.shape[-2], causal, window, q.device)  # (Nq, Nk)
        call = functools.partial(F.scaled_dot_product_attention, q, k, v, attn_mask=mask)
    if kernel is None:
        return call
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, kernel)

    def pinned() -> torch.Tensor:
        with sdpa_kernel(backend):
            return call()
    return pinned


def forward_call(contender: Contender, q, k, v, causal: bool = False,
                 window: tuple[int, int] | None = None) -> Callable[[], torch.Tensor]:
    """A callable computing the contender's output on (q, k, v) under ``causal`` and ``window``."""
    if contender.kind == "naive":
        return lambda: naive_attention(q, k, v, causal, window)
    if contender.kind == "sdpa":
        return sdpa_call(q, k, v, causal, window, contender.kernel)
    if contender.kind == "stats":
        return lambda: qkv.attention_stats(q, k, causal=causal, window=window)
    if contender.kind != "qkv":
        raise ValueError(f"unknown contender kind {contender.kind!r}; expected naive, sdpa, stats, qkv or flex")
    options = contender.resolved_options()
    return lambda: qkv.attention(q, k, v, causal=causal, window=window, backend=contender.backend,
                                 options=options)


def flex_mask_mod(n_q: int, n_k: int, causal: bool, window: tuple[int, int] | None):
    """FlexAttention's mask_mod for qkv's ``causal`` (bottom-right) and ``window=(left, right)``,
    or None when every pair is visible."""
    left, right = normalize_window(window, causal)
    if left is None and right is None:
        return None
    offset = n_k - n_q  # query i sits at key position i + offset

    def visible(b, h, q_idx, kv_idx):
        position = q_idx + offset
        if left is None:
            return kv_idx <= position + right
        if right is None:
            return kv_idx >= position - left
        return (kv_idx >= position - left) & (kv_idx <= position + right)

    return visible


@dataclass
class Setup:
    """A built contender: ``run()`` does one complete run (see :func:`mode_run`)."""

    run: Callable[[], object]
    extras: dict  # one-off costs measured while building (FlexAttention: mask, compile)


def inductor_cache(cold: bool):
    """A fresh, empty Inductor cache (a cold compile) or the machine's cache as it is."""
    if not cold:
        return contextlib.nullcontext()
    from torch._inductor.utils import fresh_cache

    return fresh_cache()


def build_flex(q, k, v, cold_compile: bool, causal: bool, window: tuple[int, int] | None) -> Setup:
    """FlexAttention compiled for these shapes, with the block mask of ``causal`` and ``window``
    (none without either); warm on return."""
    import torch._inductor.config
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n_q, n_k = q.shape[-2], k.shape[-2]
    mask_mod = flex_mask_mod(n_q, n_k, causal, window)
    start = time.perf_counter()
    block_mask = None if mask_mod is None else create_block_mask(mask_mod, None, None, n_q, n_k, device=q.device)
    block_mask_s = time.perf_counter() - start
    torch._dynamo.reset()  # compile for this N from scratch, static shapes
    compiled = torch.compile(flex_attention, dynamic=False)

    def run():
        with torch.no_grad():
            return compiled(q, k, v, block_mask=block_mask)

    # compile_threads=1: Inductor compiles in this process; a pool of compile workers would
    # otherwise keep running beside the timed runs that follow (on 2 cores, 2-20x slower).
    with inductor_cache(cold_compile), torch._inductor.config.patch(compile_threads=1):
        start = time.perf_counter()
        run()
        compile_s = time.perf_counter() - start
    return Setup(run, {"block_mask_s": block_mask_s, "compile_s": compile_s,
                       "compile_cache": "cold" if cold_compile else "warm"})


def build(contender: Contender, q, k, v, cold_compile: bool = False, causal: bool = False,
          window: tuple[int, int] | None = None) -> Setup:
    """The contender ready to run on these inputs (q, k, v: (1, H, N, D)), in its mode."""
    if contender.kind == "flex":
        if contender.mode != "fwd":
            raise ValueError(f"FlexAttention is benchmarked forward only; got mode {contender.mode!r}")
        return build_flex(q, k, v, cold_compile, causal, window)
    make_call = functools.partial(forward_call, contender, causal=causal, window=window)
    return Setup(mode_run(make_call, q, k, v, contender.mode), {})

"""Long-context sections of ``python -m qkv.bench attention`` (issue 6).

``--section sliding``: qkv's "sliding" backend with ``window=(256, 256)`` against the
other ways to compute the same banded attention: a direct SDPA call with the equivalent
boolean band mask (True = may attend: |i - j| <= 256; the (N, N) mask is built once,
outside the timing), PyTorch FlexAttention compiled for the CPU
(``torch.compile(flex_attention)`` with a ``create_block_mask`` of the sliding-window
mask_mod; timed warm, its block-mask creation and compile + first call reported apart),
and qkv's "tiled" backend with the same window; full SDPA without a mask shows the scale.
N = 4k..64k (the O(N^2) ones and FlexAttention only up to 16k); targets at N=8192 and
the log-log slope of sliding's time over 4k..64k. Times only, no memory.

``--section approximate``: the approximate backends (linear, Performer, Nystrom,
Linformer; default options and a budget grid), sliding, and the trivial approximation
"uniform weights" (the mean of v, ignoring q and k: an error floor to beat), against exact
attention (a direct SDPA call and the naive (N, N) matrix up to 8k), N = 1k..64k: forward time, peak
memory, and the relative error ||out - exact|| / ||exact|| (exact = SDPA in float32 on
the same inputs) on two inputs: Gaussian q, k, v, whose attention is near-uniform, and
"peaked" ones, q and k scaled by 2 (logits with standard deviation 4: sharp attention).
Targets: each approximate backend (default options) >= 10x faster than SDPA at N=16384,
and at most 1/10 of SDPA's peak memory at N=32768.

``--section lra`` runs both and adds the Long Range Arena-style table (Tay et al., 2020,
Table 2): speed-up, memory ratio and error against exact attention per backend and N;
:mod:`qkv.bench.lra` prints it and writes it as JSON, markdown and PNG.

Shape: B=1, H=8, D=64, float32, not causal, CPU. Timing: medians of interleaved rounds
(:func:`qkv.bench.measure.time_round_robin`); the O(N^2) contenders get fewer rounds at
large N (one round and no warm-up from 32k: SDPA takes about a minute at 64k), the
others at least 5. Peak memory: the resident-set growth of a fresh process running the
point once (:func:`qkv.bench.measure.peak_memory_in_subprocess`), see MEMORY_NOTE.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress

import qkv
from qkv.attention import get_backend
from qkv.attention.masks import normalize_window
from qkv.bench.attention import make_inputs, memory_skip_reason, mode_run, naive_attention, visible_mask
from qkv.bench.measure import (
    available_memory_bytes,
    machine_info,
    median,
    peak_memory_in_subprocess,
    time_round_robin,
)
from qkv.bench.points import loglog_slope

__all__ = [
    "Contender",
    "SECTIONS",
    "run_section",
    "sliding_targets",
    "approximate_targets",
    "loglog_slope",
    "build_probe_run",
]

WINDOW = 256  # (left, right) = (256, 256): each query sees 513 keys
PEAKED_SCALE = 2.0  # "peaked" inputs: q and k times this; logits' std goes from 1 to 4
PEAKED_MAX_N = 16384  # the peaked variant's error is measured up to this N (it needs one more SDPA call)
NO_WARMUP_N = 32768  # from here the O(N^2) contenders run without a warm-up round
MIN_ROUNDS = 5  # rounds for the contenders that are not O(N^2) (when --repeats is not given)
APPROXIMATE_BACKENDS = ("linear", "performer", "nystrom", "linformer")

MEMORY_NOTE = (
    "Peak memory is the growth of the resident set (Linux VmHWM minus VmRSS) of a fresh "
    "Python process that builds q, k, v (B=1, H=8, N, D=64, float32), resets the kernel's "
    "high-water mark, then runs one forward call: the inputs (3 x 8 x N x 64 x 4 bytes) are "
    "excluded, the output (8 x N x 64 x 4 bytes, as large as one input) and every temporary "
    "of the call (random projections and features included) are counted, as is memory the "
    "allocator takes from the kernel and keeps."
)


@dataclass(frozen=True)
class Contender:
    """One way to compute (an approximation of) attention, measured at each N."""

    name: str  # row label, unique across the sections
    kind: str  # "qkv" (qkv.attention), "sdpa", "sdpa-band" (SDPA + bool band mask), "flex", "naive", "mean"
    backend: str | None = None  # kind "qkv": the backend= name
    options: tuple[tuple[str, int], ...] = ()  # fields of the backend's options dataclass; () = defaults
    window: int | None = None  # band half-width: keys i - window .. i + window
    exact: bool = False  # computes full softmax attention (a baseline)
    quadratic: bool = False  # O(N^2) time: fewer rounds at large N
    memory_factor: float = 0.0  # peak bytes / (H * N * N * 4), to skip points that cannot fit
    max_n: int | None = None  # not run above this N
    quick_max_n: int | None = None  # the same in --quick runs (None: max_n)
    limit_note: str = ""  # why max_n
    lra: bool = False  # a row of the LRA table (approximate ones: also of the targets)
    grid: bool = False  # a budget variant beside the defaults: full runs only
    mode: str = "fwd"  # the unified sweep (qkv.bench.sweep): "fwd", "fwd+bwd" or "stats"
    kernel: str | None = None  # kind "sdpa": the SDPBackend member it is pinned to (CUDA kernels)
    needs_window: bool = False  # the unified sweep runs it only where a window is given

    def resolved_options(self) -> object | None:
        """The options dataclass this contender passes (None for backends without options)."""
        if self.kind != "qkv" or self.backend == "auto":
            return None
        options_type = get_backend(self.backend).options_type
        return None if options_type is None else options_type(**dict(self.options))

    def describe(self) -> dict:
        """The JSON description of this contender: what exactly was called."""
        options = self.resolved_options()
        return {"name": self.name, "kind": self.kind, "backend": self.backend, "window": self.window,
                "options": None if options is None else asdict(options), "exact": self.exact}


SLIDING = Contender("qkv sliding w=256", "qkv", backend="sliding", window=WINDOW, lra=True)
SDPA = Contender("sdpa (exact)", "sdpa", exact=True, quadratic=True)
FLEX = Contender("flex compiled w=256", "flex", window=WINDOW, max_n=16384, quick_max_n=512,
                 limit_note="create_block_mask evaluates the whole (N, N) mask: 26 s and 17 GB at 32k")
SDPA_BAND = Contender("sdpa + band mask", "sdpa-band", window=WINDOW, quadratic=True, memory_factor=0.25,
                      max_n=16384, limit_note="O(N^2) time and a float (N, N) mask inside")

SLIDING_CONTENDERS = (
    SLIDING,
    Contender("qkv tiled w=256", "qkv", backend="tiled", window=WINDOW),
    FLEX,
    SDPA_BAND,
    Contender("sdpa (no mask, full)", "sdpa", exact=True, quadratic=True, max_n=16384,
              limit_note="O(N^2) time; full attention, for scale"),
)

APPROXIMATE_CONTENDERS = (
    SDPA,
    Contender("naive (exact)", "naive", exact=True, quadratic=True, memory_factor=2.0, max_n=8192,
              limit_note="materialises the (N, N) scores: 16 GiB at 16k"),
    SLIDING,
    Contender("uniform weights (mean of v)", "mean", lra=True),
    Contender("linear", "qkv", backend="linear", lra=True),
    Contender("performer m=64", "qkv", backend="performer", options=(("features", 64),), grid=True),
    Contender("performer m=256", "qkv", backend="performer", options=(("features", 256),), lra=True),
    Contender("nystrom m=32", "qkv", backend="nystrom", options=(("landmarks", 32),), grid=True),
    Contender("nystrom m=64", "qkv", backend="nystrom", options=(("landmarks", 64),), lra=True),
    Contender("nystrom m=128", "qkv", backend="nystrom", options=(("landmarks", 128),), grid=True),
    Contender("linformer k=64", "qkv", backend="linformer", options=(("k", 64),), grid=True),
    Contender("linformer k=256", "qkv", backend="linformer", options=(("k", 256),), lra=True),
)


@dataclass(frozen=True)
class Section:
    """A section's contenders and sizes."""

    name: str
    contenders: tuple[Contender, ...]
    sizes: tuple[int, ...]
    quick_sizes: tuple[int, ...]
    memory: bool  # peak memory per point
    errors: bool  # relative error against SDPA per point
    targets: Callable[[list[dict]], list[dict]] = field(repr=False)


def contender_named(name: str) -> Contender:
    """The contender with this row label, from any section."""
    for contender in (*SLIDING_CONTENDERS, *APPROXIMATE_CONTENDERS):
        if contender.name == name:
            return contender
    raise KeyError(name)


# ----------------------------------------------------------------------------- running one


@dataclass
class Setup:
    """A built contender: ``run()`` does one forward call and returns the output."""

    run: Callable[[], torch.Tensor]
    extras: dict  # one-off costs measured while building (FlexAttention: mask, compile)


def own_window(contender: Contender, window: tuple[int, int] | None) -> tuple[int, int] | None:
    """The contender's own (w, w) window where it has one, else ``window``."""
    return window if contender.window is None else (contender.window, contender.window)


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
    """A callable computing the contender's output on (q, k, v); ``causal`` and ``window``
    (left, right) apply where the contender has no window of its own (the unified sweep)."""
    window = own_window(contender, window)
    if contender.kind == "naive":
        return lambda: naive_attention(q, k, v, causal, window)
    if contender.kind in ("sdpa", "sdpa-band"):
        return sdpa_call(q, k, v, causal, window, contender.kernel)
    if contender.kind == "mean":  # equal weights on every key: ignores q and k
        return lambda: v.mean(dim=-2, keepdim=True).expand(*q.shape[:-1], v.shape[-1]).clone()
    if contender.kind == "stats":
        return lambda: qkv.attention_stats(q, k, causal=causal, window=window)
    if contender.kind != "qkv":
        raise ValueError(f"unknown contender kind {contender.kind!r}")
    options = contender.resolved_options()
    return lambda: qkv.attention(q, k, v, causal=causal, window=window, backend=contender.backend,
                                 options=options)


def inductor_cache(cold: bool):
    """A fresh, empty Inductor cache (a cold compile) or the machine's cache as it is."""
    if not cold:
        return contextlib.nullcontext()
    from torch._inductor.utils import fresh_cache

    return fresh_cache()


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


def build_flex(contender: Contender, q, k, v, cold_compile: bool, causal: bool = False,
               window: tuple[int, int] | None = None) -> Setup:
    """FlexAttention compiled for these shapes, with the block mask of the contender's window
    (or of ``causal`` and ``window``; none without either); warm on return."""
    import torch._inductor.config
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    window = own_window(contender, window)
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
    """The contender ready to run on these inputs, in its mode (see :func:`mode_run`)."""
    if contender.kind == "flex":
        if contender.mode != "fwd":
            raise ValueError(f"FlexAttention is benchmarked forward only; got mode {contender.mode!r}")
        return build_flex(contender, q, k, v, cold_compile, causal, window)
    make_call = functools.partial(forward_call, contender, causal=causal, window=window)
    return Setup(mode_run(make_call, q, k, v, contender.mode), {})


def build_probe_run(spec: dict, q, k, v) -> Callable[[], object]:
    """For :mod:`qkv.bench._memory_probe`: one forward call of the contender ``spec["name"]``."""
    return build(contender_named(spec["name"]), q, k, v).run


# ----------------------------------------------------------------------------- sweeping


def rounds_for(n: int) -> int:
    """Timed rounds of the O(N^2) contenders at this N."""
    return 7 if n <= 2048 else 5 if n <= 8192 else 3 if n <= 16384 else 2 if n <= 32768 else 1


def time_contenders(runs: dict[str, Callable], quadratic: set[str], n: int,
                    repeats: int | None) -> dict[str, list[float]]:
    """Interleaved timings; the cheap contenders get extra rounds where the O(N^2) ones get few."""
    rounds = repeats or rounds_for(n)
    cheap = {name: run for name, run in runs.items() if name not in quadratic}
    for run in (cheap if n >= NO_WARMUP_N else runs).values():
        run()  # warm-up
    times = time_round_robin(runs, repeats=rounds, warmup=0)
    extra = 0 if repeats else MIN_ROUNDS - rounds
    if extra > 0 and cheap:
        for name, more in time_round_robin(cheap, repeats=extra, warmup=0).items():
            times[name] += more
    return times


def relative_error(out: torch.Tensor, exact: torch.Tensor) -> float:
    """||out - exact|| / ||exact|| (Frobenius), in float64."""
    diff = (out.double() - exact.double()).norm()
    return (diff / exact.double().norm()).item()


def skip_reason(contender: Contender, n: int, heads: int, memory_budget: int, quick: bool) -> str | None:
    """Why a point is not run, or None."""
    quick_limit = quick and contender.quick_max_n is not None
    limit = contender.quick_max_n if quick_limit else contender.max_n
    if limit is not None and n > limit:
        why = "--quick" if quick_limit else contender.limit_note
        return f"run up to N={limit} only" + (f" ({why})" if why else "")
    return memory_skip_reason(contender.memory_factor, n, heads, memory_budget)


def errors_at(outputs: dict[str, torch.Tensor], q, k, v, n: int) -> dict[str, dict]:
    """Relative errors of each contender's output against SDPA's: on these inputs, and (up to
    PEAKED_MAX_N) on peaked ones, where each contender runs once more."""
    exact = outputs.get(SDPA.name)
    if exact is None:
        exact = build(SDPA, q, k, v).run()
    found = {name: {"rel_error": relative_error(out, exact)} for name, out in outputs.items()}
    if n <= PEAKED_MAX_N:
        q_peaked, k_peaked = q * PEAKED_SCALE, k * PEAKED_SCALE
        exact_peaked = build(SDPA, q_peaked, k_peaked, v).run()
        for name in outputs:
            out = build(contender_named(name), q_peaked, k_peaked, v).run()
            found[name]["rel_error_peaked"] = relative_error(out, exact_peaked)
    return found


def measure_memory(section: str, contender: Contender, n: int, heads: int, head_dim: int) -> dict:
    """Peak memory of one forward call in a fresh process (see MEMORY_NOTE)."""
    spec = {"section": section, "name": contender.name, "n": n, "heads": heads, "head_dim": head_dim,
            "causal": False, "device": "cpu"}
    answer = peak_memory_in_subprocess("qkv.bench._memory_probe", spec)
    found = {"peak_bytes": answer.get("peak_bytes")}
    if answer.get("error"):
        found["memory_error"] = answer["error"]
    return found


@dataclass(frozen=True)
class Settings:
    """How a sweep measures."""

    heads: int
    head_dim: int
    quick: bool
    repeats: int | None  # timed rounds; None: rounds_for(N) and MIN_ROUNDS
    memory: bool  # peak memory per point (in a fresh process each)
    cold_compile: bool  # FlexAttention compiles with an empty Inductor cache
    memory_budget: int  # bytes a point may need


def measure_size(section: Section, contenders: list[Contender], n: int, settings: Settings,
                 say: Callable[[str], None]) -> list[dict]:
    """One row per contender at this N: timed together, then errors and memory one by one."""
    q, k, v = make_inputs(n, settings.heads, settings.head_dim, torch.float32, "cpu")
    rows: dict[str, dict] = {}
    planned: dict[str, Contender] = {}
    for contender in contenders:
        reason = skip_reason(contender, n, settings.heads, settings.memory_budget, settings.quick)
        if reason is None:
            planned[contender.name] = contender
        else:
            rows[contender.name] = {**contender.describe(), "n": n, "time_s": None, "skipped": reason}
    say("building")
    setups = {name: build(c, q, k, v, settings.cold_compile) for name, c in planned.items()}
    outputs: dict[str, torch.Tensor] = {}

    def keeping_output(name: str, run: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run_and_keep() -> None:
            outputs[name] = run()
        return run_and_keep

    say(f"timing {len(setups)} contenders")
    runs = {name: keeping_output(name, setup.run) for name, setup in setups.items()}
    times = time_contenders(runs, {name for name, c in planned.items() if c.quadratic}, n, settings.repeats)
    say("errors")
    errors = errors_at(outputs, q, k, v, n) if section.errors else {}
    for name, contender in planned.items():
        row = {**contender.describe(), "n": n, "time_s": median(times[name]), "times_s": times[name],
               **setups[name].extras, **errors.get(name, {})}
        if settings.memory:
            say(f"memory of {name}")
            row.update(measure_memory(section.name, contender, n, settings.heads, settings.head_dim))
        rows[name] = row
    return [rows[c.name] for c in contenders]


def sweep(section: Section, sizes: Iterable[int], settings: Settings, console: Console) -> list[dict]:
    """Every contender of ``section`` at every N: one row per point (--quick: memory at the last N only)."""
    sizes = tuple(sizes)
    contenders = [c for c in section.contenders if not (settings.quick and c.grid)]
    rows: list[dict] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{section.name} section", total=len(sizes))
        for n in sizes:
            def say(text: str, n: int = n) -> None:
                progress.update(task, description=f"{section.name}, N={n}: {text}")

            memory = settings.memory and section.memory and (n == sizes[-1] or not settings.quick)
            rows += measure_size(section, contenders, n, replace(settings, memory=memory), say)
            progress.advance(task)
    add_ratios(rows)
    return rows


# ----------------------------------------------------------------------------- ratios and targets


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing."""
    return numerator / denominator if numerator and denominator else None


def value_at(rows: list[dict], name: str, n: int, key: str = "time_s") -> float | None:
    """The ``key`` of contender ``name`` at N, if measured."""
    for row in rows:
        if row["name"] == name and row["n"] == n:
            return row.get(key)
    return None


def add_ratios(rows: list[dict]) -> None:
    """Per row: speed-up over SDPA and memory over SDPA's (where SDPA ran), time over sliding's."""
    for row in rows:
        n = row["n"]
        row["speedup_vs_sdpa"] = ratio(value_at(rows, SDPA.name, n), row.get("time_s"))
        row["memory_vs_sdpa"] = ratio(row.get("peak_bytes"), value_at(rows, SDPA.name, n, "peak_bytes"))
        row["time_vs_sliding"] = ratio(row.get("time_s"), value_at(rows, SLIDING.name, n))


def target(name: str, n: int | str, measured: float | None, limit: float, higher_is_better: bool) -> dict:
    """One target: measured against limit; met is None when the point was not measured."""
    met = None if measured is None else (measured >= limit if higher_is_better else measured <= limit)
    entry = {"target": name, "n": n, "measured": measured, "limit": limit,
             "rule": ">=" if higher_is_better else "<=", "met": met}
    if measured is None:
        entry["note"] = f"not measured (N={n} not in this run)"
    return entry


SLIDING_COMPARE_N = 8192
SLOPE_RANGE = (4096, 65536)


def sliding_targets(rows: list[dict]) -> list[dict]:
    """Issue 6's sliding targets: >= 5x SDPA with the band mask, >= 2x compiled flex at 8k; slope <= 1.15."""
    n = SLIDING_COMPARE_N
    sliding = value_at(rows, SLIDING.name, n)
    lo, hi = SLOPE_RANGE
    points = [(r["n"], r["time_s"]) for r in rows
              if r["name"] == SLIDING.name and r["time_s"] and lo <= r["n"] <= hi]
    span = f"{min(p[0] for p in points)}..{max(p[0] for p in points)}" if points else f"{lo}..{hi}"
    return [
        target("sliding speed-up over SDPA with the equivalent bool mask", n,
               ratio(value_at(rows, SDPA_BAND.name, n), sliding), 5.0, higher_is_better=True),
        target("sliding speed-up over compiled FlexAttention (warm)", n,
               ratio(value_at(rows, FLEX.name, n), sliding), 2.0, higher_is_better=True),
        target("log-log slope of sliding time vs N", span, loglog_slope(points), 1.15, higher_is_better=False),
    ]


APPROXIMATE_SPEED_N = 16384
APPROXIMATE_MEMORY_N = 32768


def approximate_targets(rows: list[dict]) -> list[dict]:
    """Issue 6's approximate targets, for each approximate backend with its default options."""
    names = [c.name for c in APPROXIMATE_CONTENDERS if c.lra and c.backend in APPROXIMATE_BACKENDS]
    speed_n, memory_n = APPROXIMATE_SPEED_N, APPROXIMATE_MEMORY_N
    speed = [target(f"{name} speed-up over SDPA", speed_n,
                    value_at(rows, name, speed_n, "speedup_vs_sdpa"), 10.0, higher_is_better=True)
             for name in names]
    memory = [target(f"{name} peak memory / SDPA peak memory", memory_n,
                     value_at(rows, name, memory_n, "memory_vs_sdpa"), 0.1, higher_is_better=False)
              for name in names]
    return speed + memory


SECTIONS = {
    "sliding": Section("sliding", SLIDING_CONTENDERS, sizes=(4096, 8192, 16384, 32768, 65536),
                       quick_sizes=(512, 1024), memory=False, errors=False, targets=sliding_targets),
    "approximate": Section("approximate", APPROXIMATE_CONTENDERS,
                           sizes=(1024, 2048, 3072, 4096, 8192, 16384, 32768, 65536),
                           quick_sizes=(256, 512), memory=True, errors=True, targets=approximate_targets),
}


def attention_spread(heads: int, head_dim: int, n: int = 1024) -> dict:
    """How many keys a query effectively attends to (exp of the entropy, mean over queries), both inputs."""
    q, k, _ = make_inputs(n, heads, head_dim, torch.float32, "cpu")
    spread = {}
    for variant, factor in (("gaussian", 1.0), ("peaked", PEAKED_SCALE)):
        scores = (q * factor) @ (k * factor).transpose(-2, -1) / math.sqrt(head_dim)  # (1, H, n, n)
        entropy = -(scores.softmax(-1) * scores.log_softmax(-1)).sum(-1)  # (1, H, n)
        spread[variant] = entropy.exp().mean().item()
    return {"n": n, "effective_keys": spread}


def run_section(
    name: str,
    sizes: tuple[int, ...] | None = None,
    *,
    heads: int = 8,
    head_dim: int = 64,
    quick: bool = False,
    repeats: int | None = None,
    memory: bool = True,
    cold_compile: bool | None = None,
    console: Console | None = None,
) -> dict:
    """Run one section ("sliding" or "approximate"); return its rows, targets and notes."""
    section = SECTIONS[name]
    console = console or Console()
    cold_compile = (not quick) if cold_compile is None else cold_compile
    sizes = sizes or (section.quick_sizes if quick else section.sizes)
    load_before = os.getloadavg()[0]
    settings = Settings(heads=heads, head_dim=head_dim, quick=quick, repeats=repeats, memory=memory,
                        cold_compile=cold_compile, memory_budget=int(0.8 * available_memory_bytes()))
    rows = sweep(section, sizes, settings, console)
    cache = ("cold: a fresh, empty Inductor cache" if cold_compile
             else "warm: the machine's Inductor cache as earlier runs left it")
    config = {"batch": 1, "heads": heads, "head_dim": head_dim, "dtype": "float32", "causal": False,
              "device": "cpu", "sizes": list(sizes), "window": [WINDOW, WINDOW], "quick": quick,
              "repeats": repeats or f"{MIN_ROUNDS}, O(N^2) contenders: 7 up to 2k, 5 up to 8k, 3 at 16k, "
                                    "2 at 32k, 1 at 64k",
              "flex_compile_cache": cache,
              "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}}
    result = {"benchmark": "attention", "section": name, "machine": machine_info("cpu"), "config": config,
              "contenders": [c.describe() for c in section.contenders if not (quick and c.grid)],
              "rows": rows, "targets": section.targets(rows)}
    if section.memory:
        config["memory_method"] = MEMORY_NOTE
    if section.errors:
        config["error_method"] = (
            "relative error ||out - exact|| / ||exact|| (Frobenius, all heads), exact = SDPA in float32 on "
            f"the same inputs; 'gaussian': q, k, v ~ N(0, 1), near-uniform attention; 'peaked': q and k "
            f"times {PEAKED_SCALE} (logits' std {PEAKED_SCALE**2:g}), up to N={PEAKED_MAX_N}")
        config["attention_spread"] = attention_spread(heads, head_dim, min(1024, max(sizes)))
    return result

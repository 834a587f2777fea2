"""``qkv bench attention``: the one sweep, every contender x N x masking variant.

The contenders and variants are data (:mod:`qkv.bench.contenders`); this module measures
them. B=1, H=8, D=64. Defaults per device (:func:`settings_from_args`): on the CPU, float32 and
N = 512 .. 64K in powers of two; on CUDA, bfloat16 (the FlashAttention and cuDNN kernels take
no float32), N = 1K, 4K, 16K, 64K, FlexAttention compiled with the machine's Inductor cache,
and a time budget (:data:`CUDA_BUDGET_S`) that bounds the sweep to a few minutes with a cold
cache, where each new kernel variant compiles and autotunes. ``--quick``: 256, 512, 1024.
On CUDA the contenders that are Python loops over tiles (tiled, sliding, whose GPU path is
tiled's, and attention_stats) run up to N = 4K only (:data:`DEVICE_LOOP_MAX_N`): each tile
is a few small kernel launches, so their time follows the number of tiles, not the GPU.

Per point: a first, untimed run (the warm-up) measures the peak memory
(:func:`qkv.bench.measure.peak_tensor_bytes`) and the max absolute error of its output against
exact attention (qkv's reference backend in float64; every query row up to N=2048, 512 evenly
spaced rows above); then the median of interleaved timed rounds (device-synchronised on a GPU;
7 rounds for a run under 50 ms, 5 under 0.5 s, 3 under 2 s, else 2, and 1 over the time limit),
and the FLOP rate (:func:`qkv.bench.points.attention_flops`; None for approximate backends,
whose work is not attention over pairs). A point is skipped, with the reason printed, when it
would not fit in memory, when its run is predicted (from the same contender at the previous
sizes) to take longer than ``--max-run-s`` (SDPA's forward, the exact baseline, gets 4 times
as long), above a contender's size limit, or when it failed at a smaller N. Then, per
contender and variant, the log-log slope of time against N over the largest sizes run
(:func:`qkv.bench.points.scaling_exponents`), every row's time over SDPA's at the same point
(``ratio_to_sdpa``: the one ratio every table and target uses) and the targets
(:func:`targets`).
"""

from __future__ import annotations

import datetime
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

import qkv
from qkv.bench.contenders import (
    BASELINE,
    CONTENDERS,
    DTYPES,
    WINDOW,
    Contender,
    Setup,
    Variant,
    build,
    make_inputs,
    make_variants,
)
from qkv.bench.measure import (
    available_memory_bytes,
    machine_info,
    median,
    peak_tensor_bytes,
    synchronize,
    time_round_robin,
)
from qkv.bench.points import attention_flops, label, loglog_slope, point_row, scaling_exponents
from qkv.bench.tables import ratio, target
from qkv.functional import get_backend
from qkv.functional.masks import MaskSpec, normalize_window
from qkv.functional.registry import CallNeeds

__all__ = ["SweepSettings", "run_sweep", "exact_rows", "add_ratios", "targets", "SIZES", "QUICK_SIZES",
           "CUDA_SIZES", "settings_from_args"]

SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
QUICK_SIZES = (256, 512, 1024)
MAX_RUN_S = 5.0  # a point whose one run is predicted to take longer is skipped
QUICK_MAX_RUN_S = 2.0
BASELINE_TIME_FACTOR = 4.0  # the exact baseline is measured further: with this many times the time limit
ERROR_ALL_ROWS_MAX_N = 2048  # the error is taken over every query row up to this N ...
ERROR_SAMPLE_ROWS = 512  # ... and over this many evenly spaced rows above it
CUDA_ONLY = "CUDA only"  # how the skip reason of a CUDA kernel on the CPU starts
CUDA_SIZES = (1024, 4096, 16384, 65536)
CUDA_BUDGET_S = 210.0  # the default --budget-s on CUDA: the sweep within about 4 minutes, cold caches included
DEFAULT_DTYPES = {"cpu": "float32", "cuda": "bfloat16"}  # per device type
DEVICE_LOOP_MAX_N = {"cuda": 4096}  # per device type: contenders that loop over tiles in Python run up to this N
LOOP_NOTE = ("a Python loop over tiles, a few small kernel launches each: its time follows the tile count, not "
             "the device; the triton backend is the GPU path")
BUDGET_SPENT = "the sweep's time budget"  # how the skip reason of a point left out by --budget-s starts
INTERRUPTED = "interrupted (Ctrl-C)"  # the skip reason of the points a Ctrl-C left unmeasured
# Backends whose first call of a shape compiles and autotunes (Triton benchmarks each tile configuration,
# with buffers of its own): that call runs before the measured first run, its time kept as first_call_s.
TUNED_ON_FIRST_CALL = ("triton",)
DENSE_MASK_BYTES = 5  # per (query, key) pair: a dense bool mask and its float copy


@dataclass(frozen=True)
class SweepSettings:
    """How the sweep measures."""

    heads: int = 8
    head_dim: int = 64
    dtype: str | None = None  # None: the device's default (DEFAULT_DTYPES)
    device: str = "cpu"
    quick: bool = False
    repeats: int | None = None  # timed rounds; None: from the run's length
    memory: bool = True  # peak memory per point (one more run each)
    errors: bool = True  # max error against exact attention per point
    cold_compile: bool = True  # FlexAttention compiles with an empty Inductor cache
    max_run_s: float = MAX_RUN_S  # skip a point predicted to run longer
    memory_budget: int = 0  # bytes a point may need (0: 80% of what is free)
    budget_s: float | None = None  # wall seconds for the whole sweep; what is not started by then is skipped

    def __post_init__(self) -> None:
        if self.dtype is None:
            object.__setattr__(self, "dtype", DEFAULT_DTYPES.get(torch.device(self.device).type, "float32"))

    @property
    def default_sizes(self) -> tuple[int, ...]:
        """The sizes measured when none are given: ``--quick``'s, the GPU's or the CPU's."""
        if self.quick:
            return QUICK_SIZES
        return CUDA_SIZES if self.device.startswith("cuda") else SIZES


# ----------------------------------------------------------------------------- planning


def structural_reason(contender: Contender, variant: Variant, device: str) -> str | None:
    """Why a contender never runs in this variant on this device, or None."""
    if contender.kernel is not None and not device.startswith("cuda"):
        return f"{CUDA_ONLY} (--device cuda): SDPA pinned to its {contender.kernel} kernel"
    if contender.needs_window and variant.window is None:
        return f"needs a window (without one, {contender.backend} is the tiled backend)"
    if contender.kernel == "FLASH_ATTENTION" and variant.window is not None:
        return "the FlashAttention kernel behind SDPA takes no attn_mask, which a window needs"
    if contender.kind == "flex" and contender.mode != "fwd":
        return "FlexAttention is measured forward only"
    if contender.backend == "triton" and not device.startswith("cuda"):
        return f"{CUDA_ONLY} (--device cuda): on the CPU Triton kernels run only under its interpreter, for tests"
    if contender.kind == "qkv" and contender.backend != "auto":
        needs = CallNeeds(return_lse=False, grad=contender.mode == "fwd+bwd", mask=False, key_padding=False,
                          causal=variant.causal, window=variant.window is not None,
                          device=torch.device(device).type)
        unmet = needs.unmet_by(get_backend(contender.backend))
        if unmet:
            return f"the {contender.backend} backend cannot {unmet}"
    return None


class History:
    """What each (contender, variant) did at the sizes run so far: to predict and to stop early."""

    def __init__(self) -> None:
        self.times: dict[tuple, list[tuple[int, float]]] = {}
        self.failures: dict[tuple, str] = {}

    @staticmethod
    def key(contender: Contender, variant: Variant) -> tuple:
        return contender.name, contender.mode, variant.key

    def record(self, contender: Contender, variant: Variant, n: int, time_s: float) -> None:
        self.times.setdefault(self.key(contender, variant), []).append((n, time_s))

    def fail(self, contender: Contender, variant: Variant, n: int, reason: str) -> None:
        self.failures[self.key(contender, variant)] = f"failed at N={n}: {reason}"

    def predict(self, contender: Contender, variant: Variant, n: int) -> float | None:
        """Seconds per run at N, extrapolated from the last sizes (growth exponent measured
        between the last two, kept within [1, 2]; 2 with one size); None before any."""
        points = self.times.get(self.key(contender, variant), [])
        if not points:
            return None
        n_last, t_last = points[-1]
        exponent = 2.0
        if len(points) >= 2:
            (n_before, t_before) = points[-2]
            exponent = min(2.0, max(1.0, loglog_slope([(n_before, t_before), (n_last, t_last)])))
        return t_last * (n / n_last) ** exponent


def time_limit(contender: Contender, settings: SweepSettings) -> float:
    """Seconds one run of this contender may take (the exact baseline gets longer)."""
    return settings.max_run_s * (BASELINE_TIME_FACTOR if (contender.name, contender.mode) == BASELINE else 1)


def budget_reason(settings: SweepSettings, started: float) -> str | None:
    """Why nothing more starts: the sweep's time budget (``--budget-s``) is spent; else None."""
    if settings.budget_s is None or time.perf_counter() - started < settings.budget_s:
        return None
    return f"{BUDGET_SPENT} of {settings.budget_s:g} s (--budget-s) was spent before this point"


def size_limit_reason(contender: Contender, n: int, quick: bool, device_type: str) -> str | None:
    """Why N is above the contender's size limit (the CPU's: its time and memory), or None."""
    quick_limit = quick and contender.quick_max_n is not None
    limit = contender.quick_max_n if quick_limit else None if device_type == "cuda" else contender.max_n
    if limit is None or n <= limit:
        return None
    why = "--quick" if quick_limit else contender.limit_note
    return f"run up to N={limit} only" + (f" ({why})" if why else "")


def memory_reason(memory_factor: float, n: int, heads: int, memory_budget: int, itemsize: int = 4) -> str | None:
    """Why a point needing ``memory_factor * heads * n * n * itemsize`` bytes cannot run, or None."""
    needed = memory_factor * heads * n * n * itemsize
    if needed > memory_budget:
        return f"needs ~{needed / 2**30:.0f} GiB, more than the {memory_budget / 2**30:.0f} GiB available"
    return None


def point_skip_reason(contender: Contender, variant: Variant, n: int, settings: SweepSettings,
                      history: History, started: float | None = None) -> tuple[str, str] | None:
    """(kind, reason) why this point is not run, or None. Kinds: structural, budget (with
    ``started``, the sweep's perf_counter start), failed, device-limit (a Python loop above
    the device's :data:`DEVICE_LOOP_MAX_N`), limit, time."""
    reason = structural_reason(contender, variant, settings.device)
    if reason:
        return "structural", reason
    reason = None if started is None else budget_reason(settings, started)
    if reason:
        return "budget", reason
    failure = history.failures.get(History.key(contender, variant))
    if failure:
        return "failed", failure
    factor = contender.memory_factor  # in units of H * N * N * 4 bytes
    masked = variant.window is not None or (variant.causal and contender.kind == "naive")
    if masked and contender.dense_mask:
        factor += DENSE_MASK_BYTES / (4 * settings.heads) + (1.0 if contender.kind == "naive" else 0.0)
    device_type = torch.device(settings.device).type
    loop_max_n = DEVICE_LOOP_MAX_N.get(device_type) if contender.tile_loop else None
    if loop_max_n is not None and n > loop_max_n:
        return "device-limit", f"on {device_type.upper()}, run up to N={loop_max_n} only ({LOOP_NOTE})"
    reason = size_limit_reason(contender, n, settings.quick, device_type) or memory_reason(
        factor, n, settings.heads, settings.memory_budget)
    if reason:
        return "limit", reason
    predicted = history.predict(contender, variant, n)
    limit = time_limit(contender, settings)
    if predicted is not None and predicted > limit:
        return "time", f"would take ~{predicted:.3g} s per run, over the {limit:g} s limit (--max-run-s)"
    return None


# ----------------------------------------------------------------------------- exact attention and errors


def error_rows(n: int, device: str) -> torch.Tensor:
    """The query rows the error is taken over: all up to ERROR_ALL_ROWS_MAX_N, else evenly spaced."""
    if n <= ERROR_ALL_ROWS_MAX_N:
        return torch.arange(n, device=device)
    return torch.linspace(0, n - 1, ERROR_SAMPLE_ROWS, device=device).round().long().unique()


def exact_rows(q, k, v, rows: torch.Tensor, causal: bool, window: tuple[int, int] | None,
               chunk_elements: int = 2**25) -> torch.Tensor:
    """Exact attention for the query ``rows`` (R,): qkv's reference backend in float64, (B, H, R, Dv).

    Computed a chunk of rows at a time (each chunk's score matrix holds at most
    ``chunk_elements`` numbers), so it fits at any N; causal and window as :func:`qkv.attention`.
    """
    k64, v64 = k.double(), v.double()
    batch, heads, n_q, _ = q.shape
    n_k = k.shape[-2]
    spec = MaskSpec(n_q, n_k, *normalize_window(window, causal), causal=causal)
    keys = torch.arange(n_k, device=q.device)
    chunk = max(1, chunk_elements // (batch * heads * n_k))
    parts = []
    for part in rows.split(chunk):
        mask = spec.pair_structure(part + spec.offset, keys) if spec.has_structure else None  # (r, Nk)
        parts.append(qkv.attention(q[:, :, part].double(), k64, v64, mask=mask, backend="reference"))
    return torch.cat(parts, dim=-2)


def max_error(out: object, exact: torch.Tensor | None, rows: torch.Tensor) -> float | None:
    """max |out - exact| over the chosen rows, or None where there is no output to compare."""
    if exact is None or not isinstance(out, torch.Tensor):
        return None
    return (out[:, :, rows].double() - exact).abs().max().item()


# ----------------------------------------------------------------------------- measuring one point


def rounds_for_time(seconds: float) -> int:
    """Timed rounds for a run of this length."""
    return 7 if seconds < 0.05 else 5 if seconds < 0.5 else 3 if seconds < 2 else 2


def failure_text(err: BaseException, caught: list[warnings.WarningMessage]) -> str:
    """One line: the exception, then the first two user warnings given on the way (PyTorch's SDPA
    says in warnings why each kernel could not serve a call)."""
    lines = str(err).strip().splitlines()
    why = [str(w.message).strip().splitlines()[0] for w in caught
           if w.category is UserWarning and str(w.message).strip()][:2]
    return f"{type(err).__name__}: {lines[0] if lines else ''}" + (f" ({'; '.join(why)})" if why else "")


def attempt(action: Callable[[], object]) -> tuple[object, str | None]:
    """(result, None), or (None, why it failed): a contender that cannot run is a skipped point."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return action(), None
        except Exception as err:  # whatever stops a contender here is reported on its row
            if isinstance(err, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            return None, failure_text(err, caught)


@dataclass
class Point:
    """One (N, variant): its inputs and what every contender needs."""

    n: int
    variant: Variant
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    settings: SweepSettings

    def row(self, contender: Contender, **fields) -> dict:
        return point_row(contender.name, contender.mode, self.n, causal=self.variant.causal,
                         window=self.variant.pair, device=self.settings.device, dtype=self.settings.dtype,
                         options=contender.options_dict(), variant=self.variant.name,
                         kind=contender.kind, exact=contender.exact, **fields)


def first_run(run: Callable[[], object], settings: SweepSettings) -> tuple[float, int | None, object]:
    """The untimed first run: (its wall time, peak memory or None, its output)."""
    synchronize(settings.device)
    start = time.perf_counter()
    peak, out = peak_tensor_bytes(run, settings.device) if settings.memory else (None, run())
    synchronize(settings.device)
    return time.perf_counter() - start, peak, out


def measure_point(point: Point, planned: list[Contender], history: History,
                  say: Callable[[str], None], started: float | None = None) -> dict[tuple, dict]:
    """Rows of the planned contenders at this point. Each is built (a backend of
    :data:`TUNED_ON_FIRST_CALL` also called once, which compiles and autotunes it), then run once
    untimed (the warm-up; it measures peak memory and the output's error against exact
    attention), then all are timed together in interleaved rounds. A contender not built before the time budget is
    spent (``started``: the sweep's perf_counter start) is skipped."""
    settings, variant, n = point.settings, point.variant, point.n
    check = settings.errors and any(c.mode == "fwd" for c in planned)
    if check:
        say("exact attention in float64")
        rows_checked = error_rows(n, settings.device)
        exact = exact_rows(point.q, point.k, point.v, rows_checked, variant.causal, variant.pair)
    rows: dict[tuple, dict] = {}
    setups: dict[tuple, Setup] = {}
    rounds: dict[tuple, int] = {}
    first: dict[tuple, dict] = {}
    for contender in planned:
        key, name = (contender.name, contender.mode), label(contender.name, contender.mode)
        spent = None if started is None else budget_reason(point.settings, started)
        if spent:
            rows[key] = point.row(contender, skipped=spent)
            continue
        say(f"building {name}")
        setup, why = attempt(lambda c=contender: build(c, point.q, point.k, point.v, settings.cold_compile,
                                                       variant.causal, variant.pair))
        tuned = {}
        if not why and contender.backend in TUNED_ON_FIRST_CALL:
            say(f"compiling and autotuning {name}")
            tuning, why = attempt(lambda s=setup: first_run(s.run, replace(settings, memory=False)))
            tuned = {} if why else {"first_call_s": tuning[0]}
        if not why:
            say(f"first run of {name}")
            measured, why = attempt(lambda s=setup: first_run(s.run, settings))
        if why:
            rows[key] = point.row(contender, skipped=f"failed: {why}")
            history.fail(contender, variant, n, why)
            continue
        elapsed, peak, out = measured
        error = max_error(out, exact, rows_checked) if check and contender.mode == "fwd" else None
        del out, measured
        first[key] = {"peak_bytes": peak, "max_error": error,
                      "error_rows": len(rows_checked) if error is not None else None, **tuned}
        setups[key] = setup
        # A run far slower than predicted (e.g. a busy machine) gets one timed round, then no larger N.
        rounds[key] = settings.repeats or (1 if elapsed > time_limit(contender, settings) else rounds_for_time(elapsed))
    say(f"timing {len(setups)} contenders")
    times = time_round_robin({key: s.run for key, s in setups.items()}, rounds, warmup=0, device=settings.device)
    by_key = {(c.name, c.mode): c for c in planned}
    for key, setup in setups.items():
        contender = by_key[key]
        time_s = median(times[key])
        history.record(contender, variant, n, time_s)
        flops = attention_flops(n, settings.head_dim, settings.heads, variant.causal, variant.pair,
                                contender.mode) if contender.exact and contender.mode != "stats" else None
        rows[key] = point.row(contender, time_s=time_s, flops_per_s=flops / time_s if flops else None,
                              times_s=times[key], flops=flops, **first[key], **setup.extras)
    return rows


# ----------------------------------------------------------------------------- the sweep


def run_sweep(sizes: tuple[int, ...] | None = None, variants: tuple[str, ...] | None = None,
              settings: SweepSettings | None = None, names: tuple[str, ...] | None = None,
              console: Console | None = None, command: str | None = None, window: int = WINDOW) -> dict:
    """Measure every contender (``names``: a subset) at every N and variant (keys of
    :data:`VARIANTS`, with windows of ``window``); return the result dict (``machine``,
    ``config``, ``rows``, ``scaling``, ``targets``)."""
    settings = settings or SweepSettings()
    console = console or Console()
    if not settings.memory_budget:
        free = torch.cuda.mem_get_info()[0] if settings.device.startswith("cuda") else available_memory_bytes()
        settings = replace(settings, memory_budget=int(0.8 * free))
    sizes = sizes or settings.default_sizes
    every = make_variants(window)
    chosen = [every[key] for key in (variants or tuple(every))]
    contenders = [c for c in CONTENDERS if names is None or c.name in names]
    history = History()
    printed: set[tuple] = set()
    rows: list[dict] = []
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        _measure_points(sizes, chosen, contenders, settings, history, printed, rows, started, console)
    except KeyboardInterrupt:  # keep what was measured; the rest is marked, and the caller exits 130
        console.print(f"[dim]{INTERRUPTED}: every point not yet measured is marked so[/]")
        done = {(row["n"], row["variant"]) for row in rows}  # whole points only: rows are added a point at a time
        for n in sizes:
            for variant in chosen:
                if (n, variant.name) not in done:
                    point = Point(n, variant, None, None, None, settings)
                    rows += [point.row(c, skipped=f"{INTERRUPTED} before this point") for c in contenders]
        interrupted = True
    else:
        interrupted = False
    add_ratios(rows)
    return {
        "benchmark": "attention",
        "date": datetime.date.today().isoformat(),
        "command": command,
        "interrupted": interrupted,
        "machine": machine_info(settings.device),
        "config": config_of(settings, sizes, chosen, started, load_before),
        "contenders": [c.describe() for c in contenders],
        "rows": rows,
        "scaling": scaling_exponents(r for r in rows if not r["skipped"]),
        "targets": targets(rows, settings.heads),
    }


def _measure_points(sizes: tuple[int, ...], chosen: list[Variant], contenders: list[Contender],
                    settings: SweepSettings, history: History, printed: set[tuple], rows: list[dict],
                    started: float, console: Console) -> None:
    """Measure every (N, variant) point in order, adding its rows to ``rows`` once it is complete."""
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("attention", total=len(sizes) * len(chosen) * len(contenders))
        for n in sizes:
            q, k, v = make_inputs(n, settings.heads, settings.head_dim, DTYPES[settings.dtype], settings.device)
            for variant in chosen:
                def say(text: str, n: int = n, variant: Variant = variant) -> None:
                    progress.update(task, description=f"N={n}, {variant.name}: {text}")

                point = Point(n, variant, q, k, v, settings)
                planned, point_rows = [], {}
                for contender in contenders:
                    skip = point_skip_reason(contender, variant, n, settings, history, started)
                    if skip is None:
                        planned.append(contender)
                        continue
                    kind, reason = skip
                    point_rows[(contender.name, contender.mode)] = point.row(contender, skipped=reason)
                    once = kind in ("structural", "device-limit")  # the same in every variant
                    shown = ("budget",) if kind == "budget" else (
                        contender.name, contender.mode, None if once else variant.key, kind)
                    if shown not in printed:
                        printed.add(shown)
                        where = ("" if kind == "structural" else f"from N={n}: " if once
                                 else f"{variant.name}, from N={n}: ")
                        what = "everything left" if kind == "budget" else label(contender.name, contender.mode)
                        progress.console.print(f"[dim]skip {escape(what)}: {escape(where + reason)}[/]")
                    progress.advance(task)
                measured = measure_point(point, planned, history, say, started)
                progress.advance(task, len(planned))
                for row_key, row in measured.items():
                    over_budget = bool(row["skipped"]) and row["skipped"].startswith(BUDGET_SPENT)
                    if not row["skipped"] or (over_budget and ("budget",) in printed):
                        continue
                    if over_budget:
                        printed.add(("budget",))
                    what = "everything left" if over_budget else label(*row_key)
                    progress.console.print(f"[dim]skip {escape(what)}: {variant.name}, "
                                           f"N={n}: {escape(row['skipped'])}[/]")
                point_rows.update(measured)
                rows += [point_rows[(c.name, c.mode)] for c in contenders]
            del q, k, v


METHOD = {
    "timing": ("median of interleaved rounds (device-synchronised on a GPU) after a first, untimed run that "
               "measures memory and error (the triton backend is called once before it, to compile and autotune: "
               "first_call_s); rounds from that run's length: 7 under 50 ms, 5 under 0.5 s, 3 under "
               "2 s, else 2, and 1 over the time limit"),
    "memory": ("peak bytes held by the tensors one run allocates beyond those alive before it: "
               "torch.cuda.max_memory_allocated on a GPU; on the CPU the same quantity from torch.profiler's "
               "allocation and free events (profile_memory); memory outside PyTorch's allocator is not counted"),
    "error": (f"max |out - exact| over every query row up to N={ERROR_ALL_ROWS_MAX_N}, over "
              f"{ERROR_SAMPLE_ROWS} evenly spaced rows above; exact = qkv's reference backend in float64 on the "
              "same inputs and mask; forward rows only"),
    "flops": ("4 * pairs * D * H (B=1) per forward, pairs = the (query, key) pairs the mask leaves visible, "
              "counted exactly (N^2 full, N(N+1)/2 causal, the band's pairs with a window); fwd+bwd 3.5 times "
              "that; the same useful work for every exact contender at a point; None for approximate backends "
              "and attention_stats"),
    "scaling": ("least-squares slope of log(time) against log(N) over the largest 4 sizes a contender ran "
                "(at least 3)"),
    "skips": ("a point is skipped when it would not fit in 80% of the free memory, when its run is predicted "
              "(from the same contender's last sizes) to exceed the time limit, above a contender's size "
              "limit (on CUDA, the Python loops over tiles, tiled, sliding and attention_stats, above "
              f"N={DEVICE_LOOP_MAX_N['cuda']}), after it failed at a smaller N, or once the sweep's time budget "
              "(--budget-s, if set) is spent"),
}


def config_of(settings: SweepSettings, sizes: tuple[int, ...], variants: list[Variant], started: float,
              load_before: float) -> dict:
    return {
        "batch": 1, "heads": settings.heads, "head_dim": settings.head_dim, "dtype": settings.dtype,
        "device": settings.device, "sizes": list(sizes), "variants": [v.describe() for v in variants],
        "quick": settings.quick, "repeats": settings.repeats, "max_run_s": settings.max_run_s,
        "budget_s": settings.budget_s,
        "python_loop_max_n": DEVICE_LOOP_MAX_N.get(torch.device(settings.device).type),
        "baseline_max_run_s": settings.max_run_s * BASELINE_TIME_FACTOR,
        "memory_budget_bytes": settings.memory_budget,
        "flex_compile_cache": "a cold Inductor cache, a fresh one per compile" if settings.cold_compile
        else "the machine's warm Inductor cache",
        "method": METHOD, "wall_s": time.perf_counter() - started,
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
    }


def settings_from_args(args) -> SweepSettings:
    """The sweep's settings from ``qkv bench attention``'s parsed arguments, each one not given
    taking its device's default: on CUDA bfloat16, FlexAttention compiled with the machine's
    Inductor cache and a time budget of :data:`CUDA_BUDGET_S` (none with ``--quick``)."""
    cuda = args.device == "cuda"
    budget_s = args.budget_s if args.budget_s is not None else CUDA_BUDGET_S if cuda and not args.quick else None
    return SweepSettings(
        heads=args.heads, head_dim=args.head_dim, dtype=args.dtype, device=args.device, quick=args.quick,
        repeats=args.repeats or (2 if args.quick else None), memory=not args.no_memory,
        cold_compile=not (args.warm_compile or args.quick or cuda),
        max_run_s=args.max_run_s or (QUICK_MAX_RUN_S if args.quick else MAX_RUN_S), budget_s=budget_s,
    )


# ----------------------------------------------------------------------------- ratios and targets


def add_ratios(rows: list[dict]) -> None:
    """Each row's ``ratio_to_sdpa``: its time over direct SDPA's in the same mode (stats: over SDPA's
    forward) at the same N, variant and device; None where either was not measured."""
    def point(row: dict, mode: str) -> tuple:
        return row["n"], row.get("variant"), row.get("device"), mode

    sdpa = {point(r, r["mode"]): r["time_s"] for r in rows if r["backend"] == BASELINE[0]}
    for row in rows:
        baseline = sdpa.get(point(row, "fwd" if row["mode"] == "stats" else row["mode"]))
        row["ratio_to_sdpa"] = ratio(row["time_s"], baseline)


SLIDING_N = 8192  # the sliding window against its exact peers at this N ...
SLOPE_SIZES = (4096, 65536)  # ... and its scaling over these sizes
APPROXIMATE_TIME_N, APPROXIMATE_MEMORY_N = 16384, 32768
AUTO_LIMIT = 1.1  # auto's time / the fastest exact qkv backend's at the same point


def targets(rows: list[dict], heads: int) -> list[dict]:
    """Every target the sweep's rows can judge, each a ratio against a peer at one point (every
    time ratio is time / the peer's time): the exact backends against SDPA (full variant), the
    sliding window against SDPA with the same mask and compiled FlexAttention, the approximate
    backends against SDPA, and auto against the fastest exact qkv backend. Only measured targets."""
    found = {(r["backend"], r["mode"], r["variant"], r["n"]): r for r in rows if r["time_s"]}

    def value(backend: str, n: int, key: str = "time_s", mode: str = "fwd", variant: str = "full") -> float | None:
        return found.get((backend, mode, variant, n), {}).get(key)

    window = make_variants()["window"].name
    goals = []
    for n in sorted({r["n"] for r in rows}):
        if 1024 <= n <= 8192:
            goals.append(target("auto time / sdpa time", n, value("qkv auto", n, "ratio_to_sdpa"), 1.05))
        if 4096 <= n <= 16384:
            goals.append(target("tiled forward time / sdpa", n, value("qkv tiled", n, "ratio_to_sdpa"), 2.0))
            goals.append(target("tiled fwd+bwd time / sdpa fwd+bwd", n,
                                value("qkv tiled", n, "ratio_to_sdpa", "fwd+bwd"), 2.5))
    n = max((r["n"] for r in rows), default=0)
    if n >= 16384:
        goals.append(target("tiled peak memory / naive peak memory", n,
                            ratio(value("qkv tiled", n, "peak_bytes"), value("naive", n, "peak_bytes")), 0.1))
        goals.append(target("attention_stats time / sdpa", n,
                            value("qkv attention_stats", n, "ratio_to_sdpa", "stats"), 3.0))
        goals.append(target("attention_stats peak memory / bytes of the weights", n,
                            ratio(value("qkv attention_stats", n, "peak_bytes", "stats"), heads * n * n * 4), 1 / 20))
    sliding = value("qkv sliding", SLIDING_N, variant=window)
    goals.append(target(f"sliding time / sdpa time with the same bool mask, {window}", SLIDING_N,
                        value("qkv sliding", SLIDING_N, "ratio_to_sdpa", variant=window), 0.2))
    goals.append(target(f"sliding time / compiled FlexAttention time, {window}", SLIDING_N,
                        ratio(sliding, value("flex (compiled)", SLIDING_N, variant=window)), 0.5))
    lo, hi = SLOPE_SIZES
    points = [(r["n"], r["time_s"]) for r in found.values()
              if (r["backend"], r["mode"], r["variant"]) == ("qkv sliding", "fwd", window) and lo <= r["n"] <= hi]
    goals.append(target(f"log-log slope of sliding time against N, {window}", f"{lo}..{hi}",
                        loglog_slope(points) if len(points) >= 3 else None, 1.15))
    for backend in ("qkv linear", "qkv performer", "qkv nystrom", "qkv linformer"):
        goals.append(target(f"{backend} time / sdpa time", APPROXIMATE_TIME_N,
                            value(backend, APPROXIMATE_TIME_N, "ratio_to_sdpa"), 0.1))
        goals.append(target(f"{backend} peak memory / sdpa peak memory", APPROXIMATE_MEMORY_N,
                            ratio(value(backend, APPROXIMATE_MEMORY_N, "peak_bytes"),
                                  value(BASELINE[0], APPROXIMATE_MEMORY_N, "peak_bytes")), 0.1))
    return [goal for goal in goals if goal["measured"] is not None] + auto_targets(rows)


def auto_targets(rows: list[dict]) -> list[dict]:
    """Per variant and N: ``qkv auto``'s forward time over the fastest exact qkv backend that ran the
    same call (the same point), limit 1.1: auto picks by estimated cost and must not lose by more."""
    points: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        if r["mode"] == "fwd" and r.get("kind") == "qkv" and r.get("exact") and r.get("time_s"):
            points.setdefault((r["variant"], r["n"]), {})[r["backend"]] = r["time_s"]
    found = []
    for (variant, n), times in points.items():
        auto = times.pop("qkv auto", None)
        if auto is None or not times:
            continue
        fastest = min(times, key=times.get)
        found.append(target(f"auto / fastest exact ({fastest.removeprefix('qkv ')}), {variant}", n,
                            auto / times[fastest], AUTO_LIMIT))
    return found

"""``qkv bench triton``: the Triton kernel at full size on a GPU, checked then timed, in one run.

Made to be run once on a lent GPU (H100/H200) with a few minutes of device time:

1. Correctness at full sizes in bfloat16 under the 2x rule (outputs and dq, dk, dv
   against the float64 reference on the GPU, bound: twice the plain bfloat16 reference's
   error plus a floor): causal and not, a window, GQA, Nq != Nk, an odd length, key
   padding, head dims 64/128/256, and fixed tiles.
2. Speed (bfloat16, B x N = 16k tokens, H x D = 2048 with D = 128):
   forward and forward + backward TFLOP/s (4 N^2 D H B; causal counts the N(N+1)/2 visible
   pairs; forward + backward counts 3.5 times the forward,
   FlashAttention's convention, through :func:`qkv.bench.points.attention_flops`) for N = 4k, 8k, 16k, against
   PyTorch SDPA pinned to its FlashAttention and cuDNN kernels; and a sliding window of
   1k at N = 16k against compiled FlexAttention with the same block mask.

Timings: CUDA events around each call, median of ``--repeats`` after warm-up (and after
autotuning, which runs on a kernel's first call for a shape). Output: a table, ``--json``
with the machine, every check and every timing, and the targets with met/missed.

``--quick`` shrinks every size so the whole program runs on the CPU under Triton's
interpreter (TRITON_INTERPRET=1) in seconds: a test runs it so that the GPU run works the
first time; its timings mean nothing.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

import qkv
from qkv.bench.contenders import flex_mask_mod, mode_run, sdpa_call
from qkv.bench.measure import machine_info, synchronize
from qkv.bench.points import attention_flops
from qkv.bench.tables import ratio, target
from qkv.files import write_text
from qkv.functional.oracle import two_x_rule

TARGETS = {
    "forward_tflops": 600.0,  # non-causal forward, N = 4k .. 16k (the lowest)
    "forward_over_flash": 1.0,  # non-causal forward time / SDPA's FlashAttention-2's (the highest)
    "forward_backward_tflops": 350.0,  # non-causal forward + backward (the lowest)
    "causal_forward_backward_over_flash": 1 / 1.1,  # causal forward + backward, 1.1x as fast as FlashAttention-2
    "window_over_flex": 1 / 1.2,  # sliding window 1k at N = 16k: 1.2x as fast as compiled FlexAttention
    "cold_compile_s": 20.0,  # first forward + backward call of one shape with an empty Triton cache
}


@dataclass
class Sizes:
    """Everything the run's size depends on (full GPU sizes, or ``--quick``)."""

    tokens: int = 16384  # B x N
    heads: int = 16  # H (H x D = 2048)
    head_dim: int = 128
    lengths: tuple[int, ...] = (4096, 8192, 16384)
    window_n: int = 16384
    window: int = 1024  # keys each query sees, causal (Mistral's sliding_window)
    check_n: int = 4096  # correctness at full size
    check_heads: int = 16
    odd_n: int = 4099
    repeats: int = 20
    warmup: int = 3

    @classmethod
    def quick(cls) -> Sizes:
        return cls(tokens=32, heads=1, head_dim=32, lengths=(32,), window_n=32, window=8, check_n=48,
                   check_heads=2, odd_n=37, repeats=1, warmup=1)


def time_median(run: Callable[[], object], device: str, repeats: int, warmup: int = 3) -> float:
    """Median seconds of ``run``: CUDA events on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            run()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def triton_version() -> str | None:
    """The installed Triton's version, or None."""
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


class Run:
    """One run's results, its clock and budget: every step prints its line as it finishes and
    rewrites the JSON, so a run stopped by a timeout keeps what it measured."""

    def __init__(self, device: str, sizes: Sizes, json_path: Path | None, budget_s: float | None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock, self.started, self.budget_s = clock, clock(), budget_s
        self.json_path = json_path
        machine = machine_info(device) | {"triton": triton_version()}
        self.result: dict = {"benchmark": "triton", "date": datetime.date.today().isoformat(), "command": None,
                             "machine": machine, "device": device, "dtype": "bfloat16",
                             "sizes": vars(sizes), "budget_s": budget_s, "compile": [], "checks": [],
                             "timings": [], "targets": [], "sections_done": []}

    def say(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def over_budget(self) -> bool:
        return self.budget_s is not None and self.clock() - self.started >= self.budget_s

    def add(self, section: str, row: dict) -> None:
        self.result[section].append(row)
        self.save()

    def finish_section(self, name: str) -> None:
        self.result["sections_done"].append(name)
        self.save()

    def save(self) -> None:
        self.result["wall_s"] = self.clock() - self.started
        if self.json_path is None:
            return
        write_text(self.json_path, json.dumps(self.result, indent=2, default=str))  # whole, or the last one


BUDGET_SPENT = "not run: the --budget-s wall-time budget was spent"


# ---- compile time ------------------------------------------------------------------------
def cold_compile(run: Run, sizes: Sizes, device: str, dtype: torch.dtype) -> None:
    """Wall time of the first forward + backward of one shape (compiling and autotuning every
    kernel it needs: the cost a user pays once per shape with an empty Triton cache)."""
    batch, n = max(1, sizes.tokens // sizes.lengths[0]), sizes.lengths[0]
    q, k, v = (torch.randn(batch, sizes.heads, n, sizes.head_dim, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))
    for label, options in VARIANTS.items():
        if run.over_budget():
            run.add("compile", {"backend": label, "skipped": BUDGET_SPENT})
            continue
        synchronize(device)
        begin = time.perf_counter()
        out = qkv.attention(q, k, v, backend="triton", options=options)
        torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        synchronize(device)
        seconds = time.perf_counter() - begin
        run.add("compile", {"backend": label, "n": n, "batch": batch, "first_call_s": seconds})
        run.say(f"  first forward + backward, {label}, N={n} (compile + autotune): {seconds:.1f} s")


# ---- correctness -------------------------------------------------------------------------
def two_x_check(name: str, dtype: torch.dtype, q, k, v, options=None, **masking) -> dict:
    """The 2x rule (:func:`qkv.functional.oracle.two_x_rule`) for the triton backend's output
    and gradients; a row per check."""
    def tested(a, b, c):
        return qkv.attention(a, b, c, backend="triton", options=options, **masking)

    checks = two_x_rule(tested, q, k, v, dtype, **masking)
    row = {"check": name, "dtype": str(dtype).removeprefix("torch."), "shape": {
        "q": list(q.shape), "k": list(k.shape), "v": list(v.shape)}, "passed": all(c.ok for c in checks)}
    for check in checks:
        row[check.name] = {"error": check.error, "plain_error": check.plain_error, "bound": check.bound,
                           "ok": check.ok}
    return row


def correctness(run: Run, sizes: Sizes, device: str, dtype: torch.dtype) -> None:
    generator = torch.Generator(device=device).manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, device=device, dtype=torch.float32)

    def check(name: str, q, k, v, options=None, **masking) -> None:
        if run.over_budget():
            run.add("checks", {"check": name, "skipped": BUDGET_SPENT})
            run.say(f"  skip {name}: budget spent")
            return
        row = two_x_check(name, dtype, q, k, v, options, **masking)
        run.add("checks", row)
        worst = max(row[label]["error"] / row[label]["bound"] for label in ("out", "dq", "dk", "dv"))
        run.say(f"  {'ok  ' if row['passed'] else 'FAIL'} {name}: worst error / bound = {worst:.2f}")

    n, heads, dim = sizes.check_n, sizes.check_heads, sizes.head_dim
    q, k, v = rand(1, heads, n, dim), rand(1, heads, n, dim), rand(1, heads, n, dim)
    check(f"N={n} full", q, k, v)
    check(f"N={n} causal", q, k, v, causal=True)
    check(f"N={n} causal window {sizes.window}", q, k, v, causal=True, window=(sizes.window - 1, 0))
    check(f"N={n} window ({sizes.window}, {sizes.window})", q, k, v, window=(sizes.window, sizes.window))
    check(f"N={n} causal, 128 x 64 tiles (no autotuning)", q, k, v, causal=True,
          options=qkv.TritonOptions(block_m=128, block_n=64))
    check(f"N={n} causal window {sizes.window}, K and V through tensor descriptors (TMA)", q, k, v, causal=True,
          window=(sizes.window - 1, 0), options=qkv.TritonOptions(tma=True))
    kv_heads = max(1, heads // 4)
    check(f"N={n} GQA {heads}:{kv_heads} causal", q, k[:, :kv_heads], v[:, :kv_heads], causal=True)
    short = n // 4 + 3
    check(f"Nq={short} Nk={n} causal (KV-cache alignment)", q[:, :, :short], k, v, causal=True)
    odd = sizes.odd_n
    q2, k2, v2 = rand(2, 4, odd, dim), rand(2, 4, odd, dim), rand(2, 4, odd, dim)
    padding = torch.ones(2, odd, dtype=torch.bool, device=device)
    padding[0, odd // 2:] = False
    check(f"N={odd} causal + key padding", q2, k2, v2, causal=True, key_padding_mask=padding)
    for head_dim in (64, 256):
        small = max(16, n // 4)
        q3, k3, v3 = rand(1, 4, small, head_dim), rand(1, 4, small, head_dim), rand(1, 4, small, head_dim)
        check(f"N={small} D={head_dim} causal", q3, k3, v3, causal=True)


# ---- speed -------------------------------------------------------------------------------
SDPA_KERNELS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION"}  # label -> SDPBackend member


def _sdpa_run(q, k, v, causal: bool, kernel: str, mode: str):
    return mode_run(lambda q, k, v: sdpa_call(q, k, v, causal, None, SDPA_KERNELS[kernel]), q, k, v, mode)


def _qkv_run(q, k, v, mode: str, options=None, **masking):
    return mode_run(lambda q, k, v: lambda: qkv.attention(q, k, v, backend="triton", options=options, **masking),
                    q, k, v, mode)


def _flex_run(q, k, v, window: int, mode: str):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n = q.shape[-2]
    mask_mod = flex_mask_mod(n, n, True, (window - 1, 0))  # the window qkv's triton call gets
    block_mask = create_block_mask(mask_mod, None, None, n, n, device=q.device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return mode_run(lambda q, k, v: lambda: compiled(q, k, v, block_mask=block_mask), q, k, v, mode)


# The kernel's variants timed side by side: label -> TritonOptions (None: the defaults).
VARIANTS: dict[str, qkv.TritonOptions | None] = {"qkv triton": None,
                                                  "qkv triton tma": qkv.TritonOptions(tma=True)}


def speed(run: Run, sizes: Sizes, device: str, dtype: torch.dtype) -> None:
    heads, dim = sizes.heads, sizes.head_dim

    def inputs(batch: int, n: int):
        return [torch.randn(batch, heads, n, dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]

    def record(name: str, n: int, batch: int, causal: bool, mode: str, make: Callable[[], Callable], **extra):
        row = {"backend": name, "n": n, "batch": batch, "causal": causal, "mode": mode, **extra}
        if run.over_budget():
            run.add("timings", {**row, "skipped": BUDGET_SPENT})
            return
        try:
            seconds = time_median(make(), device, sizes.repeats, sizes.warmup)
        except Exception as error:  # a peer kernel missing on this GPU/torch is reported, not fatal
            row["skipped"] = f"{type(error).__name__}: {error}"[:300]
            run.add("timings", row)
            run.say(f"  {name:>24} N={n:>6} {mode:>7}: skipped ({row['skipped']})")
            return
        flops = attention_flops(n, dim, heads, causal, window=extra.get("window_pair"), mode=mode, batch=batch)
        row.update(time_s=seconds, tflops=flops / seconds / 1e12)
        run.add("timings", row)
        run.say(f"  {name:>24} N={n:>6} {'causal' if causal else 'full':>6}"
                f"{' window ' + str(extra['window']) if 'window' in extra else ''} {mode:>7}: "
                f"{seconds * 1e3:9.3f} ms {row['tflops']:7.1f} TFLOP/s")

    for n in sizes.lengths:
        batch = max(1, sizes.tokens // n)
        q, k, v = inputs(batch, n)
        for causal in (False, True):
            for mode in ("fwd", "fwd+bwd"):
                for label, options in VARIANTS.items():
                    record(label, n, batch, causal, mode, partial(_qkv_run, q, k, v, mode, options, causal=causal))
                if device == "cuda":
                    for kernel in ("flash", "cudnn"):
                        record(f"sdpa {kernel}", n, batch, causal, mode,
                               partial(_sdpa_run, q, k, v, causal, kernel, mode))
        del q, k, v
    n, window = sizes.window_n, sizes.window
    q, k, v = inputs(1, n)
    band = {"window": window, "window_pair": (window - 1, 0)}
    for mode in ("fwd", "fwd+bwd"):
        for label, options in VARIANTS.items():
            record(label, n, 1, True, mode,
                   partial(_qkv_run, q, k, v, mode, options, causal=True, window=(window - 1, 0)), **band)
        record("flex compiled", n, 1, True, mode, partial(_flex_run, q, k, v, window, mode), **band)


def tuned_configs() -> dict[str, dict[str, str]]:
    """The tile configuration autotuning chose, per kernel and tuning key (empty off a GPU)."""
    from qkv.functional import triton_launch

    return {name: {str(key): str(config) for key, config in getattr(tuner, "cache", {}).items()}
            for name, tuner in triton_launch._TUNED.items()}


def targets(rows: list[dict], compile_rows: list[dict], sizes: Sizes) -> list[dict]:
    """Each target with its measured value (None when a figure is missing): TFLOP/s rates, and time
    ratios as every benchmark takes them, qkv's time / the peer's time (the largest over N)."""
    def value(backend: str, n: int, mode: str, causal: bool, key: str = "time_s", window: bool = False):
        for row in rows:
            if (row["backend"], row["n"], row["mode"], row["causal"], "window" in row) == \
                    (backend, n, mode, causal, window) and key in row:
                return row[key]
        return None

    def worst(values: list[float | None], highest: bool) -> float | None:
        return None if not values or None in values else max(values) if highest else min(values)

    lengths = sizes.lengths
    span = f"{lengths[0]}..{lengths[-1]}"
    both_ways = {n: attention_flops(n, sizes.head_dim, sizes.heads, False, mode="fwd+bwd",
                                    batch=max(1, sizes.tokens // n)) / 1e12 for n in lengths}
    ours = "qkv triton"  # the defaults, as users get them
    goals = [
        target("fwd TFLOP/s, non-causal (lowest)", span,
               worst([value(ours, n, "fwd", False, "tflops") for n in lengths], False),
               TARGETS["forward_tflops"], ">="),
        target("fwd time / SDPA flash time, non-causal (highest)", span,
               worst([ratio(value(ours, n, "fwd", False), value("sdpa flash", n, "fwd", False)) for n in lengths],
                     True), TARGETS["forward_over_flash"]),
        target("fwd+bwd TFLOP/s, non-causal (lowest)", span,
               worst([ratio(both_ways[n], value(ours, n, "fwd+bwd", False)) for n in lengths], False),
               TARGETS["forward_backward_tflops"], ">="),
        target("causal fwd+bwd time / SDPA flash time (highest)", span,
               worst([ratio(value(ours, n, "fwd+bwd", True), value("sdpa flash", n, "fwd+bwd", True))
                      for n in lengths], True), TARGETS["causal_forward_backward_over_flash"]),
    ]
    for mode in ("fwd", "fwd+bwd"):
        goals.append(target(f"window {sizes.window}, {mode}: time / compiled FlexAttention time", sizes.window_n,
                            ratio(value(ours, sizes.window_n, mode, True, window=True),
                                  value("flex compiled", sizes.window_n, mode, True, window=True)),
                            TARGETS["window_over_flex"]))
    first = [row["first_call_s"] for row in compile_rows if row["backend"] == ours and "first_call_s" in row]
    goals.append(target("cold first forward + backward of one shape, seconds", lengths[0],
                        max(first) if first else None, TARGETS["cold_compile_s"]))
    return goals

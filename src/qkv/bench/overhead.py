"""``qkv bench attention --section overhead``: what ``qkv.attention`` adds to the kernel it calls.

On one thread (B=1, H=12, D=32 by default, the shape of a MiniLM layer), at N = 16 (a sentence in
``qkv explain``), 128 and 4096, for full, causal and key-padding calls, side by side in one run:

- ``sdpa (torch)``: a plain ``torch.nn.functional.scaled_dot_product_attention`` call, its mask
  (``is_causal``, or the padding as a (B, 1, 1, N) bool mask) prepared once, outside the timing;
- ``qkv auto`` and ``qkv sdpa``: ``qkv.attention`` with its validation, masks and dispatch;
- ``sdpa + contract zeroing`` (key padding): the plain call plus, in plain torch, the three passes the
  attention contract asks of any implementation (keys and values zeroed at padded positions, the
  queries of rows that see no key zeroed): the floor a contract-keeping call cannot go below;
- ``MultiHeadAttention``: a ``qkv.nn.MultiHeadAttention`` (d_model = H * D) forward, against the same
  module whose attention step calls SDPA directly (``SdpaMultiHeadAttention``).

Each contender's run is a batch of calls (about 2 ms of work), timed in interleaved rounds (A, B, C,
A, B, C, ...) by the CPU time of the one thread that runs them, so that other processes on a shared
machine do not count; the report gives the median time per call and the ratio to its baseline,
with the goals: ``qkv.attention`` within 1.1x of the plain call, the module within 1.05x. A last
part times ``auto`` against ``backend="sliding"`` with ``window=(256, 256)`` at N = 8192, where
``auto`` must pick the banded kernel (goal: within 1.1x).
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console

import qkv
from qkv.bench.measure import machine_info, median
from qkv.bench.tables import target
from qkv.nn import MultiHeadAttention

__all__ = ["SdpaMultiHeadAttention", "run_overhead", "SIZES", "QUICK_SIZES", "GOALS"]

SIZES = (16, 128, 4096)
QUICK_SIZES = (16, 128)
VARIANTS = ("full", "causal", "key padding")
GOALS = {"call": 1.1,  # qkv.attention time / plain SDPA time
         "module": 1.05,  # MultiHeadAttention time / the same module calling SDPA
         "window": 1.1}  # auto / sliding with a window
WINDOW_N = 8192
WINDOW = (256, 256)
BATCH_SECONDS = 2e-3  # calls per timed run: enough for about this long


class SdpaMultiHeadAttention(MultiHeadAttention):
    """The same module, its attention step a direct SDPA call (the padding made a mask per call)."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # (B, 1, 1, Nk)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and mask is None,
                                              scale=self.scale)


def padding_of(n: int) -> torch.Tensor:
    """(1, N) bool, True for real tokens: the last eighth (at least one key) is padding."""
    padding = torch.ones(1, n, dtype=torch.bool)
    padding[:, n - max(1, n // 8):] = False
    return padding


def calls_per_run(call: Callable[[], object]) -> int:
    """How many calls make a run of about BATCH_SECONDS of CPU time (a few untimed calls to find out)."""
    call()
    start = time.thread_time()
    for _ in range(3):
        call()
    return max(1, int(3 * BATCH_SECONDS / max(time.thread_time() - start, 1e-7)))


def call_contenders(n: int, heads: int, head_dim: int, variant: str) -> dict[str, Callable[[], object]]:
    """The plain SDPA call (mask prepared once) and qkv.attention's auto and sdpa, for one variant."""
    generator = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, heads, n, head_dim, generator=generator) for _ in range(3))
    if variant == "full":
        kwargs, plain = {}, {}
    elif variant == "causal":
        kwargs, plain = {"causal": True}, {"is_causal": True}
    else:
        padding = padding_of(n)
        kwargs, plain = {"key_padding_mask": padding}, {"attn_mask": padding[:, None, None, :].clone()}
    contenders = {
        "sdpa (torch)": lambda: F.scaled_dot_product_attention(q, k, v, **plain),
        "qkv auto": lambda: qkv.attention(q, k, v, **kwargs),
        "qkv sdpa": lambda: qkv.attention(q, k, v, backend="sdpa", **kwargs),
    }
    if variant == "key padding":
        contenders[CONTRACT_FLOOR] = lambda: sdpa_with_contract_zeroing(q, k, v, padding)
    return contenders


CONTRACT_FLOOR = "sdpa + contract zeroing"


def sdpa_with_contract_zeroing(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding: torch.Tensor
                               ) -> torch.Tensor:
    """A plain SDPA call with key padding plus the three passes the attention contract asks of any
    implementation, in plain torch: keys and values zeroed at padded positions (a NaN there must not
    reach an output) and the queries of rows that see no key zeroed (their output must be zero, not
    NaN). The cheapest a contract-keeping call can be, apart from Python.

    Args:
        q: (B, H, N, D); k, v: (B, H, N, D).
        padding: (B, N) bool, True for real tokens.
    """
    batch, n = padding.shape
    read = padding.view(batch, 1, n, 1)  # (B, 1, Nk, 1)
    mask = padding.view(batch, 1, 1, n)  # (B, 1, 1, Nk)
    sees_a_key = mask.any(dim=-1, keepdim=True)  # (B, 1, 1, 1)
    k, v, q = (t.view(torch.int32).mul(keep).view(t.dtype) for t, keep in ((k, read), (v, read), (q, sees_a_key)))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def module_contenders(n: int, heads: int, head_dim: int, variant: str) -> dict[str, Callable[[], object]]:
    """MultiHeadAttention through qkv.attention, and the same weights calling SDPA directly."""
    causal = variant == "causal"
    layer = MultiHeadAttention(heads * head_dim, heads, causal=causal).eval()
    direct = SdpaMultiHeadAttention(heads * head_dim, heads, causal=causal).eval()
    direct.load_state_dict(layer.state_dict())
    x = torch.randn(1, n, heads * head_dim, generator=torch.Generator().manual_seed(n))
    padding = padding_of(n) if variant == "key padding" else None
    return {"SDPA inside the module": lambda: direct(x, key_padding_mask=padding),
            "MultiHeadAttention": lambda: layer(x, key_padding_mask=padding)}


def measure(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median CPU seconds per call of each contender, from interleaved rounds of batched calls.

    The clock is this thread's CPU time (``time.thread_time``): on a shared machine, time the
    thread spends waiting for a core does not count, while the work of the call does (all of it
    runs on this one thread).
    """
    counts = {name: calls_per_run(call) for name, call in contenders.items()}
    count = min(counts.values())  # the same batch for all, so that each round covers the same span
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, call in contenders.items():
            start = time.thread_time()
            for _ in range(count):
                call()
            times[name].append((time.thread_time() - start) / count)
    return {name: median(t) for name, t in times.items()}


def run_overhead(sizes: tuple[int, ...] = SIZES, heads: int = 12, head_dim: int = 32, rounds: int | None = None,
                 window_check: bool = True, console: Console | None = None, command: str | None = None) -> dict:
    """Measure everything on one torch thread; return the result (rows, targets, machine, config)."""
    console = console or Console()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    rows: list[dict] = []
    try:
        with torch.no_grad():
            for n in sizes:
                repeat = rounds or (41 if n <= 1024 else 7)
                for variant in VARIANTS:
                    console.print(f"[dim]N={n}, {variant}: qkv.attention and SDPA[/]")
                    times = measure(call_contenders(n, heads, head_dim, variant), repeat)
                    rows += [row("call", n, variant, name, t, times["sdpa (torch)"]) for name, t in times.items()]
                    if variant != "causal":
                        console.print(f"[dim]N={n}, {variant}: MultiHeadAttention[/]")
                        times = measure(module_contenders(n, heads, head_dim, variant), repeat)
                        rows += [row("module", n, variant, name, t, times["SDPA inside the module"])
                                 for name, t in times.items()]
            if window_check:
                console.print(f"[dim]N={WINDOW_N}, window {WINDOW}: auto and sliding[/]")
                q, k, v = (torch.randn(1, heads, WINDOW_N, head_dim) for _ in range(3))
                plan = qkv.explain_dispatch(q, k, v, window=WINDOW)
                times = measure({"qkv sliding": lambda: qkv.attention(q, k, v, window=WINDOW, backend="sliding"),
                                 "qkv auto": lambda: qkv.attention(q, k, v, window=WINDOW)}, rounds or 5)
                rows += [row("window", WINDOW_N, f"window {WINDOW}", name, t, times["qkv sliding"],
                             picked=plan.backend if name == "qkv auto" else None) for name, t in times.items()]
    finally:
        torch.set_num_threads(threads)
    return {
        "benchmark": "attention-overhead",
        "date": datetime.date.today().isoformat(),
        "command": command,
        "machine": {**machine_info("cpu"), "torch_threads": 1},
        "config": {"batch": 1, "heads": heads, "head_dim": head_dim, "dtype": "float32", "sizes": list(sizes),
                   "variants": list(VARIANTS), "padding": "the last eighth of the keys (at least one)",
                   "rounds": rounds,
                   "method": "median of interleaved rounds of batched calls (~2 ms a run), timed by the thread's "
                             "CPU time (time.thread_time), one torch thread, no autograd",
                   "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}},
        "rows": rows,
        "targets": targets(rows),
    }


def row(part: str, n: int, variant: str, name: str, seconds: float, baseline: float, picked: str | None = None
        ) -> dict:
    return {"part": part, "n": n, "variant": variant, "contender": name, "time_s": seconds,
            "ratio": seconds / baseline, **({"picked": picked} if picked else {})}


def targets(rows: list[dict]) -> list[dict]:
    """The goals, one per measured ratio: calls <= 1.1x SDPA, the module <= 1.05x, auto <= 1.1x sliding."""
    goals = {("call", "qkv auto"): GOALS["call"], ("call", "qkv sdpa"): GOALS["call"],
             ("module", "MultiHeadAttention"): GOALS["module"], ("window", "qkv auto"): GOALS["window"]}
    baseline = {"call": "plain SDPA", "module": "the module calling SDPA", "window": "backend='sliding'"}
    found = []
    for r in rows:
        limit = goals.get((r["part"], r["contender"]))
        if limit is not None:
            found.append(target(f"{r['contender']} / {baseline[r['part']]}, {r['variant']}", r["n"], r["ratio"], limit))
    return found

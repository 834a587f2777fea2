"""Ring attention on one machine: time and per-rank peak memory for 1, 2 and 4 gloo processes.

Each configuration runs in fresh spawned processes (:func:`qkv.distributed.local.run_local`):
every rank builds only its own slice of q, k, v (B=1, H heads, head dim D, float32), warms
the ring up on a tiny input, runs one call whose peak memory it measures
(:func:`qkv.bench.measure.peak_tensor_bytes`, the definition every benchmark uses), and then,
per repetition, waits at a barrier and times one call. A row's ``time_s`` is the median over
repetitions of the slowest rank's time; its ``peak_bytes`` is the largest rank's peak. The
baseline is the single-process tiled backend at the same N, measured the same way.

Target: at N = 32768, the per-rank peak of the ring with 4 processes is at most 0.3x the
tiled backend's peak.

Rows are :func:`qkv.bench.points.point_row` rows plus ``processes``, ``threads_per_process``,
``lengths``, ``peak_bytes_per_rank``, ``times_s``, ``messages_sent_per_rank``,
``slice_sends_per_rank`` and ``wait_s_per_rank`` (seconds a rank sat waiting for messages after
its own work of a step, in the first timed repetition: communication the attention did not
hide). With more processes than cores the ranks share the cores: the times then show what the
ring costs on top of the same arithmetic, not a speed-up.
"""

from __future__ import annotations

import datetime
import os
import statistics
import time
from collections.abc import Callable

import torch

from qkv.bench.measure import machine_info, peak_tensor_bytes
from qkv.bench.points import attention_flops, point_row
from qkv.bench.tables import ratio, target
from qkv.distributed import DEFAULT_CHUNK_SIZE, RingStats, ring_attention, slice_lengths
from qkv.distributed.local import run_local

__all__ = ["run_ring_bench", "ring_targets", "SIZES", "WORLD_SIZES", "TARGET_N"]

SIZES = (8192, 16384, 32768)
QUICK_SIZES = (2048,)
WORLD_SIZES = (1, 2, 4)
TARGET_N = 32768
TARGET_PROCESSES = 4
TARGET_RATIO = 0.3


def _rank_run(backend: str, n: int, heads: int, head_dim: int, causal: bool, layout: str, chunk_size: int,
              mode: str, repeats: int) -> dict:
    """One rank's measured calls (runs inside a :func:`run_local` process)."""
    import torch.distributed as dist

    import qkv

    rank, world = dist.get_rank(), dist.get_world_size()
    length = slice_lengths(n, world, layout)[rank]
    generator = torch.Generator().manual_seed(rank)
    grad = mode == "fwd+bwd"
    q, k, v = (torch.randn(1, heads, length, head_dim, generator=generator).requires_grad_(grad) for _ in range(3))
    stats = RingStats()

    def call(record: RingStats | None = None) -> Callable[[], None]:
        def run() -> None:
            q.grad = k.grad = v.grad = None
            with torch.set_grad_enabled(grad):
                if backend == "tiled":
                    out = qkv.attention(q, k, v, causal=causal, backend="tiled")
                else:
                    out = ring_attention(q, k, v, causal=causal, layout=layout, chunk_size=chunk_size,
                                         stats=record if record is not None else RingStats())
                if grad:
                    out.backward(torch.ones_like(out))
        return run

    with torch.no_grad():  # connects the gloo pairs and starts the thread pool
        small = [torch.randn(1, heads, 64, head_dim) for _ in range(3)]
        qkv.attention(*small, backend="tiled") if backend == "tiled" else ring_attention(*small, causal=causal)
    dist.barrier()
    peak = peak_tensor_bytes(call(), "cpu")[0]
    times = []
    for repeat in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        call(stats if repeat == 0 else None)()
        times.append(time.perf_counter() - start)
    dist.barrier()
    return dict(rank=rank, length=length, times_s=times, peak_bytes=peak,
                messages_sent=stats.forward_messages_sent + stats.backward_messages_sent,
                slice_sends=stats.forward_slice_sends, wait_s=stats.wait_seconds, threads=torch.get_num_threads())


def _measure(backend: str, processes: int, n: int, *, heads: int, head_dim: int, causal: bool, layout: str,
             chunk_size: int, mode: str, threads: int, repeats: int, timeout: float) -> dict:
    ranks = run_local(_rank_run, processes,
                      args=(backend, n, heads, head_dim, causal, layout, chunk_size, mode, repeats),
                      threads=threads, timeout=timeout, group_timeout=timeout)
    slowest = [max(r["times_s"][i] for r in ranks) for i in range(repeats)]  # per repetition
    time_s = statistics.median(slowest)
    ring = backend == "ring"
    return point_row(
        backend, mode, n, causal=causal, options=dict(layout=layout, chunk_size=chunk_size) if ring else None,
        time_s=time_s, peak_bytes=max(r["peak_bytes"] for r in ranks),
        flops_per_s=ratio(attention_flops(n, head_dim, heads, causal, mode=mode), time_s),
        times_s=slowest, processes=processes, threads_per_process=threads, lengths=[r["length"] for r in ranks],
        peak_bytes_per_rank=[r["peak_bytes"] for r in ranks],
        messages_sent_per_rank=[r["messages_sent"] for r in ranks] if ring else None,
        slice_sends_per_rank=[r["slice_sends"] for r in ranks] if ring else None,
        wait_s_per_rank=[r["wait_s"] for r in ranks] if ring else None,
    )


def run_ring_bench(
    sizes: tuple[int, ...] = SIZES,
    processes: tuple[int, ...] = WORLD_SIZES,
    quick: bool = False,
    *,
    heads: int = 8,
    head_dim: int = 64,
    causal: bool = False,
    layout: str = "contiguous",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    mode: str = "fwd",
    repeats: int = 3,
    threads: int = 1,
    timeout: float = 1800.0,
    on_row: Callable[[dict], None] | None = None,
) -> dict:
    """Time and per-rank peak memory of ring attention over 1, 2, 4 local gloo processes.

    Args:
        sizes: sequence lengths N.
        processes: process counts P of the ring.
        quick: a smoke run: N = 2048, one repetition (the target is then not measured).
        heads, head_dim: H and D of q, k, v (B = 1, float32).
        causal: causal attention (with ``layout="zigzag"`` the causal work is balanced).
        layout: "contiguous" or "zigzag".
        chunk_size: keys per ring message (a rank holds two chunks of keys/values).
        mode: "fwd" (no grad) or "fwd+bwd".
        repeats: timed calls per configuration (time: their median).
        threads: torch threads of every process, the baseline's included (default 1: P
            processes then use P cores; intra-op threads that spin-wait slow down badly on a
            shared, loaded machine).
        timeout: seconds allowed per configuration.
        on_row: called with each row as it is measured.

    Returns:
        ``{"benchmark": "ring", "date", "machine", "config", "rows", "targets"}``. Rows: the
        single-process "tiled" baseline and "ring" with P processes at each N.
    """
    if mode not in ("fwd", "fwd+bwd"):
        raise ValueError(f"mode must be 'fwd' or 'fwd+bwd'; got {mode!r}")
    if quick:
        sizes, repeats = QUICK_SIZES, 1
    settings = dict(heads=heads, head_dim=head_dim, causal=causal, layout=layout, chunk_size=chunk_size,
                    mode=mode, repeats=repeats, timeout=timeout)
    rows = []
    for n in sizes:
        for backend, count in [("tiled", 1)] + [("ring", p) for p in processes]:
            rows.append(_measure(backend, count, n, threads=threads, **settings))
            if on_row is not None:
                on_row(rows[-1])
    return {
        "benchmark": "ring",
        "date": datetime.date.today().isoformat(),
        "machine": machine_info("cpu"),
        "config": dict(device="cpu", batch=1, heads=heads, head_dim=head_dim, dtype="float32", causal=causal,
                       layout=layout, chunk_size=chunk_size, mode=mode, repeats=repeats, threads=threads,
                       cores=os.cpu_count(), quick=quick, sizes=list(sizes), world_sizes=list(processes),
                       memory="peak tensor bytes of one call beyond those alive before it (torch.profiler), "
                              "inputs excluded; the largest rank's"),
        "rows": rows,
        "targets": ring_targets(rows),
    }


def ring_targets(rows: list[dict]) -> list[dict]:
    """The 32K memory target: per-rank peak with 4 processes / single-process tiled peak <= 0.3."""
    def peak(backend: str, processes: int) -> float | None:
        return next((r["peak_bytes"] for r in rows if (r["backend"], r["n"], r.get("processes")) ==
                     (backend, TARGET_N, processes)), None)

    return [target(f"ring per-rank peak / tiled peak, {TARGET_PROCESSES} processes", TARGET_N,
                   ratio(peak("ring", TARGET_PROCESSES), peak("tiled", 1)), TARGET_RATIO)]

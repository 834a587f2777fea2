"""Ring attention on one machine: time and per-rank peak memory for 1, 2 and 4 gloo processes.

Each configuration runs in fresh spawned processes (:func:`qkv.distributed.local.run_local`):
every rank builds only its own slice of q, k, v (B=1, H heads, head dim D, float32),
warms the ring up on a tiny input, and then, per repetition, waits at a barrier, resets
its resident-set high-water mark (VmHWM), runs one call and records its wall time and its
peak RSS above the RSS just before the call (so its inputs, torch and the process group
are not counted). A row's ``time_s`` is the median over repetitions of the slowest
rank's time; its ``peak_bytes`` is the largest peak of any rank in any repetition. The
baseline is the single-process tiled backend at the same N, measured the same way.

Target (issue 8): at N = 32768, the per-rank peak of the ring with 4 processes is at
most 0.3x the tiled backend's peak.

Rows carry the fields of the other ``qkv bench`` subcommands (``qkv.bench.points.ROW_FIELDS``:
backend, mode, n, causal, window, device, dtype, options, time_s, peak_bytes, max_error,
flops_per_s, skipped) plus ``processes``, ``threads_per_process``, ``lengths``,
``peak_bytes_per_rank``, ``times_s``, ``messages_sent_per_rank``, ``slice_sends_per_rank`` and
``wait_s_per_rank`` (seconds a rank sat waiting for messages after its own work of a step,
in the first repetition: communication that the attention did not hide).

Run ``python -m qkv.bench.ring_measure [--sizes 8192 32768] [--processes 1 2 4] [--json PATH]``.
With more processes than cores the ranks share the cores: the times then show what the
ring costs on top of the same arithmetic, not a speed-up.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from qkv.bench import refuse_outputs
from qkv.bench.measure import machine_info, peak_rss_bytes, reset_peak_rss, rss_bytes
from qkv.distributed import DEFAULT_CHUNK_SIZE, RingStats, ring_attention, slice_lengths
from qkv.distributed.local import run_local
from qkv.files import write_text

__all__ = ["run_ring_bench", "evaluate_target", "format_ring_table", "main",
           "TARGET_N", "TARGET_PROCESSES", "TARGET_RATIO"]

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

    def call(q_, k_, v_, record: RingStats | None = None):
        if backend == "tiled":
            return qkv.attention(q_, k_, v_, causal=causal, backend="tiled")
        return ring_attention(q_, k_, v_, causal=causal, layout=layout, chunk_size=chunk_size,
                              stats=record if record is not None else RingStats())

    with torch.no_grad():  # connects the gloo pairs and starts the thread pool before any baseline
        call(*(torch.randn(1, heads, 64, head_dim) for _ in range(3)))
    times, peaks = [], []
    for repeat in range(repeats):
        q.grad = k.grad = v.grad = None
        gc.collect()
        dist.barrier()
        baseline = rss_bytes()
        if not reset_peak_rss():
            raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs): Linux only")
        start = time.perf_counter()
        record = stats if repeat == 0 else None
        if grad:
            out = call(q, k, v, record)
            out.backward(torch.ones_like(out))
        else:
            with torch.no_grad():
                out = call(q, k, v, record)
        times.append(time.perf_counter() - start)
        peaks.append(peak_rss_bytes() - baseline)
        del out
    dist.barrier()
    return dict(rank=rank, length=length, times_s=times, peaks_bytes=peaks,
                messages_sent=stats.forward_messages_sent + stats.backward_messages_sent,
                slice_sends=stats.forward_slice_sends, chunks=stats.chunks, wait_s=stats.wait_seconds,
                threads=torch.get_num_threads())


def _row(backend: str, mode: str, n: int, causal: bool, **fields) -> dict:
    """A row with the common bench fields first (``qkv.bench.points.ROW_FIELDS``), then the ring's own."""
    common = dict(backend=backend, mode=mode, n=n, causal=causal, window=None, device="cpu", dtype="float32",
                  options=None, time_s=None, peak_bytes=None, max_error=None, flops_per_s=None, skipped=None)
    common.update(fields)
    return common


def _measure(backend: str, processes: int, n: int, *, heads: int, head_dim: int, causal: bool, layout: str,
             chunk_size: int, mode: str, threads: int, repeats: int, timeout: float) -> dict:
    ranks = run_local(_rank_run, processes,
                      args=(backend, n, heads, head_dim, causal, layout, chunk_size, mode, repeats),
                      threads=threads, timeout=timeout, group_timeout=timeout)
    slowest = [max(r["times_s"][i] for r in ranks) for i in range(repeats)]  # per repetition
    time_s = statistics.median(slowest)
    pairs = n * (n + 1) // 2 if causal else n * n
    flops = 4 * pairs * head_dim * heads * (3.5 if mode == "fwd+bwd" else 1.0)
    ring = backend == "ring"
    return _row(
        backend, mode, n, causal,
        options=dict(layout=layout, chunk_size=chunk_size) if ring else None,
        time_s=time_s, times_s=slowest,
        peak_bytes=max(max(r["peaks_bytes"]) for r in ranks),
        flops_per_s=flops / time_s if time_s > 0 else None,
        processes=processes, threads_per_process=threads,
        lengths=[r["length"] for r in ranks],
        peak_bytes_per_rank=[max(r["peaks_bytes"]) for r in ranks],
        messages_sent_per_rank=[r["messages_sent"] for r in ranks] if ring else None,
        slice_sends_per_rank=[r["slice_sends"] for r in ranks] if ring else None,
        wait_s_per_rank=[r["wait_s"] for r in ranks] if ring else None,
    )


def run_ring_bench(
    sizes: tuple[int, ...] = (8192, 16384, TARGET_N),
    processes: tuple[int, ...] = (1, 2, 4),
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
    progress: bool = False,
) -> dict:
    """Time and per-rank peak memory of ring attention over 1, 2, 4 local gloo processes.

    Args:
        sizes: sequence lengths N.
        processes: process counts P of the ring.
        quick: a smoke run: N = 2048, one repetition (the target is then not evaluated).
        heads, head_dim: H and D of q, k, v (B = 1, float32).
        causal: causal attention (with ``layout="zigzag"`` the causal work is balanced).
        layout: "contiguous" or "zigzag".
        chunk_size: keys per ring message (a rank holds two chunks of keys/values).
        mode: "fwd" (no grad) or "fwd+bwd".
        repeats: measured calls per configuration (time: their median).
        threads: torch threads of every process, the baseline's included (default 1: P
            processes then use P cores; intra-op threads that spin-wait slow down badly on a
            shared, loaded machine).
        timeout: seconds allowed per configuration.
        progress: print each row as it is measured.

    Returns:
        ``{"benchmark": "ring", "date", "command", "machine", "config", "available": True,
        "rows", "targets"}``. Rows: the single-process "tiled" baseline and "ring" with P
        processes at each N (fields in the module docstring); ``peak_bytes`` is the
        largest rank's. ``targets``: the 4-process per-rank peak over the tiled peak at
        N = 32768 (at most 0.3x), when both were measured.
    """
    if mode not in ("fwd", "fwd+bwd"):
        raise ValueError(f"mode must be 'fwd' or 'fwd+bwd'; got {mode!r}")
    if quick:
        sizes, repeats = (2048,), 1
    settings = dict(heads=heads, head_dim=head_dim, causal=causal, layout=layout, chunk_size=chunk_size,
                    mode=mode, repeats=repeats, timeout=timeout)
    rows = []
    for n in sizes:
        for backend, count in [("tiled", 1)] + [("ring", p) for p in processes]:
            row = _measure(backend, count, n, threads=threads, **settings)
            if progress:
                print(_row_line(row), flush=True)
            rows.append(row)
    return {
        "benchmark": "ring",
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python -m qkv.bench.ring_measure", *sys.argv[1:]]),
        "machine": machine_info("cpu"),
        "config": dict(device="cpu", batch=1, heads=heads, head_dim=head_dim, dtype="float32", causal=causal,
                       layout=layout, chunk_size=chunk_size, mode=mode, repeats=repeats, threads=threads,
                       cores=os.cpu_count(),
                       quick=quick, sizes=list(sizes), world_sizes=list(processes),
                       memory="peak RSS (VmHWM) above the RSS before the call, inputs excluded; "
                              "the largest rank's"),
        "available": True,
        "rows": rows,
        "targets": evaluate_target(rows),
    }


def evaluate_target(rows: list[dict]) -> list[dict]:
    """The 32k memory target: per-rank peak with 4 processes / single-process tiled peak <= 0.3."""
    name = f"ring per-rank peak / tiled peak at N={TARGET_N}, {TARGET_PROCESSES} processes"
    tiled = next((r for r in rows if r["backend"] == "tiled" and r["n"] == TARGET_N), None)
    ring = next((r for r in rows if r["backend"] == "ring" and r["n"] == TARGET_N
                 and r["processes"] == TARGET_PROCESSES), None)
    # The keys of every benchmark's targets (target, n, measured, rule, limit, met), as the reports read them.
    common = dict(name=name, target=name, n=TARGET_N, rule="<=", limit=TARGET_RATIO)
    if tiled is None or ring is None:
        return [dict(common, value=None, measured=None, met=None,
                     note=f"not measured (needs N={TARGET_N} and {TARGET_PROCESSES} processes)")]
    ratio = ring["peak_bytes"] / max(tiled["peak_bytes"], 1)
    return [dict(common, value=ratio, measured=ratio, met=ratio <= TARGET_RATIO,
                 ring_peak_bytes=ring["peak_bytes"], tiled_peak_bytes=tiled["peak_bytes"])]


def _row_line(row: dict) -> str:
    per_rank = " ".join(f"{b / 2**20:.0f}" for b in row["peak_bytes_per_rank"])
    return (f"{row['backend']:>5} P={row['processes']} N={row['n']:>6} threads={row['threads_per_process']} "
            f"time {row['time_s']:7.2f} s  peak {row['peak_bytes'] / 2**20:7.1f} MiB  (per rank: {per_rank})")


def format_ring_table(result: dict) -> str:
    """A plain-text table of :func:`run_ring_bench`'s rows and its target."""
    config = result["config"]
    lines = [f"ring attention, B=1 H={config['heads']} D={config['head_dim']} float32, "
             f"{'causal' if config['causal'] else 'full'}, {config['mode']}, layout {config['layout']}, "
             f"chunk {config['chunk_size']}, {config['threads']} thread(s) per process on {config['cores']} cores, "
             f"median of {config['repeats']}",
             f"{'backend':>7} {'P':>2} {'N':>6} {'time s':>8} {'peak MiB':>9} {'vs tiled':>8}  per-rank MiB"]
    tiled = {r["n"]: r for r in result["rows"] if r["backend"] == "tiled"}
    for row in result["rows"]:
        base = tiled.get(row["n"])
        ratio = row["peak_bytes"] / base["peak_bytes"] if base and base["peak_bytes"] > 0 else float("nan")
        per_rank = " ".join(f"{b / 2**20:.0f}" for b in row["peak_bytes_per_rank"])
        lines.append(f"{row['backend']:>7} {row['processes']:>2} {row['n']:>6} {row['time_s']:>8.2f} "
                     f"{row['peak_bytes'] / 2**20:>9.1f} {ratio:>8.2f}  {per_rank}")
    for target in result["targets"]:
        if target["value"] is None:
            lines.append(f"target: {target['name']}: {target['note']}")
        else:
            lines.append(f"target: {target['name']} = {target['value']:.3f} (<= {target['limit']}: "
                         f"{'met' if target['met'] else 'NOT met'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qkv.bench.ring_measure", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384, TARGET_N])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--quick", action="store_true", help="N=2048 only, one repetition")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--layout", choices=["contiguous", "zigzag"], default="contiguous")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--mode", choices=["fwd", "fwd+bwd"], default="fwd")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    refuse_outputs(parser, [("--json", args.json, "file")])
    result = run_ring_bench(tuple(args.sizes), tuple(args.processes), args.quick, heads=args.heads,
                            head_dim=args.head_dim, causal=args.causal, layout=args.layout,
                            chunk_size=args.chunk_size, mode=args.mode, repeats=args.repeats, threads=args.threads,
                            progress=True)
    print(format_ring_table(result))
    if args.json is not None:
        write_text(args.json, json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

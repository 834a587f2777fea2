"""`python -m qkv.bench attention`: exact attention backends against SDPA and a naive baseline.

For each sequence length N (B=1, H=8, D=64, float32 by default) it times, side by side,
a naive PyTorch implementation (softmax(q k^T / sqrt(D)) v, the whole (N, N) matrix), a
direct call to ``torch.nn.functional.scaled_dot_product_attention``, and every exact
qkv backend through ``qkv.attention``; forward, and forward + backward for the ones
that train; and ``qkv.attention_stats``. Peak memory is measured per point in a fresh
process. Prints a table and the issue's targets, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import qkv
from qkv.bench.measure import (
    available_memory_bytes,
    machine_info,
    median,
    peak_memory_in_subprocess,
    time_round_robin,
)

__all__ = ["Candidate", "CANDIDATES", "build_run", "run_attention_bench", "main"]

DEFAULT_SIZES = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_SIZES = (128, 256)


@dataclass(frozen=True)
class Candidate:
    """One thing to measure: an implementation in a mode."""

    name: str  # row label
    mode: str  # "fwd", "fwd+bwd" or "stats"
    memory_factor: float  # peak bytes / (B * H * N * N * 4): 0 for O(N) memory
    max_n: int | None = None  # skipped above this N (too slow for what it tells)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """What one writes first: the whole (B, H, N, N) score matrix, softmax, weighted sum."""
    scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, N, N)
    if causal:
        hidden = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(hidden, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


IMPLEMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "naive": naive_attention,
    "sdpa (torch)": lambda q, k, v, causal: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
    "qkv reference": lambda q, k, v, causal: qkv.attention(q, k, v, causal=causal, backend="reference"),
    "qkv sdpa": lambda q, k, v, causal: qkv.attention(q, k, v, causal=causal, backend="sdpa"),
    "qkv tiled": lambda q, k, v, causal: qkv.attention(q, k, v, causal=causal, backend="tiled"),
    "qkv auto": lambda q, k, v, causal: qkv.attention(q, k, v, causal=causal),
    "qkv attention_stats": lambda q, k, v, causal: qkv.attention_stats(q, k, causal=causal),
}

CANDIDATES = (
    Candidate("naive", "fwd", 2.0),
    Candidate("sdpa (torch)", "fwd", 0.0),
    Candidate("qkv reference", "fwd", 4.0, max_n=8192),
    Candidate("qkv sdpa", "fwd", 0.0),
    Candidate("qkv tiled", "fwd", 0.0),
    Candidate("qkv auto", "fwd", 0.0),
    Candidate("naive", "fwd+bwd", 4.0),
    Candidate("sdpa (torch)", "fwd+bwd", 0.0),
    Candidate("qkv tiled", "fwd+bwd", 0.0),
    Candidate("qkv attention_stats", "stats", 0.0),
)


def make_inputs(n: int, heads: int, head_dim: int, dtype: torch.dtype, device: str, seed: int = 0):
    """q, k, v of shape (1, heads, n, head_dim), seeded."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = (1, heads, n, head_dim)
    return [torch.randn(shape, generator=generator).to(device=device, dtype=dtype) for _ in range(3)]


def build_run(candidate: Candidate, q, k, v, causal: bool) -> Callable[[], object]:
    """A callable doing one complete run of ``candidate`` on these inputs."""
    implementation = IMPLEMENTATIONS[candidate.name]
    if candidate.mode != "fwd+bwd":
        def run_without_grad():
            with torch.no_grad():
                return implementation(q, k, v, causal)
        return run_without_grad

    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    grad_out = torch.randn_like(v)

    def run_with_grad():
        for t in (q, k, v):
            t.grad = None
        implementation(q, k, v, causal).backward(grad_out)
    return run_with_grad


def skip_reason(candidate: Candidate, n: int, heads: int, memory_budget: int) -> str | None:
    """Why a point is not run, or None."""
    if candidate.max_n is not None and n > candidate.max_n:
        return f"skipped above N={candidate.max_n} (same memory as naive, slower)"
    needed = candidate.memory_factor * heads * n * n * 4
    if needed > memory_budget:
        return f"needs ~{needed / 2**30:.0f} GiB, more than the {memory_budget / 2**30:.0f} GiB available"
    return None


def measure_cuda_peak(run: Callable[[], object]) -> int:
    """Peak bytes a run allocates on the GPU beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - baseline


def run_attention_bench(
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    heads: int = 8,
    head_dim: int = 64,
    causal: bool = False,
    repeats: int | None = None,
    measure_memory: bool = True,
    device: str = "cpu",
    console: Console | None = None,
    backends: tuple[str, ...] | None = None,
) -> dict:
    """Run the sweep; return ``{"machine": ..., "config": ..., "rows": [...], "targets": [...]}``.

    ``backends`` limits the sweep to candidates of those names (default: all).
    """
    console = console or Console()
    dtype = torch.float32
    free_bytes = torch.cuda.mem_get_info()[0] if device == "cuda" else available_memory_bytes()
    memory_budget = int(0.8 * free_bytes)
    candidates = [c for c in CANDIDATES if backends is None or c.name in backends]
    rows: list[dict] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("attention bench", total=len(sizes) * len(candidates))
        for n in sizes:
            q, k, v = make_inputs(n, heads, head_dim, dtype, device)
            planned = {}
            for candidate in candidates:
                reason = skip_reason(candidate, n, heads, memory_budget)
                if reason is None:
                    planned[(candidate.name, candidate.mode)] = candidate
                else:
                    rows.append({"backend": candidate.name, "mode": candidate.mode, "n": n,
                                 "time_s": None, "peak_bytes": None, "skipped": reason})
                    progress.advance(task)
            rounds = repeats or (7 if n <= 2048 else 5 if n <= 8192 else 3)
            progress.update(task, description=f"N={n}: timing {len(planned)} runs x {rounds}")
            runs = {key: build_run(c, q, k, v, causal) for key, c in planned.items()}
            times = time_round_robin(runs, repeats=rounds, device=device)
            reference_out = IMPLEMENTATIONS["sdpa (torch)"](q, k, v, causal) if n <= 4096 else None
            for key, candidate in planned.items():
                row = {"backend": candidate.name, "mode": candidate.mode, "n": n,
                       "time_s": median(times[key]), "times_s": times[key], "peak_bytes": None}
                if reference_out is not None and candidate.mode == "fwd":
                    with torch.no_grad():
                        out = IMPLEMENTATIONS[candidate.name](q, k, v, causal)
                    row["max_diff_vs_sdpa"] = (out - reference_out).abs().max().item()
                if measure_memory and device == "cuda":
                    row["peak_bytes"] = measure_cuda_peak(runs[key])
                elif measure_memory:
                    progress.update(task, description=f"N={n}: memory of {candidate.name} {candidate.mode}")
                    spec = {"name": candidate.name, "mode": candidate.mode, "n": n, "heads": heads,
                            "head_dim": head_dim, "causal": causal, "device": device}
                    answer = peak_memory_in_subprocess("qkv.bench._memory_probe", spec)
                    row["peak_bytes"] = answer.get("peak_bytes")
                    if answer.get("error"):
                        row["memory_error"] = answer["error"]
                rows.append(row)
                progress.advance(task)
            del runs, q, k, v
    add_ratios(rows)
    return {
        "benchmark": "attention",
        "machine": machine_info(device),
        "config": {"batch": 1, "heads": heads, "head_dim": head_dim, "dtype": "float32",
                   "causal": causal, "sizes": list(sizes), "device": device},
        "rows": rows,
        "targets": evaluate_targets(rows, heads),
    }


def add_ratios(rows: list[dict]) -> None:
    """Each row's time over direct SDPA's in the same mode (stats: over SDPA's forward)."""
    sdpa = {(r["n"], r["mode"]): r["time_s"] for r in rows if r["backend"] == "sdpa (torch)"}
    for row in rows:
        base = sdpa.get((row["n"], "fwd" if row["mode"] == "stats" else row["mode"]))
        row["ratio_to_sdpa"] = row["time_s"] / base if row["time_s"] and base else None


def find(rows: list[dict], backend: str, mode: str, n: int) -> dict | None:
    """The row for one point, if it was run."""
    for row in rows:
        if row["backend"] == backend and row["mode"] == mode and row["n"] == n and row["time_s"]:
            return row
    return None


def evaluate_targets(rows: list[dict], heads: int) -> list[dict]:
    """The core issue's targets, from the measured rows."""
    targets = []

    def add(name: str, n: int, measured: float | None, limit: float, higher_is_worse: bool = True):
        if measured is None:
            return
        met = measured <= limit if higher_is_worse else measured >= limit
        targets.append({"target": name, "n": n, "measured": measured, "limit": limit, "met": met})

    sizes = sorted({r["n"] for r in rows})
    for n in sizes:
        auto = find(rows, "qkv auto", "fwd", n)
        if 1024 <= n <= 8192 and auto:
            add("auto time / sdpa time", n, auto["ratio_to_sdpa"], 1.05)
        tiled = find(rows, "qkv tiled", "fwd", n)
        if 4096 <= n <= 16384 and tiled:
            add("tiled forward time / sdpa", n, tiled["ratio_to_sdpa"], 2.0)
        tiled_bwd = find(rows, "qkv tiled", "fwd+bwd", n)
        if 4096 <= n <= 16384 and tiled_bwd:
            add("tiled fwd+bwd time / sdpa fwd+bwd", n, tiled_bwd["ratio_to_sdpa"], 2.5)
    n = max(sizes)
    if n >= 16384:
        tiled, naive = find(rows, "qkv tiled", "fwd", n), find(rows, "naive", "fwd", n)
        if tiled and naive and tiled["peak_bytes"] and naive["peak_bytes"]:
            add("tiled peak memory / naive peak memory", n, tiled["peak_bytes"] / naive["peak_bytes"], 0.1)
        stats = find(rows, "qkv attention_stats", "stats", n)
        if stats:
            add("attention_stats time / sdpa", n, stats["ratio_to_sdpa"], 3.0)
            if stats["peak_bytes"]:
                weights_bytes = heads * n * n * 4
                add("attention_stats peak memory / bytes of the weights", n,
                    stats["peak_bytes"] / weights_bytes, 1 / 20)
    return targets


def format_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def print_report(result: dict, console: Console) -> None:
    """The rows as a table, then the targets."""
    config = result["config"]
    table = Table(title=f"attention, B=1 H={config['heads']} D={config['head_dim']} float32"
                        f"{' causal' if config['causal'] else ''} on {result['machine']['cpu']}"
                        f" ({result['machine']['torch_threads']} threads)")
    for column in ("N", "backend", "mode", "median time", "x sdpa", "peak memory", "note"):
        table.add_column(column, justify="right" if column in ("N", "median time", "x sdpa",
                                                                  "peak memory") else "left")
    previous_n = None
    for row in result["rows"]:
        if previous_n is not None and row["n"] != previous_n:
            table.add_section()
        previous_n = row["n"]
        time_s = row["time_s"]
        table.add_row(
            str(row["n"]), row["backend"], row["mode"],
            "-" if time_s is None else f"{time_s * 1e3:.1f} ms",
            "-" if row.get("ratio_to_sdpa") is None else f"{row['ratio_to_sdpa']:.2f}",
            format_bytes(row["peak_bytes"]),
            row.get("skipped") or row.get("memory_error") or "",
        )
    console.print(table)
    if result["targets"]:
        targets = Table(title="targets")
        for column in ("target", "N", "measured", "limit", "met"):
            targets.add_column(column)
        for t in result["targets"]:
            targets.add_row(t["target"], str(t["n"]), f"{t['measured']:.3f}", f"{t['limit']:.3f}",
                            "yes" if t["met"] else "[bold red]NO[/]")
        console.print(targets)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m qkv.bench attention``."""
    parser = argparse.ArgumentParser(prog="python -m qkv.bench attention", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=lambda s: tuple(int(x) for x in s.split(",")),
                        default=None, help="comma-separated N (default 512,...,16384)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that it runs")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds (default 7 up to 2k, 5 up to 8k, then 3)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-point memory subprocesses")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backends", type=lambda s: tuple(x.strip() for x in s.split(",")),
                        default=None, help=f"comma-separated subset of: {', '.join(IMPLEMENTATIONS)}")
    parser.add_argument("--json", type=Path, default=Path("bench-results/attention.json"))
    args = parser.parse_args(argv)
    unknown = set(args.backends or ()) - set(IMPLEMENTATIONS)
    if unknown:
        parser.error(f"unknown --backends {sorted(unknown)}; choose from {list(IMPLEMENTATIONS)}")
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    console = Console()
    result = run_attention_bench(
        sizes=sizes, heads=args.heads, head_dim=args.head_dim, causal=args.causal,
        repeats=args.repeats or (2 if args.quick else None), measure_memory=not args.no_memory,
        device=args.device, console=console, backends=args.backends,
    )
    print_report(result, console)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.json}")
    return 0


def candidate_by_key(name: str, mode: str) -> Candidate:
    """The candidate with this name and mode."""
    for candidate in CANDIDATES:
        if candidate.name == name and candidate.mode == mode:
            return candidate
    raise KeyError((name, mode))



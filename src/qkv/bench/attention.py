"""The exact attention contenders and what the benchmark sections share: inputs, runs, targets.

The command, ``qkv bench attention``, is :mod:`qkv.bench.attention_command`; its sections
(the sweep, the long-context sections, the overhead) import what they share from here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import qkv
from qkv.attention.masks import MaskSpec, normalize_window
from qkv.bench.measure import (
    available_memory_bytes,
    machine_info,
    median,
    peak_memory_in_subprocess,
    peak_tensor_bytes,
    time_round_robin,
)

__all__ = ["Candidate", "CANDIDATES", "build_run", "run_attention_bench"]

DEFAULT_SIZES = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_SIZES = (128, 256)


@dataclass(frozen=True)
class Candidate:
    """One thing to measure: an implementation in a mode."""

    name: str  # row label
    mode: str  # "fwd", "fwd+bwd" or "stats"
    memory_factor: float  # peak bytes / (B * H * N * N * 4): 0 for O(N) memory
    max_n: int | None = None  # skipped above this N (too slow for what it tells)


def visible_mask(n_q: int, n_k: int, causal: bool, window: tuple[int, int] | None,
                 device: torch.device | str) -> torch.Tensor | None:
    """(Nq, Nk) bool, True where a query may attend (SDPA's convention), with qkv's meaning of
    ``causal`` (bottom-right) and ``window=(left, right)``; None when every pair is visible."""
    left, right = normalize_window(window, causal)
    return MaskSpec(n_q, n_k, left, right, causal=causal).dense_mask(torch.device(device))


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                    window: tuple[int, int] | None = None) -> torch.Tensor:
    """What one writes first: the whole (B, H, N, N) score matrix, softmax, weighted sum."""
    scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, Nq, Nk)
    visible = visible_mask(q.shape[-2], k.shape[-2], causal, window, q.device) if causal or window else None
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
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


def mode_run(make_call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Callable[[], object]],
             q, k, v, mode: str) -> Callable[[], object]:
    """One complete run in ``mode`` of the call ``make_call(q, k, v)`` builds.

    "fwd" and "stats": the call without autograd, returning what it returns. "fwd+bwd": the
    call on copies of q, k, v that require grad, then backward of a fixed random output
    gradient; the gradients are dropped at the end of each run (so that a measured run
    counts them), and it returns None.
    """
    if mode != "fwd+bwd":
        call = make_call(q, k, v)

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


def build_run(candidate: Candidate, q, k, v, causal: bool) -> Callable[[], object]:
    """A callable doing one complete run of ``candidate`` on these inputs."""
    implementation = IMPLEMENTATIONS[candidate.name]
    return mode_run(lambda q, k, v: lambda: implementation(q, k, v, causal), q, k, v, candidate.mode)


def skip_reason(candidate: Candidate, n: int, heads: int, memory_budget: int) -> str | None:
    """Why a point is not run, or None."""
    if candidate.max_n is not None and n > candidate.max_n:
        return f"skipped above N={candidate.max_n} (same memory as naive, slower)"
    return memory_skip_reason(candidate.memory_factor, n, heads, memory_budget)


def memory_skip_reason(memory_factor: float, n: int, heads: int, memory_budget: int,
                       itemsize: int = 4) -> str | None:
    """Why a point needing ``memory_factor * heads * n * n * itemsize`` bytes cannot run, or None."""
    needed = memory_factor * heads * n * n * itemsize
    if needed > memory_budget:
        return f"needs ~{needed / 2**30:.0f} GiB, more than the {memory_budget / 2**30:.0f} GiB available"
    return None


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
                    row["peak_bytes"] = peak_tensor_bytes(runs[key], device)[0]
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


def add_ratios(rows: list[dict], same: tuple[str, ...] = ("n",)) -> None:
    """Each row's time over direct SDPA's in the same mode (stats: over SDPA's forward) at the
    same point: the same values of the ``same`` fields."""
    def point(row: dict, mode: str) -> tuple:
        return (*(json.dumps(row.get(field)) for field in same), mode)

    sdpa = {point(r, r["mode"]): r["time_s"] for r in rows if r["backend"] == "sdpa (torch)"}
    for row in rows:
        base = sdpa.get(point(row, "fwd" if row["mode"] == "stats" else row["mode"]))
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
    print_targets(result["targets"], console)


def print_targets(targets: list[dict], console: Console, title: str = "targets") -> None:
    """The targets as a table: measured, limit (with its rule, ">=" or "<=", where given), met."""
    if not targets:
        return
    table = Table(title=title)
    for column in ("target", "N", "measured", "limit", "met"):
        table.add_column(column)
    for t in targets:
        cells = target_cells(t)
        table.add_row(*cells[:-1], "[bold red]NO[/]" if cells[-1] == "NO" else cells[-1])
    console.print(table)


def target_cells(t: dict) -> list[str]:
    """A target's cells, plain text: target, N, measured, limit (with its rule where given), met."""
    rule = f"{t['rule']} " if t.get("rule") else ""
    if t["measured"] is None:
        measured, met = "-", "not measured"
    else:
        measured, met = f"{t['measured']:.3f}", "yes" if t["met"] else "NO"
    return [t["target"], str(t["n"]), measured, f"{rule}{t['limit']:.3f}", met]


def candidate_by_key(name: str, mode: str) -> Candidate:
    """The candidate with this name and mode."""
    for candidate in CANDIDATES:
        if candidate.name == name and candidate.mode == mode:
            return candidate
    raise KeyError((name, mode))



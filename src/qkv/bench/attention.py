"""`qkv bench attention` (also `python -m qkv.bench attention`): attention backends against their peers.

The default, ``--section sweep`` (issue 7; :mod:`qkv.bench.sweep`, report in
:mod:`qkv.bench.report`): every qkv backend, a naive implementation, SDPA, compiled
FlexAttention and (on CUDA) the FlashAttention, cuDNN and memory-efficient kernels behind
SDPA, over N = 512..64K, full, causal, windowed and causal windowed: time, peak memory,
error against exact attention, FLOP rate, and each one's scaling exponent; writes
``<out>/bench-attention-<device>.json``, its plots and ``<out>/BENCHMARKS.md``.

``--section exact`` (issue 2's measurement): for each sequence length N (B=1, H=8, D=64, float32 by
default) it times, side by side, a naive PyTorch implementation (softmax(q k^T / sqrt(D)) v,
the whole (N, N) matrix), a direct call to ``torch.nn.functional.scaled_dot_product_attention``,
and every exact qkv backend through ``qkv.attention``; forward, and forward + backward for
the ones that train; and ``qkv.attention_stats``. Peak memory is measured per point in a
fresh process. Prints a table and the issue's targets, and writes JSON.

The long-context sections (issue 6; :mod:`qkv.bench.long_context`, tables and report in
:mod:`qkv.bench.lra`):

- ``--section sliding``: qkv's "sliding" backend, window (256, 256), against SDPA with the
  equivalent bool band mask, compiled FlexAttention (warm; mask creation and compile timed
  apart) and "tiled" with the same window, N = 4k..64k; targets at 8k and the log-log slope.
- ``--section approximate``: linear, Performer, Nystrom and Linformer (defaults and a
  budget grid) and sliding against SDPA and naive, N = 1k..64k: time, peak memory,
  relative error on Gaussian and on peaked inputs; targets at 16k (time) and 32k (memory).
- ``--section lra``: both, plus the Long Range Arena-style table (speed-up, memory ratio and
  error vs exact per backend and N), written with plots to ``--report-dir``.
- ``--section all``: exact, then lra.

``--section overhead`` (:mod:`qkv.bench.overhead`): what ``qkv.attention`` adds to the kernel it
calls, on one thread at N = 16, 128 and 4096 (full, causal, key padding), against a plain SDPA call;
``qkv.nn.MultiHeadAttention`` against the same module calling SDPA; and ``auto`` against
``backend="sliding"`` with a window at N = 8192. Writes ``bench-results/bench-overhead-cpu.json``
(``qkv bench report`` makes it BENCHMARKS.md's "Overhead" section).

``--quick`` runs each section at tiny sizes (the sweep still compiles FlexAttention for each
variant, which takes up to a minute on 2 CPU cores); ``--sizes`` replaces the sizes of every
section that runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import qkv
from qkv.argtypes import positive_int
from qkv.attention.masks import MaskSpec, normalize_window
from qkv.bench import refuse_outputs
from qkv.bench.measure import (
    available_memory_bytes,
    machine_info,
    median,
    peak_memory_in_subprocess,
    peak_tensor_bytes,
    time_round_robin,
)
from qkv.files import write_text

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


SECTIONS_HELP = """sections:
  sweep        (default) every backend and peer (naive, SDPA, compiled FlexAttention; on CUDA SDPA's flash,
               cuDNN and efficient kernels), N=512..64k, full / causal / window / causal-window: time,
               peak memory, error vs exact, FLOP rate, scaling exponent; writes <out>/bench-attention-<device>.json,
               its PNGs and <out>/BENCHMARKS.md (about 20-30 min on 2 CPU cores; --quick
               about 2 min, up to 4 on a busy machine, a quarter to half of it compiling FlexAttention)
  exact        exact backends vs SDPA and naive, N=512..16k: time, memory in fresh processes, the targets
  sliding      sliding window (256, 256) vs SDPA + band mask, compiled FlexAttention, tiled; N=4k..64k
  approximate  linear, Performer, Nystrom, Linformer (+ budget grid), sliding vs SDPA, naive;
               N=1k..64k: time, peak memory, relative error (Gaussian and peaked inputs)
  lra          sliding + approximate, then the LRA-style table; writes <report-dir>/long-context-cpu.json,
               .md, -time.png, -error.png
  all          exact, then lra
  overhead     qkv.attention's own cost against a plain SDPA call, one thread, N=16, 128, 4096 (full, causal,
               key padding); MultiHeadAttention against the same module calling SDPA; auto against sliding with
               window (256, 256) at N=8192 (about a minute; --quick: N=16, 128, a few seconds)
"""


def sizes_arg(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated sequence lengths, each >= 1 (``512,1024,4096``)."""
    try:
        return tuple(positive_int(part.strip()) for part in text.split(","))
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}; give comma-separated lengths such as 512,1024") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``qkv bench attention`` (``python -m qkv.bench attention``)."""
    from qkv.bench import sweep

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="qkv bench attention", description=__doc__.split("\n")[0],
                                     epilog=SECTIONS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=("sweep", "exact", "sliding", "approximate", "lra", "all", "overhead"),
                        default="sweep", help="what to measure (default sweep; see below)")
    parser.add_argument("--sizes", type=sizes_arg, default=None,
                        help="comma-separated N (default: the section's; sweep 512,...,65536 on the CPU, "
                             f"{','.join(map(str, sweep.CUDA_SIZES))} on CUDA)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that it runs")
    parser.add_argument("--heads", type=positive_int, default=None, help="attention heads H (default 8; overhead 12)")
    parser.add_argument("--head-dim", type=positive_int, default=None,
                        help="head dimension D (default 64; overhead 32)")
    parser.add_argument("--causal", action="store_true", help="exact section only (the sweep runs both)")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help="timed rounds (default: sweep from each run's length, 7 down to 2; exact 7 up to 2k, "
                             "5 up to 8k, then 3; long-context sections: fewer for the O(N^2) contenders above "
                             "16k, at least 5 for the others)")
    parser.add_argument("--no-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="sweep and exact sections")
    parser.add_argument("--backends", type=lambda s: tuple(x.strip() for x in s.split(",")), default=None,
                        help="sweep and exact sections: comma-separated subset of the contenders (sweep: "
                             f"{', '.join(dict.fromkeys(c.name for c in sweep.CONTENDERS))}; exact: "
                             f"{', '.join(IMPLEMENTATIONS)})")
    parser.add_argument("--variants", type=lambda s: tuple(x.strip() for x in s.split(",")), default=None,
                        help=f"sweep: comma-separated subset of {', '.join(sweep.VARIANTS)} (default: all)")
    parser.add_argument("--window", type=int, default=sweep.WINDOW,
                        help=f"sweep: the window variants' w, (w, w) and causal (w, 0) (default {sweep.WINDOW})")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="sweep: default float32 on the CPU, bfloat16 on CUDA (FlashAttention takes no float32)")
    parser.add_argument("--max-run-s", type=float, default=None,
                        help=f"sweep: skip a point whose run is predicted to take longer (default {sweep.MAX_RUN_S:g}, "
                             f"--quick {sweep.QUICK_MAX_RUN_S:g}; SDPA's forward gets {sweep.BASELINE_TIME_FACTOR:g}x)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="sweep: wall seconds for the whole sweep; points not started by then are skipped "
                             "with that reason, and what was measured is written (default: none on the CPU, "
                             f"{sweep.CUDA_BUDGET_S:g} on CUDA)")
    parser.add_argument("--warm-compile", action="store_true",
                        help="sweep and sliding: time FlexAttention's compile with Inductor's on-disk cache as it "
                             "is (default: a fresh empty cache, a cold compile; --quick and --device cuda imply "
                             "warm)")
    parser.add_argument("--json", type=Path, default=None,
                        help="where the JSON goes (default: sweep <out>/bench-attention-<device>.json, exact "
                             "bench-results/attention.json, other sections bench-results/attention-<section>.json; "
                             "with all, lra's goes beside it)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="sweep: the results folder (JSON unless --json, PNGs beside the JSON, BENCHMARKS.md "
                             "from every bench-*.json beside it; default bench-results)")
    parser.add_argument("--report-dir", type=Path, default=Path("bench-results"),
                        help="lra and all: folder of long-context-cpu.{json,md} and its PNGs "
                             "(default bench-results; the committed report lives in benchmarks)")
    args = parser.parse_args(argv)
    check_options(parser, args)
    refuse_outputs(parser, [("--json", args.json, "file"), ("--out", args.out, "folder"),
                            ("--report-dir", args.report_dir if args.section in ("lra", "all") else None, "folder")])
    if args.section != "overhead":
        args.heads, args.head_dim = args.heads or 8, args.head_dim or 64
    console = Console()
    if args.section == "sweep":
        sweep.run_command(args, " ".join(["qkv bench attention", *argv]), console)
        return 0
    if args.section == "overhead":
        from qkv.bench import overhead

        result = overhead.run_overhead(
            sizes=args.sizes or (overhead.QUICK_SIZES if args.quick else overhead.SIZES), heads=args.heads or 12,
            head_dim=args.head_dim or 32, rounds=args.repeats or (5 if args.quick else None),
            window_check=not args.quick, console=console, command=" ".join(["qkv bench attention", *argv]),
        )
        overhead.print_overhead(result, console)
        print_targets(result["targets"], console, title="overhead goals")
        write_json(result, args.json or Path("bench-results/bench-overhead-cpu.json"), console)
        return 0
    if args.section in ("exact", "all"):
        sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
        result = run_attention_bench(
            sizes=sizes, heads=args.heads, head_dim=args.head_dim, causal=args.causal,
            repeats=args.repeats or (2 if args.quick else None), measure_memory=not args.no_memory,
            device=args.device, console=console, backends=args.backends,
        )
        print_report(result, console)
        write_json(result, args.json or Path("bench-results/attention.json"), console)
    if args.section != "exact":
        run_long_context(args, console)
    return 0


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options that do not apply to the section, unknown names, and CUDA without a GPU."""
    from qkv.bench import sweep

    if args.section != "exact" and args.causal:
        parser.error("--causal applies to --section exact only (the sweep measures causal and not)")
    if args.section not in ("exact", "sweep") and (args.device != "cpu" or args.backends):
        parser.error("--device cuda and --backends apply to --section sweep and exact only")
    if args.section == "overhead" and args.no_memory:
        parser.error("--no-memory does not apply to --section overhead (it measures time only)")
    sweep_only = {"--variants": args.variants, "--dtype": args.dtype, "--max-run-s": args.max_run_s,
                  "--budget-s": args.budget_s is not None, "--window": args.window != sweep.WINDOW}
    used = [flag for flag, value in sweep_only.items() if value]
    if args.section != "sweep" and used:
        parser.error(f"{', '.join(used)} apply to --section sweep only")
    if args.budget_s is not None and not args.budget_s > 0:
        parser.error(f"--budget-s must be a positive number of seconds; got {args.budget_s:g}")
    known = dict.fromkeys(c.name for c in sweep.CONTENDERS) if args.section == "sweep" else IMPLEMENTATIONS
    unknown = set(args.backends or ()) - set(known)
    if unknown:
        parser.error(f"unknown --backends {sorted(unknown)}; choose from {list(known)}")
    unknown = set(args.variants or ()) - set(sweep.VARIANTS)
    if unknown:
        parser.error(f"unknown --variants {sorted(unknown)}; choose from {list(sweep.VARIANTS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")


def write_json(result: dict, path: Path, console: Console) -> None:
    write_text(path, json.dumps(result, indent=2))
    console.print(f"wrote {path}")


def run_long_context(args: argparse.Namespace, console: Console) -> None:
    """The sliding and/or approximate sections; for lra (and all) the LRA table and report files."""
    from qkv.bench import long_context, lra

    section = "lra" if args.section == "all" else args.section
    names = ("sliding", "approximate") if section == "lra" else (section,)
    results = {}
    for name in names:
        results[name] = long_context.run_section(
            name, args.sizes, heads=args.heads, head_dim=args.head_dim, quick=args.quick,
            repeats=args.repeats or (2 if args.quick else None), memory=not args.no_memory,
            cold_compile=False if args.warm_compile else None, console=console,
        )
        lra.print_tabs(lra.section_tabs(results[name]), console, [lra.load_note(results[name])])
    result = results[section] if section != "lra" else lra.combine(results["sliding"], results["approximate"])
    if "approximate" in results:
        table = result["lra"] if section == "lra" else lra.lra_table(result)
        lra.print_tabs(lra.lra_tabs(table), console, [lra.spread_note(table), lra.LRA_REFERENCE,
                                                      lra.memory_floor_note(results["approximate"])])
    if section == "lra":
        paths = lra.write_report(result, args.report_dir)
        console.print("wrote " + ", ".join(str(p) for p in paths))
    default = Path(f"bench-results/attention-{section}.json")
    path = default if args.json is None else args.json
    if args.section == "all" and args.json is not None:
        path = args.json.with_name(f"{args.json.stem}-lra{args.json.suffix}")
    write_json(result, path, console)


def candidate_by_key(name: str, mode: str) -> Candidate:
    """The candidate with this name and mode."""
    for candidate in CANDIDATES:
        if candidate.name == name and candidate.mode == mode:
            return candidate
    raise KeyError((name, mode))



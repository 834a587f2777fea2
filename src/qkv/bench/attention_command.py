"""`qkv bench attention` (also `python -m qkv.bench attention`): attention backends against their peers.

The default, ``--section sweep`` (:mod:`qkv.bench.sweep`, report in
:mod:`qkv.bench.report`): every qkv backend, a naive implementation, SDPA, compiled
FlexAttention and (on CUDA) the FlashAttention, cuDNN and memory-efficient kernels behind
SDPA, over N = 512..64K, full, causal, windowed and causal windowed: time, peak memory,
error against exact attention, FLOP rate, and each one's scaling exponent; writes
``<out>/bench-attention-<device>.json``, its plots and ``<out>/BENCHMARKS.md``.

``--section exact``: for each sequence length N (B=1, H=8, D=64, float32 by
default) it times, side by side, a naive PyTorch implementation (softmax(q k^T / sqrt(D)) v,
the whole (N, N) matrix), a direct call to ``torch.nn.functional.scaled_dot_product_attention``,
and every exact qkv backend through ``qkv.attention``; forward, and forward + backward for
the ones that train; and ``qkv.attention_stats``. Peak memory is measured per point in a
fresh process. Prints a table and the issue's targets, and writes JSON.

The long-context sections (:mod:`qkv.bench.long_context`, tables and report in
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
import sys
from pathlib import Path

import torch
from rich.console import Console

from qkv.argtypes import positive_int
from qkv.bench import refuse_outputs, report, sweep
from qkv.bench.attention import (
    DEFAULT_SIZES,
    IMPLEMENTATIONS,
    QUICK_SIZES,
    print_report,
    print_targets,
    run_attention_bench,
)
from qkv.files import write_text

__all__ = ["main"]


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
        run_sweep_command(args, " ".join(["qkv bench attention", *argv]), console)
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


def run_sweep_command(args, command: str, console: Console) -> dict:
    """``qkv bench attention`` (the sweep) from parsed arguments: measure, print, publish."""
    settings = sweep.settings_from_args(args)
    result = sweep.run_sweep(args.sizes, args.variants, settings, args.backends, console, command, args.window)
    report.print_attention(result, console)
    report.publish(result, args.json, args.out, console)
    if result["interrupted"]:  # what was measured is written; now stop as Ctrl-C asked
        raise KeyboardInterrupt
    return result

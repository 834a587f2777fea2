"""``qkv bench attention``: every attention backend against its peers, over N and four masking variants.

The default, ``--section sweep`` (:mod:`qkv.bench.sweep`; contenders in
:mod:`qkv.bench.contenders`): every qkv backend, a naive implementation, SDPA, compiled
FlexAttention and (on CUDA) the FlashAttention, cuDNN and memory-efficient kernels behind SDPA,
over N = 512..64K, full, causal, windowed and causal windowed: time, peak memory, error against
exact attention, FLOP rate, each one's scaling exponent and the targets; writes
``<out>/bench-attention-<device>.json``, its plots and ``<out>/BENCHMARKS.md``.

``--section overhead`` (:mod:`qkv.bench.overhead`): what ``qkv.attention`` adds to the kernel it
calls, on one thread at N = 16, 128 and 4096 (full, causal, key padding), against a plain SDPA call;
``qkv.nn.MultiHeadAttention`` against the same module calling SDPA; and ``auto`` against
``backend="sliding"`` with a window at N = 8192. Writes ``bench-results/bench-overhead-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from rich.console import Console

from qkv.argtypes import positive_int
from qkv.bench import overhead, report, sweep
from qkv.bench.commands import refuse_outputs
from qkv.bench.contenders import CONTENDERS, VARIANTS, WINDOW
from qkv.bench.tables import print_tabs, targets_tab
from qkv.files import write_text

__all__ = ["main"]

SECTIONS_HELP = """sections:
  sweep        (default) every backend and peer (naive, SDPA, compiled FlexAttention; on CUDA SDPA's flash,
               cuDNN and efficient kernels), N=512..64k, full / causal / window / causal-window: time,
               peak memory, error vs exact, FLOP rate, scaling exponent, targets; writes
               <out>/bench-attention-<device>.json, its PNGs and <out>/BENCHMARKS.md (about 20-30 min on 2 CPU
               cores; --quick about 2 min, up to 4 on a busy machine, a quarter to half of it compiling FlexAttention)
  overhead     qkv.attention's own cost against a plain SDPA call, one thread, N=16, 128, 4096 (full, causal,
               key padding); MultiHeadAttention against the same module calling SDPA; auto against sliding with
               window (256, 256) at N=8192 (about a minute; --quick: N=16, 128, a few seconds)
"""


def names(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated names."""
    return tuple(part.strip() for part in text.split(","))


def sizes_arg(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated sequence lengths, each >= 1 (``512,1024,4096``)."""
    try:
        return tuple(positive_int(part.strip()) for part in text.split(","))
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}; give comma-separated lengths such as 512,1024") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    contenders = list(dict.fromkeys(c.name for c in CONTENDERS))
    parser = argparse.ArgumentParser(prog="qkv bench attention", description=__doc__.split("\n")[0],
                                     epilog=SECTIONS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=("sweep", "overhead"), default="sweep",
                        help="what to measure (default sweep; see below)")
    parser.add_argument("--sizes", type=sizes_arg, default=None,
                        help="comma-separated N (default: sweep 512,...,65536 on the CPU, "
                             f"{','.join(map(str, sweep.CUDA_SIZES))} on CUDA; overhead 16,128,4096)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that it runs")
    parser.add_argument("--heads", type=positive_int, default=None, help="attention heads H (default 8; overhead 12)")
    parser.add_argument("--head-dim", type=positive_int, default=None,
                        help="head dimension D (default 64; overhead 32)")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help="timed rounds (default: from each run's length, 7 down to 2)")
    parser.add_argument("--no-memory", action="store_true", help="sweep: do not measure peak memory")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="sweep: the device")
    parser.add_argument("--backends", type=names, default=None,
                        help=f"sweep: comma-separated subset of the contenders ({', '.join(contenders)})")
    parser.add_argument("--variants", type=names, default=None,
                        help=f"sweep: comma-separated subset of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--window", type=int, default=WINDOW,
                        help=f"sweep: the window variants' w, (w, w) and causal (w, 0) (default {WINDOW})")
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
                        help="sweep: time FlexAttention's compile with Inductor's on-disk cache as it is (default: "
                             "a fresh empty cache, a cold compile; --quick and --device cuda imply warm)")
    parser.add_argument("--json", type=Path, default=None,
                        help="where the JSON goes (default: sweep <out>/bench-attention-<device>.json, overhead "
                             "bench-results/bench-overhead-cpu.json)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="sweep: the results folder (JSON unless --json, PNGs beside the JSON, BENCHMARKS.md "
                             "from every bench-*.json beside it; default bench-results)")
    args = parser.parse_args(argv)
    sweep_only = {"--no-memory": args.no_memory, "--device": args.device != "cpu", "--backends": args.backends,
                  "--variants": args.variants, "--dtype": args.dtype, "--max-run-s": args.max_run_s,
                  "--budget-s": args.budget_s is not None, "--window": args.window != WINDOW,
                  "--warm-compile": args.warm_compile}
    used = [flag for flag, value in sweep_only.items() if value]
    if args.section != "sweep" and used:
        parser.error(f"{', '.join(used)} apply to --section sweep only")
    if args.budget_s is not None and not args.budget_s > 0:
        parser.error(f"--budget-s must be a positive number of seconds; got {args.budget_s:g}")
    for option, given, known in (("--backends", args.backends, contenders), ("--variants", args.variants, VARIANTS)):
        unknown = set(given or ()) - set(known)
        if unknown:
            parser.error(f"unknown {option} {sorted(unknown)}; choose from {list(known)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    refuse_outputs(parser, [("--json", args.json, "file"), ("--out", args.out, "folder")])
    console, command = Console(), " ".join(["qkv bench attention", *argv])
    if args.section == "overhead":
        result = overhead.run_overhead(
            sizes=args.sizes or (overhead.QUICK_SIZES if args.quick else overhead.SIZES), heads=args.heads or 12,
            head_dim=args.head_dim or 32, rounds=args.repeats or (5 if args.quick else None),
            window_check=not args.quick, console=console, command=command)
        report.print_overhead(result, console)
        print_tabs([targets_tab("overhead goals", result["targets"])], console)
        path = args.json or Path("bench-results/bench-overhead-cpu.json")
        write_text(path, json.dumps(result, indent=2))
        console.print(f"wrote {path}")
        return 0
    args.heads, args.head_dim = args.heads or 8, args.head_dim or 64
    result = sweep.run_sweep(args.sizes, args.variants, sweep.settings_from_args(args), args.backends, console,
                             command, args.window)
    report.print_attention(result, console)
    report.publish(result, args.json, args.out, console)
    if result["interrupted"]:  # what was measured is written; now stop as Ctrl-C asked
        raise KeyboardInterrupt
    return 0

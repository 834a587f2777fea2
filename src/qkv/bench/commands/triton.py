"""``qkv bench triton``: the Triton kernel at full size on a GPU, checked then timed (:mod:`qkv.bench.triton_gpu`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from qkv.bench import triton_gpu
from qkv.bench.commands import refuse_outputs
from qkv.functional import get_backend

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qkv bench triton", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU under TRITON_INTERPRET=1 works)")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu (interpreter)")
    parser.add_argument("--json", type=Path, default=None,
                        help="write every check and timing here (rewritten after each one)")
    parser.add_argument("--skip-speed", action="store_true", help="correctness only")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-time budget in seconds: once spent, no further check or timing starts "
                             "(each is recorded as not run) and the targets are judged on what was measured")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    unavailable = get_backend("triton").unavailable
    why = None if unavailable is None else unavailable(torch.device(device).type)
    if why:
        parser.error(f"--device {device}: the triton backend cannot {why}")
    if device != "cuda" and not args.quick:
        parser.error(f"--device {device}: the full sizes are for a GPU (under the CPU's interpreter they would "
                     "take days); add --quick, or run on a CUDA device")
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"--budget-s must be positive; got {args.budget_s}")
    refuse_outputs(parser, [("--json", args.json, "file")])
    sizes = triton_gpu.Sizes.quick() if args.quick else triton_gpu.Sizes()
    dtype = torch.bfloat16
    run = triton_gpu.Run(device, sizes, args.json, args.budget_s)
    run.result["command"] = " ".join(["qkv bench triton", *(sys.argv[1:] if argv is None else argv)])
    run.result["quick"] = args.quick

    run.say(f"compile time: first forward + backward ({device}, {dtype})")
    triton_gpu.cold_compile(run, sizes, device, dtype)
    run.finish_section("compile")
    run.say(f"correctness ({device}, {dtype}, the 2x rule against float64)")
    triton_gpu.correctness(run, sizes, device, dtype)
    run.finish_section("correctness")
    if not args.skip_speed:
        run.say("speed (CUDA-event medians)" if device == "cuda" else "speed (interpreter: the timings mean nothing)")
        triton_gpu.speed(run, sizes, device, dtype)
        run.result["tuned_configs"] = triton_gpu.tuned_configs()
        run.finish_section("speed")
        run.result["targets"] = triton_gpu.targets(run.result["timings"], run.result["compile"], sizes)
        for goal in run.result["targets"]:
            measured = "n/a" if goal["measured"] is None else f"{goal['measured']:.2f}"
            run.say(f"target {goal['target']}: {measured} (limit {goal['rule']} {goal['limit']:.3g}) "
                    f"{'met' if goal['met'] else 'MISSED'}")
    run.save()
    if args.json is not None:
        run.say(f"wrote {args.json}")
    return 0 if all(row.get("passed", True) for row in run.result["checks"]) else 1

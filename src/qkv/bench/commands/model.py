"""``qkv bench model``: whole models, ours against Hugging Face transformers (:mod:`qkv.bench.model`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.console import Console

from qkv.bench import model, report
from qkv.bench.commands import refuse_outputs
from qkv.bench.tables import print_tabs

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="qkv bench model", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that it runs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--parts", default=",".join(model.PARTS),
                        help=f"comma-separated measurements to run, among {', '.join(model.PARTS)} (default: all)")
    parser.add_argument("--json", type=Path, default=None,
                        help="where the JSON goes (default <out>/bench-model-<device>.json)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="results folder: JSON unless --json, the plot beside the JSON, BENCHMARKS.md "
                             "from every bench-*.json beside it (default bench-results)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    refuse_outputs(parser, [("--json", args.json, "file"), ("--out", args.out, "folder")])
    parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    unknown = sorted(set(parts) - set(model.PARTS))
    if unknown or not parts:
        parser.error(f"--parts {args.parts}: unknown {unknown or 'none given'}; choose among {', '.join(model.PARTS)}")
    console = Console()
    result = model.run_model_bench(args.quick, args.device, parts)
    result["command"] = " ".join(["qkv bench model", *argv])
    print_tabs(report.model_tabs(result), console)
    forward = (result["forward"] or {}).get("time_vs_transformers")
    if forward:
        console.print(f"MiniLM forward, qkv time / transformers time: {forward:.3f}")
    smollm2 = (result["smollm2"] or {}).get("time_vs_transformers")
    if smollm2:
        console.print("SmolLM2, qkv time / transformers time: " + ", ".join(f"{k} {v:.2f}" for k, v in smollm2.items()))
    report.publish(result, args.json, args.out, console)
    return 0

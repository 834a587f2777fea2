"""`qkv bench model` (also `python -m qkv.bench model`): whole models, ours against Hugging Face transformers.

1. MiniLM (all-MiniLM-L6-v2) forward throughput, batch 32 x 128 tokens, float32 on the
   CPU (or ``--device cuda``): qkv's BertModel against transformers' BertModel with
   attn_implementation="sdpa" (when transformers is installed), timed in interleaved rounds;
   peak memory of one more forward (:func:`qkv.bench.measure.peak_tensor_bytes`).
2. Tiny GPT-2 generation: the time of each new token as the sequence grows to 1,024
   tokens, with the KV cache (one token per step) and without (the whole sequence per
   step), as a table, JSON and a PNG plot.

Rows follow :mod:`qkv.bench.points` (``max_error`` and ``flops_per_s`` are None); the JSON,
its plot and BENCHMARKS.md are written as :mod:`qkv.bench.report` says.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

import qkv
from qkv.bench import refuse_outputs
from qkv.bench.measure import machine_info, median, peak_tensor_bytes, synchronize, time_round_robin
from qkv.bench.points import point_row
from qkv.models import GPT2Config, GPT2LMHeadModel
from qkv.nn import KVCache

__all__ = ["bench_minilm_forward", "bench_generation", "run_model_bench", "model_rows", "main"]


def random_batch(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) ids: [CLS] random word pieces [SEP], as a real BERT input looks."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, length), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids


def bench_minilm_forward(batch: int = 32, length: int = 128, repeats: int = 7, device: str = "cpu") -> dict:
    """Tokens per second of MiniLM's forward pass, ours and (if installed) transformers'."""
    ours, _ = qkv.load("minilm")
    ours = ours.to(device)
    ids = random_batch(batch, length, ours.config.vocab_size).to(device)
    mask = torch.ones_like(ids, dtype=torch.bool)
    runs = {"qkv": lambda: ours(ids, mask)}
    try:
        import transformers

        theirs = transformers.BertModel.from_pretrained(
            str(qkv.models.default_model_path()), attn_implementation="sdpa"
        ).eval().to(device)
        runs["transformers (sdpa)"] = lambda: theirs(input_ids=ids, attention_mask=mask.long())
    except ImportError:
        theirs = None
    with torch.inference_mode():
        times = time_round_robin(runs, repeats=repeats, warmup=2, device=device)
        peaks = {name: peak_tensor_bytes(run, device)[0] for name, run in runs.items()}
    tokens = batch * length
    rows = [{"implementation": name, "time_s": median(t), "times_s": t, "tokens_per_s": tokens / median(t),
             "peak_bytes": peaks[name]} for name, t in times.items()]
    result = {"batch": batch, "length": length, "rows": rows}
    if theirs is not None:
        result["speedup_vs_transformers"] = rows[1]["time_s"] / rows[0]["time_s"]
    return result


def tiny_gpt2(max_length: int) -> GPT2LMHeadModel:
    """A random 4-layer GPT-2 (d_model 128): the cost of attention over the context shows."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=1000, n_positions=max_length, n_embd=128, n_layer=4, n_head=4)
    return GPT2LMHeadModel(config).eval()


@torch.inference_mode()
def step_times(model: GPT2LMHeadModel, max_length: int, use_cache: bool, device: str = "cpu") -> list[float]:
    """Seconds to produce the token at each length 2 .. max_length (greedy)."""
    ids = torch.tensor([[1]], device=device)
    cache = KVCache() if use_cache else None
    times = []
    for _ in range(max_length - 1):
        synchronize(device)
        start = time.perf_counter()
        step_input = ids[:, -1:] if use_cache else ids
        logits = model(step_input, kv_cache=cache).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def bench_generation(max_length: int = 1024, rounds: int = 3, device: str = "cpu") -> dict:
    """Per-token time against sequence length, with and without the KV cache."""
    model = tiny_gpt2(max_length).to(device)
    step_times(model, 64, True, device)  # warm-up
    curves = {}
    for use_cache in (True, False):
        runs = [step_times(model, max_length, use_cache, device) for _ in range(rounds)]
        curves["with cache" if use_cache else "without cache"] = [
            median([run[i] for run in runs]) for i in range(max_length - 1)
        ]
    checkpoints = [n for n in (16, 64, 128, 256, 512, 1024) if n <= max_length]

    def around(curve: list[float], n: int) -> float:  # median of a window: single steps are noisy
        lo, hi = max(0, n - 2 - 8), min(len(curve), n - 2 + 8)
        return median(curve[lo:hi])

    table = [{"length": n, **{name: around(curve, n) for name, curve in curves.items()}} for n in checkpoints]
    return {"max_length": max_length, "curves": curves, "table": table}


def model_rows(result: dict) -> list[dict]:
    """The forward and generation numbers as rows of the common schema (:mod:`qkv.bench.points`)."""
    device, forward = result["config"]["device"], result["forward"]
    rows = [point_row(r["implementation"], "forward", forward["length"], device=device,
                      options={"model": "all-MiniLM-L6-v2", "batch": forward["batch"]}, time_s=r["time_s"],
                      peak_bytes=r["peak_bytes"], times_s=r["times_s"], tokens_per_s=r["tokens_per_s"])
            for r in forward["rows"]]
    tiny = {"model": "tiny GPT-2", "layers": 4, "d_model": 128, "heads": 4, "batch": 1}
    for point in result["generation"]["table"]:
        for curve, mode in (("with cache", "generate, KV cache"), ("without cache", "generate, no cache")):
            rows.append(point_row("qkv", mode, point["length"], causal=True, device=device, options=tiny,
                                  time_s=point[curve], time_per="generated token"))
    return rows


def run_model_bench(quick: bool = False, device: str = "cpu") -> dict:
    """Both measurements, with the machine and the rows."""
    forward = bench_minilm_forward(batch=4 if quick else 32, length=32 if quick else 128,
                                   repeats=2 if quick else 7, device=device)
    generation = bench_generation(max_length=128 if quick else 1024, rounds=1 if quick else 3, device=device)
    result = {"benchmark": "model", "date": datetime.date.today().isoformat(), "machine": machine_info(device),
              "config": {"device": device, "dtype": "float32", "quick": quick}, "forward": forward,
              "generation": generation}
    result["rows"] = model_rows(result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``qkv bench model`` (``python -m qkv.bench model``)."""
    from qkv.bench import report
    from qkv.bench.lra import print_tabs

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="qkv bench model", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that it runs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None,
                        help="where the JSON goes (default <out>/bench-model-<device>.json)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="results folder: JSON unless --json, the plot beside the JSON, BENCHMARKS.md "
                             "from every bench-*.json beside it (default bench-results)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    refuse_outputs(parser, [("--json", args.json, "file"), ("--out", args.out, "folder")])
    console = Console()
    result = run_model_bench(args.quick, args.device)
    result["command"] = " ".join(["qkv bench model", *argv])
    print_tabs(report.model_tabs(result), console)
    if "speedup_vs_transformers" in result["forward"]:
        console.print(f"qkv / transformers throughput: {result['forward']['speedup_vs_transformers']:.3f}x")
    report.publish(result, args.json, args.out, console)
    return 0

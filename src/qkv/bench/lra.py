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
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qkv.bench.attention import format_bytes, target_cells
from qkv.bench.long_context import APPROXIMATE_CONTENDERS, APPROXIMATE_MEMORY_N, SDPA

__all__ = ["Tab", "section_tabs", "lra_table", "lra_tabs", "print_tabs", "write_report", "LRA_REFERENCE"]

LRA_REFERENCE = (
    "Reference (Tay et al., 2020, Long Range Arena, Table 2: whole models training on byte-level text "
    "classification, batch 32, TPU v3, speed relative to the vanilla Transformer): at 4K, Performer 5.7x, "
    "Linformer 5.5x, Linear Transformer 5.6x faster; memory falls from 9.48 GB (Transformer) to about "
    "1 GB. This benchmark times one attention forward call on a CPU instead, against PyTorch's fused "
    "SDPA kernel (itself O(N) in memory), so the numbers are not comparable one to one."
)


TEXT_COLUMNS = ("contender", "backend", "target", "met", "note", "variant",  # left-aligned; others: numbers
                "results", "benchmark", "device", "CPU", "GPU", "torch", "Python", "date", "quick")


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


def size_label(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


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

# Sixteen saturated colours (tab10, black, then the dark shades of tab20b) and eleven marker
# shapes: no pale colour, and no two of up to 176 series with the same colour and shape.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#000000", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h")
BACKWARD = ", fwd+bwd"  # the suffix of a contender's forward + backward series
NARROW_SUBS = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)  # labelled ticks of a log axis under one decade


def agg_figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas: no pyplot, no global backend or figure state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def series_styles(names: Iterable[str]) -> dict[str, dict]:
    """``plot`` keywords per series, to keep in every panel of a figure: a colour and a marker shape
    per contender; its forward + backward series (``", fwd+bwd"``) in the same colour and shape,
    dashed, with hollow markers."""
    names = list(dict.fromkeys(names))
    contenders = list(dict.fromkeys(name.removesuffix(BACKWARD) for name in names))
    styles = {}
    for name in names:
        i = contenders.index(name.removesuffix(BACKWARD))
        styles[name] = {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)], "markersize": 4,
                        "linewidth": 1.3, "linestyle": "-"}
        if name.endswith(BACKWARD):
            styles[name].update(linestyle="--", markerfacecolor="white")
    return styles


def coinciding(series: dict[str, list[tuple[float, float]]], tolerance: float) -> list[list[str]]:
    """Groups of series drawn on top of one another on a log y axis: wherever both are measured (at
    least two points, all of the shorter one's), their values differ by under ``tolerance`` decades."""
    groups: list[list[str]] = []
    for name, points in series.items():
        mine = dict(points)
        for group in groups:
            theirs = dict(series[group[0]])
            shared = mine.keys() & theirs.keys()
            if (len(shared) >= 2 and len(shared) == min(len(mine), len(theirs))
                    and all(abs(math.log10(mine[x] / theirs[x])) < tolerance for x in shared)):
                group.append(name)
                break
        else:
            groups.append([name])
    return [group for group in groups if len(group) > 1]


def note_coinciding(axis, series: dict[str, list[tuple[float, float]]]) -> None:
    """Name, under the panel's title, the series that hide one another (closer than 2% of the height)."""
    low, high = axis.get_ylim()
    groups = coinciding(series, tolerance=0.02 * math.log10(high / low))
    if groups:
        lines = "\n".join(f"{', '.join(group[:-1])} and {group[-1]} coincide" for group in groups)
        axis.set_title(f"{axis.get_title()}\n{lines}", fontsize=9)


def tick_label(value: float, unit: str, powers: bool = False) -> str:
    """One tick's text; ``unit`` as in :func:`log_ticks`; ``powers``: plain numbers as powers of ten."""
    if unit == "N":
        return size_label(round(value))
    if unit == "s":
        scale, prefix = next(((s, p) for s, p in ((1, "s"), (1e-3, "ms")) if value >= s * 0.999), (1e-6, "µs"))
        return f"{value / scale:g} {prefix}"
    if unit == "B":
        power, prefix = next(((k, p) for k, p in ((3, "GiB"), (2, "MiB"), (1, "KiB")) if value >= 1024**k * 0.999),
                             (0, "B"))
        return f"{value / 1024**power:g} {prefix}"
    text = f"{value:.3e}" if powers else f"{value:.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        mantissa = f"{float(mantissa):g}"
        power = f"10^{{{int(exponent)}}}"
        text = f"${power}$" if mantissa == "1" else f"${mantissa}\\times{power}$"
    return text + ("×" if unit == "x" else "")


def log_ticks(axis, x: str | None = None, y: str | None = None, min_decades: float = 0.0) -> None:
    """Labelled ticks on the log axes of ``axis``, once everything is drawn, in a unit: "N" (sequence
    lengths 512, 1K, 2K, ...), "s" (µs, ms, s), "B" (KiB, MiB, GiB), "x" (speed-ups 0.5×, 1×, 10×) or
    "" (plain numbers; all as 10^k if the axis reaches past 1e-3..1e4); None leaves that axis alone.

    An axis spanning few decades also gets labelled ticks at 2 and 5 times each power of ten (1.5, 2,
    3, 4, 5, 6 and 8 times under one decade), so that it never shows an unlabelled range. An axis
    narrower than ``min_decades`` is widened around its middle: values that hardly differ stay close.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    for ticks, unit, limits, set_limits in ((axis.xaxis, x, axis.get_xlim(), axis.set_xlim),
                                            (axis.yaxis, y, axis.get_ylim(), axis.set_ylim)):
        if unit is None:
            continue
        low, high = limits
        decades = math.log10(high / low)
        if decades < min_decades:
            middle, half = math.sqrt(low * high), 10 ** (min_decades / 2)
            low, high, decades = middle / half, middle * half, min_decades
            set_limits(low, high)
        if unit in ("N", "B"):  # powers of two (of four for bytes over many decades: 1, 4, 16 MiB, ...)
            base, subs = (4 if unit == "B" and decades > 2.5 else 2), (1.0,)
        else:
            base, subs = 10, (1.0,) if decades > 2.5 else (1.0, 2.0, 5.0) if decades > 1 else NARROW_SUBS
        ticks.set_major_locator(LogLocator(base=base, subs=subs))
        powers = min(low, high) < 1e-3 or max(low, high) > 1e4

        def text(value: float, _, unit: str = unit, powers: bool = powers) -> str:
            return tick_label(value, unit, powers)

        ticks.set_major_formatter(FuncFormatter(text))
        ticks.set_minor_locator(LogLocator(base=10, subs="auto") if base == 10 else NullLocator())
        ticks.set_minor_formatter(NullFormatter())


def log_log(axis, xlabel: str, ylabel: str, title: str, x: str = "", y: str = "", min_decades: float = 0.0) -> None:
    """Log scales on both axes with labelled ticks in units ``x`` and ``y`` (:func:`log_ticks`), axis
    labels, the title and a light grid; call it once the panel's data is drawn."""
    axis.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    log_ticks(axis, x, y, min_decades)
    axis.grid(True, which="major", alpha=0.35)
    axis.grid(True, which="minor", alpha=0.12)


def label_point(axis, text: str, xy: tuple[float, float], color="black", fontsize: float = 7) -> None:
    """Label one point, beside it, on a light background that dims the lines behind it;
    :func:`save_figure` moves overlapping labels apart (:func:`untangle_labels`)."""
    axis.annotate(text, xy, xytext=(4, 0), textcoords="offset points", fontsize=fontsize, color=color, va="center",
                  bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.9},
                  arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3})


def untangle_labels(axis, pad: float = 4.0, reach: int = 12) -> None:
    """Move the point labels (annotations) of ``axis`` so that none overlaps another, covers a
    marker or crosses the panel's edge, and (where a spot near the point allows) none lies on a line;
    a label moved away from its point keeps a thin line to it.

    Deterministic and greedy: from the lowest point up, each label takes the first free spot among
    its point's right, its left, then centred 1, 2, ... ``reach`` label heights above or below it.
    A label with no free spot stays beside its point.
    """
    from matplotlib.path import Path as Polyline
    from matplotlib.text import Annotation, Text
    from matplotlib.transforms import Bbox

    renderer = axis.figure.canvas.get_renderer()
    frame = axis.get_window_extent(renderer)
    to_points = 72 / axis.figure.dpi
    gap = pad / to_points  # pixels between a point and its label
    labels = [(label, axis.transData.transform(label.xy)) for label in axis.texts if isinstance(label, Annotation)]
    labels = [(label, (x, y)) for label, (x, y) in labels
              if frame.x0 - 1 <= x <= frame.x1 + 1 and frame.y0 - 1 <= y <= frame.y1 + 1]  # drawn at all
    lines = [line.get_transform().transform(line.get_xydata()) for line in axis.lines]
    drawn = [points for points, line in zip(lines, axis.lines) if line.get_marker() not in ("None", "", None)]
    drawn += [c.get_offset_transform().transform(c.get_offsets()) for c in axis.collections]  # scatter plots
    markers = [Bbox.from_bounds(x - 3, y - 3, 6, 6) for points in drawn for x, y in points]
    polylines = [Polyline(points) for points in lines if len(points) > 1]
    taken: list = []

    def clear(spot, of_lines: bool) -> bool:
        return (not any(spot.overlaps(other) for other in taken + markers)
                and not (of_lines and any(line.intersects_bbox(spot, filled=False) for line in polylines)))

    for label, (x, y) in sorted(labels, key=lambda item: (item[1][1], item[1][0])):
        box = Text.get_window_extent(label, renderer)  # the text alone, not the leader line
        width, height = box.width, box.height
        centred = min(max(x - width / 2, frame.x0), frame.x1 - width)
        spots = [(0, Bbox.from_bounds(x + gap, y - height / 2, width, height)),
                 (0, Bbox.from_bounds(x - gap - width, y - height / 2, width, height))]
        for k in range(1, reach + 1):
            rise = gap + (k - 1) * (height + 1)
            spots += [(k, Bbox.from_bounds(centred, y + rise, width, height)),
                      (k, Bbox.from_bounds(centred, y - rise - height, width, height))]
        inside = [(k, spot) for k, spot in spots
                  if frame.x0 <= spot.x0 and spot.x1 <= frame.x1 and frame.y0 <= spot.y0 and spot.y1 <= frame.y1]
        inside = inside or spots[:1]
        free = [(k, spot) for k, spot in inside if k <= 2 and clear(spot, of_lines=True)]
        free += [(k, spot) for k, spot in inside if clear(spot, of_lines=False)]
        k, spot = (free or inside)[0]
        taken.append(spot)
        label.set(horizontalalignment="left", verticalalignment="bottom")
        label.xyann = ((spot.x0 - x) * to_points, (spot.y0 - y) * to_points)
        if label.arrow_patch is not None:
            label.arrow_patch.set_visible(k > 1)  # right beside, or just above or below: no line needed


def legend_outside(figure, order: Iterable[str] = (), fontsize: float = 8) -> float:
    """One legend for every panel's labelled artists (each label once; those in ``order`` first, in
    that order), right of the panels; returns the share of the figure's width left to them."""
    entries: dict = {}
    for axis in figure.axes:
        for handle, text in zip(*axis.get_legend_handles_labels()):
            entries.setdefault(text, handle)
    rank = {name: i for i, name in enumerate(order)}
    texts = sorted(entries, key=lambda text: rank.get(text, len(rank)))
    legend = figure.legend([entries[t] for t in texts], texts, loc="center right", fontsize=fontsize,
                           handlelength=3, frameon=False)
    width = legend.get_window_extent(figure.canvas.get_renderer()).width
    return 1 - (width + 6) / figure.bbox.width


def save_figure(figure, path: Path, dpi: int = 120, legend: bool = False, order: Iterable[str] = ()) -> None:
    """Lay the figure out (with ``legend``, one legend right of the panels: :func:`legend_outside`),
    move the point labels apart (:func:`untangle_labels`) and save it as a PNG."""
    figure.set_dpi(dpi)  # text sizes in pixels, for the layout and the labels, as saved
    right = legend_outside(figure, order) if legend else 1.0
    figure.tight_layout(rect=(0, 0, right, 1))
    for axis in figure.axes:
        untangle_labels(axis)
    figure.savefig(path, dpi=dpi)


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
    paths[".json"].write_text(json.dumps(result, indent=2))
    seen = {distinct_call(r) for r in approximate["rows"]}
    plot_times(approximate["rows"] + [r for r in sliding["rows"] if distinct_call(r) not in seen],
               paths["-time.png"])
    plot_error_vs_speedup(approximate["rows"], paths["-error.png"])
    paths[".md"].write_text(report_markdown(result, {k: p.name for k, p in paths.items()}))
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

"""Plot helpers shared by the benchmarks' and the tools' figures (matplotlib, no pyplot state).

Figures are built on an Agg canvas (:func:`agg_figure`). Log axes get labelled ticks with
units (:func:`log_ticks`: N as 1K, times in µs/ms/s, bytes in KiB/MiB/GiB, ratios as 2×);
every series keeps one colour and marker (:func:`series_styles`); point labels are moved
apart when the figure is saved (:func:`untangle_labels`), and lines that coincide are named
(:func:`note_coinciding`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from qkv import files


def size_label(n: int) -> str:
    """A sequence length as tables and axes show it: 4096 -> "4K", 1000 -> "1000"."""
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


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
    files.save_figure(figure, path, dpi=dpi)

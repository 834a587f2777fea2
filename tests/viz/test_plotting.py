"""qkv.viz.plotting: labels kept apart and inside their panel, labelled log ticks with units, series styles."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from qkv.viz.plotting import agg_figure, coinciding, label_point, log_log, save_figure, series_styles, tick_label


def test_point_labels_are_moved_apart_and_kept_in_the_panel(tmp_path: Path) -> None:
    from matplotlib.text import Text

    figure = agg_figure(4, 3)
    axis = figure.add_subplot()
    points = [(1.0, 1.0), (1.03, 1.0), (1.06, 1.01), (1.09, 0.99), (50.0, 1.0)]  # a cluster, one at the edge
    axis.scatter(*zip(*points))
    for i, xy in enumerate(points):
        label_point(axis, f"contender {i}", xy)
    log_log(axis, "speed-up", "error", "labels", x="x", y="", min_decades=1)
    save_figure(figure, tmp_path / "labels.png")
    renderer = figure.canvas.get_renderer()
    frame = axis.get_window_extent(renderer)
    boxes = []
    for label in axis.texts:
        label.update_positions(renderer)
        boxes.append(Text.get_window_extent(label, renderer))
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_log_axes_have_labelled_ticks_in_units_however_narrow() -> None:
    figure = agg_figure(4, 3)
    axis = figure.add_subplot()
    axis.plot([512, 65536], [4.1e-7, 4.3e-7])  # errors a few % apart: under a tenth of a decade
    log_log(axis, "N", "error", "", x="N", y="", min_decades=1)
    low, high = axis.get_ylim()
    assert math.log10(high / low) == pytest.approx(1)
    ticks = axis.yaxis.get_major_locator()()
    texts = [axis.yaxis.get_major_formatter()(v) for v in ticks if low <= v <= high]
    assert len(texts) >= 3 and all(texts), texts
    assert [tick_label(v, unit) for v, unit in ((512, "N"), (2048, "N"), (1e-3, "s"), (250e-6, "s"), (20.0, "s"),
                                                (2**20, "B"), (4 * 2**30, "B"), (0.5, "x"), (100, "x"))] == \
        ["512", "2K", "1 ms", "250 µs", "20 s", "1 MiB", "4 GiB", "0.5×", "100×"]
    assert tick_label(1e-7, "", powers=True) == "$10^{-7}$" and tick_label(5e-7, "", powers=True) == "$5\\times10^{-7}$"


def test_series_keep_one_style_and_coinciding_ones_are_found() -> None:
    names = ["naive", "sdpa (torch)", "qkv sdpa", "qkv auto", "naive, fwd+bwd", *(f"other {i}" for i in range(12))]
    styles = series_styles(names)
    forward = [name for name in names if not name.endswith(", fwd+bwd")]
    assert len({(styles[n]["color"], styles[n]["marker"]) for n in forward}) == len(forward)
    assert styles["naive, fwd+bwd"]["color"] == styles["naive"]["color"]
    assert styles["naive, fwd+bwd"]["linestyle"] == "--" and styles["naive"]["linestyle"] == "-"
    series = {"sdpa (torch)": [(512, 1.0), (1024, 4.0), (2048, 16.0)], "qkv sdpa": [(512, 1.05), (1024, 3.9)],
              "qkv auto": [(512, 1.02), (1024, 4.1)], "naive": [(512, 2.0), (1024, 8.0)]}
    assert coinciding(series, tolerance=0.05) == [["sdpa (torch)", "qkv sdpa", "qkv auto"]]

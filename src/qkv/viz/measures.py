"""Plots of what the data commands measure: WSD F1 (:mod:`qkv.inspect.wsd`), contextuality
(:mod:`qkv.inspect.contextuality`) and attention variants' fidelity (:mod:`qkv.inspect.fidelity`)
against layer or speed."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

from qkv.files import save_figure
from qkv.viz import plotting
from qkv.viz.plotting import agg_figure, label_point, log_ticks

__all__ = ["plot_contextuality", "plot_fidelity", "plot_wsd"]


def plot_wsd(result: dict, path: str | Path) -> None:
    """F1 against layer: the average (micro and macro), each word faintly, and the MFS baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [name for name in result["layers"] if name != "last4"]
    xs = list(range(len(layers)))
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for scores in result["words"].values():
        axis.plot(xs, [scores[layer]["micro_f1"] for layer in layers], color="lightgray", linewidth=0.8)
    for metric, color in (("micro_f1", "tab:blue"), ("macro_f1", "tab:orange")):
        values = [result["average"][layer][metric] for layer in layers]
        axis.plot(xs, values, marker="o", color=color, label=f"{metric.replace('_', '-')} (average)")
        axis.axhline(result["average"]["last4"][metric], color=color, linestyle=":", linewidth=1,
                     label=f"{metric.replace('_', '-')} of the last four layers summed")
        axis.axhline(result["mfs"][metric], color=color, linestyle="--", linewidth=1,
                     label=f"most frequent sense ({metric.split('_')[0]})")
    axis.set_xticks(xs, layers)
    axis.set_xlabel("after layer (emb = the embeddings, before any layer)")
    axis.set_ylabel("F1 (%)")
    axis.set_title(f"word-sense disambiguation ({result['method']}) on {len(result['words'])} words; "
                   "grey: each word's micro-F1", fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    save_figure(figure, path, dpi=130)
    plt.close(figure)


def plot_contextuality(result: dict, path: str | Path) -> None:
    """Draw the measures of :func:`contextuality` against layer, as one PNG at ``path``.

    Raw measures are solid lines, the anisotropy-adjusted ones dashed in the same colour; the
    legend sits right of the panel, where it hides no line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    missing = [k for k in ("layers", "self_similarity", "intra_similarity", "anisotropy") if k not in result]
    if missing:
        raise ValueError(f"result lacks {missing}; pass the dict that contextuality() returns")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = range(len(result["layers"]))
    figure = Figure(figsize=(8.6, 4.2))  # Agg canvas, no pyplot: no global backend or figure state
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    lines = [
        ("self_similarity", "self-similarity", "C0", "-"),
        ("intra_similarity", "intra-sentence similarity", "C1", "-"),
        ("anisotropy", "anisotropy (random pairs)", "C7", ":"),
        ("adjusted_self_similarity", "self-similarity − anisotropy", "C0", "--"),
        ("adjusted_intra_similarity", "intra-similarity − anisotropy", "C1", "--"),
    ]
    for key, label, color, style in lines:
        if key in result:
            axis.plot(layers, result[key], style, color=color, marker="o", markersize=3, label=label)
    axis.axhline(0.0, color="black", linewidth=0.5)
    axis.set_xticks(layers, result["layers"])
    axis.set_xlabel("after layer (emb = the embeddings, before any layer)")
    axis.set_ylabel("mean cosine")
    title = "How contextual are the word vectors?"
    if result.get("model"):
        title += f" ({result['model']})"
    axis.set_title(title, fontsize=10)
    # right of the panel, off the lines; handles long enough to tell dashed from solid
    axis.legend(fontsize=8, handlelength=3.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    save_figure(figure, path, dpi=130)


def plot_fidelity(result: dict, path: str | Path) -> None:
    """Quality against speed: token cosine (and WSD F1 when measured) vs speed-up, one point per variant.

    One colour per family of variants, each point labelled with its option's value (the legend names
    the option). A panel whose values fall into two groups far apart (e.g. Linformer's collapsed WSD
    scores) gets a broken y axis, so that the group near the exact model is not squeezed.
    """
    has_wsd = result["exact"]["wsd_micro_f1"] is not None
    panels = [("token_cosine", "mean cosine of final token vectors to exact", 1.0)]
    if has_wsd:
        panels.append(("wsd_micro_f1", "WSD micro-F1 (%), last layer", result["exact"]["wsd_micro_f1"]))
    figure = agg_figure(13.5 if has_wsd else 8, 6.2)
    grid = figure.add_gridspec(1, len(panels))
    families = sorted({row["family"] for row in result["variants"]})
    colours = {family: f"C{i % 10}" for i, family in enumerate(families)}
    # "nystrom landmarks=8" -> legend "nystrom landmarks=…", point label "8"
    names = {row["family"]: re.sub(r"=\d+", "=…", row["label"]) for row in result["variants"]}
    for column, (key, ylabel, exact_value) in enumerate(panels):
        ranges = _value_ranges([row[key] for row in result["variants"]] + [exact_value])
        cells = grid[0, column].subgridspec(len(ranges), 1, hspace=0.06,
                                            height_ratios=[high - low for low, high in ranges])
        axes = [figure.add_subplot(cells[0])]
        axes += [figure.add_subplot(cells[i], sharex=axes[0]) for i in range(1, len(ranges))]
        for axis, (low, high) in zip(axes, ranges):
            for family in families:
                rows = [r for r in result["variants"] if r["family"] == family]
                axis.plot([r["speedup"] for r in rows], [r[key] for r in rows], "o-", color=colours[family],
                          markersize=5, label=names[family])
                for r in rows:
                    value = re.search(r"=(\d+)", r["label"])
                    if value and low <= r[key] <= high:
                        label_point(axis, value[1], (r["speedup"], r[key]), color=colours[family], fontsize=7.5)
            axis.axhline(exact_value, color="black", linestyle="--", linewidth=1, label="exact model")
            axis.axvline(1.0, color="grey", linestyle=":", linewidth=1)
            axis.set_ylim(low, high)
            axis.set_xscale("log")
            axis.grid(alpha=0.3)
        log_ticks(axes[-1], x="x")
        _break_marks(axes)
        axes[-1].set_xlabel("speed-up over the exact model (forward, this text)")
        axes[0].set_ylabel(ylabel)
    figure.suptitle(f"{result['model']}: efficient attention inside the model ({result['tokens']} tokens)")
    plotting.save_figure(figure, Path(path), legend=True)


def _value_ranges(values: list[float], gap_share: float = 0.5) -> list[tuple[float, float]]:
    """The y range of a panel, padded; or, when one gap between the values covers more than
    ``gap_share`` of their span, the two ranges on either side of it (upper first)."""
    values = sorted(values)
    span = values[-1] - values[0] or 1.0
    gap, i = max(((b - a, i) for i, (a, b) in enumerate(pairwise(values))), default=(0.0, 0))
    groups = [values] if gap <= gap_share * span else [values[i + 1:], values[: i + 1]]
    pad = 0.06 * sum(group[-1] - group[0] for group in groups) + 0.02 * span
    return [(group[0] - pad, group[-1] + pad) for group in groups]


def _break_marks(axes: list) -> None:
    """Draw a broken y axis between stacked axes: no spine at the cut, short diagonals on either side."""
    for upper, lower in pairwise(axes):
        upper.spines["bottom"].set_visible(False)
        lower.spines["top"].set_visible(False)
        upper.tick_params(axis="x", which="both", bottom=False, labelbottom=False)
        for axis, y in ((upper, 0.0), (lower, 1.0)):
            axis.plot([0, 1], [y, y], transform=axis.transAxes, linestyle="none", marker=[(-1, -0.5), (1, 0.5)],
                      markersize=10, color="black", markeredgewidth=1, clip_on=False)

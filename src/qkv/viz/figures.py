"""Matplotlib figures of an explain report: heatmaps, the sense trajectory, head grids.

Figures grow with the number of tokens (within limits) and label every token while the
labels fit, every k-th one (and the focus word) beyond; every colour scale has a labelled
colour bar. Past :data:`LONG_FIGURE` words, the per-word figures keep the words that matter
(those the report ranks highest) and say in their title how many they leave out and how
small those are. :func:`skipped_figures` says which figures a report cannot have, and why.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt

from qkv.files import save_figure
from qkv.inspect.explain import MAX_MATRIX_WORDS
from qkv.inspect.heads import ROLE_NAMES

__all__ = ["save_figures", "skipped_figures"]

IMPORTANCE_SCALE = 1000  # ablation importance is shown as (1 - cos) x 1000, as in the terminal and the page
ROLES = ("previous", "next", "self", "cls", "first", "sep", "punctuation", "special")
MAX_INCHES = 20  # the longest side of a figure
LONG_FIGURE = 80  # per-word figures of longer inputs keep only the words that matter
ROLLOUT_WORDS = 30  # the words a long input's rollout figure keeps


def skipped_figures(report: dict) -> dict[str, str]:
    """The figures :func:`save_figures` leaves out for ``report``: file name -> the reason, in words."""
    skipped = {}
    if report.get("attention") is None:
        skipped["heatmap_head.png"] = (f"the report keeps no full attention matrix for inputs this long (over "
                                       f"{MAX_MATRIX_WORDS} words, or streamed), only the focus word's attention")
    if not report.get("senses"):
        skipped["sense_trajectory.png"] = (f"no sense examples for '{report['focus']['token']}' (qkv explain "
                                           f"--senses, or senses= in Python)")
    if report.get("rollout") is None:
        skipped["rollout_flow.png"] = "rollout and flow need every token's attention in every layer, which a " \
                                      "streamed (long) input does not keep"
    return skipped


def _at_most(value: float) -> str:
    """``value`` rounded up to 3 decimals: a true upper bound in words."""
    return f"{math.ceil(value * 1000) / 1000:.3f}"


def _focus_columns(report: dict) -> tuple[list[int], str]:
    """The words of the focus figure: all of them, or for a long input those among the report's
    ranking of some layer (mean over heads) and the focus word, in sentence order; and what
    was left out, in words ("" if nothing)."""
    count = len(report["tokens"])
    ranked = report.get("layer_ranked")
    if count <= LONG_FIGURE or not ranked:
        return list(range(count)), ""
    kept = sorted({report["focus"]["index"], *(j for order in ranked["order"] for j in order)})
    below = max(ranked["left_out_max"])
    return kept, (f"the {len(kept)} of {count} words among the {len(ranked['order'][0])} largest weights of some "
                  f"layer; the other {count - len(kept)} get at most {_at_most(below)} in every layer")


def _ticks(labels: list[str], inches: float, fontsize: float, keep: int | None = None) -> tuple[list[int], list[str]]:
    """Positions and labels of the ticks along an axis ``inches`` long: every label while they
    fit at ``fontsize``, else every k-th one, and always label ``keep`` (the focus word)."""
    step = max(1, math.ceil(len(labels) * fontsize * 1.3 / 72 / max(inches, 0.5)))
    shown = [i for i in range(len(labels)) if i % step == 0 and (keep is None or abs(i - keep) * 2 >= step)]
    if keep is not None:
        shown = sorted({*shown, keep})
    return shown, [labels[i] for i in shown]


def _heatmap(figure, axis, matrix, rows, columns, title, *, cmap="Blues", label, fmt=None, focus=None,
             vmax=None):
    """``matrix`` as an image with its token labels (thinned to fit) and a labelled colour bar."""
    image = axis.imshow(matrix, cmap=cmap, aspect="auto", vmin=0, vmax=vmax)
    width, height = figure.get_size_inches()
    fontsize = 8 if len(columns) <= 40 else 7
    x, x_labels = _ticks(columns, width - 2.5, fontsize, focus)
    y, y_labels = _ticks(rows, height - 1.5, fontsize, focus if rows is columns else None)
    axis.set_xticks(x, x_labels, rotation=60, ha="right", fontsize=fontsize)
    axis.set_yticks(y, y_labels, fontsize=fontsize)
    bold = [*zip(axis.get_xticklabels(), x), *(zip(axis.get_yticklabels(), y) if rows is columns else [])]
    for tick, index in bold:
        if index == focus:
            tick.set_fontweight("bold")
    axis.set_title(title, fontsize=10)
    if fmt is not None:
        peak = max(max(row) for row in matrix) or 1.0
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                axis.text(j, i, fmt(value), ha="center", va="center", fontsize=6,
                          color="white" if value > 0.6 * peak else "black")
    figure.colorbar(image, ax=axis, shrink=0.8).set_label(label, fontsize=8)
    return image


def save_figures(report: dict, out: str | Path) -> list[Path]:
    """Write the report's figures as PNG files into ``out``; return their paths.

    The figures :func:`skipped_figures` names are left out. Tokens that the font cannot
    draw (emoji) come out as empty boxes, without a warning for each.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        return _save_figures(report, out, skipped_figures(report))


def _save_figures(report: dict, out: Path, skipped: dict[str, str]) -> list[Path]:
    tokens, focus = report["tokens"], report["focus"]
    layers, heads, count = report["model"]["layers"], report["model"]["heads"], len(report["tokens"])
    paths = []

    def figure_and_axes(width: float, height: float, **options):
        return plt.subplots(figsize=(min(width, MAX_INCHES), min(height, MAX_INCHES)), layout="constrained",
                            **options)

    def save(figure, name: str) -> None:
        path = out / name
        save_figure(figure, path, dpi=130)
        plt.close(figure)
        paths.append(path)

    walk = report["walkthrough"]
    if "heatmap_head.png" not in skipped:
        side = max(6.0, 2.5 + 0.16 * count)  # about 0.16 inch a token: room for an 8-point label
        figure, axis = figure_and_axes(side + 1, side)
        _heatmap(figure, axis, report["attention"][walk["layer"]][walk["head"]], tokens, tokens,
                 f"attention weights, layer {walk['layer']} head {walk['head']} (rows look at columns)",
                 label="attention weight (each row sums to 1)", focus=focus["index"])
        save(figure, "heatmap_head.png")

    columns, left_out = _focus_columns(report)
    focus_by_layer = [[sum(c) / len(c) for c in zip(*by_head)] for by_head in report["focus_attention"]]
    focus_by_layer = [[row[j] for j in columns] for row in focus_by_layer]
    numbers = len(columns) <= 40  # each cell's weight written in it while the cells are wide enough
    figure, axis = figure_and_axes(max(7.0, 2.5 + (0.32 if numbers else 0.16) * len(columns)), 3.5)
    title = f"where '{focus['token']}' looks (mean over heads)" + (f"\n{left_out}" if left_out else "")
    _heatmap(figure, axis, focus_by_layer, [f"layer {i}" for i in range(layers)], [tokens[j] for j in columns],
             title, label="attention weight", fmt=(lambda v: f"{v:.2f}") if numbers else None,
             focus=columns.index(focus["index"]))
    save(figure, "focus_attention.png")

    if "sense_trajectory.png" not in skipped:
        senses = report["senses"]
        figure, axis = figure_and_axes(6, 3.8)
        xs = range(len(senses["cosine"]))
        for s, name in enumerate(senses["names"]):
            axis.plot(xs, [row[s] for row in senses["cosine"]], marker="o", label=f"{name} prototype")
        if senses["contrast_cosine"] is not None:
            axis.plot(xs, senses["contrast_cosine"], marker="s", linestyle="--", color="gray",
                      label="same word, contrast sentence")
        # Hidden state i is the output of layer i - 1 (layers numbered from 0, as in the other figures).
        axis.set_xticks(list(xs), ["emb", *(str(i) for i in range(len(xs) - 1))])
        axis.set_xlabel("after layer (emb = embeddings, before any attention)")
        axis.set_ylabel("cosine similarity")
        low, high = axis.get_ylim()
        axis.set_ylim(low, min(high, 1.0))  # a cosine is at most 1
        last = sorted(senses["cosine"][-1], reverse=True)
        axis.set_title(f"cosine of '{focus['token']}' to each sense's prototype: the gap between the lines is how "
                       f"far it leans\nto one sense ({senses['predicted'][-1]} after the last layer, by "
                       f"{last[0] - last[1]:.3f})", fontsize=9)
        axis.legend(fontsize=8)
        save(figure, "sense_trajectory.png")

    roles = report["head_roles"]
    names = [n for n in ROLES if n in roles]
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = figure_and_axes(2.2 * columns + 1.2, 2.5 * rows + 0.6, nrows=rows, ncols=columns,
                                   squeeze=False)
    for k, axis in enumerate(axes.flat):
        if k >= len(names):
            axis.set_visible(False)
            continue
        image = axis.imshow(roles[names[k]], cmap="Oranges", vmin=0, vmax=1, aspect="auto")
        axis.set_title(ROLE_NAMES[names[k]], fontsize=8)
        axis.set_xticks(range(heads), [str(h) for h in range(heads)], fontsize=6)
        axis.set_xlabel("head", fontsize=8)
        axis.set_yticks(range(layers), [str(i) for i in range(layers)], fontsize=7)
        if k % columns == 0:
            axis.set_ylabel("layer")
    figure.colorbar(image, ax=axes, shrink=0.8).set_label("share of attention (0 to 1)", fontsize=8)
    overlap = " (all special tokens: [CLS] and [SEP] together)" if "special" in names else ""
    figure.suptitle("head roles (Clark et al., 2019): each panel, one head's share of attention to that kind of "
                    f"token,\naveraged over the sentence's tokens{overlap}", fontsize=10)
    save(figure, "head_roles.png")

    figure, axis = figure_and_axes(6.5, 3.2)
    _heatmap(figure, axis, [[v * IMPORTANCE_SCALE for v in row] for row in report["ablation"]],
             [f"layer {i}" for i in range(layers)], [f"h{h}" for h in range(heads)],
             f"head importance: how far '{focus['token']}' moves when one head is zeroed", cmap="Reds",
             label=f"(1 - cos) x {IMPORTANCE_SCALE}")
    save(figure, "head_ablation.png")

    if "rollout_flow.png" not in skipped:
        rollout, flow = report["rollout"], report.get("flow")
        words, left_out = list(range(count)), ""
        if count > LONG_FIGURE:  # the words with the largest rollout, in sentence order
            order = report.get("rollout_order") or sorted(words, key=lambda j: -rollout[j])
            words = sorted(order[:ROLLOUT_WORDS])
            left_out = (f"\nthe {ROLLOUT_WORDS} of {count} words with the largest rollout; the other "
                        f"{count - ROLLOUT_WORDS} get at most {_at_most(rollout[order[ROLLOUT_WORDS]])}")
        shown = len(words)
        figure, axis = figure_and_axes(max(7.0, 2.5 + 0.16 * shown), 3)
        xs = range(shown)
        axis.bar([x - 0.2 for x in xs], [rollout[j] for j in words], width=0.4, label="rollout")
        if flow:
            axis.bar([x + 0.2 for x in xs], [flow[j] for j in words], width=0.4, label="flow (normalised)")
        axis.axhline(1 / count, color="gray", linestyle=":", linewidth=1, label=f"even share 1/{count}")
        fontsize = 8 if shown <= 40 else 7
        keep = words.index(focus["index"]) if focus["index"] in words else None
        x, labels = _ticks([tokens[j] for j in words], min(MAX_INCHES, 2.5 + 0.16 * shown) - 1.5, fontsize, keep)
        axis.set_xticks(x, labels, rotation=60, ha="right", fontsize=fontsize)
        axis.set_ylabel("share reaching the focus word", fontsize=8)
        flat = "".join(f"\n{note}" for note in report.get("flat_notes", []))
        axis.set_title(f"what reaches '{focus['token']}' through all layers (Abnar & Zuidema, 2020){left_out}{flat}",
                       fontsize=10 if not (flat or left_out) else 8)
        axis.legend(fontsize=8)
        save(figure, "rollout_flow.png")
    return paths

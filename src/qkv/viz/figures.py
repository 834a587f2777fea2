"""Matplotlib figures of an explain report: heatmaps, the sense trajectory, head grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt

__all__ = ["save_figures"]


def _heatmap(axis, matrix, rows, columns, title, cmap="Blues", fmt=None):
    image = axis.imshow(matrix, cmap=cmap, aspect="auto")
    axis.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=8)
    axis.set_yticks(range(len(rows)), rows, fontsize=8)
    axis.set_title(title, fontsize=10)
    if fmt is not None:
        peak = max(max(row) for row in matrix) or 1.0
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                axis.text(j, i, fmt(value), ha="center", va="center", fontsize=6,
                          color="white" if value > 0.6 * peak else "black")
    return image


def save_figures(report: dict, out: str | Path) -> list[Path]:
    """Write the report's figures as PNG files into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokens, focus = report["tokens"], report["focus"]
    layers, heads = report["model"]["layers"], report["model"]["heads"]
    paths = []

    def save(figure, name: str) -> None:
        path = out / name
        figure.tight_layout()
        figure.savefig(path, dpi=130)
        plt.close(figure)
        paths.append(path)

    walk = report["walkthrough"]
    if report.get("attention") is not None:  # long inputs have no (N, N) matrices
        figure, axis = plt.subplots(figsize=(6, 5))
        image = _heatmap(axis, report["attention"][walk["layer"]][walk["head"]], tokens, tokens,
                         f"attention weights, layer {walk['layer']} head {walk['head']} (rows look at columns)")
        figure.colorbar(image, ax=axis, shrink=0.8)
        save(figure, "heatmap_head.png")

    if len(tokens) <= 40:
        focus_by_layer = [[sum(c) / len(c) for c in zip(*by_head)] for by_head in report["focus_attention"]]
        figure, axis = plt.subplots(figsize=(7, 3.5))
        _heatmap(axis, focus_by_layer, [f"layer {i}" for i in range(layers)], tokens,
                 f"where '{focus['token']}' looks (mean over heads)", fmt=lambda v: f"{v:.2f}")
        save(figure, "focus_attention.png")

    if report.get("senses"):
        senses = report["senses"]
        figure, axis = plt.subplots(figsize=(6, 3.8))
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
        axis.set_title(f"'{focus['token']}' moving toward its sense, layer by layer", fontsize=10)
        axis.legend(fontsize=8)
        save(figure, "sense_trajectory.png")

    roles = report["head_roles"]
    names = [n for n in ("previous", "next", "self", "cls", "first", "sep", "punctuation") if n in roles]
    figure, axes = plt.subplots(1, len(names), figsize=(2.2 * len(names), 2.8), sharey=True, squeeze=False)
    axes = axes[0]
    for axis, name in zip(axes, names):
        axis.imshow(roles[name], cmap="Oranges", vmin=0, vmax=1, aspect="auto")
        axis.set_title(name, fontsize=9)
        axis.set_xticks(range(heads), [str(h) for h in range(heads)], fontsize=6)
        axis.set_xlabel("head", fontsize=8)
    axes[0].set_yticks(range(layers), [str(i) for i in range(layers)], fontsize=7)
    axes[0].set_ylabel("layer")
    figure.suptitle("head roles: share of attention to each kind of token (Clark et al., 2019)", fontsize=10)
    save(figure, "head_roles.png")

    figure, axis = plt.subplots(figsize=(6, 3.2))
    image = _heatmap(axis, report["ablation"], [f"layer {i}" for i in range(layers)],
                     [f"h{h}" for h in range(heads)],
                     f"how far '{focus['token']}' moves when one head is zeroed (1 - cos)", cmap="Reds")
    figure.colorbar(image, ax=axis, shrink=0.8)
    save(figure, "head_ablation.png")

    if report.get("rollout") is None:
        return paths
    figure, axis = plt.subplots(figsize=(7, 3))
    xs = range(len(tokens))
    axis.bar([x - 0.2 for x in xs], report["rollout"], width=0.4, label="rollout")
    if report.get("flow"):
        axis.bar([x + 0.2 for x in xs], report["flow"], width=0.4, label="flow (normalised)")
    axis.set_xticks(list(xs), tokens, rotation=60, ha="right", fontsize=8)
    axis.set_title(f"what reaches '{focus['token']}' through all layers (Abnar & Zuidema, 2020)", fontsize=10)
    axis.legend(fontsize=8)
    save(figure, "rollout_flow.png")
    return paths

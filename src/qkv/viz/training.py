"""Matplotlib figures of ``qkv train-demo``: the training curves and the attention on an example sentence.

Both read the JSON of :meth:`qkv.train.DemoResult.to_json`, so a saved run can be drawn again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
from rich.table import Table

from qkv.files import save_figure

__all__ = ["plot_training", "plot_attention_example", "save_training_figures", "training_tables"]

LAYER_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def plot_training(result: dict, path: str | Path) -> Path:
    """Loss, held-out accuracy and attention to the cue against steps, main run and control; PNG at ``path``."""
    main, control, final = result["main"], result["control"], result["final"]
    steps = [entry["step"] for entry in main["log"]]
    figure, (loss_axis, accuracy_axis, attention_axis) = plt.subplots(1, 3, figsize=(14, 4))

    loss_axis.plot(steps, [max(e["loss"], 1e-6) for e in main["log"]], label="training loss")
    loss_axis.plot(steps, [max(e["heldout_loss"], 1e-6) for e in main["log"]], label="held-out loss")
    if control is not None:
        loss_axis.plot([e["step"] for e in control["log"]], [e["loss"] for e in control["log"]], color="gray",
                       linestyle="--", label="control (no attention), training")
    loss_axis.set_yscale("log")
    top = max(max(e["loss"], e["heldout_loss"]) for e in main["log"])
    loss_axis.set_ylim(top=30 * top)  # room for the legend above the curves
    loss_axis.set_xlabel("step")
    loss_axis.set_title("cross-entropy", fontsize=10)
    loss_axis.legend(fontsize=8, loc="upper right")

    accuracy_axis.plot(steps, [e["accuracy"] for e in main["log"]], label="model")
    if control is not None:
        accuracy_axis.plot([e["step"] for e in control["log"]], [e["accuracy"] for e in control["log"]],
                           color="gray", linestyle="--", label="control: each token sees only itself")
    accuracy_axis.axhline(final["chance"], color="black", linewidth=0.8, linestyle=":", label="chance")
    accuracy_axis.set_ylim(0, 1.02)
    accuracy_axis.set_xlabel("step")
    accuracy_axis.set_title("held-out accuracy (unseen templates)", fontsize=10)
    accuracy_axis.legend(fontsize=8, loc="lower right")

    best = final["best_head"]
    layers = len(main["log"][0]["attention_to_cue"])
    heads = len(main["log"][0]["attention_to_cue"][0])
    for layer in range(layers):
        others = [head for head in range(heads) if (layer, head) != (best["layer"], best["head"])]
        for head in others:
            attention_axis.plot(steps, [e["attention_to_cue"][layer][head] for e in main["log"]],
                                color=LAYER_COLOURS[layer % len(LAYER_COLOURS)], linewidth=0.8, alpha=0.6,
                                label=f"layer {layer}, other heads" if head == others[0] else None)
    attention_axis.plot(steps, [e["attention_to_cue"][best["layer"]][best["head"]] for e in main["log"]],
                        color="black", linewidth=2.2, label=f"best head (layer {best['layer']}, head {best['head']})")
    attention_axis.axhline(final["uniform_attention"], color="black", linewidth=0.8, linestyle=":",
                           label=f"uniform 1/N = {final['uniform_attention']:.3f}")
    attention_axis.set_ylim(0, 1.02)
    attention_axis.set_xlabel("step")
    attention_axis.set_title("attention from the ambiguous word to its cue (held-out mean)", fontsize=10)
    attention_axis.legend(fontsize=7, loc="best", framealpha=0.9)

    figure.suptitle(f"training from scratch: {layers} layers x {heads} heads, seed {result['config']['seed']}",
                    fontsize=11)
    figure.tight_layout()
    path = Path(path)
    save_figure(figure, path, dpi=130)
    plt.close(figure)
    return path


def plot_attention_example(result: dict, path: str | Path) -> Path:
    """The trained model's attention on the example sentence; PNG at ``path``.

    Left: the best head's full (N, N) matrix (rows look at columns). Right: the ambiguous
    word's row in every layer and head.
    """
    example, best = result["example"], result["final"]["best_head"]
    tokens, word, cue = example["tokens"], example["word_index"], example["cue_index"]
    attention = example["attention"]  # (L, H, N, N)
    labels = [f"[{t}]" if i in (word, cue) else t for i, t in enumerate(tokens)]
    figure, (matrix_axis, rows_axis) = plt.subplots(1, 2, figsize=(13, 5.2),
                                                    gridspec_kw={"width_ratios": [1.0, 1.25]})

    matrix = attention[best["layer"]][best["head"]]
    image = matrix_axis.imshow(matrix, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    matrix_axis.set_xticks(range(len(tokens)), labels, rotation=60, ha="right", fontsize=8)
    matrix_axis.set_yticks(range(len(tokens)), labels, fontsize=8)
    matrix_axis.add_patch(plt.Rectangle((-0.5, word - 0.5), len(tokens), 1, fill=False, edgecolor="red", linewidth=1.5))
    matrix_axis.add_patch(plt.Rectangle((cue - 0.5, -0.5), 1, len(tokens), fill=False, edgecolor="orange",
                                        linewidth=1.5))
    matrix_axis.set_title(f"layer {best['layer']}, head {best['head']} (the best head): rows look at columns",
                          fontsize=10)
    figure.colorbar(image, ax=matrix_axis, shrink=0.8)

    rows = [attention[layer][head][word] for layer in range(len(attention)) for head in range(len(attention[0]))]
    names = [f"L{layer} H{head}" for layer in range(len(attention)) for head in range(len(attention[0]))]
    rows_axis.imshow(rows, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    rows_axis.set_xticks(range(len(tokens)), labels, rotation=60, ha="right", fontsize=8)
    rows_axis.set_yticks(range(len(names)), names, fontsize=8)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            rows_axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                           color="white" if value > 0.6 else "black")
    rows_axis.set_title(f"where '{tokens[word]}' looks, every layer and head", fontsize=10)
    figure.suptitle(f"{' '.join(tokens)}\nsense {example['sense']}, predicted {example['predicted']}; "
                    f"red: the ambiguous word's row, orange: the cue's column", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    save_figure(figure, path, dpi=130)
    plt.close(figure)
    return path


def save_training_figures(result: dict, out: str | Path) -> list[Path]:
    """Write ``training.png`` and ``attention_example.png`` into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [plot_training(result, out / "training.png"), plot_attention_example(result, out / "attention_example.png")]

def training_tables(result: Any, data: dict, config: Any, threads: int) -> list[Table]:
    """``qkv train-demo``'s tables: held-out accuracy and attention to the cue at roughly geometric
    steps (with the control run), then the final figures; from :func:`qkv.train.train_demo`'s
    ``result``, its ``data`` (``result.to_json()``), the run's ``config`` and its torch ``threads``."""
    final = data["final"]
    best = final["best_head"]
    main_log, control_log = result.main.log, result.control.log if result.control else []
    control_at = {entry.step: entry for entry in control_log}
    # Rows at roughly geometric steps: the interesting part, attention finding the cue, comes early.
    steps = [entry.step for entry in main_log]
    targets = [0] + [steps[1] * (steps[-1] / steps[1]) ** (i / 11) for i in range(12)] if len(steps) > 1 else [0]
    picked = sorted({min(range(len(steps)), key=lambda i: abs(steps[i] - target)) for target in targets})
    table = Table(title=f"training from scratch ({config.num_layers} layers x {config.num_heads} heads, width "
                        f"{config.d_model}, seed {config.seed}): held-out sentences on unseen templates")
    for column in ("step", "training loss", "held-out accuracy", f"attention to cue, L{best['layer']} "
                   f"H{best['head']}", "best head now", "control accuracy"):
        table.add_column(column, justify="right")
    for index in picked:
        entry = main_log[index]
        control = control_at.get(entry.step)
        table.add_row(str(entry.step), f"{entry.loss:.4f}", f"{entry.accuracy:.3f}",
                      f"{entry.attention_to_cue[best['layer']][best['head']]:.3f}",
                      f"{entry.best_attention_to_cue:.3f} (L{entry.best_head[0]} H{entry.best_head[1]})",
                      "-" if control is None else f"{control.accuracy:.3f}")
    summary = Table(title="final figures")
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    summary.add_column("for comparison")
    summary.add_row("held-out accuracy", f"{final['accuracy']:.4f}", f"chance {final['chance']:.2f}")
    summary.add_row(f"attention from the word to its cue, best head (L{best['layer']} H{best['head']})",
                    f"{final['attention_to_cue']:.3f}",
                    f"{final['initial_attention_to_cue']:.3f} at step 0; "
                    f"uniform 1/N = {final['uniform_attention']:.3f}")
    summary.add_row("the same, the most attentive head per sentence", f"{final['max_head_attention_to_cue']:.3f}", "")
    if final["control_accuracy"] is not None:
        summary.add_row("control accuracy (each token sees only itself)", f"{final['control_accuracy']:.4f}",
                        f"chance {final['chance']:.2f}")
    summary.add_row("training time, both runs", f"{final['seconds']:.1f} s",
                    f"{threads} torch thread(s)")
    return [table, summary]

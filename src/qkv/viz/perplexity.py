"""The figure of ``qkv perplexity``: perplexity against position, one line per attention variant."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from qkv.viz.terminal import markup_safe

__all__ = ["plot_perplexity", "perplexity_table", "DEFAULT_SPAN"]

DEFAULT_SPAN = 256  # tokens per point of the running perplexity


def plot_perplexity(result: dict, path: str | Path, span: int = DEFAULT_SPAN) -> None:
    """Running perplexity (``exp`` of the mean loss over the last ``span`` tokens) against position,
    on a log y axis, from the point where the span holds at least 64 tokens; one line per variant
    of ``result`` (:func:`qkv.inspect.perplexity.perplexity`), a window's colour by its size (solid
    alone, dashed with sinks), a dotted line at the model's context length when the text passes it.
    """
    from qkv.inspect.perplexity import running_perplexity
    from qkv.viz.plotting import agg_figure, log_ticks, save_figure

    span = max(1, min(span, result["scored"]))
    figure = agg_figure(10, 5.6)
    axis = figure.add_subplot(1, 1, 1)
    skip = min(span, 64) - 1  # the first points would average a handful of tokens and dwarf the rest
    for row in result["variants"]:
        positions, values = running_perplexity(row["losses"], span)
        positions, values = positions[skip:], values[skip:]
        axis.plot(positions, values, label=f"{row['name']}  ({row['perplexity']:.3g})", **_style(row))
    context = result.get("max_position_embeddings")
    if context and context < result["tokens"]:
        axis.axvline(context, color="grey", linestyle=":", linewidth=1)
        axis.annotate("the model's context", (context, 1), xycoords=("data", "axes fraction"), fontsize=8,
                      color="grey", xytext=(3, -10), textcoords="offset points")
    axis.set_yscale("log")
    axis.set_xlabel("position in the text (tokens)")
    axis.set_ylabel(f"perplexity of the last {span} tokens (log)")
    axis.set_title(f"{result.get('model') or 'model'}: perplexity against position, {result['tokens']} tokens\n"
                   f"(legend: perplexity of the whole text)", fontsize=10)
    axis.grid(alpha=0.3, which="both")
    log_ticks(axis, y="")
    save_figure(figure, Path(path), legend=True)


def _style(row: dict) -> dict:
    """Full attention black and thick; a window's colour by its size, solid alone, dashed with 4 sinks or
    more, dotted with fewer; streaming and recompute by their window too, each in its own colour; other
    backends their own colour."""
    from qkv.viz.plotting import PALETTE

    if row["name"] == "full":
        return {"color": "black", "linewidth": 2.2}
    window, sinks = row["window"] or 1, row["sinks"]
    if row["family"] in ("window", "window+sinks", "stream", "recompute"):
        shift = {"stream": 4, "recompute": 6}.get(row["family"], 0)  # the same window's stream and recompute apart
        colour = PALETTE[(window.bit_length() + shift) % len(PALETTE)]
        linestyle = "-" if not sinks else ("--" if sinks >= 4 else ":")
        if row["family"] == "recompute":
            linestyle = "-."
        return {"color": colour, "linestyle": linestyle, "linewidth": 1.3}
    return {"color": PALETTE[{"linear": 3, "performer": 4}.get(row["family"], 5)], "linewidth": 1.3}

def perplexity_table(result: dict, model_name: str, source: str) -> Table:
    """``qkv perplexity``'s table: each variant's perplexity, its ratio to full attention and its mean
    loss, from :func:`qkv.inspect.perplexity.perplexity`'s result; ``source`` names the text."""
    table = Table(title=f"{markup_safe(model_name)}: next-token perplexity on {result['tokens']} tokens of "
                        f"{markup_safe(source)}")
    for column in ("variant", "evaluation", "perplexity", "ratio to full", "mean loss"):
        table.add_column(column, justify="left" if column in ("variant", "evaluation") else "right")
    for row in result["variants"]:
        ratio = "-" if row["ratio_to_full"] is None else f"{row['ratio_to_full']:.3f}"
        table.add_row(row["name"], row["evaluation"], f"{row['perplexity']:.3f}", ratio, f"{row['mean_loss']:.4f}",
                      style="bold" if row["name"] == "full" else None)
    return table

"""Views of causal evidence: patching grids (terminal, PNG, page) and deletion curves (PNG).

The grids show the share of the clean effect each patch restores,
``(patched - corrupted) / (clean - corrupted)``: 0 is the corrupted run, 1 the clean one, so
one colour scale reads every site and every metric.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
from rich.table import Table
from rich.text import Text

from qkv.files import save_figure, write_text
from qkv.viz.html import content_security_policy, json_for_script, page_asset, show_controls
from qkv.viz.terminal import markup_safe

__all__ = ["faithfulness_table", "printable", "patching_tables", "plot_patching", "patching_page", "save_patching_page",
           "plot_deletion_curves"]

_SITE_TITLES = {
    "resid": "residual stream entering each layer, patched one position at a time",
    "z": "each head's output (attn.z), patched at every position",
    "weights": "each head's attention weights, patched",
}


def printable(token: str) -> str:
    """A token without control characters (the terminal must not obey them)."""
    return "".join(c if c.isprintable() else "�" for c in token)


def _cell(value: float | None) -> Text:
    """A share restored, coloured by its size: green toward the clean run, red away from it."""
    if value is None or math.isnan(value):
        return Text("·", style="dim")
    strength = min(1.0, abs(value))
    style = ("bold green" if value >= 0.5 else "green" if value >= 0.2 else "red" if value <= -0.2
             else "dim" if strength < 0.05 else "")
    return Text(f"{value:+.2f}", style=style)


def patching_tables(result: dict[str, Any]) -> list[Table]:
    """Rich tables of :meth:`qkv.inspect.patching.PatchingResult.to_dict`: one per site, layer rows."""
    tables = []
    tokens = [printable(t) for t in result["corrupted"]["tokens"]]
    for site, data in result["sites"].items():
        grid = data["restored"]
        table = Table(title=f"{_SITE_TITLES[site]}: share of the clean effect restored", title_justify="left")
        table.add_column("layer", justify="right")
        columns = tokens if site == "resid" else [f"h{h}" for h in range(len(grid[0]))]
        for column in columns:
            table.add_column(Text(column), justify="right", overflow="fold")  # a Text: tokens are not markup
        for layer, row in enumerate(grid):
            table.add_row(str(layer), *[_cell(v) for v in row])
        tables.append(table)
    return tables


def plot_patching(result: dict[str, Any], path: str | Path) -> Path:
    """One heatmap per site of the share restored (layers down, positions or heads across); save to ``path``."""
    sites = list(result["sites"])
    tokens = result["corrupted"]["tokens"]
    layers = len(next(iter(result["sites"].values()))["restored"])
    widths = [max(4.0, 0.45 * len(tokens) + 1.5) if s == "resid" else
              max(4.0, 0.4 * len(result["sites"][s]["restored"][0]) + 1.5) for s in sites]
    height = min(20.0, max(3.0, 0.28 * layers + 1.8))
    figure, axes = plt.subplots(1, len(sites), figsize=(sum(widths), height), squeeze=False,
                                gridspec_kw={"width_ratios": widths})
    for axis, site in zip(axes[0], sites):
        grid = [[float("nan") if v is None else v for v in row] for row in result["sites"][site]["restored"]]
        image = axis.imshow(grid, cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        axis.set_ylabel("layer")
        if site == "resid":
            axis.set_xticks(range(len(tokens)), tokens, rotation=60, ha="right", fontsize=8)
            axis.set_xlabel("corrupted position (grey: no partner in the clean input)")
        else:
            axis.set_xlabel("head")
        axis.set_facecolor("#cccccc")
        if layers > 16:
            axis.set_yticks(range(0, layers, max(1, layers // 10)))
        axis.set_title(_SITE_TITLES[site], fontsize=9)
        figure.colorbar(image, ax=axis, label="share of the clean effect restored", shrink=0.8)
    figure.suptitle(f"patching {result['clean']['text']!r} into {result['corrupted']['text']!r}: "
                    f"{result['metric']} (clean {result['clean']['metric']:.3f}, "
                    f"corrupted {result['corrupted']['metric']:.3f})", fontsize=10)
    figure.tight_layout()
    saved = save_figure(figure, path, dpi=110)
    plt.close(figure)
    return saved



def patching_page(result: dict[str, Any]) -> str:
    """A self-contained HTML page of the patching grids (its HTML, CSS and script from viz/page/patching.*)."""
    script = page_asset("patching.js")
    csp = content_security_policy(script)
    title = html.escape(show_controls(f"patching: {result['clean']['text']} → {result['corrupted']['text']}"))
    values = {"csp": html.escape(csp, quote=True), "title": title, "style": page_asset("patching.css"),
              "script": script, "data": json_for_script(result)}
    return re.sub(r"\{\{(csp|title|style|script|data)\}\}", lambda m: values[m.group(1)], page_asset("patching.html"))


def save_patching_page(result: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`patching_page` to ``path`` (atomically)."""
    write_text(path, patching_page(result))
    return Path(path).expanduser()


def plot_deletion_curves(report: dict[str, Any], path: str | Path) -> Path:
    """The mean metric after deleting each method's top k tokens, seed sentence and WSD sentences; save to ``path``."""
    parts = [p for p in ("seed", "wsd") if p in report]
    figure, axes = plt.subplots(1, len(parts), figsize=(6.2 * len(parts), 4.4), squeeze=False)
    for axis, part in zip(axes[0], parts):
        summary = report[part]
        for method in summary["methods"]:
            entry = summary["all"][method]
            if entry["auc"] is None:
                continue
            style = {"random": ":", "attention": "--", "rollout": "--", "flow": "--"}.get(method, "-")
            axis.plot(range(len(entry["curve"])), entry["curve"], style, marker="o", markersize=3,
                      label=f"{method.replace('_', ' ')} (AUC {entry['auc']:+.4f})")
        axis.set_xticks(range(report[part]["max_k"] + 1))
        axis.set_xlabel("tokens deleted (top k by the method)")
        axis.set_ylabel("cosine to the sense prototype" + (" (mean)" if part == "wsd" else ""))
        where = (f"{report['sentence']!r}" if part == "seed" else f"{summary['sentences']} CoarseWSD-20 sentences")
        axis.set_title(where, fontsize=9)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.suptitle("deletion curves: a faithful ranking makes the metric fall fastest", fontsize=10)
    figure.tight_layout()
    saved = save_figure(figure, path, dpi=110)
    plt.close(figure)
    return saved

def faithfulness_table(report: dict, model_name: str, max_k: int) -> Table:
    """``qkv faithfulness``'s table: each method's deletion AUC on the seed sentence (and on the WSD
    sentences, with the share of sentences where it beats a random ranking), the most faithful in bold,
    from :func:`qkv.inspect.faithfulness.faithfulness`'s report."""
    parts = [p for p in ("seed", "wsd") if p in report]
    table = Table(title=f"{markup_safe(model_name)}: deletion AUC, the mean drop of the focus word's cosine to its "
                        f"sense prototype as each method's top 1..{max_k} tokens are dropped from attention; larger "
                        f"is more faithful")
    table.add_column("method")
    table.add_column("seed sentence", justify="right")
    if "wsd" in report:
        table.add_column(f"{report['wsd']['sentences']} WSD sentences", justify="right")
        table.add_column("beats random", justify="right")
    for method in report["seed"]["methods"]:
        cells = [f"{report['seed']['all'][method]['auc']:+.4f}" if report["seed"]["all"][method]["auc"] is not None
                 else "-"]
        if "wsd" in report:
            entry = report["wsd"]["all"][method]
            cells.append("-" if entry["auc"] is None else f"{entry['auc']:+.4f} ± {entry['auc_se']:.4f}"
                         + ("" if entry["sentences"] == report["wsd"]["sentences"] else f" (n={entry['sentences']})"))
            cells.append("" if "beats_random" not in entry else f"{100 * entry['beats_random']:.0f}%")
        style = "bold" if any(report["best"][p] == method for p in parts) else None
        table.add_row(method.replace("_", " "), *cells, style=style)
    return table

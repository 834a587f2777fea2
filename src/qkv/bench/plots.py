"""The benchmarks' plots, each drawn from a result as its JSON holds it, written beside that JSON.

:func:`write_plots` draws every plot of one result: for the attention sweep, time and peak
memory against N (one panel per masking variant) and max error against time / SDPA time; for
``qkv bench model``, the time per generated token; for ``qkv bench triton``, TFLOP/s against N.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qkv.bench.points import label, variant_rows
from qkv.viz.plotting import (
    agg_figure,
    label_point,
    log_log,
    log_ticks,
    note_coinciding,
    save_figure,
    series_styles,
    size_label,
)

__all__ = ["write_plots", "timing_label"]


def timing_label(row: dict) -> str:
    """A ``qkv bench triton`` timing's contender, causal or not."""
    return f"{row['backend']}{', causal' if row['causal'] else ''}"


def variant_axes(figure, variants: list[str]):
    columns = 2 if len(variants) > 1 else 1
    rows = (len(variants) + columns - 1) // columns
    return [figure.add_subplot(rows, columns, i + 1) for i in range(len(variants))]


def machine_label(result: dict) -> str:
    """The machine, torch version and date of a result, as plot titles give them."""
    machine = result["machine"]
    return f"{machine.get('gpu') or machine['cpu']}, torch {machine['torch']}, {result.get('date', '')}"


def plot_against_n(result: dict, key: str, ylabel: str, unit: str, path: Path) -> None:
    """``key`` against N, log-log, one panel per variant, one line per contender and mode; each
    contender keeps its colour and marker in every panel, its fwd+bwd line dashed; one legend."""
    variants = [v["name"] for v in result["config"]["variants"]]
    measured = {label(r["backend"], r["mode"]) for r in result["rows"] if r.get(key)}
    names = [name for name in dict.fromkeys(label(r["backend"], r["mode"]) for r in result["rows"]) if name in measured]
    styles = series_styles(names)
    figure = agg_figure(15, 4.6 * ((len(variants) + 1) // 2))
    for axis, variant in zip(variant_axes(figure, variants), variants):
        series = {}
        for name, by_n in variant_rows(result["rows"], variant).items():
            points = sorted((n, r[key]) for n, r in by_n.items() if r.get(key))
            if points:
                series[name] = points
                dotted = {"linestyle": ":"} if "stats" in name else {}
                axis.plot(*zip(*points), label=name, **(styles[name] | dotted))
        log_log(axis, "sequence length N", ylabel, variant, x="N", y=unit)
        note_coinciding(axis, series)
    figure.suptitle(f"attention, B=1 H={result['config']['heads']} D={result['config']['head_dim']} "
                    f"{result['config']['dtype']} on {machine_label(result)}")
    save_figure(figure, path, dpi=110, legend=True, order=names)


def error_point(result: dict, variant: str) -> int | None:
    """The largest N of a variant where SDPA's forward ran and some error was measured."""
    rows = [r for r in result["rows"] if r["variant"] == variant]
    base = {r["n"] for r in rows if r["backend"] == "sdpa (torch)" and r["mode"] == "fwd" and r["time_s"]}
    measured = {r["n"] for r in rows if r["max_error"] is not None}
    return max(base & measured, default=None)


def plot_error_vs_time(result: dict, path: Path) -> None:
    """Max error against time / SDPA time at one N per variant: one labelled point per contender."""
    variants = [v["name"] for v in result["config"]["variants"]]
    figure = agg_figure(13, 4.6 * ((len(variants) + 1) // 2))
    for axis, variant in zip(variant_axes(figure, variants), variants):
        n = error_point(result, variant)
        if n is None:
            axis.set_title(f"{variant}: no N with both SDPA and an error measured")
            axis.set_axis_off()
            continue
        for row in result["rows"]:
            if row["variant"] == variant and row["n"] == n and row["max_error"] is not None and row["ratio_to_sdpa"]:
                x, y = row["ratio_to_sdpa"], max(row["max_error"], 1e-12)
                axis.scatter([x], [y], s=18, color="tab:blue" if row["exact"] else "tab:red",
                             label="exact backend" if row["exact"] else "approximate backend")
                label_point(axis, row["backend"], (x, y))
        axis.margins(0.12)
        log_log(axis, "time / sdpa (torch) time", "max |out - exact|", f"{variant}, N={size_label(n)}",
                x="x", y="", min_decades=1)  # exact backends' errors differ by a few %: not spread over the panel
    figure.suptitle(f"error against time, forward, {result['config']['dtype']} on {machine_label(result)}")
    save_figure(figure, path, dpi=110, legend=True)


def plot_generation(result: dict, path: Path) -> None:
    """Per-token time against length, with and without the KV cache."""
    figure = agg_figure(6, 4)
    axis = figure.add_subplot()
    for name, curve in result["generation"]["curves"].items():
        axis.plot(range(2, len(curve) + 2), curve, label=name)
    axis.set(xlabel="sequence length (tokens)", ylabel="time for the next token", yscale="log",
             title=f"tiny GPT-2 generation (4 layers, d=128), {result['config']['device']}")
    log_ticks(axis, y="s")
    axis.grid(True, which="major", alpha=0.35)
    axis.legend(loc="best")
    save_figure(figure, path)


def write_plots(result: dict, json_path: Path) -> list[Path]:
    """The plots of one result, beside its JSON: ``<stem>-<plot>.png``."""
    stem = json_path.with_suffix("")
    plots: list[tuple[str, Callable[[Path], None]]] = []
    if result["benchmark"] == "attention":
        plots = [("time", lambda p: plot_against_n(result, "time_s", "median time per call", "s", p)),
                 ("memory", lambda p: plot_against_n(result, "peak_bytes", "peak tensor memory", "B", p)),
                 ("error", lambda p: plot_error_vs_time(result, p))]
    elif result["benchmark"] == "triton" and any(r.get("tflops") for r in result["timings"]):
        plots = [("tflops", lambda p: plot_triton_rates(result, p))]
    elif result["benchmark"] == "model" and result.get("generation"):
        plots = [("generation", lambda p: plot_generation(result, p))]
    paths = []
    for name, draw in plots:
        path = Path(f"{stem}-{name}.png")
        draw(path)
        paths.append(path)
    return paths


def plot_triton_rates(result: dict, path: Path) -> None:
    """TFLOP/s against N, forward and forward + backward panels, one line per contender (causal dashed)."""
    dense = [r for r in result["timings"] if not r.get("window") and r.get("tflops")]
    names = list(dict.fromkeys(r["backend"] for r in dense))
    styles = series_styles(names)
    figure = agg_figure(12, 4.4)
    for index, (mode, title) in enumerate((("fwd", "forward"), ("fwd+bwd", "forward + backward"))):
        axis = figure.add_subplot(1, 2, index + 1)
        for name in names:
            for causal in (False, True):
                points = sorted((r["n"], r["tflops"]) for r in dense
                                if (r["backend"], r["mode"], r["causal"]) == (name, mode, causal))
                if points:
                    axis.plot(*zip(*points), label=timing_label({"backend": name, "causal": causal}),
                              **(styles[name] | {"linestyle": "--" if causal else "-"}))
        axis.set(xscale="log", xlabel="sequence length N (B x N fixed)", ylabel="TFLOP/s", title=title, ylim=(0, None))
        log_ticks(axis, x="N")
        axis.grid(True, alpha=0.35)
    sizes, machine = result["sizes"], result["machine"]
    figure.suptitle(f"qkv's Triton kernel against SDPA's kernels, bfloat16, H={sizes['heads']} D={sizes['head_dim']}, "
                    f"{size_label(sizes['tokens'])} tokens per call\non {machine.get('gpu') or machine.get('cpu')}, "
                    + ", ".join(f"{name} {machine[name]}" for name in ("torch", "triton") if machine.get(name))
                    + f", {result.get('date', '')}")
    save_figure(figure, path, dpi=110, legend=True)

"""The ``qkv bench triton`` part of the report: its tables and its not-run notes.

:mod:`qkv.bench.report` puts them into BENCHMARKS.md's section on the Triton kernel; the targets
are judged again from the timings (:func:`qkv.bench.triton_gpu.targets`), so that every result
file shows the current targets.
"""

from __future__ import annotations

from qkv.bench.plots import timing_label
from qkv.bench.tables import Tab, fmt, format_seconds, targets_tab
from qkv.bench.triton_gpu import Sizes, targets
from qkv.viz.plotting import size_label

__all__ = ["triton_tabs", "triton_notes", "worst_over_bound"]

CHECKED = ("out", "dq", "dk", "dv")  # what each of qkv bench triton's checks compares


def worst_over_bound(check: dict) -> float | None:
    """A correctness check's largest error / bound over the output and the three gradients (the
    2x rule passes at <= 1); a result that kept only that figure gives it as ``worst_error_over_bound``."""
    if all(name in check for name in CHECKED):
        return max(check[name]["error"] / check[name]["bound"] for name in CHECKED)
    return check.get("worst_error_over_bound")


def triton_tabs(result: dict) -> list[Tab]:
    """``qkv bench triton``: the first call's compile time, the correctness checks, TFLOP/s per N for
    each contender (forward, then forward + backward), the sliding-window times and the targets.
    Steps not run (a spent ``--budget-s``, a kernel missing) show "-" here and are listed by
    :func:`triton_notes`."""
    sizes = result["sizes"]
    tabs = []
    compiled = [r for r in result.get("compile", []) if r.get("first_call_s") is not None]
    if compiled:
        tabs.append(Tab("first forward + backward of one shape with an empty Triton cache (compile and autotune)",
                        ["contender", "N", "B", "wall time"],
                        [[r["backend"], size_label(r["n"]), str(r["batch"]), format_seconds(r["first_call_s"])]
                         for r in compiled]))
    timed = any("wall_s" in c for c in result["checks"])
    tabs.append(Tab("correctness at full size, bfloat16, against float64: worst error / bound of the output, dq, dk "
                    "and dv (the 2x rule passes at <= 1)",
                    ["check", "passed", "worst error / bound", *(["wall time"] if timed else [])],
                    [[c["check"], "not run" if c.get("skipped") else "yes" if c["passed"] else "NO",
                      fmt(worst_over_bound(c), "{:.2f}"), *([format_seconds(c.get("wall_s"))] if timed else [])]
                     for c in result["checks"]]))
    dense = [r for r in result["timings"] if not r.get("window")]
    lengths = sorted({r["n"] for r in dense})
    batches = {r["n"]: r["batch"] for r in dense}
    for mode, title in (("fwd", "forward"), ("fwd+bwd", "forward + backward")):
        table: dict[str, dict[int, dict]] = {}
        for row in dense:
            if row["mode"] == mode:
                table.setdefault(timing_label(row), {})[row["n"]] = row
        rows = [[name, *(fmt(by_n[n].get("tflops") if n in by_n else None, "{:.0f}") for n in lengths)]
                for name, by_n in sorted(table.items(), key=lambda item: "causal" in item[0])]
        tabs.append(Tab(f"{title} TFLOP/s (bfloat16, H={sizes['heads']}, D={sizes['head_dim']}, B x N = "
                        f"{size_label(sizes['tokens'])} tokens)", ["contender",
                        *(f"{size_label(n)} (B={batches[n]})" for n in lengths)], rows))
    windowed = [r for r in result["timings"] if r.get("window")]
    if windowed:
        modes = list(dict.fromkeys(r["mode"] for r in windowed))
        found = {(r["backend"], r["mode"]): r for r in windowed}
        tabs.append(Tab(f"causal sliding window of {windowed[0]['window']} keys at N={size_label(windowed[0]['n'])}, "
                        "B=1: median time per call", ["contender", *modes],
                        [[name, *(format_seconds(found.get((name, mode), {}).get("time_s")) for mode in modes)]
                         for name in dict.fromkeys(r["backend"] for r in windowed)]))
    tabs.append(targets_tab("the Triton kernel's targets",
                            targets(result["timings"], result.get("compile", []), Sizes(**sizes))))
    return tabs


def triton_notes(result: dict) -> list[str]:
    """The steps of a ``qkv bench triton`` run that did not run, one note per reason."""
    left_out: dict[str, list[str]] = {}
    for row in result.get("compile", []):
        if row.get("skipped"):
            left_out.setdefault(row["skipped"], []).append(f"first call of {row['backend']}")
    for row in result["checks"]:
        if row.get("skipped"):
            left_out.setdefault(row["skipped"], []).append(f"check {row['check']}")
    for row in result["timings"]:
        if row.get("skipped"):
            window = f" window {row['window']}" if row.get("window") else ""
            left_out.setdefault(row["skipped"], []).append(
                f"{timing_label(row)}{window} N={size_label(row['n'])} {row['mode']}")
    return [f"{', '.join(steps)}: {reason}" for reason, steps in left_out.items()]

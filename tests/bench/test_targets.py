"""The sweep's targets and its LRA-style view, judged from rows: every ratio is time / the peer's time."""

from __future__ import annotations

import pytest

from qkv.bench import report, sweep
from qkv.bench.points import loglog_slope

WINDOW = "window 256"
APPROXIMATE = ("qkv linear", "qkv performer", "qkv nystrom", "qkv linformer")


def row(backend: str, n: int, time_s: float | None, variant: str = "full", mode: str = "fwd", **extra) -> dict:
    return {"backend": backend, "mode": mode, "n": n, "variant": variant, "device": "cpu", "time_s": time_s,
            "peak_bytes": None, "kind": "qkv" if backend.startswith("qkv") else backend, "exact": True, **extra}


def by_name(rows: list[dict]) -> dict[str, dict]:
    sweep.add_ratios(rows)
    return {t["target"]: t for t in sweep.targets(rows, heads=8)}


def test_sliding_targets_judge_measured_points() -> None:
    rows = [row("qkv sliding", n, 1e-5 * n, WINDOW) for n in (4096, 8192, 16384, 32768, 65536)]
    rows += [row("sdpa (torch)", 8192, 10 * 1e-5 * 8192, WINDOW),
             row("flex (compiled)", 8192, 1.2 * 1e-5 * 8192, WINDOW)]
    found = by_name(rows)
    mask = found[f"sliding time / sdpa time with the same bool mask, {WINDOW}"]
    assert mask["measured"] == pytest.approx(0.1) and mask["met"] is True and mask["n"] == 8192
    flex = found[f"sliding time / compiled FlexAttention time, {WINDOW}"]
    assert flex["measured"] == pytest.approx(1 / 1.2) and flex["met"] is False
    slope = found[f"log-log slope of sliding time against N, {WINDOW}"]
    assert slope["measured"] == pytest.approx(1.0) and slope["met"] is True and slope["n"] == "4096..65536"


def test_approximate_targets_judge_time_and_memory_against_sdpa() -> None:
    rows = [row("sdpa (torch)", 16384, 1.0), row("sdpa (torch)", 32768, 4.0, peak_bytes=1000)]
    rows += [row(name, 16384, 0.05 + 0.1 * (name == "qkv performer"), exact=False) for name in APPROXIMATE]
    rows += [row(name, 32768, 1.0, peak_bytes=500, exact=False) for name in APPROXIMATE]
    found = by_name(rows)
    assert [found[f"{name} time / sdpa time"]["met"] for name in APPROXIMATE] == [True, False, True, True]
    memory = found["qkv nystrom peak memory / sdpa peak memory"]
    assert memory["measured"] == pytest.approx(0.5) and memory["met"] is False and memory["n"] == 32768


def test_unmeasured_targets_are_left_out() -> None:
    found = by_name([row("qkv sliding", 8192, 0.1, WINDOW)])  # no peer at this point
    assert not [name for name in found if name.startswith(("sliding", "log-log"))]


def test_the_exact_targets_take_time_over_sdpa_in_the_same_mode() -> None:
    rows = [row("sdpa (torch)", 4096, 1.0), row("qkv auto", 4096, 1.02), row("qkv tiled", 4096, 1.5),
            row("sdpa (torch)", 4096, 3.0, mode="fwd+bwd"), row("qkv tiled", 4096, 9.0, mode="fwd+bwd")]
    found = by_name(rows)
    assert found["auto time / sdpa time"]["measured"] == pytest.approx(1.02) and found["auto time / sdpa time"]["met"]
    backward = found["tiled fwd+bwd time / sdpa fwd+bwd"]
    assert backward["measured"] == pytest.approx(3.0) and backward["met"] is False


def test_the_lra_view_puts_each_approximate_backend_against_sdpa() -> None:
    rows = [row("sdpa (torch)", n, 0.01 * n, peak_bytes=100 * n) for n in (256, 512)]
    rows += [row("qkv linear", n, 0.001 * n, peak_bytes=50 * n, exact=False) for n in (256, 512)]
    rows += [row("qkv tiled", n, 0.02 * n, peak_bytes=10 * n) for n in (256, 512)]
    sweep.add_ratios(rows)
    time_tab, memory_tab = report.lra_tabs({"config": {"sizes": [256, 512]}, "rows": rows})
    assert time_tab.rows == [["qkv linear", "0.1", "0.1"]]  # exact contenders are not in it
    assert memory_tab.rows == [["qkv linear", "0.5", "0.5"]]


def test_loglog_slope() -> None:
    assert loglog_slope([(1000, 1.0), (2000, 4.0), (4000, 16.0)]) == pytest.approx(2.0)
    assert loglog_slope([(1000, 1.0)]) is None

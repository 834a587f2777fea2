"""The attention sweep's parts: pair and FLOP counts, scaling fits, skips, exact rows, pinned kernels."""

from __future__ import annotations

import argparse
import io
import math
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

import qkv
from qkv.bench import report, sweep
from qkv.bench.contenders import CONTENDERS, VARIANTS, Contender, flex_mask_mod, make_inputs, sdpa_call, visible_mask
from qkv.bench.measure import peak_tensor_bytes
from qkv.bench.points import attention_flops, loglog_slope, scaling_exponents, visible_pairs
from qkv.bench.sweep import (
    BUDGET_SPENT,
    History,
    SweepSettings,
    attempt,
    budget_reason,
    error_rows,
    exact_rows,
    point_skip_reason,
)

SHAPES = [(1, 1), (5, 5), (17, 17), (7, 12), (12, 7)]  # (Nq, Nk)
MASKS = [(False, None), (True, None), (False, (2, 3)), (True, (3, 0)), (False, (0, 0)), (True, (1, 5))]


@pytest.mark.parametrize(("n_q", "n_k"), SHAPES)
@pytest.mark.parametrize(("causal", "window"), MASKS)
def test_visible_pairs_counts_the_mask(n_q: int, n_k: int, causal: bool, window) -> None:
    mask = visible_mask(n_q, n_k, causal, window, "cpu")
    expected = n_q * n_k if mask is None else int(mask.sum())
    assert visible_pairs(n_q, n_k, causal, window) == expected


def test_visible_pairs_closed_forms() -> None:
    n = 1000
    assert visible_pairs(n) == n * n
    assert visible_pairs(n, causal=True) == n * (n + 1) // 2  # exact, not N^2 / 2
    w = 10  # every query sees 2w + 1 keys, less what falls off the two ends
    assert visible_pairs(n, window=w) == n * (2 * w + 1) - w * (w + 1)
    assert visible_pairs(n, causal=True, window=w) == n * (w + 1) - w * (w + 1) // 2


def test_attention_flops() -> None:
    n, d, h = 512, 64, 8
    assert attention_flops(n, d, h) == 4 * n * n * d * h
    assert attention_flops(n, d, h, causal=True) == 4 * (n * (n + 1) // 2) * d * h
    assert attention_flops(n, d, h, window=(256, 256)) == 4 * visible_pairs(n, window=256) * d * h
    assert attention_flops(n, d, h, mode="fwd+bwd") == int(3.5 * attention_flops(n, d, h))
    with pytest.raises(ValueError, match="mode"):
        attention_flops(n, d, h, mode="stats")


def rows_for(backend: str, times: dict[int, float], variant: str = "full") -> list[dict]:
    return [{"backend": backend, "mode": "fwd", "variant": variant, "device": "cpu", "n": n, "time_s": t}
            for n, t in times.items()]


def test_scaling_exponent_fits_the_largest_sizes() -> None:
    quadratic = {512: 1.0, 1024: 1e-6 * 1024**2, 2048: 1e-6 * 2048**2, 4096: 1e-6 * 4096**2, 8192: 1e-6 * 8192**2}
    linear = {n: 1e-3 * n for n in (1024, 2048, 4096)}
    rows = rows_for("quad", quadratic) + rows_for("lin", linear) + rows_for("lin", {1024: 1.0, 2048: 2.0}, "causal")
    rows.append({"backend": "lin", "mode": "fwd", "variant": "full", "device": "cpu", "n": 8192, "time_s": None})
    fits = {(f["backend"], f["variant"]): f for f in scaling_exponents(rows)}
    assert fits[("quad", "full")]["exponent"] == pytest.approx(2.0)  # the outlier at 512 is left out
    assert fits[("quad", "full")]["sizes"] == [1024, 2048, 4096, 8192]
    assert fits[("lin", "full")]["exponent"] == pytest.approx(1.0)  # the skipped 8192 does not count
    assert fits[("lin", "causal")]["exponent"] is None  # two sizes are too few
    assert loglog_slope([(10, 1.0), (100, 1000.0)]) == pytest.approx(3.0)


def by_name(name: str, mode: str = "fwd") -> Contender:
    return next(c for c in CONTENDERS if c.name == name and c.mode == mode)


def test_history_predicts_and_the_time_limit_skips() -> None:
    history, sdpa, tiled = History(), by_name("sdpa (torch)"), by_name("qkv tiled")
    full = VARIANTS["full"]
    settings = SweepSettings(max_run_s=5.0, memory_budget=2**40)
    assert history.predict(tiled, full, 4096) is None
    history.record(tiled, full, 4096, 1.0)
    assert history.predict(tiled, full, 8192) == pytest.approx(4.0)  # N^2 with one size seen
    history.record(tiled, full, 8192, 2.0)  # grew linearly
    assert history.predict(tiled, full, 16384) == pytest.approx(4.0)
    history.record(tiled, full, 16384, 8.0)
    kind, reason = point_skip_reason(tiled, full, 32768, settings, history)
    assert kind == "time" and "~32 s per run" in reason and "5 s limit" in reason
    history.record(sdpa, full, 16384, 4.0)  # the baseline may run 4 times as long
    assert point_skip_reason(sdpa, full, 32768, settings, history) is None
    assert point_skip_reason(sdpa, full, 65536, settings, history)[0] == "time"


def test_structural_skips_and_memory() -> None:
    settings, history = SweepSettings(memory_budget=2**30), History()
    window = VARIANTS["window"]
    assert point_skip_reason(by_name("sdpa flash (cuda)"), window, 512, settings, history)[1].startswith("CUDA only")
    cuda = SweepSettings(device="cuda", memory_budget=2**40)
    assert "takes no attn_mask" in point_skip_reason(by_name("sdpa flash (cuda)"), window, 512, cuda, history)[1]
    assert point_skip_reason(by_name("sdpa cudnn (cuda)"), window, 512, cuda, history) is None
    assert "cannot honour window" in point_skip_reason(by_name("qkv linear"), window, 512, settings, history)[1]
    kind, reason = point_skip_reason(by_name("naive"), VARIANTS["full"], 16384, settings, history)
    assert kind == "limit" and "GiB" in reason
    history.fail(by_name("qkv tiled"), window, 512, "RuntimeError: boom")
    assert point_skip_reason(by_name("qkv tiled"), window, 1024, settings, history) == (
        "failed", "failed at N=512: RuntimeError: boom")


@pytest.mark.parametrize(("causal", "window"), [(False, None), (True, None), (False, (5, 7)), (True, (9, 0))])
def test_exact_rows_match_the_reference_on_every_row(causal: bool, window) -> None:
    q, k, v = make_inputs(67, 2, 8, torch.float32, "cpu")
    rows = torch.tensor([0, 3, 31, 66])
    full = qkv.attention(q.double(), k.double(), v.double(), causal=causal, window=window, backend="reference")
    torch.testing.assert_close(exact_rows(q, k, v, rows, causal, window, chunk_elements=100), full[:, :, rows])


def test_error_rows() -> None:
    assert error_rows(100, "cpu").tolist() == list(range(100))
    sampled = error_rows(65536, "cpu")
    assert len(sampled) == 512 and sampled[0] == 0 and sampled[-1] == 65535


@pytest.mark.parametrize(("causal", "window"), [(True, None), (False, (3, 3)), (True, (4, 0)), (False, (0, 2))])
def test_flex_mask_mod_is_the_same_mask(causal: bool, window) -> None:
    n_q, n_k = 9, 13
    mask_mod = flex_mask_mod(n_q, n_k, causal, window)
    grid = mask_mod(0, 0, torch.arange(n_q)[:, None], torch.arange(n_k)[None, :])
    assert torch.equal(grid, visible_mask(n_q, n_k, causal, window, "cpu"))
    assert flex_mask_mod(n_q, n_k, False, None) is None


def test_pinned_sdpa_kernel_runs_or_says_why() -> None:
    """The CUDA contenders' code path, run on the CPU: SDPA pinned to one kernel through
    torch.nn.attention.sdpa_kernel; a kernel that cannot serve the call becomes a reason."""
    q, k, v = make_inputs(64, 2, 16, torch.float32, "cpu")
    pinned = sdpa_call(q, k, v, True, None, kernel="FLASH_ATTENTION")  # PyTorch has a CPU flash kernel
    torch.testing.assert_close(pinned(), F.scaled_dot_product_attention(q, k, v, is_causal=True))
    out, why = attempt(sdpa_call(q, k, v, False, (4, 4), kernel="EFFICIENT_ATTENTION"))
    assert out is None and why.startswith("RuntimeError")


def test_peak_tensor_bytes_counts_what_a_call_allocates() -> None:
    def run() -> torch.Tensor:
        scratch = torch.ones(1024, 1024)  # 4 MiB, freed before the return
        return scratch.sum(dim=0)  # 4 KiB kept

    peak, out = peak_tensor_bytes(run)
    assert 4 * 2**20 <= peak < 5 * 2**20 and out.shape == (1024,)


def test_the_time_budget_skips_what_starts_after_it() -> None:
    settings, history = SweepSettings(memory_budget=2**30, budget_s=10.0), History()
    tiled, full = by_name("qkv tiled"), VARIANTS["full"]
    now = time.perf_counter()
    assert budget_reason(settings, now) is None
    assert budget_reason(SweepSettings(), now - 1e6) is None  # no budget: never spent
    assert budget_reason(settings, now - 11.0).startswith(BUDGET_SPENT)
    assert point_skip_reason(tiled, full, 512, settings, history, now) is None
    kind, reason = point_skip_reason(tiled, full, 512, settings, history, now - 11.0)
    assert kind == "budget" and "10 s (--budget-s)" in reason
    # a structural reason is still the reason: the point could never run
    assert point_skip_reason(by_name("qkv linear"), VARIANTS["window"], 512, settings, history, now - 11.0)[0] == (
        "structural")


class ShiftedClock:
    """time as the sweep sees it, with perf_counter moved forward on demand."""

    def __init__(self) -> None:
        self.offset = 0.0

    def perf_counter(self) -> float:
        return time.perf_counter() + self.offset


def sweep_with_clock_jumps(monkeypatch: pytest.MonkeyPatch, after: str, sizes: tuple[int, ...],
                           variants: tuple[str, ...], settings: SweepSettings | None = None,
                           jump_s: float = 1000.0) -> dict:
    """A quick sweep of naive and tiled (``settings``: a 100 s budget), the clock moved ``jump_s``
    on after each call of ``sweep.<after>`` (a step that can take long)."""
    clock, step = ShiftedClock(), getattr(sweep, after)

    def step_then_jump(*args, **kwargs):
        result = step(*args, **kwargs)
        clock.offset += jump_s
        return result

    monkeypatch.setattr(sweep, "time", clock)
    monkeypatch.setattr(sweep, after, step_then_jump)
    settings = settings or SweepSettings(quick=True, memory=False, repeats=1, memory_budget=2**30, budget_s=100.0)
    return sweep.run_sweep(sizes, variants, settings, ("naive", "qkv tiled"), console=Console(file=io.StringIO()))


def test_a_sweep_stops_starting_points_once_its_budget_is_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first point is measured; then the clock jumps past the budget and every later point
    (and contender) is a row skipped with the budget's reason, and the result is still whole."""
    result = sweep_with_clock_jumps(monkeypatch, "measure_point", (32, 64), ("full", "causal"))
    rows = {(r["backend"], r["mode"], r["variant"], r["n"]): r for r in result["rows"]}
    assert len(rows) == 16  # naive and tiled, forward and forward + backward, at 4 points
    for name in ("naive", "qkv tiled"):
        for mode in ("fwd", "fwd+bwd"):
            first = rows[(name, mode, "full", 32)]
            assert first["time_s"] > 0 and not first["skipped"]
            for variant, n in (("causal", 32), ("full", 64), ("causal", 64)):
                assert rows[(name, mode, variant, n)]["time_s"] is None
                assert rows[(name, mode, variant, n)]["skipped"].startswith(BUDGET_SPENT)
    assert result["config"]["budget_s"] == 100.0
    report_text = "\n".join(report.attention_section(Path("bench-attention-cpu.json"), result, Path(".")))
    assert "nothing started after the sweep's time budget of 100 s (it ran out after N=32" in report_text
    summary = report.summary_tab({"cpu": result})  # the sizes measured, not the sizes asked for
    assert summary.columns[1:3] == ["CPU 32", "CPU exponent"]
    assert "its time budget ran out after N=32" in report.summary_note({"cpu": result})
    notes = [line for line in report_text.splitlines() if line.startswith("- ") and BUDGET_SPENT in line]
    assert notes == [f"- every contender not yet measured, from N={n}: {BUDGET_SPENT} of 100 s (--budget-s) was "
                     "spent before this point" for n in (64, 32)]  # the full variant's table, then the causal one


def test_a_point_builds_no_contender_once_the_budget_is_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long build (a compile, an autotuning) spends the budget: the point's other contenders are skipped."""
    result = sweep_with_clock_jumps(monkeypatch, "build", (32,), ("full",))
    measured = [(r["backend"], r["mode"]) for r in result["rows"] if not r["skipped"]]
    skipped = [r["skipped"] for r in result["rows"] if r["skipped"]]
    assert measured == [("naive", "fwd")]
    assert len(skipped) == 3 and all(reason.startswith(BUDGET_SPENT) for reason in skipped)


def parsed(**given) -> argparse.Namespace:
    """``qkv bench attention``'s parsed arguments: the parser's defaults, then ``given``."""
    defaults = {"heads": 8, "head_dim": 64, "dtype": None, "device": "cpu", "quick": False, "repeats": None,
                "no_memory": False, "warm_compile": False, "max_run_s": None, "budget_s": None}
    return argparse.Namespace(**(defaults | given))


def test_the_defaults_on_cuda_suit_a_gpu() -> None:
    """bfloat16, N up to 64K, a warm compile cache and a time budget on CUDA; the CPU keeps its own."""
    gpu = sweep.settings_from_args(parsed(device="cuda"))
    assert gpu.dtype == "bfloat16" and not gpu.cold_compile and gpu.budget_s == sweep.CUDA_BUDGET_S
    assert gpu.default_sizes == sweep.CUDA_SIZES and max(sweep.CUDA_SIZES) == 65536
    assert sweep.CUDA_BUDGET_S <= 240  # the sweep's share of make bench-gpu's 8 minutes
    chosen = sweep.settings_from_args(parsed(device="cuda", dtype="float16", budget_s=50.0, warm_compile=True))
    assert (chosen.dtype, chosen.budget_s) == ("float16", 50.0)
    quick = sweep.settings_from_args(parsed(device="cuda", quick=True))
    assert quick.budget_s is None and quick.default_sizes == sweep.QUICK_SIZES
    cpu = sweep.settings_from_args(parsed())
    assert (cpu.dtype, cpu.budget_s, cpu.cold_compile, cpu.default_sizes) == ("float32", None, True, sweep.SIZES)
    assert SweepSettings(device="cuda:1").dtype == "bfloat16" and SweepSettings().dtype == "float32"


def test_python_loops_stop_at_small_n_on_cuda() -> None:
    cuda, cpu = SweepSettings(device="cuda", memory_budget=2**40), SweepSettings(memory_budget=2**40)
    history = History()
    loops = [by_name("qkv tiled"), by_name("qkv tiled", "fwd+bwd"), by_name("qkv attention_stats", "stats"),
             by_name("qkv sliding"), by_name("qkv sliding", "fwd+bwd")]
    window = VARIANTS["window"]
    for contender in loops:
        assert point_skip_reason(contender, window, 4096, cuda, history) is None
        kind, reason = point_skip_reason(contender, window, 4097, cuda, history)
        assert kind == "device-limit" and reason.startswith("on CUDA, run up to N=4096 only (a Python loop")
        assert point_skip_reason(contender, window, 8192, cpu, history) is None  # the CPU runs them on
    for name in ("sdpa (torch)", "qkv sdpa", "qkv auto", "qkv linear"):
        assert point_skip_reason(by_name(name), VARIANTS["full"], 65536, cuda, history) is None


def test_a_device_limit_is_printed_once_and_recorded_on_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA cap's code path, run on the CPU with a cap of N=32: tiled stops, naive runs on; one
    line per contender and mode says why, and every row left out (and the report) says it too."""
    monkeypatch.setattr(sweep, "DEVICE_LOOP_MAX_N", {"cpu": 32})
    output = io.StringIO()
    settings = SweepSettings(quick=True, memory=False, repeats=1, memory_budget=2**30)
    result = sweep.run_sweep((32, 64), ("full", "causal"), settings, ("naive", "qkv tiled"),
                             console=Console(file=output, width=400))
    rows = {(r["backend"], r["mode"], r["variant"], r["n"]): r for r in result["rows"]}
    reason = "on CPU, run up to N=32 only (a Python loop over tiles"
    for variant in ("full", "causal"):
        assert rows[("naive", "fwd", variant, 64)]["time_s"] > 0
        for mode in ("fwd", "fwd+bwd"):
            assert rows[("qkv tiled", mode, variant, 32)]["time_s"] > 0
            assert rows[("qkv tiled", mode, variant, 64)]["skipped"].startswith(reason)
    printed = [line for line in output.getvalue().splitlines() if reason in line]
    assert [line.split(":")[0] for line in printed] == ["skip qkv tiled", "skip qkv tiled, fwd+bwd"]
    assert all("from N=64: " in line for line in printed)
    notes = report.attention_tabs(result, "causal")[1]
    assert any(note.startswith(f"qkv tiled: 64: {reason}") for note in notes)


def test_the_default_cuda_budget_bounds_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the CUDA defaults (run here on the CPU) and every point taking 100 s by the clock, the
    points started within the default budget are measured and the rest are left out by it."""
    settings = replace(sweep.settings_from_args(parsed(device="cuda", no_memory=True, repeats=1)), device="cpu",
                       memory_budget=2**30)
    result = sweep_with_clock_jumps(monkeypatch, "measure_point", (16, 24, 32, 48), ("full",), settings, 100.0)
    started = math.ceil(sweep.CUDA_BUDGET_S / 100.0)
    measured = sorted({r["n"] for r in result["rows"] if r["time_s"]})
    assert measured == [16, 24, 32, 48][:started]
    assert all(r["skipped"].startswith(BUDGET_SPENT) for r in result["rows"] if r["n"] not in measured)


@pytest.mark.parametrize("tunes", [True, False], ids=["tuned-first", "control"])
def test_a_backend_that_tunes_on_its_first_call_is_called_before_the_measured_run(
        monkeypatch: pytest.MonkeyPatch, tunes: bool) -> None:
    """Triton's first call of a shape compiles and autotunes, with benchmarking buffers of its own: the
    sweep makes that call first (its time kept as first_call_s), so the peak memory is the kernel's.
    Here tiled stands in, its first call allocating 64 MiB more."""
    built = sweep.build

    def build_with_a_costly_first_call(*args, **kwargs):
        setup, calls = built(*args, **kwargs), []

        def run():
            scratch = torch.ones(16 * 2**20) if not calls else None  # 64 MiB, the first call only
            calls.append(1)
            del scratch
            return setup.run()
        return replace(setup, run=run)

    monkeypatch.setattr(sweep, "build", build_with_a_costly_first_call)
    monkeypatch.setattr(sweep, "TUNED_ON_FIRST_CALL", ("tiled",) if tunes else ())
    settings = SweepSettings(quick=True, repeats=1, memory_budget=2**30)
    result = sweep.run_sweep((33,), ("full",), settings, ("qkv tiled",), console=Console(file=io.StringIO()))
    row = next(r for r in result["rows"] if r["mode"] == "fwd")
    assert (row["peak_bytes"] < 2**26) == tunes
    assert (row.get("first_call_s", 0) > 0) == tunes
    first_calls = [cells[0] for cells in report.first_call_tab(result).rows]
    assert first_calls == (["qkv tiled, full", "qkv tiled, fwd+bwd, full"] if tunes else [])

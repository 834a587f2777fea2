"""``qkv bench report`` on GPU results: ``qkv bench triton``'s JSON (checks, TFLOP/s, targets) and its plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qkv.bench import main, report, triton_gpu
from qkv.bench.points import attention_flops
from qkv.bench.tables import format_seconds

MACHINE = {"gpu": "Test GPU", "torch": "9.9.9+cu999", "triton": "8.8.8", "python": "3.99"}
LENGTHS = (1024, 3072)  # odd: 3072 is not a power of two
TOKENS = 6144


def check(name: str, worst: float, per_tensor: bool) -> dict:
    """A correctness check as the command writes it (error and bound per tensor), or as an assembled
    file keeps it (the worst ratio only)."""
    row = {"check": name, "passed": worst <= 1.0, "wall_s": 2.5}
    if not per_tensor:
        return row | {"worst_error_over_bound": worst}
    ratios = {"out": worst / 4, "dq": worst, "dk": worst / 2, "dv": worst / 3}
    return row | {tensor: {"error": ratio * 1e-3, "bound": 1e-3, "ok": ratio <= 1} for tensor, ratio in ratios.items()}


def timing(backend: str, n: int, causal: bool, mode: str, tflops: float) -> dict:
    batch = TOKENS // n
    seconds = attention_flops(n, 64, 4, causal, mode=mode, batch=batch) / (tflops * 1e12)
    return {"backend": backend, "n": n, "batch": batch, "causal": causal, "mode": mode, "time_s": seconds,
            "tflops": tflops}


def triton_result(per_tensor: bool) -> dict:
    timings = [timing(backend, n, causal, mode, rate + 10 * causal + 100 * (mode == "fwd+bwd") + n / 1024)
               for backend, rate in (("qkv triton", 301), ("sdpa flash", 402)) for n in LENGTHS
               for causal in (False, True) for mode in ("fwd", "fwd+bwd")]
    timings += [{"backend": name, "n": 3072, "batch": 1, "causal": True, "mode": "fwd", "time_s": seconds,
                 "tflops": None, "window": 97} for name, seconds in (("qkv triton", 2.5e-4), ("flex compiled", 3e-3))]
    return {"machine": MACHINE, "date": "2031-02-03", "dtype": "bfloat16",
            "sizes": {"tokens": TOKENS, "heads": 4, "head_dim": 64, "lengths": list(LENGTHS), "window": 97},
            "checks": [check("N=1027 causal", 0.37, per_tensor), check("N=99 window", 1.7, per_tensor)],
            "timings": timings}


@pytest.mark.parametrize("per_tensor", [True, False], ids=["as-the-command-writes-it", "worst-ratio-only"])
def test_triton_results_render_checks_rates_and_a_plot(tmp_path: Path, per_tensor: bool) -> None:
    path = tmp_path / "bench-triton-cuda.json"
    path.write_text(json.dumps(triton_result(per_tensor)))  # no "benchmark" field: known by its checks
    assert main(["report", str(path), "--out", str(tmp_path)]) == 0
    text = (tmp_path / report.REPORT_NAME).read_text()
    section = text.split("## The Triton kernel on the GPU", 1)[1]
    assert "Test GPU; torch 9.9.9+cu999, triton 8.8.8, python 3.99; 2031-02-03" in section
    assert "1 of 2 correctness checks passed (worst error / bound 1.70)" in section
    assert "| N=1027 causal | yes | 0.37 | 2.500 s |" in section
    assert "| N=99 window | NO | 1.70 | 2.500 s |" in section
    # TFLOP/s per N (with the batch that keeps B x N fixed), one row per contender and mask, per mode
    assert "| contender | 1K (B=6) | 3K (B=2) |" in section
    forward, backward = section.split("**forward TFLOP/s")[1].split("**forward + backward TFLOP/s")
    assert "| qkv triton | 302 | 304 |" in forward and "| sdpa flash, causal | 413 | 415 |" in forward
    assert "| qkv triton, causal | 412 | 414 |" in backward
    assert "| qkv triton | 250 µs | 3.0 ms |" not in section  # the window's times are per mode, not per N
    assert "| qkv triton | 250 µs |" in section and "| flex compiled | 3.0 ms |" in section
    # the targets, judged again from the timings: rates, and time / the peer's time
    assert "| fwd TFLOP/s, non-causal (lowest) | 1024..3072 | 302.000 | >= 600.000 | NO |" in section
    assert "| fwd time / SDPA flash time, non-causal (highest) | 1024..3072 | 1.334 | <= 1.000 | NO |" in section
    assert "| window 97, fwd: time / compiled FlexAttention time | 16384 | - |" in section  # not at this N
    assert "![TFLOP/s](bench-triton-cuda-tflops.png)" in section
    assert (tmp_path / "bench-triton-cuda-tflops.png").stat().st_size > 10_000
    assert "| [bench-triton-cuda.json](bench-triton-cuda.json) | triton | cuda |" in text


def test_seconds_under_a_millisecond_keep_their_digits() -> None:
    assert format_seconds(2.54e-4) == "254 µs"
    assert format_seconds(1.234e-5) == "12.3 µs"  # a short call on the CPU (the overhead benchmark)
    assert format_seconds(3.2e-3) == "3.2 ms"
    assert format_seconds(12.3) == "12.30 s"


def test_the_report_names_its_sources_as_one_glob_when_it_can(tmp_path: Path) -> None:
    """``folder/bench-*.json`` when that is every file given, so that one command republishes a new GPU run."""
    folder, out = tmp_path / "results", tmp_path / "site"
    folder.mkdir()
    paths = [folder / "bench-triton-cuda.json", folder / "bench-triton-cpu.json"]
    for path in paths:
        path.write_text(json.dumps(triton_result(per_tensor=True)))
    assert report.sources_argument(paths, out) == "../results/bench-*.json"
    assert report.sources_argument(paths[:1], out) == "../results/bench-triton-cuda.json"
    report.write_report(paths, out, plots=False)
    assert "`qkv bench report ../results/bench-*.json --out .` run here" in (out / report.REPORT_NAME).read_text()


def test_a_budgeted_run_shows_its_compile_times_and_what_it_left_out(tmp_path: Path) -> None:
    """The command's own fields: first-call compile times, checks and timings not run (with the
    reason), and a target met at or below its limit."""
    result = triton_result(per_tensor=True) | {"benchmark": "triton", "device": "cuda", "budget_s": 90.0,
                                               "command": "qkv bench triton --budget-s 90"}
    result["compile"] = [{"backend": "qkv triton", "n": 1024, "batch": 6, "first_call_s": 12.5},
                         {"backend": "qkv triton deterministic", "skipped": triton_gpu.BUDGET_SPENT}]
    result["checks"].append({"check": "N=61 D=256 causal", "skipped": triton_gpu.BUDGET_SPENT})
    result["timings"][1] |= {"skipped": triton_gpu.BUDGET_SPENT, "time_s": None, "tflops": None}
    path = tmp_path / "bench-triton-cuda.json"
    path.write_text(json.dumps(result))
    report.write_report([path], tmp_path, plots=False)
    section = (tmp_path / report.REPORT_NAME).read_text().split("## The Triton kernel on the GPU", 1)[1]
    assert "`qkv bench triton --budget-s 90` on Test GPU" in section and "under a --budget-s of 90 s" in section
    assert "1 of 2 correctness checks passed" in section  # of those that ran
    assert "| qkv triton | 1K | 6 | 12.50 s |" in section
    assert "| N=61 D=256 causal | not run | - |" in section
    assert "| cold first forward + backward of one shape, seconds | 1024 | 12.500 | <= 20.000 | yes |" in section
    assert (f"- first call of qkv triton deterministic, check N=61 D=256 causal, qkv triton N=1K fwd+bwd: "
            f"{triton_gpu.BUDGET_SPENT}") in section


def test_the_triton_command_labels_its_json(tmp_path: Path) -> None:
    """What the report needs to label a run: the benchmark, the date, the command line, Triton's version."""
    path = tmp_path / "run.json"
    triton_gpu.Run("cpu", triton_gpu.Sizes.quick(), path, None).save()
    result = json.loads(path.read_text())
    assert result["benchmark"] == "triton" and len(result["date"]) == 10 and "triton" in result["machine"]
    assert report.benchmark_of(result) == "triton"


def test_hand_written_blocks_are_kept_when_the_report_is_regenerated(tmp_path: Path) -> None:
    """A block between ``<!-- kept -->`` and ``<!-- /kept -->`` survives every regeneration, once, before
    "How it is measured"; everything else is generated."""
    path = tmp_path / "bench-triton-cuda.json"
    path.write_text(json.dumps(triton_result(per_tensor=True)))
    block = "<!-- kept -->\n## Fidelity\n\n| a | b |\n|---|---|\n| 1 | 2 |\n<!-- /kept -->"
    (tmp_path / report.REPORT_NAME).write_text(f"# Old\n\nstale text\n\n{block}\n\nmore stale text\n")
    for _ in range(2):
        report.write_report([path], tmp_path, plots=False)
        text = (tmp_path / report.REPORT_NAME).read_text()
        assert text.count(block) == 1 and "stale text" not in text
        assert text.index("## The Triton kernel") < text.index(block) < text.index("## How it is measured")

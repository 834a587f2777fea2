"""``qkv bench attention|model|ring --quick --out DIR`` and ``qkv bench report``: what they write.

One run of each command (the attention sweep --quick takes about 2 minutes on 2 cores); the
tests check the structure of the JSON, the plots and BENCHMARKS.md, never the timings.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from qkv.bench import ring, sweep
from qkv.bench.contenders import CONTENDERS, VARIANTS
from qkv.bench.points import ROW_FIELDS, point_row
from qkv.bench.report import REPORT_NAME
from qkv.cli import main

# torch.compile (FlexAttention) imports a deprecated TorchScript helper: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ATTENTION_PLOTS = ("bench-attention-cpu-time.png", "bench-attention-cpu-memory.png", "bench-attention-cpu-error.png")
CUDA_ONLY = {"sdpa flash (cuda)", "sdpa cudnn (cuda)", "sdpa efficient (cuda)"}


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quick run of each command into the same results folder, as the README shows."""
    folder = tmp_path_factory.mktemp("bench")
    assert main(["bench", "attention", "--quick", "--out", str(folder)]) == 0
    # SmolLM2's part loads a 135M-parameter model twice (qkv's and transformers'): left to the real run
    assert main(["bench", "model", "--quick", "--parts", "minilm,generation", "--out", str(folder)]) == 0
    assert main(["bench", "ring", "--quick", "--processes", "1", "2", "--out", str(folder)]) == 0
    return folder


def load(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


def test_attention_json_has_the_machine_and_every_point(out: Path) -> None:
    result = load(out, "bench-attention-cpu.json")
    assert result["benchmark"] == "attention"
    machine = result["machine"]
    for key in ("cpu", "cpu_count", "torch_threads", "torch", "gpu"):
        assert key in machine, key
    assert machine["gpu"] is None and machine["device"] == "cpu"
    config = result["config"]
    assert config["sizes"] == list(sweep.QUICK_SIZES) and config["quick"] is True
    assert [v["key"] for v in config["variants"]] == list(VARIANTS)
    contenders = {(c.name, c.mode) for c in CONTENDERS}
    points = {(r["backend"], r["mode"], r["n"], r["variant"]) for r in result["rows"]}
    assert len(points) == len(result["rows"]) == len(contenders) * len(config["sizes"]) * len(config["variants"])
    for row in result["rows"]:
        assert list(row)[: len(ROW_FIELDS)] == list(ROW_FIELDS)
        assert row["device"] == "cpu" and row["dtype"] == "float32"
        if row["skipped"]:
            assert isinstance(row["skipped"], str) and row["time_s"] is None
            assert not row["skipped"].startswith("failed"), row  # on the CPU, nothing may fail
        else:
            assert row["time_s"] > 0 and len(row["times_s"]) >= 1
            assert isinstance(row["peak_bytes"], int) and row["peak_bytes"] > 0, row


def test_attention_rows_measure_what_they_say(out: Path) -> None:
    rows = load(out, "bench-attention-cpu.json")["rows"]
    ran = [r for r in rows if not r["skipped"]]
    assert all(r["skipped"].startswith("CUDA only") for r in rows if r["backend"] in CUDA_ONLY)
    assert not [r for r in ran if r["backend"] in CUDA_ONLY]
    for row in ran:
        forward = row["mode"] == "fwd"
        if forward and row["exact"]:
            assert row["max_error"] < 1e-5 and row["error_rows"] == row["n"], row
        elif forward:
            assert row["max_error"] > 1e-3, row  # approximate backends are not exact
        else:
            assert row["max_error"] is None
        counted = row["exact"] and row["mode"] in ("fwd", "fwd+bwd")
        assert (row["flops_per_s"] is not None) == counted, row
        if counted:
            assert row["flops_per_s"] == pytest.approx(row["flops"] / row["time_s"])
    by_point = {(r["backend"], r["mode"], r["n"], r["variant"]): r for r in rows}
    n = sweep.QUICK_SIZES[-1]
    full, causal = by_point[("sdpa (torch)", "fwd", n, "full")], by_point[("sdpa (torch)", "fwd", n, "causal")]
    assert causal["flops"] / full["flops"] == pytest.approx((n + 1) / (2 * n))
    assert by_point[("qkv sliding", "fwd", n, "full")]["skipped"].startswith("needs a window")
    assert "cannot honour causal" in by_point[("qkv nystrom", "fwd", n, "causal")]["skipped"]
    assert by_point[("qkv sliding", "fwd", sweep.QUICK_SIZES[0], "window 256")]["time_s"] > 0  # larger N: load
    flex = by_point[("flex (compiled)", "fwd", sweep.QUICK_SIZES[0], "causal")]
    assert flex["compile_s"] > 0 and flex["max_error"] < 1e-5


def test_attention_scaling_and_targets(out: Path) -> None:
    result = load(out, "bench-attention-cpu.json")
    fits = {(f["backend"], f["mode"], f["variant"]): f for f in result["scaling"]}
    sdpa = fits[("sdpa (torch)", "fwd", "full")]
    assert sdpa["sizes"] == list(sweep.QUICK_SIZES) and math.isfinite(sdpa["exponent"])
    assert fits[("flex (compiled)", "fwd", "full")]["exponent"] is None  # one size only in --quick
    for t in result["targets"]:  # only small N ran: auto against SDPA and against the fastest exact backend
        assert t["target"] == "auto time / sdpa time" or t["target"].startswith("auto / fastest exact ("), t
        assert t["rule"] == "<=" and t["met"] == (t["measured"] <= t["limit"])
    assert result["targets"] == sweep.targets(result["rows"], result["config"]["heads"])


def test_plots_are_written(out: Path) -> None:
    for name in (*ATTENTION_PLOTS, "bench-model-cpu-generation.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000, name


def test_model_and_ring_json(out: Path) -> None:
    model = load(out, "bench-model-cpu.json")
    assert model["benchmark"] == "model" and model["machine"]["cpu"]
    modes = {r["mode"] for r in model["rows"]}
    assert modes == {"forward", "generate, KV cache", "generate, no cache"}
    for row in model["rows"]:
        assert list(row)[: len(ROW_FIELDS)] == list(ROW_FIELDS)
        assert row["time_s"] > 0 and row["max_error"] is None and row["flops_per_s"] is None
    assert "qkv" in {r["backend"] for r in model["rows"] if r["mode"] == "forward"}
    ring_result = load(out, "bench-ring-cpu.json")
    assert [(r["backend"], r["processes"], r["n"]) for r in ring_result["rows"]] == [
        ("tiled", 1, 2048), ("ring", 1, 2048), ("ring", 2, 2048)]
    for row in ring_result["rows"]:
        assert list(row)[: len(ROW_FIELDS)] == list(ROW_FIELDS)
        assert row["time_s"] > 0 and row["peak_bytes"] > 0 and len(row["peak_bytes_per_rank"]) == row["processes"]
    assert [t["measured"] for t in ring_result["targets"]] == [None]  # the target is at N=32K


def test_benchmarks_md_collects_every_result(out: Path) -> None:
    text = (out / REPORT_NAME).read_text()
    machine = load(out, "bench-attention-cpu.json")["machine"]
    for expected in (machine["cpu"], machine["torch"], "## Attention: summary", "| contender |",
                     "## Attention on the CPU (float32)", "### CPU, causal, window 256", "### LRA-style view",
                     "**LRA-style, full attention: time / SDPA time**", "## Models (CPU)", "## Ring attention",
                     "(bench-attention-cpu.json)", "(bench-model-cpu.json)", "(bench-ring-cpu.json)",
                     "![time](bench-attention-cpu-time.png)", "| qkv sliding |", "## How it is measured",
                     "flex (compiled), not in its times: block mask + compile"):
        assert expected in text, expected


def test_report_regenerates_without_measuring(out: Path, tmp_path: Path) -> None:
    before = (out / REPORT_NAME).read_text()
    sources = sorted(str(p) for p in out.glob("bench-*.json"))
    assert main(["bench", "report", *sources, "--out", str(out)]) == 0
    assert (out / REPORT_NAME).read_text() == before
    elsewhere = tmp_path / "docs"
    assert main(["bench", "report", *sources, "--out", str(elsewhere)]) == 0
    relative = Path(os.path.relpath(out / "bench-model-cpu.json", elsewhere)).as_posix()
    assert f"]({relative})" in (elsewhere / REPORT_NAME).read_text()


def test_ring_results_join_the_report(out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ring attention's rows (the common schema) and its target show in BENCHMARKS.md."""
    rows = [point_row("ring", "fwd", 8192, processes=p, time_s=0.5 * p, peak_bytes=2**20 // p) for p in (1, 2, 4)]
    machine = load(out, "bench-ring-cpu.json")["machine"]
    monkeypatch.setattr(ring, "run_ring_bench", lambda *args, **kwargs: {
        "benchmark": "ring", "machine": machine, "config": {"device": "cpu"}, "rows": rows})
    results = tmp_path / "results"
    assert main(["bench", "ring", "--json", str(results / "bench-ring-cpu.json"), "--out", str(tmp_path)]) == 0
    assert load(results, "bench-ring-cpu.json")["rows"] == rows
    text = (tmp_path / REPORT_NAME).read_text()
    assert "| ring | 4 | 8K | fwd | 2.000 s | 256.0 KiB |  |" in text and "(results/bench-ring-cpu.json)" in text
    assert "| ring per-rank peak / tiled peak, 4 processes | 32768 | - | <= 0.300 | not measured |" in text


def test_bad_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # Usage errors are exit code 2, returned as every qkv command returns its code.
    assert main(["bench", "attention", "--section", "overhead", "--variants", "full"]) == 2
    assert main(["bench", "attention", "--backends", "flash-attn-9"]) == 2
    assert main(["bench", "report", "no-such-file.json"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_overhead_section_reports_each_ratio_and_goal(tmp_path: Path) -> None:
    """``qkv bench attention --section overhead``: calls against plain SDPA, the module against the same
    module calling SDPA, side by side, with the goals; the JSON has one row per contender and point."""
    from qkv.bench import overhead

    path = tmp_path / "overhead.json"
    assert main(["bench", "attention", "--section", "overhead", "--quick", "--sizes", "16", "--repeats", "3",
                 "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["benchmark"] == "attention-overhead" and result["machine"]["torch_threads"] == 1
    calls = {(r["variant"], r["contender"]) for r in result["rows"] if r["part"] == "call"}
    assert calls == ({(v, c) for v in overhead.VARIANTS for c in ("sdpa (torch)", "qkv auto", "qkv sdpa")}
                     | {("key padding", overhead.CONTRACT_FLOOR)})
    modules = {(r["variant"], r["contender"]) for r in result["rows"] if r["part"] == "module"}
    module_names = ("SDPA inside the module", "MultiHeadAttention")
    assert modules == {(v, c) for v in ("full", "key padding") for c in module_names}
    for row in result["rows"]:
        assert row["n"] == 16 and row["time_s"] > 0 and math.isfinite(row["ratio"])
    goals = {(t["target"], t["limit"]) for t in result["targets"]}
    assert ("qkv auto / plain SDPA, key padding", 1.1) in goals
    assert ("MultiHeadAttention / the module calling SDPA, full", 1.05) in goals
    assert all(t["met"] == (t["measured"] <= t["limit"]) for t in result["targets"])


def test_the_sdpa_module_is_the_same_module(tmp_path: Path) -> None:
    """The overhead baseline computes what MultiHeadAttention computes, with SDPA called directly."""
    import torch

    from qkv.bench.overhead import SdpaMultiHeadAttention
    from qkv.nn import MultiHeadAttention

    for causal, padded in ((False, True), (True, False)):
        layer = MultiHeadAttention(48, 4, causal=causal)
        direct = SdpaMultiHeadAttention(48, 4, causal=causal)
        direct.load_state_dict(layer.state_dict())
        x = torch.randn(2, 9, 48)
        padding = torch.ones(2, 9, dtype=torch.bool)
        padding[1, 6:] = False
        mask = padding if padded else None
        torch.testing.assert_close(direct(x, key_padding_mask=mask), layer(x, key_padding_mask=mask))


def test_the_contract_floor_keeps_the_contract_as_qkv_attention_does() -> None:
    """The overhead's floor for key padding is honest: with NaN in padded keys and values and in the
    queries of a batch row whose keys are all padding, it returns what qkv.attention returns."""
    import torch

    import qkv
    from qkv.bench.overhead import sdpa_with_contract_zeroing

    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=generator) for _ in range(3))
    padding = torch.ones(2, 10, dtype=torch.bool)
    padding[0, 7:] = False
    padding[1] = False  # every key of the second row is padding: its queries see nothing
    k[0, :, 7:] = v[0, :, 7:] = float("nan")
    q[1, :, 4] = float("nan")
    out = sdpa_with_contract_zeroing(q, k, v, padding)
    assert not out.isnan().any() and (out[1] == 0).all()
    torch.testing.assert_close(out, qkv.attention(q, k, v, key_padding_mask=padding))


def test_the_targets_put_auto_against_the_fastest_exact_backend() -> None:
    from qkv.bench.sweep import auto_targets

    def row(backend: str, variant: str, n: int, time_s: float | None, kind: str = "qkv") -> dict:
        return {"backend": backend, "mode": "fwd", "variant": variant, "n": n, "time_s": time_s, "kind": kind,
                "exact": True}

    rows = [row("qkv auto", "window 256", 8192, 0.066), row("qkv sliding", "window 256", 8192, 0.061),
            row("qkv sdpa", "window 256", 8192, 0.98), row("sdpa (torch)", "window 256", 8192, 0.01, "sdpa"),
            row("qkv auto", "full", 512, 0.5), row("qkv sdpa", "full", 512, 0.3), row("qkv tiled", "full", 512, None)]
    targets = {(t["target"], t["n"]): t for t in auto_targets(rows)}
    window = targets[("auto / fastest exact (sliding), window 256", 8192)]
    assert window["met"] and window["measured"] == pytest.approx(0.066 / 0.061)  # peers outside qkv do not count
    full = targets[("auto / fastest exact (sdpa), full", 512)]
    assert not full["met"] and full["limit"] == 1.1

"""Long-context sections of ``python -m qkv.bench attention``: quick runs, targets, report files."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from qkv.attention import get_backend
from qkv.bench import attention_command as bench_attention
from qkv.bench import long_context
from qkv.bench.long_context import (
    APPROXIMATE_CONTENDERS,
    FLEX,
    SDPA,
    SDPA_BAND,
    SLIDING,
    approximate_targets,
    loglog_slope,
    sliding_targets,
)

# torch.compile (FlexAttention) imports a deprecated TorchScript helper: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

REPORT_FILES = ("long-context-cpu.json", "long-context-cpu.md", "long-context-cpu-time.png",
                "long-context-cpu-error.png")
APPROXIMATE_DEFAULTS = ("linear", "performer m=256", "nystrom m=64", "linformer k=256")


@pytest.fixture(scope="module")
def lra_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One ``--section lra --quick`` run (the sliding and approximate sections, then the report)."""
    out = tmp_path_factory.mktemp("lra")
    argv = ["--section", "lra", "--quick", "--json", str(out / "lra.json"), "--report-dir", str(out)]
    assert bench_attention.main(argv) == 0
    return json.loads((out / "lra.json").read_text()), out


def rows_at(section: dict, n: int) -> dict[str, dict]:
    return {r["name"]: r for r in section["rows"] if r["n"] == n}


def test_quick_lra_writes_the_report(lra_run: tuple[dict, Path]) -> None:
    result, out = lra_run
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "long-context-cpu.json").read_text())["lra"] == result["lra"]
    markdown = (out / "long-context-cpu.md").read_text()
    for text in ("## Targets (issue 6)", "LRA-style", "Tay et al., 2020", "near-uniform", "VmHWM",
                 "long-context-cpu-time.png", "| qkv sliding w=256 |"):
        assert text in markdown, text
    assert len(result["targets"]) == len(result["sliding"]["targets"]) + len(result["approximate"]["targets"])


def test_quick_sliding_section(lra_run: tuple[dict, Path]) -> None:
    sliding = lra_run[0]["sliding"]
    sizes = sliding["config"]["sizes"]
    assert [(t["target"], t["n"], t["rule"], t["limit"]) for t in sliding["targets"]] == [
        ("sliding speed-up over SDPA with the equivalent bool mask", 8192, ">=", 5.0),
        ("sliding speed-up over compiled FlexAttention (warm)", 8192, ">=", 2.0),
        ("log-log slope of sliding time vs N", "4096..65536", "<=", 1.15),
    ]
    assert all(t["met"] is None and t["measured"] is None for t in sliding["targets"])  # quick: tiny N
    for n in sizes:
        points = rows_at(sliding, n)
        assert points[SLIDING.name]["time_s"] > 0
        assert points[SDPA_BAND.name]["time_s"] > 0
        assert points[SLIDING.name]["time_vs_sliding"] == pytest.approx(1.0)
    flex = rows_at(sliding, sizes[0])[FLEX.name]
    assert flex["time_s"] > 0 and flex["compile_s"] > 0 and flex["block_mask_s"] > 0
    assert "run up to N=" in rows_at(sliding, sizes[-1])[FLEX.name]["skipped"]


def test_quick_approximate_section(lra_run: tuple[dict, Path]) -> None:
    approximate = lra_run[0]["approximate"]
    targets = approximate["targets"]
    assert [t["target"] for t in targets] == [f"{name} speed-up over SDPA" for name in APPROXIMATE_DEFAULTS] + [
        f"{name} peak memory / SDPA peak memory" for name in APPROXIMATE_DEFAULTS]
    assert {t["n"] for t in targets[:4]} == {16384} and {t["n"] for t in targets[4:]} == {32768}
    small, large = approximate["config"]["sizes"]
    assert "performer m=64" not in {c["name"] for c in approximate["contenders"]}  # quick: defaults only
    points = rows_at(approximate, large)
    for name, row in points.items():  # --quick measures memory at the largest size only
        assert row["peak_bytes"] and row["peak_bytes"] > 0, name
        assert row["memory_vs_sdpa"] == pytest.approx(row["peak_bytes"] / points[SDPA.name]["peak_bytes"])
        assert math.isfinite(row["rel_error"]) and math.isfinite(row["rel_error_peaked"]), name
    assert points[SDPA.name]["rel_error"] == 0.0
    assert points["naive (exact)"]["rel_error"] < 1e-5
    assert rows_at(approximate, small)[SLIDING.name]["rel_error"] < 1e-5  # the window covers N=256
    assert all(points[name]["rel_error"] > 1e-3 for name in APPROXIMATE_DEFAULTS)


def test_lra_table(lra_run: tuple[dict, Path]) -> None:
    table = lra_run[0]["lra"]
    names = [row["name"] for row in table["rows"]]
    assert names[0] == SDPA.name and SLIDING.name in names and set(APPROXIMATE_DEFAULTS) <= set(names)
    for row in table["rows"]:
        assert [cell["n"] for cell in row["cells"]] == table["sizes"]
    assert all(cell["speedup_vs_sdpa"] == pytest.approx(1.0) for cell in table["rows"][0]["cells"])
    assert "Tay et al." in table["reference"]


def test_lra_rows_use_each_backends_default_options() -> None:
    for contender in APPROXIMATE_CONTENDERS:
        options_type = contender.kind == "qkv" and get_backend(contender.backend).options_type
        if contender.lra and options_type:
            assert asdict(contender.resolved_options()) == asdict(options_type()), contender.name


def row(name: str, n: int, time_s: float, **extra) -> dict:
    return {"name": name, "n": n, "time_s": time_s, **extra}


def test_sliding_targets_judge_measured_points() -> None:
    rows = [row(SLIDING.name, n, 1e-5 * n) for n in (4096, 8192, 16384, 32768, 65536)]
    rows += [row(SDPA_BAND.name, 8192, 10 * 1e-5 * 8192), row(FLEX.name, 8192, 1.2 * 1e-5 * 8192)]
    speed_mask, speed_flex, slope = sliding_targets(rows)
    assert speed_mask["measured"] == pytest.approx(10.0) and speed_mask["met"] is True
    assert speed_flex["measured"] == pytest.approx(1.2) and speed_flex["met"] is False
    assert slope["measured"] == pytest.approx(1.0) and slope["met"] is True and slope["n"] == "4096..65536"


def test_approximate_targets_judge_measured_points() -> None:
    rows = [row(name, 16384, 1.0, speedup_vs_sdpa=12.0) for name in APPROXIMATE_DEFAULTS]
    rows += [row(name, 32768, 1.0, memory_vs_sdpa=0.5) for name in APPROXIMATE_DEFAULTS]
    targets = approximate_targets(rows)
    assert [t["met"] for t in targets] == [True] * 4 + [False] * 4


def test_loglog_slope() -> None:
    assert loglog_slope([(1000, 1.0), (2000, 4.0), (4000, 16.0)]) == pytest.approx(2.0)
    assert loglog_slope([(1000, 1.0)]) is None


def test_sections_route_and_write_json(lra_run: tuple[dict, Path], monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    result = lra_run[0]
    called: list[str] = []

    def fake_section(name: str, *args, **kwargs) -> dict:
        called.append(name)
        return copy.deepcopy(result[name])

    monkeypatch.setattr(long_context, "run_section", fake_section)
    assert bench_attention.main(["--section", "approximate", "--json", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["targets"] == result["approximate"]["targets"]

    exact = {"targets": []}
    monkeypatch.setattr(bench_attention, "run_attention_bench", lambda **kwargs: called.append("exact") or exact)
    monkeypatch.setattr(bench_attention, "print_report", lambda result, console: None)
    argv = ["--section", "all", "--json", str(tmp_path / "b.json"), "--report-dir", str(tmp_path / "report")]
    assert bench_attention.main(argv) == 0
    assert called == ["approximate", "exact", "sliding", "approximate"]
    assert json.loads((tmp_path / "b.json").read_text()) == exact
    assert json.loads((tmp_path / "b-lra.json").read_text())["lra"]["sizes"] == result["lra"]["sizes"]
    assert all((tmp_path / "report" / name).exists() for name in REPORT_FILES)


def test_exact_only_options_are_refused_elsewhere() -> None:
    with pytest.raises(SystemExit) as raised:
        bench_attention.main(["--section", "sliding", "--causal"])
    assert raised.value.code == 2

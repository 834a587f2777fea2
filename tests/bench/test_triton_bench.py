"""``qkv bench triton --quick``: the GPU program's every path, on tiny sizes (CPU: Triton's interpreter)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from qkv.bench import main, triton_gpu
from qkv.bench.commands import triton as triton_command
from qkv.functional import get_backend
from qkv.functional.triton_backend import unavailable_reason

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.slow
def test_quick_run_checks_times_and_writes_json(tmp_path):
    reason = unavailable_reason(DEVICE)
    if reason is not None:
        pytest.skip(f"the Triton kernel cannot {reason}")
    path = tmp_path / "triton.json"
    assert main(["triton", "--quick", "--device", DEVICE, "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["machine"] and result["dtype"] == "bfloat16"
    assert len(result["checks"]) >= 10 and all(check["passed"] for check in result["checks"])
    for check in result["checks"]:
        assert {"out", "dq", "dk", "dv"} <= set(check) and check["out"]["error"] <= check["out"]["bound"]
    ours = [row for row in result["timings"] if row["backend"] == "qkv triton"]
    assert {(row["mode"], row["causal"]) for row in ours} >= {("fwd", False), ("fwd+bwd", False), ("fwd", True)}
    assert all(row["time_s"] > 0 for row in ours)
    flex = [row for row in result["timings"] if row["backend"] == "flex compiled" and row["mode"] == "fwd"]
    assert flex and flex[0].get("time_s", 0) > 0, flex
    # rates at least, and time / the peer's time at most: 1.1x and 1.2x as fast as FlashAttention and flex
    assert [(goal["rule"], goal["limit"]) for goal in result["targets"]] == [
        (">=", 600.0), ("<=", 1.0), (">=", 350.0), ("<=", 1 / 1.1), ("<=", 1 / 1.2), ("<=", 1 / 1.2), ("<=", 20.0)]
    assert result["sections_done"] == ["compile", "correctness", "speed"]
    assert {row["backend"] for row in result["compile"]} == set(triton_gpu.VARIANTS)
    assert all(row["first_call_s"] > 0 for row in result["compile"])
    both_ways = {row["backend"] for row in result["timings"] if row["mode"] == "fwd+bwd" and "window" in row}
    assert both_ways == {*triton_gpu.VARIANTS, "flex compiled"}


@pytest.mark.slow
def test_a_run_killed_after_its_first_section_leaves_its_json(tmp_path):
    """Each check prints as it finishes and the JSON is rewritten after each step, so a run stopped by
    a timeout keeps what it measured."""
    reason = unavailable_reason(DEVICE)
    if reason is not None:
        pytest.skip(f"the Triton kernel cannot {reason}")
    path = tmp_path / "triton.json"
    command = [sys.executable, "-m", "qkv.bench", "triton", "--quick", "--device", DEVICE, "--json", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if " ok   " in line or "FAIL " in line:  # the first correctness check has just printed
                break
    finally:
        process.kill()
        process.wait(timeout=60)
    assert any("first forward + backward" in line for line in lines), lines
    result = json.loads(path.read_text())
    assert result["sections_done"] == ["compile"]
    assert len(result["checks"]) >= 1 and "out" in result["checks"][0]
    assert not list(tmp_path.glob(".*.tmp"))


def test_budget_spent_leaves_the_remaining_checks_recorded_as_not_run(tmp_path, monkeypatch):
    ticks = iter([0.0, 0.0, 5.0])  # start, first budget look, then past the budget for good

    def clock() -> float:
        return next(ticks, 100.0)

    sizes = triton_gpu.Sizes.quick()
    run = triton_gpu.Run("cpu", sizes, tmp_path / "t.json", budget_s=1.0, clock=clock)
    calls = []

    def fake_check(name, dtype, q, k, v, options=None, **masking):
        calls.append(name)
        return {"check": name, "passed": True, **{label: {"error": 0.0, "bound": 1.0} for label in
                                                    ("out", "dq", "dk", "dv")}}

    monkeypatch.setattr(triton_gpu, "two_x_check", fake_check)
    triton_gpu.correctness(run, sizes, "cpu", torch.float32)
    assert len(calls) == 1
    skipped = [row for row in run.result["checks"] if "skipped" in row]
    assert len(skipped) == len(run.result["checks"]) - 1 >= 9
    assert all("budget" in row["skipped"] for row in skipped)
    assert json.loads((tmp_path / "t.json").read_text())["checks"] == run.result["checks"]


def test_refusals_name_the_option_and_the_fix(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """Full sizes on the CPU, or a device the kernel cannot run on, end in a usage error, not a traceback."""
    if not torch.cuda.is_available():
        assert main(["triton", "--device", "cpu"]) == 2 and "add --quick" in capsys.readouterr().err
    no_triton = dataclasses.replace(get_backend("triton"), unavailable=lambda device_type: "run here: no Triton")
    monkeypatch.setattr(triton_command, "get_backend", lambda name: no_triton)
    assert main(["triton", "--quick", "--device", "cpu"]) == 2
    assert "--device cpu: the triton backend cannot run here: no Triton" in capsys.readouterr().err

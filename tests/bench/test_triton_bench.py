"""``qkv bench triton --quick``: the GPU program's every path, on tiny sizes (CPU: Triton's interpreter)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from qkv.attention import get_backend
from qkv.attention.triton_backend import unavailable_reason
from qkv.bench import main, triton_gpu

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
    assert [goal["limit"] for goal in result["targets"]] == [450.0, 300.0, 1.2]


def test_refusals_name_the_option_and_the_fix(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """Full sizes on the CPU, or a device the kernel cannot run on, end in a usage error, not a traceback."""
    if not torch.cuda.is_available():
        assert main(["triton", "--device", "cpu"]) == 2 and "add --quick" in capsys.readouterr().err
    no_triton = dataclasses.replace(get_backend("triton"), unavailable=lambda device_type: "run here: no Triton")
    monkeypatch.setattr(triton_gpu, "get_backend", lambda name: no_triton)
    assert main(["triton", "--quick", "--device", "cpu"]) == 2
    assert "--device cpu: the triton backend cannot run here: no Triton" in capsys.readouterr().err

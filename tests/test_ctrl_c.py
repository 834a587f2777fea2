"""Ctrl-C in a real ``qkv`` process: one line on stderr, exit code 130, no traceback.

tests/test_cli.py checks every command in-process (KeyboardInterrupt raised where the
command's work is); here a real SIGINT reaches a running ``qkv bench attention``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT is a POSIX signal")
def test_sigint_during_a_benchmark_prints_one_line_and_exits_130(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", PYTHONUNBUFFERED="1",
               COLUMNS="200")
    process = subprocess.Popen(
        [sys.executable, "-m", "qkv.cli", "bench", "attention", "--quick", "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    try:
        first_line = process.stdout.readline()  # the sweep has started: Python's imports are done
        assert first_line, process.stderr.read()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("qkv bench attention: interrupted (Ctrl-C)")
    out = tmp_path / "out"
    assert not [p.name for p in out.rglob("*") if ".tmp" in p.name] if out.exists() else True  # nothing half-written

"""The explain report in a terminal shows user text with its control characters escaped."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from qkv.viz.terminal import print_report

CLEAR_SCREEN = "\x1b[2J"
SET_TITLE = "\x1b]0;pwned\x07"


@pytest.mark.parametrize("which", ["report", "gpt2_report"])
def test_the_explain_report_shows_user_text_escaped(request, which) -> None:
    report = request.getfixturevalue(which)
    hostile = dict(report, sentence=f"She put {SET_TITLE} her check at the {CLEAR_SCREEN} bank.")
    hostile["tokens"] = [f"{token}{CLEAR_SCREEN}" for token in report["tokens"]]
    hostile["pieces"] = [f"{piece}{SET_TITLE}" for piece in report["pieces"]]
    hostile["focus"] = dict(report["focus"], token=f"bank{CLEAR_SCREEN}")
    stream = io.StringIO()
    print_report(hostile, Console(file=stream, width=100, color_system=None))
    out = stream.getvalue()
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J" in out and "\\x1b]0;pwned\\x07" in out

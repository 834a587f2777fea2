"""The explain report in a terminal: every line fits the console, nothing is cut, and a long
input says which of its tokens are shown."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from qkv.viz.terminal import print_report


def printed(report: dict, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    print_report(report, console)
    return console.export_text()


def section(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


@pytest.mark.parametrize("width", [60, 80])
@pytest.mark.parametrize("which", ["report", "long_report"])
def test_every_line_fits_and_nothing_is_cut(request, which, width):
    report = request.getfixturevalue(which)
    text = printed(report, width)
    assert max(len(line) for line in text.splitlines()) <= width
    # The only ellipsis is the one that ends a shortened vector, "[+0.01, -0.02, …]": no cell is cut.
    assert re.findall(r"…(?!\])", text) == []
    # Every head of both grids of section 6 is there, however narrow the console.
    heads = section(text, "6. Heads that matter", "in short")
    for head in range(report["model"]["heads"]):
        assert len(re.findall(rf"(?<!\w)h{head}(?!\d)", heads)) == 2, head
    peak = max(max(row) for row in report["ablation"])
    assert f"{peak * 1000:.1f}" in heads  # importance in one unit: (1 - cos) x 1000


def test_a_long_input_says_which_tokens_each_section_shows(long_report):
    report = long_report
    count, focus = len(report["tokens"]), report["focus"]["index"]
    assert count == 65
    text = printed(report, 80)
    rows = section(text, "1. Tokens", "2. One head")
    shown = [int(line.split("│")[0]) for line in rows.splitlines() if re.match(r"^\s*\d+\s*│", line)]
    assert len(shown) < count and focus in shown
    assert f"tokens {shown[0]}–{shown[-1]} of {count}" in " ".join(rows.split())
    grid = section(text, "3. Where", "4. Context")
    assert "darker = more" in grid
    header = next(line for line in grid.splitlines() if line.split()[:1] == ["layer"] and "aside" in line)
    columns = [int(c) for c in header.split()[1:-1]]
    assert focus in columns and len(columns) < count
    assert f"tokens {columns[0]}–{columns[-1]} of {count}" in " ".join(grid.split())
    layers = [line for line in grid.splitlines() if re.match(r"^\s+\d\s+.*%\s*$", line)]
    assert len(layers) == report["model"]["layers"]  # the shaded grid is printed for long inputs too


def test_the_report_says_why_this_head(long_report):
    text = " ".join(printed(long_report, 100).split())
    walk = long_report["walkthrough"]
    assert f"2. One head step by step: layer {walk['layer']}, head {walk['head']}" in text
    assert "why this head: among all heads" in text and "a positional head, passed over" in text

"""Figures and words that say what they show: flat rollout/flow called flat, the sense
trajectory titled by the gap between senses, head-role labels in the legend's words."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from qkv.inspect.heads import ROLE_NAMES
from qkv.inspect.rollout import FLAT_TOLERANCE, flat_note
from qkv.viz import figures
from qkv.viz.terminal import print_report


@pytest.fixture(scope="module")
def shown(report, tmp_path_factory) -> dict:
    """File name -> the matplotlib figure of the seed sentence's report saved there."""
    kept = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures.plt, "close", kept.append)
        paths = figures.save_figures(report, tmp_path_factory.mktemp("figures"))
    yield {path.name: figure for path, figure in zip(paths, kept)}
    for figure in kept:
        figures.plt.close(figure)


def terminal_text(report: dict) -> str:
    """The terminal report as one line of words (wrapping undone)."""
    console = Console(width=120, record=True, file=io.StringIO())
    print_report(report, console)
    return " ".join(console.export_text().split())


def test_flat_means_every_share_near_the_even_one() -> None:
    even = [0.25] * 4
    assert flat_note("flow", even).startswith("flow is flat: every token gets 0.250 to 0.250")
    near = [0.25 * (1 + FLAT_TOLERANCE * 0.99), 0.25, 0.25, 0.25 * (1 - FLAT_TOLERANCE * 0.99)]
    assert flat_note("flow", near) is not None and "1/4 = 0.250" in flat_note("flow", near)
    off = [0.25 * (1 + FLAT_TOLERANCE * 1.01), 0.25, 0.25, 0.25 * (1 - FLAT_TOLERANCE * 1.01)]
    assert flat_note("flow", off) is None
    assert flat_note("rollout", [0.7, 0.1, 0.1, 0.1]) is None
    assert flat_note("flow", [1.0]) is None  # one token: nothing to compare


def test_flat_flow_is_called_flat_everywhere(report, shown) -> None:
    # The seed sentence: flow gives every token about 1/10; rollout puts most on [CLS].
    notes = report["flat_notes"]
    assert len(notes) == 1 and notes[0].startswith("flow is flat") and "1/10" in notes[0]
    assert notes[0] in terminal_text(report)
    axis = shown["rollout_flow.png"].axes[0]
    assert notes[0] in axis.get_title()
    assert "even share 1/10" in [text.get_text() for text in axis.get_legend().texts]


def test_sense_trajectory_title_says_it_shows_the_gap(report, shown) -> None:
    title = shown["sense_trajectory.png"].axes[0].get_title()
    last = sorted(report["senses"]["cosine"][-1], reverse=True)
    assert "the gap between the lines" in title and "moving toward" not in title
    assert f"{report['senses']['predicted'][-1]} after the last layer, by {last[0] - last[1]:.3f}" in title


def test_head_role_labels_use_the_legend_words(report, shown) -> None:
    titles = {axis.get_title() for axis in shown["head_roles.png"].axes}
    assert {ROLE_NAMES[name] for name in report["head_roles"]} <= titles
    legend = terminal_text(report)
    for name, letter in (("previous", "P"), ("cls", "C"), ("sep", "E"), ("punctuation", ".")):
        assert f"{letter} {ROLE_NAMES[name]}" in legend
    assert "'.' has no lower case" in legend  # the legend's case rule says how '.' reads


def test_the_page_calls_flat_flow_flat_and_names_roles_as_the_figure(browser, report, tmp_path) -> None:
    from qkv.viz.html import render_html

    path = tmp_path / "report.html"
    path.write_text(render_html(report), encoding="utf-8")
    page = browser.new_page()
    try:
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready=true]")
        notes = page.locator("#rollout-section .flat-note")
        assert notes.count() == 1 and notes.first.is_visible()
        assert notes.first.inner_text().startswith("flow is flat")
        options = page.locator("#role-select option").all_inner_texts()
        assert options == [ROLE_NAMES[name] for name in report["head_roles"]]  # the figure's words
    finally:
        page.close()

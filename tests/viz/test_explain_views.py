"""Every view of the explain report tells the same truth: one ranking by exact weight in the page's
captions and side panel, the terminal and the JSON; long inputs stay readable; the narrow page hides
nothing without a cue."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from qkv.viz.html import render_html
from qkv.viz.terminal import print_report

TOP_ROWS = 15  # the rows a long page table shows before "show all"


@pytest.fixture(scope="module")
def report_5_4(model_and_tokenizer) -> dict:
    """The seed sentence's report with the walkthrough at layer 5, head 4."""
    from qkv.inspect.explain import explain

    return explain(*model_and_tokenizer, layer=5, head=4)


@pytest.fixture(scope="module")
def paragraph_report(model_and_tokenizer) -> dict:
    """The 376-token paragraph (:data:`long_text.PARAGRAPH`), focus 'bank'."""
    from long_text import PARAGRAPH
    from qkv.inspect.explain import explain

    return explain(*model_and_tokenizer, PARAGRAPH, "bank")


def open_page(browser, tmp_path: Path, report: dict, width: int = 1280, height: int = 900):
    path = tmp_path / f"report-{width}.html"
    path.write_text(render_html(report), encoding="utf-8")
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready=true]")
    return context, page, errors


def printed(report: dict, width: int = 120) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    print_report(report, console)
    return console.export_text()


def quoted(text: str) -> list[str]:
    """The words in “curly” or 'straight' quotes, in order."""
    return re.findall(r"[“']([^”']+)[”']", text)


def caption_order(page) -> list[int]:
    return [int(i) for i in page.get_attribute("#token-caption", "data-order").split(",")]


def panel_order(page) -> list[int]:
    return page.eval_on_selector_all("#panel-ranking li", "items => items.map(i => Number(i.dataset.index))")


# ---- one ranking ----

def test_clicking_check_at_layer_5_head_4_shows_its_attention_to_itself_first(browser, report, tmp_path):
    context, page, errors = open_page(browser, tmp_path, report)
    try:
        page.select_option("#layer-select", "5")
        page.click("button.head-btn[data-head='4']")
        check = report["tokens"].index("check")
        page.click(f"#tokens .tok[data-index='{check}']")
        caption = page.inner_text("#token-caption")
        assert caption.startswith("“check” in layer 5, head 4 looks most at: “check” (itself) 0.734, “deposited” 0.113")
        assert "to [CLS], [SEP] and punctuation" in caption  # the share of the parked tokens, stated
        expected = report["ranked"]["order"][5][4][check]
        assert caption_order(page) == expected[:3]
        assert panel_order(page) == expected[:5]  # the side panel follows the clicked word, in the same order
        assert "“check”" in page.inner_text("#head-summary h3")
        assert errors == []
    finally:
        context.close()


def test_caption_panel_terminal_and_json_agree_on_order(browser, report_5_4, tmp_path):
    report = report_5_4
    json_order = report["heads"][5 * 12 + 4]["ranked"]["order"]
    # The terminal names the walkthrough head's ranking of the focus word.
    line = " ".join(printed(report).split()).split("'bank' in layer 5, head 4 looks most at: ", 1)[1].split(";")[0]
    assert quoted(line) == [report["tokens"][j] for j in json_order[:3]]
    assert "0.741" in line  # bank's attention to check, the largest weight of its row
    context, page, errors = open_page(browser, tmp_path, report)
    try:
        assert caption_order(page) == json_order[:3]
        assert panel_order(page) == json_order[:5]
        for head in (0, 7, 11):  # every head of the layer: caption, panel and JSON list the same tokens
            page.click(f"button.head-btn[data-head='{head}']")
            order = report["heads"][5 * 12 + head]["ranked"]["order"]
            assert caption_order(page) == order[:3] and panel_order(page) == order[:5]
        assert errors == []
    finally:
        context.close()


def test_no_weight_is_ranked_below_a_smaller_one_on_a_long_paragraph(paragraph_report):
    report = paragraph_report
    walk = report["walkthrough"]
    text = printed(report)
    rows = text.split("2. One head step by step", 1)[1].split("looks most at", 1)[0]
    shown = [float(m) for m in re.findall(r"│ ([01]\.\d{3}) +│", rows)]
    assert len(shown) == 30 and shown == sorted(shown, reverse=True)
    listed, others = walk["order"][:30], walk["order"][30:]
    assert min(walk["scores"][i] for i in listed) >= max(walk["scores"][i] for i in others)
    bound = re.search(r"and (\d+) more keys, each at most (0\.\d{3})", " ".join(rows.split()))
    assert int(bound.group(1)) == len(walk["weights"]) - 30
    assert max(walk["weights"][i] for i in others) <= float(bound.group(2))
    # The ranking sentence of each layer lists weights largest first.
    for line in re.findall(r"layer \d: (.*?);", " ".join(text.split("where it looks most", 1)[1].split())):
        weights = [float(w) for w in re.findall(r"(\d\.\d{3})", line)]
        assert weights == sorted(weights, reverse=True)


# ---- long inputs ----

def test_the_long_paragraphs_page_stays_within_a_few_screens(browser, paragraph_report, tmp_path):
    report = paragraph_report
    context, page, errors = open_page(browser, tmp_path, report)
    try:
        assert page.evaluate("document.body.scrollHeight") <= 6000
        note = page.inner_text("#length-note")
        assert "376 tokens" in note and "256" in note and "--truncate" in note
        visible = "t => t.querySelectorAll('tr:not([hidden])').length"
        # Header, the top rows and the sum; below the table, "… N more keys".
        assert page.eval_on_selector("#walkthrough-table", visible) == 1 + TOP_ROWS + 1
        more = page.inner_text("#walkthrough-table-more")
        assert f"{len(report['walkthrough']['weights']) - TOP_ROWS} more keys, each at most" in more
        weights = page.eval_on_selector_all("#walkthrough-table tr:not([hidden]) td:nth-child(5)",
                                            "cells => cells.map(c => Number(c.textContent))")[:TOP_ROWS]
        assert weights == sorted(weights, reverse=True)
        assert page.eval_on_selector("#rollout-table", visible) == 1 + TOP_ROWS
        assert page.eval_on_selector("#vectors-table", visible) == 1 + TOP_ROWS
        assert "more words" in page.inner_text("#rollout-table-more")
        columns = page.eval_on_selector("#focus-table", "t => t.rows[0].cells.length")
        assert columns < 60 and "get at most" in page.inner_text("#focus-columns-note")
        # Everything is one click away.
        page.click("#walkthrough-table-more .show-all")
        assert page.eval_on_selector("#walkthrough-table", visible) == 1 + len(report["walkthrough"]["weights"]) + 1
        page.click("#focus-columns-toggle")
        assert page.eval_on_selector("#focus-table", "t => t.rows[0].cells.length") == len(report["tokens"]) + 2
        assert errors == []
    finally:
        context.close()


def test_the_terminal_says_the_input_is_longer_than_the_model_was_trained_on(paragraph_report, report):
    text = " ".join(printed(paragraph_report).split())
    assert "This input has 376 tokens; the model was trained on inputs of at most 256" in text
    assert "--truncate" in text
    assert "trained on inputs" not in printed(report)


def test_long_figures_keep_the_words_that_matter_and_say_what_they_leave_out(paragraph_report, tmp_path,
                                                                             monkeypatch):
    from PIL import Image

    from qkv.viz import figures

    kept = []
    monkeypatch.setattr(figures.plt, "close", kept.append)
    paths = figures.save_figures(paragraph_report, tmp_path)
    shown = {path.name: (figure, path) for path, figure in zip(paths, kept)}
    for name in ("focus_attention.png", "rollout_flow.png"):
        figure, path = shown[name]
        with Image.open(path) as image:
            assert image.size[0] <= 1800, name  # not a 2,600 px strip
        title = figure.axes[0].get_title()
        assert re.search(r"the \d+ of 373 words .*; the other \d+ get at most 0\.\d{3}", title), title
    # The words the focus figure keeps include the most attended one of every layer.
    focus_figure = shown["focus_attention.png"][0]
    labels = [t.get_text() for t in focus_figure.axes[0].get_xticklabels()]
    for order in paragraph_report["layer_ranked"]["order"]:
        assert paragraph_report["tokens"][order[0]] in labels


# ---- the narrow page ----

def test_wide_boxes_on_a_narrow_page_show_that_they_scroll(browser, report, tmp_path):
    context, page, errors = open_page(browser, tmp_path, report, width=400, height=720)
    try:
        overflowing = 0
        for box in ("#walkthrough-table", "#heatmap", "#rollout-table"):
            scroller = f"document.querySelector('{box}').closest('.scroll, #heatmap-box')"
            wide = page.evaluate(f"(() => {{ const s = {scroller}; return s.scrollWidth > s.clientWidth; }})()")
            frame = f"{scroller}.parentElement"
            if not wide:
                continue
            overflowing += 1
            assert page.evaluate(f"{frame}.classList.contains('overflowing')"), box
            hint = page.evaluate(f"(() => {{ const h = {frame}.querySelector('.scroll-hint'); "
                                 f"return [h.offsetHeight > 0, h.textContent]; }})()")
            assert hint[0] and "scroll →" in hint[1], box
            assert page.evaluate(f"getComputedStyle({frame}, '::after').backgroundImage") != "none", box
            # The last column is reachable: scrolled to the end, it is inside the box, and the shade goes.
            page.evaluate(f"(() => {{ const s = {scroller}; s.scrollLeft = s.scrollWidth; "
                          f"s.dispatchEvent(new Event('scroll')); }})()")
            assert page.evaluate(f"{frame}.classList.contains('at-end')"), box
        assert overflowing >= 2  # the walkthrough table and the heatmap do not fit 400 px
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 400
        assert errors == []
    finally:
        context.close()


def test_the_sticky_bar_is_opaque_and_small_on_a_narrow_page(browser, report, tmp_path):
    context, page, _ = open_page(browser, tmp_path, report, width=400, height=720)
    try:
        colour = page.evaluate("getComputedStyle(document.getElementById('controls')).backgroundColor")
        assert colour == "rgb(255, 255, 255)"  # opaque: no alpha
        page.evaluate("window.scrollTo(0, 1500)")
        top = page.evaluate("document.getElementById('controls').getBoundingClientRect().top")
        height = page.evaluate("document.getElementById('controls').getBoundingClientRect().height")
        assert top == 0 and height <= 720 / 6
    finally:
        context.close()


def test_arrow_keys_move_between_tokens(browser, report, tmp_path):
    context, page, errors = open_page(browser, tmp_path, report, width=400, height=720)
    try:
        page.focus("#tokens .tok[data-index='2']")
        page.keyboard.press("ArrowRight")
        assert page.evaluate("document.activeElement.dataset.index") == "3"
        assert page.inner_text("#token-caption").startswith(f"“{report['tokens'][3]}”")
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        assert page.evaluate("document.activeElement.dataset.index") == "1"
        page.keyboard.press("End")
        assert page.evaluate("document.activeElement.dataset.index") == str(len(report["tokens"]) - 1)
        assert errors == []
    finally:
        context.close()


def test_show_all_buttons_stay_in_view_on_a_narrow_page(browser, paragraph_report, tmp_path):
    context, page, errors = open_page(browser, tmp_path, paragraph_report, width=400, height=720)
    try:
        rights = page.eval_on_selector_all(".show-all", "bs => bs.map(b => b.getBoundingClientRect().right)")
        assert len(rights) >= 4 and max(rights) <= 400  # walkthrough, focus columns, rollout, vectors
        assert errors == []
    finally:
        context.close()


def test_the_last_layer_summary_ranks_the_word_itself_too(browser, report, tmp_path):
    # bank's own 0.110 sits between deposited 0.135 and check 0.108: no view leaves it out silently.
    expected = "looks most at “[CLS]” 0.438, “deposited” 0.135, “bank” (itself) 0.110, “check” 0.108"
    terminal = " ".join(printed(report).split("in short", 1)[1].replace("│", " ").split())
    assert expected.replace("“", "'").replace("”", "'") in terminal
    context, page, errors = open_page(browser, tmp_path, report)
    try:
        assert expected in page.inner_text("#last-layer")
        assert errors == []
    finally:
        context.close()

"""The self-contained HTML report: escaping checked in Python and the page driven in Debian's chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hostile_text import HOSTILE

from qkv.viz.html import json_for_script, render_html, show_controls


@pytest.fixture(scope="module")
def hostile_report(model_and_tokenizer):
    from qkv.inspect.explain import explain

    return explain(*model_and_tokenizer, HOSTILE, "bank")


class Watched:
    """A page with everything it logs, throws, requests or pops up recorded."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1200, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))

        def on_dialog(dialog):
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        self.page.on("dialog", on_dialog)

    def open(self, path: Path) -> None:
        self.page.goto(path.as_uri())
        self.page.wait_for_selector("body[data-ready=true]")


@pytest.fixture
def watched(browser):
    view = Watched(browser)
    try:
        yield view
    finally:
        view.context.close()


def write(tmp_path: Path, report: dict, name: str = "report.html") -> Path:
    path = tmp_path / name
    path.write_text(render_html(report), encoding="utf-8")
    return path


def embedded_json(page: str) -> str:
    match = re.search(r'<script type="application/json" id="report">(.*?)</script>', page, re.S)
    assert match, "the report JSON is not embedded"
    return match.group(1)


# ---- pure Python ----

def test_json_for_script_cannot_break_out():
    data = {"text": "</script><script>alert(1)</script><!-- & \u2028 \u2029 'q' \"d\"", "x": float("nan")}
    text = json_for_script(data)
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in text
    assert json.loads(text) == {"text": data["text"], "x": None}


def test_page_is_one_self_contained_file(report):
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    assert json.loads(embedded_json(page)) == json.loads(json.dumps(report))
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//)""", page), "the page links elsewhere"
    assert "@import" not in page and "url(" not in page
    assert page.count("<script") == 2
    assert "innerHTML" not in page and "outerHTML" not in page and "insertAdjacentHTML" not in page


def test_hostile_sentence_is_escaped_in_the_markup(hostile_report):
    assert hostile_report["sentence"] == HOSTILE
    page = render_html(hostile_report)
    assert "<script>alert" not in page
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # title and heading
    head = page[:page.index('<script type="application/json"')]
    assert "\u202e" not in head and "⟨U+202E⟩" in head
    assert json.loads(embedded_json(page))["sentence"] == HOSTILE


def test_back_link_is_escaped(report):
    page = render_html(report, back_href='/?sentence="><script>alert(1)</script>')
    assert "<script>alert" not in page
    assert 'href="/?sentence=&quot;&gt;&lt;script&gt;' in page


def test_show_controls():
    assert show_controls("a\u202eb\u2066c") == "a⟨U+202E⟩b⟨U+2066⟩c"
    assert show_controls("plain") == "plain"


# ---- in the browser ----

def test_loads_from_disk_without_errors_or_requests(watched, report, tmp_path):
    path = write(tmp_path, report)
    watched.open(path)
    page = watched.page
    assert watched.errors == []
    assert watched.requests == [path.as_uri()]
    L, H, W = report["model"]["layers"], report["model"]["heads"], len(report["tokens"])
    assert page.locator("#head-buttons button[data-head]").count() == H
    assert page.locator("#layer-select option").count() == L
    assert page.locator("#tokens .tok").count() == W
    assert page.locator("#heatmap rect.cell").count() == W * W
    assert page.locator("#walkthrough-table tr").count() == len(report["pieces"]) + 2
    assert page.locator("#sense-plot polyline.sense-line").count() == len(report["senses"]["names"]) + 1
    assert page.locator("#rollout-table tr").count() == W + 1
    assert page.locator("#ablation-grid td").count() == L * H
    assert page.locator("#roles-grid td").count() == L * H
    assert page.locator("#focus-table tr").count() == L + 1
    assert "%" in page.locator("#focus-table").inner_text()  # the share to [CLS]/[SEP]/punctuation
    assert page.locator("#sentence").inner_text() == report["sentence"]


def heatmap_state(page) -> list[str]:
    return page.eval_on_selector_all("#heatmap rect.cell", "cells => cells.map(c => c.getAttribute('fill'))")


def test_clicking_a_head_changes_the_heatmap(watched, report, tmp_path):
    watched.open(write(tmp_path, report))
    page = watched.page
    before = heatmap_state(page)
    current = report["walkthrough"]["head"]
    other = (current + 1) % report["model"]["heads"]
    page.click(f'#head-buttons button[data-head="{other}"]')
    assert page.get_attribute("#heatmap", "data-head") == str(other)
    assert page.get_attribute(f'#head-buttons button[data-head="{other}"]', "aria-pressed") == "true"
    after = heatmap_state(page)
    assert after != before
    layer = (report["walkthrough"]["layer"] + 1) % report["model"]["layers"]
    page.select_option("#layer-select", str(layer))
    assert page.get_attribute("#heatmap", "data-layer") == str(layer)
    assert page.get_attribute(f'#head-buttons button[data-head="{other}"]', "data-layer") == str(layer)
    assert heatmap_state(page) != after
    # a cell of the importance grid selects its head too
    page.click('#ablation-grid td[data-layer="0"][data-head="0"]')
    assert (page.get_attribute("#heatmap", "data-layer"), page.get_attribute("#heatmap", "data-head")) == ("0", "0")
    assert watched.errors == []


def test_hovering_a_token_highlights_where_it_looks(watched, report, tmp_path):
    watched.open(write(tmp_path, report))
    page = watched.page

    def looks():
        return page.eval_on_selector_all(
            "#tokens .tok", "ts => ts.map(t => [t.getAttribute('data-weight'), t.style.backgroundColor])")

    before = looks()
    source = 2 if report["focus"]["index"] != 2 else 3
    page.hover(f'#tokens .tok[data-index="{source}"]')
    assert "source" in page.get_attribute(f'#tokens .tok[data-index="{source}"]', "class")
    after = looks()
    others = [j for j in range(len(report["tokens"])) if j != source]
    assert any(before[j] != after[j] for j in others)
    layer, head = report["walkthrough"]["layer"], report["walkthrough"]["head"]
    expected = report["attention"][layer][head][source]
    assert [float(w) for w, _ in after] == pytest.approx(expected, abs=1e-4)
    assert watched.errors == []


def test_screenshot(watched, report, tmp_path):
    watched.open(write(tmp_path, report))
    shot = tmp_path / "report.png"
    watched.page.screenshot(path=str(shot), full_page=True)
    assert shot.exists() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hostile_sentence_stays_text_in_the_browser(watched, hostile_report, tmp_path):
    path = write(tmp_path, hostile_report, "hostile.html")
    watched.open(path)
    page = watched.page
    assert watched.dialogs == []
    assert watched.errors == []
    assert watched.requests == [path.as_uri()]
    scripts = page.eval_on_selector_all("script", "ss => ss.map(s => s.id)")
    assert scripts == ["report", "app"]
    shown = page.locator("#sentence").inner_text()
    assert "<script>alert(1)</script>" in shown
    assert "⟨U+202E⟩" in shown and "\u202e" not in shown
    assert page.get_by_text("<script>alert(1)</script>", exact=False).first.is_visible()
    assert "<" in page.locator("#tokens").inner_text()  # the tokens "<" and ">" are text too
    assert page.title().startswith("qkv · bank · She said \"><script>")


def test_content_security_policy_blocks_foreign_scripts(watched, report, tmp_path):
    """Defence in depth: even markup that slipped through could not run a script."""
    page = render_html(report).replace("<body>", "<body>\n<script>alert(1)</script>", 1)
    path = tmp_path / "tampered.html"
    path.write_text(page, encoding="utf-8")
    watched.open(path)  # the page's own script still runs (it is allowed by its hash)
    assert watched.dialogs == []
    assert any("Content Security Policy" in e for e in watched.errors)


def test_long_report_without_matrices_loads_cleanly(model_and_tokenizer, browser, tmp_path):
    """Long inputs keep no (W, W) matrices: the page says so and still works."""
    from qkv.inspect.explain import explain

    report = explain(*model_and_tokenizer, long_view=True)
    assert report["attention"] is None and report["rollout"] is None
    path = tmp_path / "long.html"
    path.write_text(render_html(report), encoding="utf-8")
    watched = Watched(browser)
    try:
        watched.open(path)
        assert watched.errors == []
        assert "no heatmap" in watched.page.inner_text("#heatmap-box")
        watched.page.select_option("#layer-select", "5")
        watched.page.click("button.head-btn[data-head='4']")
        watched.page.hover(f"#tokens [data-index='{report['focus']['index']}']")
        weights = [float(watched.page.get_attribute(f"#tokens [data-index='{i}']", "data-weight"))
                   for i in range(len(report["tokens"]))]
        assert weights == pytest.approx(report["focus_attention"][5][4], abs=1e-3)
        assert watched.errors == []
    finally:
        watched.context.close()


def test_gpt2_page_says_causal_and_names_no_cls(watched, gpt2_report, tmp_path):
    report = gpt2_report
    assert report["model"]["causal"] and report["tokens"][0] == "She"  # no [CLS]; words without GPT-2's space
    markup = render_html(report).split('<script type="application/json"')[0]  # the page before its data
    assert "Without punctuation" in markup and "[CLS], [SEP] and punctuation" not in markup
    watched.open(write(tmp_path, report))
    page = watched.page
    assert watched.errors == []
    assert page.locator("#causal-note").is_visible()
    assert "to punct." in page.locator("#focus-table").inner_text() and "[CLS]" not in page.locator(
        "#focus-table").inner_text()
    assert "causal" in page.locator("#walkthrough-info").inner_text()
    walk = report["walkthrough"]
    assert page.locator("#walkthrough-table tr").count() == walk["query_piece"] + 1 + 2  # visible keys only
    roles = page.eval_on_selector_all("#role-select option", "options => options.map(o => o.value)")
    assert "first" in roles and "cls" not in roles and "next" not in roles
    # The sense plot numbers layers as the layer menu does: emb, then 0 .. L-1.
    ticks = page.eval_on_selector_all("#sense-plot text", "texts => texts.map(t => t.textContent)")
    assert "after layer" in ticks and [t for t in ticks if t in ("emb", "0", "1", "2")] == ["emb", "0", "1"]
    assert "Without punctuation" in page.locator("#focus-section").inner_text()


# ---- layout, units, colour and keyboard ----

def test_no_sideways_scrolling_on_a_narrow_screen(browser, report, tmp_path):
    path = write(tmp_path, report)
    context = browser.new_context(viewport={"width": 400, "height": 800})
    try:
        page = context.new_page()
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready=true]")
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 400
        assert page.evaluate("document.getElementById('sense-plot').getBoundingClientRect().width") <= 400
    finally:
        context.close()


def test_show_this_head_above_keeps_the_heading_below_the_controls(watched, report, tmp_path):
    watched.open(write(tmp_path, report))
    page = watched.page
    page.click("#walkthrough-select")
    page.wait_for_function("Math.abs(document.querySelector('#heatmap-section').getBoundingClientRect().top) < 200")
    heading = page.evaluate("document.querySelector('#heatmap-section h2').getBoundingClientRect().top")
    controls = page.evaluate("document.getElementById('controls').getBoundingClientRect().bottom")
    assert heading >= controls


# WCAG relative luminance and contrast ratio, for the text on every shaded cell.
CONTRAST = """nodes => nodes.map(n => {
  const s = getComputedStyle(n);
  const lum = c => { const v = c.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(x => Number(x) / 255)
    .map(x => x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4));
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
  const a = lum(s.color), b = lum(s.backgroundColor);
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
})"""


def test_text_on_every_shade_has_aa_contrast(watched, report, tmp_path):
    watched.open(write(tmp_path, report))
    page = watched.page
    ratios = []
    for role in page.eval_on_selector_all("#role-select option", "os => os.map(o => o.value)"):
        page.select_option("#role-select", role)
        ratios += page.eval_on_selector_all("#focus-table td.shade, #focus-content-table td.shade, table.grid td, "
                                            "#tokens .tok:not(.source), #shade-key span", CONTRAST)
    assert len(ratios) > 300 and min(ratios) >= 4.5


def test_importance_is_in_one_labelled_unit(watched, report, tmp_path):
    watched.open(write(tmp_path, report))
    page = watched.page
    ablation = report["ablation"]
    layer, head = max(((i, h) for i in range(len(ablation)) for h in range(len(ablation[0]))),
                      key=lambda pair: ablation[pair[0]][pair[1]])
    cell = page.locator(f'#ablation-grid td[data-layer="{layer}"][data-head="{head}"]')
    assert cell.inner_text() == f"{ablation[layer][head] * 1000:.1f}"  # as the terminal: (1 - cos) x 1000
    assert "× 1000" in page.locator("#ablation-section h3").first.inner_text()
    page.click(f'#ablation-grid td[data-layer="{layer}"][data-head="{head}"]')
    assert f"{ablation[layer][head] * 1000:.1f}" in page.locator("#head-summary").inner_text()


def test_colour_scales_are_explained(watched, report, tmp_path):
    watched.open(write(tmp_path, report))
    page = watched.page
    assert page.locator("#shade-key span").count() >= 5  # the heatmap's colour key
    assert "square-root" in page.locator("#heatmap-section").inner_text()
    assert "relative to the word it looks at most" in page.locator("#tokens-section").inner_text()
    ticks = page.eval_on_selector_all("#sense-plot text", "ts => ts.map(t => t.textContent)")
    assert max(float(t) for t in ticks if re.fullmatch(r"-?\d+\.\d+", t)) <= 1.0  # a cosine is at most 1
    # Rollout and flow bars share one scale: only the largest of both fills its cell.
    widths = page.eval_on_selector_all("#rollout-table .bar", "bs => bs.map(b => b.getBoundingClientRect().width)")
    assert max(widths) == pytest.approx(120, abs=1) and sorted(widths)[-2] < 119
    assert "why this head" in page.locator("#walkthrough-info").inner_text().lower()


def test_enter_pins_a_token(watched, report, tmp_path):
    watched.open(write(tmp_path, report))
    page = watched.page
    source = 2 if report["focus"]["index"] != 2 else 3
    page.focus(f'#tokens .tok[data-index="{source}"]')
    page.keyboard.press("Enter")
    page.hover(f'#tokens .tok[data-index="{source + 1}"]')
    page.mouse.move(1, 1)  # leaving a token goes back to the pinned one
    assert "source" in page.get_attribute(f'#tokens .tok[data-index="{source}"]', "class")
    page.keyboard.press("Tab")  # the next token
    page.keyboard.press(" ")
    page.hover(f'#tokens .tok[data-index="{source}"]')
    page.mouse.move(1, 1)
    assert "source" in page.get_attribute(f'#tokens .tok[data-index="{source + 1}"]', "class")
    assert watched.errors == []


def test_a_word_without_sense_examples_says_how_to_add_them(model_and_tokenizer, watched, tmp_path):
    from qkv.inspect.explain import explain

    report = explain(*model_and_tokenizer, "The fisherman sat on the bank of the river.", "river")
    watched.open(write(tmp_path, report))
    text = watched.page.locator("#senses-box").inner_text()
    assert "No sense examples for “river”" in text and "--senses" in text and "senses=" in text
    assert "explain()" not in text


def test_walkthrough_names_a_scale_set_for_the_layer(watched, report, model_and_tokenizer, tmp_path):
    """1/√d is named as such; a layer set to another scale shows that scale, not "1/√d"."""
    from qkv.inspect.explain import explain

    watched.open(write(tmp_path, report))
    assert "(1/√d)" in watched.page.locator("#walkthrough-info").inner_text()
    assert "× 1/√d = score" in watched.page.locator("#walkthrough-table").inner_text()
    model, tokenizer = model_and_tokenizer
    model.set_attention("auto", scale=0.1)
    try:
        scaled = explain(model, tokenizer)
    finally:
        model.set_attention("auto")
    watched.open(write(tmp_path, scaled))
    info = watched.page.locator("#walkthrough-info").inner_text()
    assert "scale 0.1000 (set for this layer; 1/√d would be 0.1768)" in info
    assert "× scale = score" in watched.page.locator("#walkthrough-table").inner_text()
    assert watched.errors == []


def test_walkthrough_of_a_windowed_layer_lists_the_keys_it_sees(watched, model_and_tokenizer, tmp_path):
    from qkv.inspect.explain import explain

    model, tokenizer = model_and_tokenizer
    model.set_attention("sliding", window=(2, 2), global_tokens=[0])
    try:
        report = explain(model, tokenizer, layer=5, head=4)
    finally:
        model.set_attention("auto")
    watched.open(write(tmp_path, report))
    page = watched.page
    assert "The layer runs with window (2, 2): the query sees only these 6 of the 10 pieces" in page.locator(
        "#walkthrough-info").inner_text()
    rows = page.locator("#walkthrough-table tr")
    assert rows.count() == 6 + 2  # the header, the keys it sees, the sum
    firsts = [rows.nth(i).locator("td").first.inner_text() for i in range(1, 7)]
    assert firsts == ["0", "5", "6", "7", "8", "9"]  # each key's own piece index
    assert watched.errors == []

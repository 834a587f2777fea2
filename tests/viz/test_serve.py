"""The local web app: a real server on a free port, driven with urllib and Debian's chromium."""

from __future__ import annotations

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


def test_serve_says_qkv_serve(monkeypatch, capsys):
    from qkv.viz.serve import ExplainServer, serve

    def interrupted(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ExplainServer, "serve_forever", interrupted)
    serve(object(), object(), port=0)  # the model is not touched before the first request
    err = capsys.readouterr().err
    assert "qkv serve: serving on http://127.0.0.1:" in err and "qkv explain" not in err

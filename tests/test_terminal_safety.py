"""User text never drives the terminal: control characters are shown escaped in every terminal view."""

from __future__ import annotations

import io
import sys
import types

import pytest

from qkv.cli import main
from qkv.text import terminal_safe

CLEAR_SCREEN = "\x1b[2J"
SET_TITLE = "\x1b]0;pwned\x07"
HOSTILE_SENTENCE = f"She put {SET_TITLE} her check at the {CLEAR_SCREEN} bank."


def test_control_characters_are_shown_as_escapes() -> None:
    assert terminal_safe(CLEAR_SCREEN) == "\\x1b[2J"
    assert terminal_safe(SET_TITLE) == "\\x1b]0;pwned\\x07"
    assert terminal_safe("a\nb\tc\rd\x00e\x7ff\x9bg") == "a\\nb\\tc\\rd\\x00e\\x7ff\\x9bg"
    assert terminal_safe("evil\u202etxt.exe \u2066x\u2069") == "evil\\u202etxt.exe \\u2066x\\u2069"
    assert terminal_safe("a\nb\x1b", keep="\n") == "a\nb\\x1b"


def test_printable_text_is_unchanged() -> None:
    text = "Ünïcode 銀行 🏦, C:\\path\\x1b [bold]bank[/bold] 'quotes' \"double\" \u200d"
    assert terminal_safe(text) == text


def test_walkthrough_shows_control_characters_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["walkthrough", HOSTILE_SENTENCE, "--focus", "bank"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b" in out and "\\x07" in out  # shown, not dropped


def test_walkthrough_prints_markup_in_tokens_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["walkthrough", "the [bold] bank", "--focus", "bank"]) == 0
    out = capsys.readouterr().out
    assert "[" in out and "bold" in out


def test_error_messages_show_control_characters_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    from qkv.commands.common import fail

    assert fail("explain", f"no model folder at /tmp/model{CLEAR_SCREEN}") == 2
    err = capsys.readouterr().err
    assert err == "qkv explain: error: no model folder at /tmp/model\\x1b[2J\n"


def test_generate_escapes_on_a_terminal_and_writes_verbatim_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    import qkv
    import qkv.models.streaming as streaming

    class Decoder:
        def generate(self) -> None:  # a decoder, as far as the command asks
            pass

    monkeypatch.setattr(qkv, "load", lambda model: (Decoder(), None))
    monkeypatch.setattr(streaming, "stream_text", lambda *args, **kwargs: iter([f" and{CLEAR_SCREEN}", "\nthen"]))
    for is_terminal, expected in ((True, "\\x1b[2J"), (False, CLEAR_SCREEN)):
        stream = io.StringIO()
        stream.isatty = lambda is_terminal=is_terminal: is_terminal
        monkeypatch.setattr(sys, "stdout", stream)
        assert main(["generate", f"prompt{SET_TITLE}"]) == 0
        out = stream.getvalue()
        assert out.count(expected) == 1 and "\nthen" in out  # newlines stay newlines
        assert ("\x1b" in out) is not is_terminal


def test_wsd_tables_show_words_and_model_names_escaped(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import qkv.commands.wsd as wsd_command
    import qkv.inspect.wsd as wsd

    word = f"bank{CLEAR_SCREEN}"
    scores = {"micro_f1": 50.0, "macro_f1": 40.0}
    result = {"layers": ["0"], "average": {"0": scores}, "mfs": scores, "words": {word: {"0": scores, "mfs": scores}}}
    model = types.SimpleNamespace(name=f"model{SET_TITLE}")
    monkeypatch.setattr(wsd_command, "load_data_and_model", lambda command, args: ([object()], model, None))
    monkeypatch.setattr(wsd, "run_wsd", lambda *args, **kwargs: result)
    assert main(["wsd", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J" in out and "\\x1b]0;pwned\\x07" in " ".join(out.split())

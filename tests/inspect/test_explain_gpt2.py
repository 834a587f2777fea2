"""`qkv explain` on a GPT-2-family model: words without GPT-2's leading space, causal attention
said and respected, no [CLS]/[SEP] wording. A tiny random GPT-2 folder; nothing downloaded."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from qkv.cli import main
from qkv.inspect.explain import explain
from qkv.viz.html import render_html
from qkv.viz.terminal import print_report

SENTENCE = "The river bank was muddy after the rain."  # every word one piece of the fixture's tokenizer


@pytest.fixture(scope="module")
def report(tiny_gpt2):
    return explain(*tiny_gpt2)


def printed(report: dict) -> str:
    console = Console(width=100, record=True)
    print_report(report, console)
    return console.export_text()


def test_words_lose_the_leading_space_and_the_focus_matches(tiny_gpt2, report):
    assert report["tokens"] == ["She", "deposited", "her", "check", "at", "the", "bank", "."]
    assert report["focus"]["token"] == "bank" and report["focus"]["index"] == 6
    assert report["pieces"][report["focus"]["pieces"][0]] == "Ġbank"  # pieces stay as the tokenizer wrote them
    # " bank" (the old workaround) still finds it; the default senses find 'bank' in their examples.
    assert explain(*tiny_gpt2, focus=" bank", senses=None)["focus"]["index"] == 6
    assert report["senses"] is not None and len(report["senses"]["cosine"]) == 3  # embeddings + 2 layers


def test_runs_of_spaces_are_shown_and_set_aside(tiny_gpt2):
    report = explain(*tiny_gpt2, "She  deposited\nher check at the bank.", "check", senses=None)
    assert report["tokens"][:3] == ["She", "␣", "deposited"]
    assert report["kinds"][1] == "punctuation"
    assert "her" in report["tokens"] and "check" in report["tokens"]


def test_causal_attention_is_reported_and_respected(report):
    assert report["model"]["causal"] is True
    assert report["special_tokens"] == [] and report["set_aside"] == "punctuation"
    walk = report["walkthrough"]
    assert walk["causal"] and walk["matches_model"] and walk["max_difference"] < 1e-5
    assert len(walk["keys"]) == len(walk["weights"]) == walk["query_piece"] + 1  # only the keys it can see
    assert sum(walk["weights"]) == pytest.approx(1.0, abs=1e-4)
    rows = torch.tensor(report["focus_attention"])  # (L, H, W)
    focus = report["focus"]["index"]
    assert rows[..., focus + 1:].abs().max() == 0  # nothing after 'bank'
    # No [CLS]/[SEP] roles; position 0 is "first"; "next" is always 0 in a causal model.
    assert set(report["head_roles"]) == {"previous", "self", "first", "punctuation"}


@pytest.mark.parametrize("scale", [None, 0.9])  # 0.9: set_attention(..., scale=) overrides the layers' own
def test_streamed_view_equals_the_materialised_one(tiny_gpt2, scale):
    model, tokenizer = tiny_gpt2
    model.set_attention("auto", **({} if scale is None else {"scale": scale}))
    try:
        full = explain(model, tokenizer, SENTENCE, "bank", senses=None)
        streamed = explain(model, tokenizer, SENTENCE, "bank", senses=None, long_view=True)
    finally:
        model.set_attention("auto")
    assert all(len(pieces) == 1 for pieces in full["word_pieces"])  # word level = piece level here
    assert full["walkthrough"]["matches_model"]
    assert torch.allclose(torch.tensor(streamed["focus_attention"]), torch.tensor(full["focus_attention"]),
                          atol=1e-4)
    assert set(streamed["head_roles"]) == set(full["head_roles"])
    for name in full["head_roles"]:
        assert torch.allclose(torch.tensor(streamed["head_roles"][name]), torch.tensor(full["head_roles"][name]),
                              atol=1e-4), name


def test_a_one_word_input_has_no_neighbours_and_still_explains(tiny_gpt2):
    """GPT-2 has no special tokens: a lone word has no word before or after it."""
    report = explain(*tiny_gpt2, "bank", "bank", senses=None)
    assert report["tokens"] == ["bank"] and report["walkthrough"]["matches_model"]
    assert "positional" not in report["walkthrough"]["chosen"]


def test_input_errors(tiny_gpt2):
    with pytest.raises(ValueError, match="reads at most 64"):
        explain(*tiny_gpt2, "bank " * 100, "bank")
    with pytest.raises(ValueError, match="sentence is empty"):
        explain(*tiny_gpt2, "  ", "bank")
    with pytest.raises(ValueError, match=r"layer must be in 0\.\.1"):
        explain(*tiny_gpt2, layer=2, head=0)
    with pytest.raises(ValueError, match=r"head must be in 0\.\.2"):
        explain(*tiny_gpt2, layer=0, head=3)


def test_terminal_report_talks_about_what_the_model_has(report):
    text = printed(report)
    assert "[CLS]" not in text and "[SEP]" not in text
    assert "causal model" in text and "earlier words" in text
    # Section 4 numbers its rows as sections 2 and 3 do: emb, then layers 0 and 1 (not 0, 1, 2).
    section = text.split("4. Context changing meaning")[1].split("5. What reaches")[0]
    labels = [line.split("│")[0].strip() for line in section.splitlines() if "│" in line]
    assert labels == ["emb", "0", "1"]


def test_html_report_talks_about_what_the_model_has(report):
    page = render_html(report)
    assert "Without punctuation" in page and "Without [CLS]" not in page
    assert 'id="causal-note"' in page


def test_cli_explain_on_a_gpt2_folder(tiny_gpt2_folder, tmp_path, capsys):
    out = tmp_path / "new" / "folder"  # missing parent folders are created
    argv = ["explain", "--model", str(tiny_gpt2_folder), "--json", str(out / "r.json"),
            "--html", str(out / "page" / "r.html"), "--out", str(out / "figures")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "[CLS]" not in captured.out
    assert json.loads((out / "r.json").read_text())["focus"]["token"] == "bank"
    assert (out / "page" / "r.html").stat().st_size > 1000
    assert "sense_trajectory.png" in {p.name for p in (out / "figures").iterdir()}


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--layer", "2", "--layer 2: this model has 2 layers, numbered 0 to 1"),
    ("--layer", "-1", "--layer -1: this model has 2 layers"),
    ("--head", "3", "--head 3: this model has 3 heads per layer, numbered 0 to 2"),
])
def test_cli_names_the_layer_or_head_option(tiny_gpt2_folder, capsys, option, value, expected):
    assert main(["explain", "--model", str(tiny_gpt2_folder), option, value]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and captured.out == ""

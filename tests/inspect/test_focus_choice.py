"""Which token the report follows: a repeated focus word, one read as [UNK], and the contrast
sentence chosen by what the model reads the focus word as."""

from __future__ import annotations

import importlib
import json

import pytest

from qkv.cli import main
from qkv.inspect.explain import explain
from qkv.inspect.words import unknown_token, word_view

SPRING = "In spring the water from the spring tasted cold."


def test_occurrence_picks_which_repeated_word_to_follow(minilm):
    first = explain(*minilm, SPRING, "spring")
    second = explain(*minilm, SPRING, "spring", occurrence=2)
    assert first["tokens"][2] == first["tokens"][7] == "spring"
    assert (first["focus"]["index"], first["focus"]["occurrence"]) == (2, 1)
    assert (second["focus"]["index"], second["focus"]["occurrence"]) == (7, 2)
    assert first["focus"]["occurrences"] == second["focus"]["occurrences"] == [2, 7]
    assert first["focus"]["note"] == ("'spring' occurs twice (tokens 2 and 7); following the first, at token 2; "
                                      "--occurrence 2 for the other")
    # Every section follows the chosen token: its attention row and its walkthrough query piece.
    assert second["walkthrough"]["query_piece"] == second["focus"]["pieces"][0] == 7
    assert first["focus_attention"] != second["focus_attention"]


def test_a_word_that_occurs_once_has_no_note_and_refuses_a_second_occurrence(minilm):
    view = word_view(minilm[1]("The cat sat on the mat."))
    assert view.find("cat").note is None
    with pytest.raises(ValueError, match=r"occurrence 2: 'cat' occurs once in the sentence \(token 2\); give 1"):
        view.find("cat", 2)
    with pytest.raises(ValueError, match=r"occurrence 0: 'the' occurs twice .*give 1 or 2"):
        view.find("the", 0)


def test_cli_occurrence_writes_the_second_spring(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert main(["explain", SPRING, "--focus", "spring", "--occurrence", "2", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["focus"]["index"] == 7 and report["tokens"][7] == "spring"
    assert "following the second, at token 7" in capsys.readouterr().out


def test_cli_repeated_focus_word_is_reported_in_the_terminal_and_page(tmp_path, capsys):
    page = tmp_path / "r.html"
    assert main(["explain", SPRING, "--focus", "spring", "--html", str(page)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the panel wraps lines
    assert "'spring' occurs twice (tokens 2 and 7); following the first, at token 2; --occurrence 2 for the" in out
    assert 'id="focus-note"' in page.read_text() and "--occurrence 2 for the other" in page.read_text()


def test_cli_occurrence_out_of_range_is_a_usage_error_before_the_model_runs(monkeypatch, capsys):
    explain_module = importlib.import_module("qkv.inspect.explain")  # the module, not the function

    def must_not_run(*args, **kwargs):
        raise AssertionError("explain ran")

    monkeypatch.setattr(explain_module, "explain", must_not_run)
    assert main(["explain", SPRING, "--focus", "spring", "--occurrence", "3"]) == 2
    assert ("qkv explain: error: --occurrence 3: 'spring' occurs twice in the sentence (tokens 2 and 7); "
            "give 1 or 2") in capsys.readouterr().err
    assert main(["explain", SPRING, "--focus", "spring", "--occurrence", "0"]) == 2
    assert "argument --occurrence: must be >= 1; got 0" in capsys.readouterr().err


def test_a_focus_read_as_unk_is_followed_and_the_report_says_so(minilm):
    model, tokenizer = minilm
    report = explain(model, tokenizer, "I love 🦀 food.", "🦀")
    index = report["focus"]["index"]
    assert report["tokens"][index] == "🦀"
    assert [report["pieces"][p] for p in report["focus"]["pieces"]] == ["[UNK]"]
    assert report["focus"]["note"].startswith("'🦀' is read by the model as [UNK], the token for anything outside "
                                              "its vocabulary")
    assert report["walkthrough"]["matches_model"]
    # A rare script read as [UNK] is a word of its own: followed too.
    runes = explain(model, tokenizer, "The ᚠᚢ rune was carved.", "ᚠᚢ")
    assert runes["tokens"][runes["focus"]["index"]] == "ᚠᚢ" and "[UNK]" in runes["focus"]["note"]
    assert unknown_token(tokenizer) == "[UNK]"


def test_a_focus_split_into_several_tokens_is_refused_with_the_tokens(minilm):
    view = word_view(minilm[1]("We flew to 東京 city."))
    with pytest.raises(ValueError, match=r"'東京' is read by the model as 2 separate tokens \('東', '京'\); give one"):
        view.find("東京")


@pytest.mark.parametrize(("sentence", "own", "other"), [
    ("He sat on the bank of the river and watched the water.", "river", "money"),
    ("She deposited her check at the bank.", "money", "river"),
])
def test_the_contrast_is_an_example_of_the_other_sense(minilm, sentence, own, other):
    senses = explain(*minilm, sentence, "bank")["senses"]
    assert senses["predicted"][-1] == own
    assert senses["contrast_sense"] == other
    assert senses["contrast_sentence"] in senses["examples"][other]
    assert f"closest to the {own} sense" in senses["contrast_reason"]
    # The focus vector is farther from the word in the contrast than from its own sense's mean.
    own_cosine = senses["cosine"][-1][senses["names"].index(own)]
    assert senses["contrast_cosine"][-1] < own_cosine


def test_a_given_contrast_is_kept_and_its_sense_named(minilm):
    senses = explain(*minilm, "She deposited her check at the bank.", "bank",
                     contrast="The bank lent them money for the house.")["senses"]
    assert senses["contrast_sentence"] == "The bank lent them money for the house."
    assert senses["contrast_sense"] == "money"
    assert senses["contrast_reason"].endswith("the same sense as here")


def test_senses_follow_the_chosen_occurrence(minilm):
    sentence = "The bank of the river was far from the bank where she kept her savings."
    senses = {"money": ["I need to withdraw cash from the bank.", "The bank approved her loan application."],
              "river": ["We sat on the grassy bank of the river.", "The boat drifted toward the muddy bank."]}
    first = explain(*minilm, sentence, "bank", senses=senses)["senses"]
    second = explain(*minilm, sentence, "bank", occurrence=2, senses=senses)["senses"]
    assert first["cosine"] != second["cosine"]  # the sense section follows the second 'bank' too


def test_a_contrast_that_would_not_be_shown_is_refused_before_the_model_runs(minilm, capsys):
    with pytest.raises(ValueError, match=r"contrast: 'spring' has no built-in sense examples.*give senses too"):
        explain(*minilm, SPRING, "spring", contrast="Birds sing in the spring.")
    with pytest.raises(ValueError, match=r"contrast sentence 'The river flooded\.': focus word 'bank' is not in"):
        explain(*minilm, "The bank was closed.", "bank", contrast="The river flooded.")
    assert main(["explain", SPRING, "--focus", "spring", "--contrast", "Birds sing in the spring."]) == 2
    assert "has no built-in sense examples" in capsys.readouterr().err

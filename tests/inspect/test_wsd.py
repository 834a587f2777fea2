"""Word-sense disambiguation: F1 arithmetic, word-piece pooling, layer indexing, the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qkv.cli import main
from qkv.inspect.wsd import (
    _pieces_of_words,
    f1_scores,
    layer_features,
    layer_names,
    nearest_centroid,
    read_dataset,
    run_wsd,
    word_piece_vectors,
)
from qkv.numbering import LAYER_NUMBERING

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "coarsewsd20"


def test_f1_by_hand():
    # gold 0 0 1 1 2, predicted 0 1 1 1 0: accuracy 3/5; per sense F1 0.5, 0.8, 0.
    scores = f1_scores([0, 0, 1, 1, 2], [0, 1, 1, 1, 0])
    assert scores["micro_f1"] == pytest.approx(60.0)
    assert scores["macro_f1"] == pytest.approx(100 * (0.5 + 0.8 + 0.0) / 3)
    # A sense only predicted (never gold) counts, with F1 0 (scikit-learn's labels = gold | predicted).
    scores = f1_scores([0, 0], [0, 1])
    assert scores == pytest.approx({"micro_f1": 50.0, "macro_f1": 100 * (2 / 3) / 2})
    assert f1_scores([2, 2, 2], [2, 2, 2]) == {"micro_f1": 100.0, "macro_f1": 100.0}
    with pytest.raises(ValueError, match="equal, non-empty"):
        f1_scores([0, 1], [0])


def test_nearest_centroid_by_cosine():
    train = torch.tensor([[1.0, 0.0], [3.0, 0.1], [0.0, 1.0], [0.1, 5.0]])
    senses = torch.tensor([4, 4, 9, 9])
    # Cosine ignores length: a long vector along x is still sense 4.
    assert nearest_centroid(train, senses, torch.tensor([[100.0, 1.0], [0.2, 0.3]])).tolist() == [4, 9]


def test_layer_names_and_features():
    assert layer_names(6) == ["emb", "0", "1", "2", "3", "4", "5", "last4"]
    vectors = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)
    features = layer_features(vectors)
    assert torch.equal(features["emb"], vectors[:, 0]) and torch.equal(features["5"], vectors[:, 6])
    assert torch.equal(features["last4"], vectors[:, 3] + vectors[:, 4] + vectors[:, 5] + vectors[:, 6])


def test_pieces_follow_white_space_words(minilm):
    _, tokenizer = minilm
    words = "given standard mortgage-lending criteria , unbelievably".split()
    batch = tokenizer(" ".join(words))
    pieces = _pieces_of_words(words, batch.offsets[0], batch.special_tokens_mask[0])
    texts = [[batch.tokens[0][p] for p in group] for group in pieces]
    assert texts[0] == ["given"] and texts[4] == [","]
    assert "".join(texts[2]).replace("#", "") == "mortgage-lending" and len(texts[2]) > 1
    assert "".join(texts[5]).replace("#", "") == "unbelievably" and len(texts[5]) > 1
    assert sorted(p for group in pieces for p in group) == list(range(1, len(batch.tokens[0]) - 1))


def test_word_vectors_are_the_mean_of_pieces_at_every_layer(minilm):
    model, tokenizer = minilm
    words = "the unbelievably muddy bank".split()
    batch = tokenizer(" ".join(words))
    output = model(batch.input_ids, batch.attention_mask, output_hidden_states=True)
    hidden = torch.stack(output.hidden_states, dim=1)[0]  # (L+1, N, d)
    # Batched with a longer sentence (so with padding) and a short one.
    vectors = word_piece_vectors(model, tokenizer, [words, "a much longer sentence about a river bank".split()],
                                 [[1, 3], [7]], batch_size=2)
    pieces = _pieces_of_words(words, batch.offsets[0], batch.special_tokens_mask[0])
    assert vectors[0].shape == (2, 7, 384)
    assert torch.allclose(vectors[0][0], hidden[:, pieces[1]].mean(dim=1), atol=1e-5)
    assert torch.allclose(vectors[0][1], hidden[:, pieces[3]].mean(dim=1), atol=1e-5)
    # Hidden state 0 is the embeddings (before attention), the last one the model's output.
    assert torch.allclose(vectors[0][1, 0], output.hidden_states[0][0, pieces[3]].mean(0), atol=1e-5)
    assert torch.allclose(vectors[0][1, -1], output.last_hidden_state[0, pieces[3]].mean(0), atol=1e-5)


def test_vector_names_match_the_hook_names(minilm):
    """The vector named "i" is what layer i (hook names blocks.{i}) outputs; "emb" the embeddings."""
    model, tokenizer = minilm
    words = "she sat on the bank".split()
    features = layer_features(word_piece_vectors(model, tokenizer, [words], [[4]])[0])
    _, cache = model.run_with_cache(" ".join(words))
    bank = cache.batch.tokens[0].index("bank")
    assert torch.allclose(features["emb"][0], cache["embed.embed"][0, bank], atol=1e-5)
    for i in range(len(model.blocks)):
        assert torch.allclose(features[str(i)][0], cache[f"blocks.{i}.resid_post"][0, bank], atol=1e-5)


def test_pipeline_on_a_fixture_dataset(minilm, tiny_dataset, tmp_path, capsys):
    model, tokenizer = minilm
    result = run_wsd(model, tokenizer, read_dataset(tiny_dataset))
    assert set(result["words"]) == {"bank", "bow"}
    assert list(result["average"]) == layer_names(6)
    for layer in result["layers"]:
        mean = (result["words"]["bank"][layer]["micro_f1"] + result["words"]["bow"][layer]["micro_f1"]) / 2
        assert result["average"][layer]["micro_f1"] == pytest.approx(mean)
    assert result["words"]["bank"]["5"]["micro_f1"] == 100.0  # money against river, after the last layer
    assert result["layer_numbering"] == LAYER_NUMBERING
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["wsd", "--data", str(tiny_dataset), "--json", str(tmp_path / "wsd.json"), "--out", str(out)]) == 0
    terminal = capsys.readouterr().out
    words = " ".join(terminal.split())
    assert "emb: the embeddings, before any layer; i: after layer i (blocks.i)" in words
    assert "(embeddings)" not in terminal and "│ emb " in terminal and "after layer" in terminal
    data = json.loads((tmp_path / "wsd.json").read_text())
    assert {"micro_f1", "macro_f1"} <= set(data["average"]["last4"]) and "emb" in data["words"]["bow"]
    assert data["layers"] == ["emb", "0", "1", "2", "3", "4", "5", "last4"]
    assert data["layer_numbering"] == LAYER_NUMBERING
    assert (out / "wsd_1nn.png").stat().st_size > 1000
    assert main(["wsd", "--data", str(tmp_path / "missing")]) == 2


@pytest.mark.skipif(not DATA.is_dir(), reason="the licensed CoarseWSD-20 data is not at ../shared/data")
def test_real_data_first_attention_layer_lifts_f1(minilm):
    model, tokenizer = minilm
    result = run_wsd(model, tokenizer, read_dataset(DATA, ["digit", "hood"]))
    # Measured with this pipeline on all-MiniLM-L6-v2 (the full 12-word run is in the README).
    assert result["words"]["digit"]["emb"]["micro_f1"] == pytest.approx(59.5, abs=0.1)
    assert result["words"]["digit"]["5"]["micro_f1"] == pytest.approx(95.2, abs=0.1)
    assert result["words"]["hood"]["5"]["micro_f1"] == pytest.approx(90.2, abs=0.1)
    assert result["average"]["0"]["micro_f1"] - result["average"]["emb"]["micro_f1"] > 20

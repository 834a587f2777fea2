"""qkv.functional.oracle: the 2x rule passes a correct attention and catches wrong ones."""

from __future__ import annotations

import pytest
import torch

import qkv
from conftest import make_qkv
from qkv.functional.oracle import ERROR_FLOOR, outputs_and_grads, two_x_rule


def manual_attention(q, k, v, causal: bool = False, scale_error: float = 0.0):
    """Attention written out by hand (B, H, N, D); ``scale_error`` perturbs the scale."""
    scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 * (1 + scale_error))  # (B, H, Nq, Nk)
    if causal:
        n = q.shape[-2]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(dim=-1) @ v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_a_correct_attention_passes(dtype: torch.dtype, causal: bool) -> None:
    q, k, v = make_qkv(batch=1, q_heads=2, kv_heads=2, nq=37, nk=37, head_dim=16)
    checks = two_x_rule(lambda a, b, c: manual_attention(a, b, c, causal), q, k, v, dtype, causal=causal)
    assert [c.name for c in checks] == ["out", "dq", "dk", "dv"]
    assert all(c.ok and c.dtype == dtype for c in checks), [c.describe() for c in checks]
    for check in checks:
        assert check.bound == pytest.approx(2 * check.plain_error + ERROR_FLOOR[dtype])
        assert 0 < check.plain_error < 0.1  # the low-precision reference does err, a little


def test_the_rule_catches_a_wrong_mask_a_wrong_scale_and_nan() -> None:
    q, k, v = make_qkv(batch=1, q_heads=2, kv_heads=2, nq=37, nk=37, head_dim=16)
    no_mask = two_x_rule(lambda a, b, c: manual_attention(a, b, c), q, k, v, torch.float32, causal=True)
    assert not any(c.ok for c in no_mask)
    # a scale off by one part in 10^4 is far beyond float32's rounding, not bfloat16's
    scale = two_x_rule(lambda a, b, c: manual_attention(a, b, c, scale_error=1e-4), q, k, v, torch.float32)
    assert not scale[0].ok and "FAILED" in scale[0].describe()

    def with_nan(a, b, c):
        out = manual_attention(a, b, c)
        return out.masked_fill(torch.zeros_like(out, dtype=torch.bool).index_fill_(-2, torch.tensor([3]), True),
                               float("nan"))

    nan = two_x_rule(with_nan, q, k, v, torch.float32, grads=False)
    assert len(nan) == 1 and nan[0].has_nan and not nan[0].ok and "NaN" in nan[0].describe()


def test_masking_keywords_reach_the_oracle() -> None:
    """The same keywords judge a backend that honours them: key padding through qkv.attention."""
    q, k, v = make_qkv(batch=2, q_heads=4, kv_heads=2, nq=17, nk=23, head_dim=8)
    padding = torch.ones(2, 23, dtype=torch.bool)
    padding[1, 15:] = False
    checks = two_x_rule(lambda a, b, c: qkv.attention(a, b, c, key_padding_mask=padding, backend="tiled"),
                        q, k, v, torch.float32, key_padding_mask=padding)
    assert all(c.ok for c in checks), [c.describe() for c in checks]
    ignored = two_x_rule(lambda a, b, c: qkv.attention(a, b, c, backend="tiled"), q, k, v, torch.float32,
                         key_padding_mask=padding)
    assert not ignored[0].ok


def test_outputs_and_grads_backpropagates_one_fixed_output_gradient() -> None:
    q, k, v = make_qkv(batch=1, q_heads=1, kv_heads=1, nq=5, nk=5, head_dim=4)
    expected = torch.randn(1, 1, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        low = [t.to(dtype) for t in (q, k, v)]
        out, dq, dk, dv = outputs_and_grads(lambda a, b, c: (a + 2 * b) * c, *low)
        grad_out = expected.to(dtype)  # the same draw, cast: every dtype gets the same gradient
        torch.testing.assert_close(out, (low[0] + 2 * low[1]) * low[2])
        torch.testing.assert_close(dq, grad_out * low[2])
        torch.testing.assert_close(dk, 2 * grad_out * low[2])
        torch.testing.assert_close(dv, grad_out * (low[0] + 2 * low[1]))
    assert not q.requires_grad  # the inputs are left untouched


def test_an_unknown_dtype_is_refused() -> None:
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match="dtype must be one of"):
        two_x_rule(manual_attention, q, k, v, torch.int32)

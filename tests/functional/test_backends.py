"""Every fast backend against the float64 oracle, on odd sizes and every kind of mask."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qkv
from conftest import assert_two_x_rule, make_qkv, run_backend, run_tiled
from qkv.functional.masks import MaskSpec
from qkv.functional.oracle import outputs_and_grads
from qkv.functional.registry import CallNeeds, resolve_backend
from qkv.functional.tiled import tiles

FAST = [("sdpa", None), ("tiled", None), ("tiled", (16, 24)), ("tiled", (7, 13)), ("sliding", None),
        ("sliding", (5,))]
FAST_IDS = ["sdpa", "tiled", "tiled-16x24", "tiled-7x13", "sliding", "sliding-5"]

# (Nq, Nk, D, Hq, Hkv): lengths 1, 2, 17, 97, 127, 1023 with Nq != Nk both ways, head dims
# 1, 3, 59, 64, 111 and GQA ratios 1, 2, 4.
SHAPES = [
    (1, 1, 1, 2, 2),
    (1, 17, 3, 4, 1),
    (17, 1, 59, 4, 2),
    (2, 97, 64, 2, 1),
    (97, 2, 111, 4, 4),
    (17, 127, 3, 4, 2),
    (127, 17, 64, 8, 2),
    (97, 97, 59, 2, 2),
    (127, 1023, 64, 2, 1),
    (1023, 127, 1, 4, 1),
]


def masking_cases(batch: int, nq: int, nk: int) -> dict[str, dict]:
    """Every mask kind alone and combined, with fixed random masks."""
    generator = torch.Generator().manual_seed(nq * 1000 + nk)
    bool_mask = torch.rand(batch, 1, nq, nk, generator=generator) > 0.25
    float_mask = torch.randn(1, 1, nq, nk, generator=generator, dtype=torch.float64)
    float_mask = float_mask.masked_fill(torch.rand(1, 1, nq, nk, generator=generator) < 0.1, -math.inf)
    padding = torch.rand(batch, nk, generator=generator) > 0.2
    padding[:, -1] = True
    return {
        "none": {},
        "causal": {"causal": True},
        "window": {"window": 3},
        "window-left-only": {"window": (5, None)},
        "causal-window": {"causal": True, "window": (4, 0)},
        "bool": {"mask": bool_mask},
        "float": {"mask": float_mask},
        "padding": {"key_padding_mask": padding},
        "causal+padding+bool": {"causal": True, "key_padding_mask": padding, "mask": bool_mask},
        "window+float+padding": {"window": (2, 6), "mask": float_mask, "key_padding_mask": padding},
    }


CASES = list(masking_cases(2, 3, 3))


@pytest.mark.parametrize(("backend", "blocks"), FAST, ids=FAST_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float64_matches_oracle_on_odd_sizes(backend, blocks, shape):
    nq, nk, dim, q_heads, kv_heads = shape
    q, k, v = make_qkv(batch=2, q_heads=q_heads, kv_heads=kv_heads, nq=nq, nk=nk, head_dim=dim,
                       value_dim=dim + 2)
    cases = masking_cases(2, nq, nk)
    for name in ("none", "causal", "window+float+padding"):
        assert_two_x_rule(backend, torch.float64, q, k, v, blocks=blocks, **cases[name])


@pytest.mark.parametrize(("backend", "blocks"), FAST, ids=FAST_IDS)
@pytest.mark.parametrize("case", CASES)
def test_every_mask_kind_float64(backend, blocks, case):
    for nq, nk in ((17, 97), (97, 17), (33, 33)):
        q, k, v = make_qkv(batch=2, q_heads=4, kv_heads=2, nq=nq, nk=nk, head_dim=5)
        assert_two_x_rule(backend, torch.float64, q, k, v, blocks=blocks,
                          **masking_cases(2, nq, nk)[case])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("backend", "blocks"), FAST[:3], ids=FAST_IDS[:3])
@pytest.mark.parametrize("case", ["none", "causal", "causal+padding+bool", "window+float+padding"])
def test_two_x_error_rule_low_precision(dtype, backend, blocks, case):
    for nq, nk, q_heads, kv_heads in ((97, 127, 4, 4), (127, 61, 4, 1)):
        q, k, v = make_qkv(batch=2, q_heads=q_heads, kv_heads=kv_heads, nq=nq, nk=nk, head_dim=64)
        assert_two_x_rule(backend, dtype, q, k, v, blocks=blocks, **masking_cases(2, nq, nk)[case])


def empty_row_cases() -> dict[str, dict]:
    """Ways to leave some query rows with no visible key (nq=6, nk=4, batch 2)."""
    bool_mask = torch.ones(2, 1, 6, 4, dtype=torch.bool)
    bool_mask[:, :, 3] = False
    float_mask = torch.zeros(1, 1, 6, 4, dtype=torch.float64)
    float_mask[..., 1, :] = -math.inf
    padding = torch.ones(2, 4, dtype=torch.bool)
    padding[1] = False
    return {
        "causal-more-queries": ({"causal": True}, [(slice(None), slice(None), slice(0, 2))]),
        "bool-row": ({"mask": bool_mask}, [(slice(None), slice(None), 3)]),
        "float-row": ({"mask": float_mask}, [(slice(None), slice(None), 1)]),
        "all-padding": ({"key_padding_mask": padding}, [(1,)]),
    }


@pytest.mark.parametrize("backend", ["reference", "sdpa", "tiled"])
@pytest.mark.parametrize("case", list(empty_row_cases()))
def test_rows_with_no_visible_key_are_zero_without_nan(backend, case):
    kwargs, empty_rows = empty_row_cases()[case]
    q, k, v = make_qkv(batch=2, q_heads=2, kv_heads=2, nq=6, nk=4)
    out, dq, dk, dv = outputs_and_grads(lambda a, b, c: qkv.attention(a, b, c, backend=backend,
                                                                      **kwargs), q, k, v)
    for t in (out, dq, dk, dv):
        assert not torch.isnan(t).any()
    for index in empty_rows:
        assert (out[index] == 0).all()
        assert (dq[index] == 0).all()
    if backend != "sdpa":
        _, lse = qkv.attention(q, k, v, backend=backend, return_lse=True, **kwargs)
        for index in empty_rows:
            assert (lse[index] == -math.inf).all()
    assert_two_x_rule(backend, torch.float64, q, k, v, **kwargs)


@pytest.mark.parametrize(("backend", "blocks"), [("reference", None), *FAST], ids=["reference", *FAST_IDS])
@pytest.mark.parametrize("poison", [math.nan, 1e30, -math.inf])
def test_poisoned_padding_never_reaches_visible_outputs(backend, blocks, poison):
    q, k, v = make_qkv(batch=2, q_heads=4, kv_heads=2, nq=40, nk=50, head_dim=16, dtype=torch.float32)
    padding = torch.ones(2, 50, dtype=torch.bool)
    padding[0, 30:] = False
    padding[1, :7] = False
    kwargs = {"key_padding_mask": padding, "causal": True, "window": (20, 0)}
    k_bad, v_bad = k.clone(), v.clone()
    padded = ~padding[:, None, :].expand(-1, 2, -1)  # (B, Hkv, Nk)
    k_bad[padded] = poison
    v_bad[padded] = poison
    clean = outputs_and_grads(lambda a, b, c: run_backend(backend, a, b, c, blocks=blocks, **kwargs),
                              q, k, v)
    dirty = outputs_and_grads(lambda a, b, c: run_backend(backend, a, b, c, blocks=blocks, **kwargs),
                              q, k_bad, v_bad)
    for name, c, d in zip(["out", "dq"], clean[:2], dirty[:2]):
        assert torch.equal(c, d), f"{name} changed when padding was poisoned"
    for d in dirty:
        assert torch.isfinite(d).all()


@pytest.mark.parametrize(("backend", "blocks"), [("reference", None), *FAST], ids=["reference", *FAST_IDS])
def test_keys_outside_every_window_are_never_read(backend, blocks):
    q, k, v = make_qkv(batch=1, q_heads=2, kv_heads=2, nq=8, nk=40, head_dim=4, dtype=torch.float32)
    kwargs = {"window": (3, 0), "causal": True}  # queries at 32..39 read keys 29..39 only
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[:, :, :29] = math.nan
    v_bad[:, :, :29] = 1e30
    clean = outputs_and_grads(lambda a, b, c: run_backend(backend, a, b, c, blocks=blocks, **kwargs),
                              q, k, v)
    dirty = outputs_and_grads(lambda a, b, c: run_backend(backend, a, b, c, blocks=blocks, **kwargs),
                              q, k_bad, v_bad)
    assert torch.equal(clean[0], dirty[0]) and torch.equal(clean[1], dirty[1])
    assert all(torch.isfinite(t).all() for t in dirty)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "tiled"])
def test_nan_in_a_visible_input_still_comes_out(backend):
    q, k, v = make_qkv(nq=5, nk=5, dtype=torch.float32)
    q[0, 0, 2, 0] = math.nan
    out = qkv.attention(q, k, v, backend=backend, causal=True)
    assert torch.isnan(out[0, 0, 2]).all()
    assert not torch.isnan(out[0, 0, 3]).any() and not torch.isnan(out[1]).any()
    v[1, 0, 0, 0] = math.nan  # key 0 is visible to every causal query
    assert torch.isnan(qkv.attention(q, k, v, backend=backend, causal=True)[1, 0, :, 0]).all()


@pytest.mark.parametrize("blocks", [(512, 512), (16, 24), (5, 7)])
@pytest.mark.parametrize("case", ["none", "causal", "causal+padding+bool", "window+float+padding"])
def test_tiled_lse_and_its_gradient_match_the_reference(blocks, case):
    q, k, v = make_qkv(batch=2, q_heads=4, kv_heads=2, nq=37, nk=53, head_dim=6)
    kwargs = masking_cases(2, 37, 53)[case]

    def loss_of(fn):
        q_, k_, v_ = (t.clone().requires_grad_(True) for t in (q, k, v))
        out, lse = fn(q_, k_, v_)
        weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        finite_lse = lse.masked_fill(lse == -math.inf, 0.0)
        lse_weight = torch.cos(torch.arange(lse.numel(), dtype=lse.dtype)).reshape(lse.shape)
        loss = (out * weight).sum() + (finite_lse * lse_weight).sum()
        return (lse.detach(), *torch.autograd.grad(loss, (q_, k_, v_)))

    expected = loss_of(lambda a, b, c: qkv.attention(a, b, c, backend="reference", return_lse=True, **kwargs))
    got = loss_of(lambda a, b, c: run_tiled(a, b, c, block_q=blocks[0], block_k=blocks[1],
                                            return_lse=True, **kwargs))
    assert torch.equal(torch.isinf(expected[0]), torch.isinf(got[0]))
    for e, g in zip(expected, got):
        finite = torch.isfinite(e)
        assert torch.allclose(g[finite], e[finite], atol=1e-12, rtol=0)


@pytest.mark.parametrize("case", ["causal", "window", "causal-window", "window+float+padding"])
def test_gradcheck_float64(case):
    q, k, v = make_qkv(batch=1, q_heads=2, kv_heads=1, nq=6, nk=9, head_dim=3)
    kwargs = masking_cases(1, 6, 9)[case]
    inputs = tuple(t.clone().requires_grad_(True) for t in (q, k, v))
    for backend in ("reference", "sdpa"):
        assert torch.autograd.gradcheck(
            lambda a, b, c, name=backend: qkv.attention(a, b, c, backend=name, **kwargs), inputs
        )
    assert torch.autograd.gradcheck(
        lambda a, b, c: run_tiled(a, b, c, block_q=4, block_k=5, return_lse=True, **kwargs), inputs
    )


def test_gradcheck_tiled_float_mask_gradient():
    q, k, v = make_qkv(batch=2, q_heads=2, kv_heads=2, nq=5, nk=7, head_dim=3)
    for bias_shape in [(2, 2, 5, 7), (1, 2, 1, 7), (5, 7)]:
        bias = torch.randn(bias_shape, dtype=torch.float64, requires_grad=True)
        inputs = (*(t.clone().requires_grad_(True) for t in (q, k, v)), bias)
        assert torch.autograd.gradcheck(
            lambda a, b, c, m: run_tiled(a, b, c, block_q=2, block_k=3, mask=m, causal=True), inputs
        )
        expected = torch.autograd.grad(qkv.attention(*inputs[:3], mask=bias, causal=True,
                                                     backend="reference").sum(), bias)[0]
        got = torch.autograd.grad(qkv.attention(*inputs[:3], mask=bias, causal=True,
                                                backend="tiled").sum(), bias)[0]
        assert torch.allclose(got, expected, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    nq=st.integers(1, 40),
    nk=st.integers(1, 40),
    group=st.sampled_from([1, 2, 4]),
    block_q=st.integers(1, 17),
    block_k=st.integers(1, 17),
    causal=st.booleans(),
    left=st.one_of(st.none(), st.integers(0, 10)),
    right=st.one_of(st.none(), st.integers(0, 10)),
    pad=st.booleans(),
)
def test_tiled_equals_reference_property(nq, nk, group, block_q, block_k, causal, left, right, pad):
    q, k, v = make_qkv(batch=2, q_heads=2 * group, kv_heads=2, nq=nq, nk=nk, head_dim=3)
    kwargs = {"causal": causal, "window": (left, right)}
    if pad:
        kwargs["key_padding_mask"] = torch.arange(nk)[None, :] < torch.tensor([[nk], [max(1, nk // 2)]])
    expected, lse_expected = qkv.attention(q, k, v, backend="reference", return_lse=True, **kwargs)
    got, lse = run_tiled(q, k, v, block_q=block_q, block_k=block_k, return_lse=True, **kwargs)
    assert torch.allclose(got, expected, atol=1e-12)
    assert torch.equal(lse == -math.inf, lse_expected == -math.inf)
    sdpa = qkv.attention(q, k, v, backend="sdpa", **kwargs)
    assert torch.allclose(sdpa, expected, atol=1e-12)


def test_tiled_skips_tiles_hidden_by_causal_and_window():
    full = MaskSpec(nq=1024, nk=1024)
    causal = MaskSpec(nq=1024, nk=1024, right=0)
    banded = MaskSpec(nq=4096, nk=4096, left=64, right=0)
    count = lambda spec: sum(1 for _ in tiles(spec, 128, 128))  # noqa: E731
    assert count(full) == 64
    assert count(causal) == 8 * 9 // 2  # the lower triangle and the diagonal
    assert count(banded) == 32 + 31  # diagonal tiles and the one before each: O(N * w)


def test_tiled_never_materialises_an_nq_by_nk_tensor():
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for t in result if isinstance(result, (tuple, list)) else (result,):
                if isinstance(t, torch.Tensor):
                    LargestTensor.largest = max(LargestTensor.largest, t.numel())
            return result

    q, k, v = make_qkv(batch=1, q_heads=2, kv_heads=2, nq=300, nk=400, head_dim=4,
                       dtype=torch.float32)
    q.requires_grad_(True)
    with LargestTensor():
        out = run_tiled(q, k, v, block_q=64, block_k=64, causal=True)
        out.sum().backward()
    assert LargestTensor.largest < 300 * 400  # one head's full score matrix would be 120,000
    assert LargestTensor.largest <= 2 * 64 * 64 + 2 * 400 * 4


def test_auto_picks_sdpa_and_falls_back_to_tiled_for_the_lse():
    plain = CallNeeds(return_lse=False, grad=True, mask=True, key_padding=True, causal=True,
                      window=True, device="cpu")
    assert resolve_backend("auto", plain).name == "sdpa"
    with_lse = CallNeeds(**{**plain.__dict__, "return_lse": True})
    assert resolve_backend("auto", with_lse).name == "tiled"
    q, k, v = make_qkv(nq=9, nk=9)
    assert torch.equal(qkv.attention(q, k, v, causal=True),
                       qkv.attention(q, k, v, causal=True, backend="sdpa"))
    _out, lse = qkv.attention(q, k, v, causal=True, return_lse=True)
    assert lse.shape == (2, 4, 9) and lse.dtype == torch.float64


def test_lse_is_float32_for_low_precision_inputs():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        q, k, v = make_qkv(nq=5, nk=6, dtype=dtype)
        out, lse = qkv.attention(q, k, v, backend="tiled", return_lse=True)
        assert out.dtype == dtype and lse.dtype == torch.float32


def test_zero_length_sequences():
    q, k, v = make_qkv(nq=0, nk=5)
    assert qkv.attention(q, k, v).shape == (2, 4, 0, 8)
    q, k, v = make_qkv(nq=3, nk=0)
    out, lse = qkv.attention(q, k, v, return_lse=True)
    assert (out == 0).all() and (lse == -math.inf).all()


@pytest.mark.parametrize(("nq", "nk"), [(0, 5), (3, 0), (0, 0)])
def test_zero_length_sequences_have_zero_gradients(nq: int, nk: int):
    """As any call: backward works, and every gradient is zero (nothing was attended)."""
    for backend in ("auto", "reference", "tiled"):
        q, k, v = (t.requires_grad_(True) for t in make_qkv(nq=nq, nk=nk, value_dim=6))
        out = qkv.attention(q, k, v, causal=True, backend=backend)
        assert out.shape == (2, 4, nq, 6) and not out.any()
        dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
        assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
        assert not dq.any() and not dk.any() and not dv.any()

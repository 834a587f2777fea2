"""The attention contract at its edges, on every backend: each case here once broke it.

Zero-size dimensions, a head dim of 0, windows far wider than the sequence, query rows
that see no key while holding NaN, and Nystrom's pseudo-inverse on NaN input. The random
sweep that found most of them stays in tests/functional/test_fuzz.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import qkv
from qkv.functional.api import build_spec

# Every backend that runs on this machine without a process group (ring) or a GPU (triton).
EXACT = ["reference", "sdpa", "tiled", "sliding", "auto"]
APPROXIMATE = ["linear", "performer", "nystrom", "linformer"]
BACKENDS = EXACT + APPROXIMATE
CAUSAL_APPROXIMATE = ["linear", "performer"]  # nystrom and linformer refuse causal=True


def options_for(backend: str, masking: dict) -> str | None:
    """Why ``backend`` refuses ``masking`` (a ValueError is then the documented answer), or None."""
    if backend in APPROXIMATE:
        if "window" in masking or "mask" in masking:
            return "window or mask"
        if masking.get("causal") and backend not in CAUSAL_APPROXIMATE:
            return "causal"
    return None


# ---- D = 0 -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [None, 0.5])
def test_zero_head_dim_is_the_documented_value_error(backend, scale):
    q, k, v = torch.randn(1, 2, 3, 0), torch.randn(1, 2, 4, 0), torch.randn(1, 2, 4, 5)
    with pytest.raises(ValueError, match=r"head dim D >= 1.*\(1, 2, 3, 0\)"):
        qkv.attention(q, k, v, scale=scale, backend=backend)


@pytest.mark.parametrize("scale", [None, 0.5])
def test_zero_head_dim_in_weights_and_stats_is_a_value_error(scale):
    q, k = torch.randn(1, 2, 3, 0), torch.randn(1, 2, 4, 0)
    with pytest.raises(ValueError, match="head dim D >= 1"):
        qkv.attention_weights(q, k, scale=scale)
    with pytest.raises(ValueError, match="head dim D >= 1"):
        qkv.attention_stats(q, k, scale=scale)


# ---- zero-size dimensions ------------------------------------------------------------------

ZERO_SHAPES = [  # (B, Hq, Hkv, Nq, Nk, Dv): at least one of B, Hq, Nq, Nk, Dv is 0
    shape for shape in itertools.product([0, 2], [0, 2, 4], [1, 2], [0, 1, 7], [0, 1, 9], [0, 3])
    if 0 in (shape[0], shape[1], shape[3], shape[4], shape[5]) and shape[1] % shape[2] == 0
]
MASKINGS = {
    "none": {},
    "causal": {"causal": True},
    "window": {"window": 3},
    "window-causal": {"window": (2, 1), "causal": True},
    "mask": "mask",
    "float-mask": "float_mask",
    "key-padding": "key_padding_mask",
}


def masking_for(name: str, batch: int, nq: int, nk: int) -> dict:
    generator = torch.Generator().manual_seed(1)
    if MASKINGS[name] == "mask":
        return {"mask": torch.rand(batch, 1, nq, nk, generator=generator) > 0.3}
    if MASKINGS[name] == "float_mask":
        return {"mask": torch.randn(batch, 1, nq, nk, generator=generator)}
    if MASKINGS[name] == "key_padding_mask":
        return {"key_padding_mask": torch.rand(batch, nk, generator=generator) > 0.3}
    return dict(MASKINGS[name])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("masking_name", list(MASKINGS))
def test_zero_size_dimensions_give_empty_results_on_every_backend(backend, masking_name):
    for batch, hq, hkv, nq, nk, dv in ZERO_SHAPES:
        q, k = torch.randn(batch, hq, nq, 4), torch.randn(batch, hkv, nk, 4)
        v = torch.randn(batch, hkv, nk, dv)
        masking = masking_for(masking_name, batch, nq, nk)
        if options_for(backend, masking):
            with pytest.raises(ValueError, match="cannot honour"):
                qkv.attention(q, k, v, backend=backend, **masking)
            continue
        out = qkv.attention(q, k, v, backend=backend, **masking)
        assert out.shape == (batch, hq, nq, dv), (batch, hq, hkv, nq, nk, dv)
        assert (out == 0).all()  # empty, or no key to attend to: zeros


def test_sliding_with_no_query_heads_returns_an_empty_result():
    # This call once died with SIGFPE inside PyTorch's fused CPU kernel.
    q, k, v = torch.randn(1, 0, 8, 4), torch.randn(1, 1, 8, 4), torch.randn(1, 1, 8, 4)
    for masking in ({"window": 3}, {"window": 3, "causal": True}):
        out = qkv.attention(q, k, v, backend="sliding", **masking)
        assert out.shape == (1, 0, 8, 4)
        out, lse = qkv.attention(q, k, v, backend="sliding", return_lse=True, **masking)
        assert lse.shape == (1, 0, 8)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "tiled", "sliding"])
def test_zero_size_gradients_are_zero_and_shaped_like_the_inputs(backend):
    for batch, hq, nq, nk in [(0, 2, 3, 4), (2, 0, 3, 4), (2, 2, 0, 4), (2, 2, 3, 0)]:
        q = torch.randn(batch, hq, nq, 4, requires_grad=True)
        k = torch.randn(batch, 2 if hq else 1, nk, 4, requires_grad=True)
        v = torch.randn(batch, 2 if hq else 1, nk, 5, requires_grad=True)
        out = qkv.attention(q, k, v, window=2, backend=backend)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        for t, g in zip((q, k, v), grads):
            assert g.shape == t.shape and (g == 0).all()


def test_zero_size_weights_and_stats():
    for batch, hq, nq, nk in [(0, 2, 3, 4), (2, 0, 3, 4), (2, 2, 0, 4), (2, 2, 3, 0)]:
        q, k = torch.randn(batch, hq, nq, 4), torch.randn(batch, 2 if hq else 1, nk, 4)
        assert qkv.attention_weights(q, k, window=1).shape == (batch, hq, nq, nk)
        stats = qkv.attention_stats(q, k, window=1, topk=2)
        assert stats.entropy.shape == (batch, hq, nq)


# ---- windows wider than the sequence ---------------------------------------------------------


class LargestTensor(TorchDispatchMode):
    """Records the most elements any tensor made under it held."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return result


@pytest.mark.parametrize("window", [10**6, (0, 10**12), (10**12, 10**12), (10**12, None)])
@pytest.mark.parametrize("backend", EXACT)
def test_windows_wider_than_the_sequence_cost_what_the_sequence_allows(window, backend):
    q, k, v = (torch.randn(1, 2, 8, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    left, right = (window, window) if isinstance(window, int) else window
    # The same visibility written with the widest bounds that still mean something on 8 tokens.
    narrow = (None if left is None else min(left, 7), None if right is None else min(right, 7))
    expected = qkv.attention(q.double(), k.double(), v.double(), window=narrow, backend="reference")
    with LargestTensor() as recorder:
        out = qkv.attention(q, k, v, window=window, backend=backend)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    # The band a window of w keys needs per block of 32 queries is 32 + w keys: clamped to 8 tokens,
    # nothing comes near one tensor of a million elements.
    assert recorder.largest < 10_000


def test_window_bounds_are_clamped_to_the_sequence_in_the_spec():
    q, k = torch.randn(1, 1, 5, 4), torch.randn(1, 1, 9, 4)
    spec, _ = build_spec(q, k, None, causal=False, window=(10**12, 10**9), mask=None, key_padding_mask=None,
                         scale=None)
    assert (spec.left, spec.right) == (8, 4)  # key 0 from the last query; key 8 from the first
    spec, _ = build_spec(q, k, None, causal=False, window=(3, 2), mask=None, key_padding_mask=None, scale=None)
    assert (spec.left, spec.right) == (3, 2)  # bounds inside the sequence are kept as given


# ---- a query row that sees no key: zeros, zero gradients, even when its query is NaN ------------

NQ = NK = 6


def empty_row_cases(dtype: torch.dtype) -> dict[str, tuple[int, int, dict, tuple[int, int, int]]]:
    """name -> (Nq, Nk, masking, (b, h, i) of a row that sees no key)."""
    bool_mask = torch.ones(2, 1, NQ, NK, dtype=torch.bool)
    bool_mask[0, :, 2] = False
    float_mask = torch.zeros(2, 1, NQ, NK, dtype=dtype)
    float_mask[0, :, 2] = float("-inf")
    padding = torch.ones(2, NK, dtype=torch.bool)
    padding[1] = False
    return {
        "bool-mask": (NQ, NK, {"mask": bool_mask}, (0, 1, 2)),
        "float-mask": (NQ, NK, {"mask": float_mask}, (0, 1, 2)),
        "key-padding": (NQ, NK, {"key_padding_mask": padding}, (1, 0, 2)),
        "key-padding-causal": (NQ, NK, {"key_padding_mask": padding, "causal": True}, (1, 1, 4)),
        "causal-more-queries": (7, 4, {"causal": True}, (0, 1, 1)),
        "window-misses-every-key": (7, 4, {"window": (0, 0)}, (1, 0, 0)),
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(empty_row_cases(torch.float64)))
def test_a_nan_query_that_sees_no_key_gives_zeros_and_zero_gradients(case, backend, dtype):
    nq, nk, masking, row = empty_row_cases(dtype)[case]
    if options_for(backend, masking):
        pytest.skip(f"{backend} refuses {options_for(backend, masking)}")
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, n, 5, generator=generator, dtype=dtype) for n in (nq, nk, nk))
    q[row] = float("nan")
    visible_row = (0, 0, nq - 1)  # sees a key in every case above
    q[visible_row] = float("nan")
    q.requires_grad_(True)
    out = qkv.attention(q, k, v, backend=backend, **masking)
    assert (out[row] == 0).all(), out[row]
    assert out[visible_row].isnan().all()  # a NaN in a visible input still comes out NaN
    (grad_q,) = torch.autograd.grad(out[row].sum() + out[1:].nan_to_num().sum(), q)
    assert (grad_q[row] == 0).all(), grad_q[row]


# ---- Nystrom: no linear-algebra error, exact with every key a landmark ------------------------


@pytest.mark.parametrize("pinv_iterations", [0, 6])
@pytest.mark.parametrize(("nq", "nk", "landmarks"), [(5, 4, 8), (5, 4, 4), (9, 12, 3), (12, 12, 12)])
def test_nystrom_never_raises_a_linear_algebra_error_on_nan_input(nq, nk, landmarks, pinv_iterations):
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, n, 4, generator=generator, dtype=torch.float64) for n in (nq, nk, nk))
    q[0, 1, 2] = float("nan")
    options = qkv.NystromOptions(landmarks=landmarks, pinv_iterations=pinv_iterations)
    out = qkv.attention(q, k, v, backend="nystrom", options=options)
    assert out[0, 1, 2].isnan().all()  # the NaN query's own row
    assert torch.isfinite(out[1]).all()  # another batch entry never meets it
    if landmarks >= nk:  # exact attention: the NaN stays in its row
        assert torch.isfinite(out[0, 0]).all() and torch.isfinite(out[0, 1, 3:]).all()


@pytest.mark.parametrize("head_dim", [1, 2, 3, 17, 64])
@pytest.mark.parametrize(("nq", "nk"), [(8, 8), (40, 12), (12, 40), (100, 50)])
def test_nystrom_with_every_key_a_landmark_is_exact_for_every_head_dim(head_dim, nq, nk):
    generator = torch.Generator().manual_seed(4)
    q, k = (torch.randn(2, 4, n, head_dim, generator=generator, dtype=torch.float64) for n in (nq, nk))
    v = torch.randn(2, 2, nk, 3, generator=generator, dtype=torch.float64)
    k = k[:, :2]
    padding = torch.ones(2, nk, dtype=torch.bool)
    padding[1, nk // 3:] = False
    for masking in ({}, {"key_padding_mask": padding}):
        exact = qkv.attention(q, k, v, backend="reference", **masking)
        for landmarks in (nk, nk + 5):
            out = qkv.attention(q, k, v, backend="nystrom", options=qkv.NystromOptions(landmarks=landmarks),
                                **masking)
            torch.testing.assert_close(out, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(empty_row_cases(torch.float64)))
def test_a_nan_query_that_sees_no_key_reaches_no_gradient(case, backend):
    nq, nk, masking, row = empty_row_cases(torch.float64)[case]
    if options_for(backend, masking):
        pytest.skip(f"{backend} refuses {options_for(backend, masking)}")
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, n, 5, generator=generator, dtype=torch.float64) for n in (nq, nk, nk))
    q[row] = float("nan")
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    out = qkv.attention(q, k, v, backend=backend, **masking)
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads), [g.isnan().sum().item() for g in grads]
    assert (grads[0][row] == 0).all()


@pytest.mark.parametrize("backend", CAUSAL_APPROXIMATE)
def test_causal_rows_whose_earlier_keys_are_all_padding_are_zero(backend):
    generator = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 1, 9, 3, generator=generator, dtype=torch.float64) for _ in range(3))
    padding = torch.ones(1, 9, dtype=torch.bool)
    padding[0, :4] = False  # queries 0..3 see only padding
    q[0, 0, 1] = float("nan")
    q.requires_grad_(True)
    out = qkv.attention(q, k, v, causal=True, key_padding_mask=padding, backend=backend)
    assert (out[0, 0, :4] == 0).all() and torch.isfinite(out).all()
    (grad_q,) = torch.autograd.grad(out.sum(), q)
    assert (grad_q[0, 0, :4] == 0).all() and torch.isfinite(grad_q).all()


def triton_or_skip() -> None:
    from qkv.functional.triton_backend import unavailable_reason

    reason = unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(f"the triton backend cannot {reason}")


@pytest.mark.parametrize("case", ["key-padding", "causal-more-queries", "window-misses-every-key"])
def test_triton_keeps_a_nan_query_that_sees_no_key_out_of_every_gradient(case):
    triton_or_skip()
    nq, nk, masking, row = empty_row_cases(torch.float64)[case]
    generator = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 2, n, 16, generator=generator, dtype=torch.float64) for n in (nq, nk, nk))
    q[row] = float("nan")
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    out = qkv.attention(q, k, v, backend="triton", **masking)
    assert (out[row] == 0).all() and torch.isfinite(out).all()
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][row] == 0).all()


def test_triton_zero_sizes_and_zero_head_dim():
    triton_or_skip()
    for shape, kv_heads in [((1, 0, 8, 16), 1), ((0, 2, 8, 16), 2), ((1, 2, 0, 16), 2)]:
        q, k = torch.randn(*shape), torch.randn(shape[0], kv_heads, 8, 16)
        assert qkv.attention(q, k, k, window=3, backend="triton").shape == shape
    with pytest.raises(ValueError, match="head dim D >= 1"):
        qkv.attention(torch.randn(1, 1, 4, 0), torch.randn(1, 1, 4, 0), torch.randn(1, 1, 4, 3), scale=1.0,
                      backend="triton")

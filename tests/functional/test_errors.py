"""Bad input to qkv.attention, attention_weights and attention_stats fails early and clearly.

The contract (DESIGN.md, "The functional contract"): bad input raises ValueError or
TypeError whose message names the argument and what was seen (shapes, dtypes, devices,
values). Every error test here also checks that the error comes before any computation
(the backends and the weight/statistics kernels are replaced by tripwires) and that the
inputs are left untouched. The last section checks that valid edge inputs are accepted.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import pytest
import torch

import qkv
from qkv.functional import api, registry

B, H, N, D = 2, 4, 5, 8  # the tiny shape every error test starts from
BACKENDS = ["reference", "sdpa", "tiled"]


# ---- helpers ----------------------------------------------------------------------------


def make_qkv(
    *, hq: int = H, hkv: int = H, nq: int = N, nk: int = N, d: int = D, dv: int = D,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, hq, nq, d, generator=g, dtype=dtype)
    k = torch.randn(B, hkv, nk, d, generator=g, dtype=dtype)
    v = torch.randn(B, hkv, nk, dv, generator=g, dtype=dtype)
    return q, k, v


def make_args(**kwargs) -> dict[str, torch.Tensor]:
    """make_qkv's tensors by name, to replace one of them."""
    return dict(zip("qkv", make_qkv(**kwargs), strict=True))


def all_of(*patterns: str) -> str:
    """A regex that matches when every pattern occurs somewhere, in any order."""
    return "(?s)" + "".join(f"(?=.*{p})" for p in patterns)


def lit(text: str) -> str:
    """A literal fragment of a message, escaped for a regex."""
    return re.escape(text)


def call_attention(q, k, v, **kwargs):
    return qkv.attention(q, k, v, **kwargs)


def call_weights(q, k, v, **kwargs):
    return qkv.attention_weights(q, k, **kwargs)


def call_stats(q, k, v, **kwargs):
    return qkv.attention_stats(q, k, **kwargs)


ENTRIES = [
    pytest.param(call_attention, id="attention"),
    pytest.param(call_weights, id="attention_weights"),
    pytest.param(call_stats, id="attention_stats"),
]


@pytest.fixture(params=ENTRIES)
def entry(request) -> Callable:
    """Each public function, called as f(q, k, v, **kwargs) (v is dropped where unused)."""
    return request.param


@pytest.fixture
def tripwire(monkeypatch):
    """Fail the test if any computation starts: validation must come first."""

    def boom(*args, **kwargs):
        raise AssertionError("computation started before the bad argument was refused")

    for name, backend in list(registry._REGISTRY.items()):
        monkeypatch.setitem(registry._REGISTRY, name, dataclasses.replace(backend, fn=boom))
    for name in ("zero_unread_keys", "reference_weights", "streaming_stats", "_empty_result"):
        monkeypatch.setattr(api, name, boom)


def _tensors(args, kwargs) -> list[torch.Tensor]:
    return [
        t for t in (*args, *kwargs.values())
        if isinstance(t, torch.Tensor) and t.device.type != "meta"
    ]


def expect_error(exc: type[Exception], pattern: str, fn: Callable, *args, **kwargs):
    """Call ``fn`` expecting ``exc`` whose message matches ``pattern``; inputs unchanged."""
    inputs = _tensors(args, kwargs)
    before = [t.clone() for t in inputs]
    with pytest.raises(exc, match=pattern) as info:
        fn(*args, **kwargs)
    for old, new in zip(before, inputs, strict=True):
        torch.testing.assert_close(new, old, rtol=0, atol=0, equal_nan=True)
    return info


errors = pytest.mark.usefixtures("tripwire")


# ---- q, k, v ----------------------------------------------------------------------------

NON_TENSORS = [
    pytest.param(lambda t: t.tolist(), "list", id="list"),
    pytest.param(lambda t: t.numpy(), "ndarray", id="ndarray"),
]


@errors
@pytest.mark.parametrize(("convert", "type_name"), NON_TENSORS)
@pytest.mark.parametrize("name", ["q", "k"])
def test_non_tensor_q_k(entry, name, convert, type_name):
    args = make_args()
    args[name] = convert(args[name])
    expect_error(
        TypeError, all_of(rf"^{name} must be a torch\.Tensor", lit(type_name)),
        entry, args["q"], args["k"], args["v"],
    )


@errors
@pytest.mark.parametrize(("convert", "type_name"), NON_TENSORS)
def test_non_tensor_v(convert, type_name):
    q, k, v = make_qkv()
    expect_error(
        TypeError, all_of(r"^v must be a torch\.Tensor", lit("(B, Hkv, Nk, Dv)"), lit(type_name)),
        qkv.attention, q, k, convert(v),
    )


@errors
@pytest.mark.parametrize(("convert", "type_name"), NON_TENSORS)
def test_non_tensor_mask(entry, convert, type_name):
    q, k, v = make_qkv()
    mask = convert(torch.ones(N, N, dtype=torch.bool))
    expect_error(
        TypeError, all_of(r"^mask must be a torch\.Tensor", lit("(2, 4, 5, 5)"), lit(type_name)),
        entry, q, k, v, mask=mask,
    )


@errors
@pytest.mark.parametrize(("convert", "type_name"), NON_TENSORS)
def test_non_tensor_key_padding_mask(entry, convert, type_name):
    q, k, v = make_qkv()
    kpm = convert(torch.ones(B, N, dtype=torch.bool))
    expect_error(
        TypeError,
        all_of(r"^key_padding_mask must be a bool tensor", lit("(2, 5)"), lit(type_name)),
        entry, q, k, v, key_padding_mask=kpm,
    )


@errors
@pytest.mark.parametrize("name", ["q", "k"])
@pytest.mark.parametrize("drop", ["batch", "head"])
def test_three_dims(entry, name, drop):
    args = make_args()
    args[name] = args[name][0] if drop == "batch" else args[name][:, 0]
    seen = tuple(args[name].shape)
    expect_error(
        ValueError,
        all_of(rf"^{name} must have 4 dimensions", lit(f"got shape {seen}"), "unsqueeze"),
        entry, args["q"], args["k"], args["v"],
    )


@errors
@pytest.mark.parametrize("shape", [(B, H, N), (1, B, H, N, D)], ids=["3d", "5d"])
def test_v_wrong_dims(shape):
    q, k, _ = make_qkv()
    expect_error(
        ValueError, all_of(r"^v must have 4 dimensions", lit(f"got shape {shape}")),
        qkv.attention, q, k, torch.randn(shape),
    )


@errors
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
@pytest.mark.parametrize("name", ["q", "k"])
def test_non_float_dtype(entry, name, dtype):
    args = make_args()
    args[name] = args[name].to(dtype)
    expect_error(
        TypeError,
        all_of(rf"^{name} must be floating point", lit(f"dtype {dtype}"), r"\.float\(\)"),
        entry, args["q"], args["k"], args["v"],
    )


@errors
def test_integer_v():
    q, k, v = make_qkv()
    expect_error(
        TypeError, all_of(r"^v must be floating point", lit("torch.int64")),
        qkv.attention, q, k, v.long(),
    )


@errors
def test_mixed_dtypes_q_k(entry):
    q, k, v = make_qkv()
    expect_error(
        TypeError,
        all_of("must share one dtype", lit("q torch.float32"), lit("k torch.float64")),
        entry, q, k.double(), v,
    )


@errors
def test_mixed_dtypes_v():
    q, k, v = make_qkv()
    expect_error(
        TypeError,
        all_of("must share one dtype", lit("k torch.float32"), lit("v torch.float16")),
        qkv.attention, q, k, v.half(),
    )


@errors
def test_mixed_devices_meta_k(entry):
    q, k, v = make_qkv()
    expect_error(
        ValueError, all_of("must be on one device", lit("q cpu"), lit("k meta"), r"\.to\("),
        entry, q, k.to("meta"), v,
    )


@errors
def test_mixed_devices_meta_v():
    q, k, v = make_qkv()
    expect_error(
        ValueError, all_of("must be on one device", lit("q cpu"), lit("v meta")),
        qkv.attention, q, k, v.to("meta"),
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@errors
def test_mixed_devices_cuda(entry):
    q, k, v = make_qkv()
    expect_error(
        ValueError, all_of("must be on one device", lit("q cpu"), r"k cuda"),
        entry, q, k.cuda(), v,
    )


@errors
def test_batch_mismatch(entry):
    q, k, v = make_qkv()
    expect_error(
        ValueError, all_of("same batch size", lit("q 2"), lit("k 1")),
        entry, q, k[:1], v[:1],
    )


@errors
def test_batch_mismatch_v():
    q, k, v = make_qkv()
    expect_error(
        ValueError, all_of("same batch size", lit("k 2"), lit("v 1")),
        qkv.attention, q, k, v[:1],
    )


@errors
def test_kv_head_mismatch():
    q, k, v = make_qkv()
    expect_error(
        ValueError,
        all_of(r"^k and v must have the same number of heads", lit("(2, 4, 5, 8)"),
               lit("(2, 2, 5, 8)")),
        qkv.attention, q, k, v[:, :2],
    )


@errors
def test_kv_length_mismatch():
    q, k, v = make_qkv()
    expect_error(
        ValueError,
        all_of(r"^k and v must have the same length Nk", lit("(2, 4, 5, 8)"), lit("(2, 4, 3, 8)")),
        qkv.attention, q, k, v[:, :, :3],
    )


@errors
def test_head_dim_mismatch(entry):
    q, k, v = make_qkv()
    expect_error(
        ValueError,
        all_of(r"^q and k must have the same head dim D", lit("(2, 4, 5, 8)"), lit("(2, 4, 5, 6)")),
        entry, q, k[..., :6], v,
    )


@errors
@pytest.mark.parametrize(("hq", "hkv"), [(6, 4), (4, 3), (2, 4), (4, 0)])
def test_query_heads_not_multiple_of_kv_heads(entry, hq, hkv):
    q, k, v = make_qkv(hq=hq, hkv=hkv)
    expect_error(
        ValueError,
        all_of(lit(f"Hq={hq}"), lit(f"Hkv={hkv}"), "multiple", lit(str(tuple(q.shape))),
               lit(str(tuple(k.shape)))),
        entry, q, k, v,
    )


# ---- mask and key_padding_mask ----------------------------------------------------------


@errors
@pytest.mark.parametrize("shape", [(5, 4), (3, 5, 5), (3, 1, 1, 1), (1, 1, 1, 5, 5)])
def test_mask_not_broadcastable(entry, shape):
    q, k, v = make_qkv()
    expect_error(
        ValueError,
        all_of(r"^mask of shape", lit(str(shape)), "not broadcastable", lit("(2, 4, 5, 5)")),
        entry, q, k, v, mask=torch.ones(shape, dtype=torch.bool),
    )


@errors
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_mask_integer_dtype(entry, dtype):
    q, k, v = make_qkv()
    expect_error(
        TypeError, all_of(r"^mask must be bool", lit(f"dtype {dtype}"), r"mask\.bool\(\)"),
        entry, q, k, v, mask=torch.ones(N, N, dtype=dtype),
    )


@errors
def test_mask_on_another_device(entry):
    q, k, v = make_qkv()
    mask = torch.ones(N, N, dtype=torch.bool, device="meta")
    expect_error(
        ValueError, all_of(r"^mask is on meta", lit("q is on cpu")),
        entry, q, k, v, mask=mask,
    )


@errors
@pytest.mark.parametrize("shape", [(2, 4), (5,), (2, 1, 5), (1, 5), (5, 2)])
def test_key_padding_mask_wrong_shape(entry, shape):
    q, k, v = make_qkv()
    expect_error(
        ValueError,
        all_of(r"^key_padding_mask must have shape", lit("(B, Nk) = (2, 5)"), lit(f"got {shape}")),
        entry, q, k, v, key_padding_mask=torch.ones(shape, dtype=torch.bool),
    )


@errors
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.uint8])
def test_key_padding_mask_not_bool(entry, dtype):
    q, k, v = make_qkv()
    expect_error(
        TypeError,
        all_of(r"^key_padding_mask must be a bool tensor", lit(f"dtype {dtype}"), r"\.bool\(\)"),
        entry, q, k, v, key_padding_mask=torch.ones(B, N, dtype=dtype),
    )


@errors
def test_key_padding_mask_on_another_device(entry):
    q, k, v = make_qkv()
    kpm = torch.ones(B, N, dtype=torch.bool, device="meta")
    expect_error(
        ValueError, all_of(r"^key_padding_mask is on meta", lit("k is on cpu")),
        entry, q, k, v, key_padding_mask=kpm,
    )


# ---- window -----------------------------------------------------------------------------


@errors
@pytest.mark.parametrize(
    ("window", "side", "causal"),
    [(-1, "left", False), ((-1, 2), "left", False), ((2, -1), "right", False),
     ((None, -3), "right", False), ((2, -1), "right", True)],
)
def test_window_negative(entry, window, side, causal):
    q, k, v = make_qkv()
    bound = window if isinstance(window, int) else window[0 if side == "left" else 1]
    expect_error(
        ValueError, all_of(rf"^window {side} bound must be >= 0", lit(f"got {bound}")),
        entry, q, k, v, window=window, causal=causal,
    )


@errors
@pytest.mark.parametrize(
    ("window", "pattern"),
    [(2.0, r"^window must be None, an int.*got float 2\.0"),
     (True, r"^window must be None, an int.*got bool True"),
     ("2", r"^window must be None, an int.*got str '2'"),
     ((1.5, 2), r"^window left bound must be .*got float 1\.5"),
     ((2, True), r"^window right bound must be .*got bool True")],
    ids=["float", "bool", "str", "float-left", "bool-right"],
)
def test_window_wrong_type(entry, window, pattern):
    q, k, v = make_qkv()
    expect_error(TypeError, pattern, entry, q, k, v, window=window)


@errors
@pytest.mark.parametrize("window", [(1, 2, 3), (1,), ()])
def test_window_not_a_pair(entry, window):
    q, k, v = make_qkv()
    expect_error(
        ValueError, all_of(r"^window must be a pair", lit(f"{len(window)} values {window!r}")),
        entry, q, k, v, window=window,
    )


# ---- backend and capabilities -----------------------------------------------------------


@errors
def test_unknown_backend():
    q, k, v = make_qkv()
    expect_error(
        ValueError,
        all_of(lit("backend='flash'"), "'auto'", "'reference'", "'sdpa'", "'tiled'"),
        qkv.attention, q, k, v, backend="flash",
    )


@errors
@pytest.mark.parametrize(("backend", "type_name"), [(None, "NoneType"), (3, "int"),
                                                    (["sdpa"], "list")])
def test_backend_not_a_string(backend, type_name):
    q, k, v = make_qkv()
    expect_error(
        TypeError, all_of(r"^backend must be a string", lit(f"got {type_name}")),
        qkv.attention, q, k, v, backend=backend,
    )


@errors
def test_sdpa_refuses_return_lse():
    q, k, v = make_qkv()
    info = expect_error(
        ValueError,
        all_of(lit("backend='sdpa'"), "return_lse=True", "'tiled'", "'reference'"),
        qkv.attention, q, k, v, backend="sdpa", return_lse=True,
    )
    assert "'sdpa'" not in str(info.value).split("can serve this call")[-1]


@errors
def test_auto_refuses_meta_device():
    q, k, v = (t.to("meta") for t in make_qkv())
    expect_error(ValueError, all_of("no exact backend", "meta"), qkv.attention, q, k, v)


# ---- flags and scale --------------------------------------------------------------------


@errors
@pytest.mark.parametrize(("value", "seen"), [(1, "int 1"), (0, "int 0"), (None, "NoneType None"),
                                             ("yes", "str 'yes'")])
def test_causal_not_bool(entry, value, seen):
    q, k, v = make_qkv()
    expect_error(
        TypeError, all_of(r"^causal must be True or False", lit(f"got {seen}")),
        entry, q, k, v, causal=value,
    )


@errors
@pytest.mark.parametrize(("value", "seen"), [(1, "int 1"), (None, "NoneType None")])
def test_return_lse_not_bool(value, seen):
    q, k, v = make_qkv()
    expect_error(
        TypeError, all_of(r"^return_lse must be True or False", lit(f"got {seen}")),
        qkv.attention, q, k, v, return_lse=value,
    )


@errors
@pytest.mark.parametrize(("scale", "seen"), [("0.1", "str '0.1'"), (True, "bool True"),
                                             ([0.1], "list [0.1]")])
def test_scale_wrong_type(entry, scale, seen):
    q, k, v = make_qkv()
    expect_error(
        TypeError, all_of(r"^scale must be a number or None", lit(f"got {seen}")),
        entry, q, k, v, scale=scale,
    )


@errors
@pytest.mark.parametrize(("scale", "seen"), [(float("nan"), "nan"), (float("inf"), "inf"),
                                             (float("-inf"), "-inf")])
def test_scale_not_finite(entry, scale, seen):
    q, k, v = make_qkv()
    expect_error(
        ValueError, all_of(r"^scale must be finite", lit(f"got {seen}")),
        entry, q, k, v, scale=scale,
    )


# ---- attention_stats: topk and focus ----------------------------------------------------


@errors
@pytest.mark.parametrize("topk", [0, -1])
def test_stats_topk_not_positive(topk):
    q, k, _ = make_qkv()
    expect_error(
        ValueError, all_of(r"^topk must be a positive int", lit(f"got {topk}")),
        qkv.attention_stats, q, k, topk=topk,
    )


@errors
@pytest.mark.parametrize("topk", ["3", 2.0])
def test_stats_topk_wrong_type(topk):
    q, k, _ = make_qkv()
    expect_error(
        TypeError, all_of(r"^topk must be a positive int", lit(repr(topk))),
        qkv.attention_stats, q, k, topk=topk,
    )


@errors
@pytest.mark.parametrize(
    ("focus", "bad"),
    [([5], "[5]"), ([-1], "[-1]"), (5, "[5]"), ([0, 5, 2, -3], "[5, -3]"),
     (torch.tensor([7]), "[7]")],
    ids=["Nk", "minus-one", "int", "several", "tensor"],
)
def test_stats_focus_out_of_range(focus, bad):
    q, k, _ = make_qkv()
    expect_error(
        ValueError, all_of(r"^focus positions must lie in", lit("Nk-1 = 4"), lit(f"got {bad}")),
        qkv.attention_stats, q, k, focus=focus,
    )


@errors
@pytest.mark.parametrize(
    ("focus", "dtype"),
    [([1.5], "float"), (torch.tensor([1.7]), "torch.float32"),
     (torch.tensor([True, False]), "torch.bool")],
    ids=["float-list", "float-tensor", "bool-tensor"],
)
def test_stats_focus_not_integer(focus, dtype):
    q, k, _ = make_qkv()
    expect_error(
        TypeError, all_of(r"^focus ", "int", lit(dtype)), qkv.attention_stats, q, k, focus=focus
    )


@errors
def test_stats_focus_string():
    q, k, _ = make_qkv()
    expect_error(
        TypeError, all_of(r"^focus ", lit("str")), qkv.attention_stats, q, k, focus="a"
    )


# ---- valid edge inputs are accepted -----------------------------------------------------


def _random_bool(shape, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(shape, generator=g) > 0.4
    m[..., 0] = True  # every query sees at least one key
    return m


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("shape", [(3, 7), (7,), (1, 7), ()], ids=["NqNk", "Nk", "1Nk", "scalar"])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_mask_with_fewer_dims_broadcasts(backend, shape, kind):
    q, k, v = make_qkv(nq=3, nk=7)
    mask = _random_bool(shape) if shape else torch.tensor(True)
    if kind == "float":
        mask = torch.where(mask, torch.randn(shape), torch.tensor(float("-inf")))
    full = mask.expand(B, H, 3, 7)
    out = qkv.attention(q, k, v, mask=mask, backend=backend)
    want = qkv.attention(q, k, v, mask=full, backend="reference")
    assert out.shape == (B, H, 3, D)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(
        qkv.attention_weights(q, k, mask=mask), qkv.attention_weights(q, k, mask=full)
    )
    torch.testing.assert_close(
        qkv.attention_stats(q, k, mask=mask).lse, qkv.attention_stats(q, k, mask=full).lse
    )


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_window_open_left_right_three(backend):
    q, k, v = make_qkv(nq=9, nk=9)
    i = torch.arange(9)[:, None]
    j = torch.arange(9)[None, :]
    mask = j <= i + 3  # unbounded left, 3 keys to the right
    out = qkv.attention(q, k, v, window=(None, 3), backend=backend)
    torch.testing.assert_close(out, qkv.attention(q, k, v, mask=mask, backend="reference"))
    weights = qkv.attention_weights(q, k, window=(None, 3))
    assert bool((weights[..., ~mask] == 0).all())
    torch.testing.assert_close(weights, qkv.attention_weights(q, k, mask=mask))


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("causal", [False, True])
def test_window_zero_sees_only_itself(backend, causal):
    q, k, v = make_qkv(nq=6, nk=6)
    out = qkv.attention(q, k, v, window=0, causal=causal, backend=backend)
    torch.testing.assert_close(out, v)
    eye = torch.eye(6).expand(B, H, 6, 6)
    torch.testing.assert_close(qkv.attention_weights(q, k, window=0, causal=causal), eye)
    stats = qkv.attention_stats(q, k, window=0, causal=causal, topk=1)
    assert torch.equal(stats.topk_index[..., 0], torch.arange(6).expand(B, H, 6))
    torch.testing.assert_close(stats.topk_weight[..., 0], torch.ones(B, H, 6))


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_multi_query_single_kv_head(backend):
    q, k, v = make_qkv(hq=H, hkv=1)
    out = qkv.attention(q, k, v, backend=backend)
    assert out.shape == (B, H, N, D)
    k_full, v_full = k.expand(B, H, N, D), v.expand(B, H, N, D)
    torch.testing.assert_close(out, qkv.attention(q, k_full, v_full, backend="reference"))
    torch.testing.assert_close(qkv.attention_weights(q, k), qkv.attention_weights(q, k_full))
    stats = qkv.attention_stats(q, k, topk=2)
    assert stats.entropy.shape == (B, H, N)
    torch.testing.assert_close(stats.lse, qkv.attention_stats(q, k_full, topk=2).lse)


def test_window_as_list_accepted():
    """A [left, right] list is accepted as a pair, the same as the tuple."""
    q, k, v = make_qkv()
    torch.testing.assert_close(
        qkv.attention(q, k, v, window=[1, 2]), qkv.attention(q, k, v, window=(1, 2))
    )


def test_get_backend_auto_says_it_picks_per_call():
    with pytest.raises(ValueError, match="'auto' is not one backend: each call picks") as raised:
        qkv.get_backend("auto")
    assert "'sdpa'" in str(raised.value) and "['auto'" not in str(raised.value)

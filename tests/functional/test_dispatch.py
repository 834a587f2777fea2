"""How qkv.attention dispatches: "auto" by estimated cost, explain_dispatch, the per-signature plan cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.overrides import TorchFunctionMode

import qkv
from conftest import make_qkv
from qkv.functional import api, registry
from qkv.functional.costs import CallShape, sdpa_estimate, tiled_estimate, triton_estimate
from qkv.functional.masks import CACHED_MASK_MAX_BYTES, MaskSpec, normalize_window


def spec_of(n: int, causal: bool = False, window=None, padding: bool = False) -> MaskSpec:
    left, right = normalize_window(window, causal)
    kpm = torch.ones(1, n, dtype=torch.bool) if padding else None
    return MaskSpec(n, n, left, right, key_padding_mask=kpm, causal=causal)


def shape_of(n: int, device: str = "cpu", heads: int = 8, dim: int = 64) -> CallShape:
    return CallShape(batch=1, q_heads=heads, kv_heads=heads, nq=n, nk=n, head_dim=dim, value_dim=dim, device=device)


def meta_qkv(n: int, heads: int = 8, dim: int = 64) -> tuple[torch.Tensor, ...]:
    """CPU inputs of the given sizes that hold one number (explain_dispatch never computes)."""
    return tuple(torch.zeros(1, 1, 1, 1).expand(1, heads, n, dim) for _ in range(3))


@pytest.mark.parametrize("n", [1024, 4096, 8192, 32768])
def test_auto_picks_sliding_for_a_window_narrower_than_a_quarter_of_n_on_the_cpu(n):
    q, k, v = meta_qkv(n)
    assert qkv.explain_dispatch(q, k, v, window=(256, 256)).backend == "sliding"
    assert qkv.explain_dispatch(q, k, v, window=(255, 0), causal=True).backend == "sliding"
    # without a window, or a window as wide as the sequence, the full kernel is cheaper
    assert qkv.explain_dispatch(q, k, v).backend == "sdpa"
    assert qkv.explain_dispatch(q, k, v, causal=True).backend == "sdpa"
    assert qkv.explain_dispatch(q, k, v, window=(n, n)).backend == "sdpa"


def test_auto_with_the_lse_or_gradients_picks_among_the_backends_that_can():
    q, k, v = meta_qkv(4096)
    assert qkv.explain_dispatch(q, k, v, causal=True, return_lse=True).backend == "tiled"
    assert qkv.explain_dispatch(q, k, v, window=(128, 128), return_lse=True).backend == "sliding"
    plan = qkv.explain_dispatch(q, k, v, causal=True, return_lse=True)
    sdpa = next(c for c in plan.candidates if c.name == "sdpa")
    assert sdpa.seconds is None and "log-sum-exp" in sdpa.how


def test_on_cuda_kernels_without_a_mask_come_first():
    """The CUDA prices rank SDPA without a mask (FlashAttention/cuDNN) above the Triton kernel, and the
    Triton kernel (no mask needed) above SDPA with a materialised mask at long lengths."""
    for n in (1024, 16384):
        for causal in (False, True):
            spec = spec_of(n, causal=causal)
            assert sdpa_estimate(spec, shape_of(n, "cuda"), False).seconds < \
                triton_estimate(spec, shape_of(n, "cuda"), False).seconds
    for spec in (spec_of(16384, window=(1024, 1024)), spec_of(16384, causal=True, padding=True)):
        assert triton_estimate(spec, shape_of(16384, "cuda"), False).seconds < \
            sdpa_estimate(spec, shape_of(16384, "cuda"), False).seconds
    # and the Python-driven tiled loop is never the GPU's choice when the kernel can run
    spec = spec_of(4096, causal=True)
    assert triton_estimate(spec, shape_of(4096, "cuda"), True).seconds < \
        tiled_estimate(spec, shape_of(4096, "cuda"), True).seconds


def test_explain_dispatch_names_the_backend_the_call_runs_and_every_candidate(monkeypatch):
    q, k, v = make_qkv(batch=1, q_heads=2, kv_heads=2, nq=3000, nk=3000, head_dim=16, dtype=torch.float32)
    plan = qkv.explain_dispatch(q, k, v, window=(8, 8))
    assert plan.backend == "sliding" and plan.requested == "auto"
    assert {c.name for c in plan.candidates} == {"sdpa", "tiled", "sliding", "triton"}
    estimated = [c.seconds for c in plan.candidates if c.seconds is not None]
    assert estimated == sorted(estimated) and plan.candidates[0].name == "sliding"
    text = str(plan)
    assert "auto picks sliding" in text and "* sliding" in text and "a mask of" in text

    ran = []
    record = registry.get_backend("sliding")
    monkeypatch.setitem(registry._REGISTRY, "sliding",
                        dataclasses.replace(record, fn=lambda *a, **kw: ran.append(True) or record.fn(*a, **kw)))
    qkv.attention(q, k, v, window=(8, 8))
    assert ran  # the call ran the backend explain_dispatch named (the replaced record, not a stale plan)

    named = qkv.explain_dispatch(q, k, v, window=(8, 8), backend="tiled")
    assert named.backend == "tiled" and "asked for" in named.reason
    with pytest.raises(ValueError, match="cannot return the log-sum-exp"):
        qkv.explain_dispatch(q, k, v, backend="sdpa", return_lse=True)


class SdpaCalls(TorchFunctionMode):
    """Records the keyword arguments of every scaled_dot_product_attention call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.calls.append({**(kwargs or {}), "attn_mask": (kwargs or {}).get("attn_mask",
                                                                                  args[3] if len(args) > 3 else None)})
        return func(*args, **(kwargs or {}))


def test_plain_causal_is_sdpa_is_causal_and_bottom_right_causal_a_cached_mask():
    q, k, v = make_qkv(batch=1, q_heads=2, kv_heads=2, nq=33, nk=33, head_dim=8, dtype=torch.float32)
    with SdpaCalls() as calls:
        qkv.attention(q, k, v, causal=True, backend="sdpa")
    assert calls.calls[-1].get("is_causal") is True and calls.calls[-1]["attn_mask"] is None

    q_short = q[:, :, :9]  # Nq != Nk: bottom-right causal is a mask, the same tensor on every call
    qkv.attention(q_short, k, v, causal=True, backend="sdpa")  # the first call may probe the kernel
    with SdpaCalls() as calls:
        qkv.attention(q_short, k, v, causal=True, backend="sdpa")
        qkv.attention(q_short, k, v, causal=True, backend="sdpa")
    first, second = (c["attn_mask"] for c in calls.calls)
    assert first is second and first.shape == (9, 33)
    expected = torch.ones(9, 33, dtype=torch.bool).tril(33 - 9)
    assert torch.equal(first, expected)


def test_the_structure_mask_is_built_once_and_large_ones_are_not_kept():
    spec = spec_of(300, window=(5, 5))
    assert spec.dense_structure(torch.device("cpu")) is spec.dense_structure(torch.device("cpu"))
    side = int(CACHED_MASK_MAX_BYTES ** 0.5) + 1
    big = MaskSpec(side, side, 3, 3)
    assert big.dense_structure(torch.device("cpu")) is not big.dense_structure(torch.device("cpu"))


def test_a_cached_signature_still_refuses_what_its_checks_refuse():
    """The cache key holds everything the checks read: a bad argument that differs from a cached good
    call only in type, dtype or device is still refused."""
    q, k, v = make_qkv(batch=1, q_heads=2, kv_heads=2, nq=5, nk=5, head_dim=4, dtype=torch.float32)
    qkv.attention(q, k, v, causal=True, scale=0.5, window=(1, 1))  # cached
    with pytest.raises(TypeError, match="causal must be True or False"):
        qkv.attention(q, k, v, causal=1, scale=0.5, window=(1, 1))
    with pytest.raises(TypeError, match="scale"):
        qkv.attention(q, k, v, causal=True, scale=True, window=(1, 1))
    with pytest.raises(TypeError, match="window"):
        qkv.attention(q, k, v, causal=True, scale=0.5, window=(True, 1))
    with pytest.raises(TypeError, match="one dtype"):
        qkv.attention(q, k.double(), v, causal=True, scale=0.5, window=(1, 1))
    padding = torch.ones(1, 5, dtype=torch.bool)
    qkv.attention(q, k, v, key_padding_mask=padding)  # cached
    with pytest.raises(TypeError, match="key_padding_mask must be a bool tensor"):
        qkv.attention(q, k, v, key_padding_mask=padding.int())
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        qkv.attention(q, k, v, key_padding_mask=torch.ones(1, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="cannot return the log-sum-exp"):
        qkv.attention(q, k, v, backend="sdpa", return_lse=True)


def test_the_plan_cache_is_bounded():
    for n in range(1, api.PLAN_CACHE_SIZE + 20):
        q = torch.zeros(1, 1, n, 2)
        qkv.attention(q, q, q)
    assert len(api._PLANS) <= api.PLAN_CACHE_SIZE


def test_a_plan_gives_the_same_answers_as_the_first_call():
    """Calls served from the cache equal the first, uncached call, for every kind of mask."""
    q, k, v = make_qkv(batch=2, q_heads=4, kv_heads=2, nq=11, nk=19, head_dim=8, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    padding = torch.rand(2, 19, generator=generator) > 0.3
    bool_mask = torch.rand(11, 19, generator=generator) > 0.2
    for kwargs in ({}, {"causal": True}, {"window": (3, 2)}, {"key_padding_mask": padding},
                   {"mask": bool_mask}, {"causal": True, "window": (4, 0), "key_padding_mask": padding}):
        api._PLANS.clear()
        first = qkv.attention(q, k, v, **kwargs)
        again = qkv.attention(q, k, v, **kwargs)
        expected = qkv.attention(q, k, v, backend="reference", **kwargs)
        assert torch.equal(first, again)
        torch.testing.assert_close(again, expected, rtol=1e-5, atol=1e-6)


def test_auto_picks_within_ten_percent_of_the_fastest_in_the_measured_cpu_sweep():
    """At every point of the committed CPU sweep (benchmarks/bench-attention-cpu.json: B=1, H=8, D=64,
    float32, N = 512..64K, full, causal, window, causal window), the backend "auto" picks for that call
    took at most 1.1x the time of the fastest exact qkv backend measured there. Stored measurements,
    not a timed test: it checks the cost model against them."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench-attention-cpu.json"
    if not path.exists():
        pytest.skip("no committed CPU sweep")
    result = json.loads(path.read_text())
    config = result["config"]
    times: dict[tuple, dict[str, float]] = {}
    for row in result["rows"]:
        if row["mode"] == "fwd" and row.get("kind") == "qkv" and row.get("exact") and row.get("time_s") \
                and row["backend"] != "qkv auto":
            key = (row["variant"], row["n"], row["causal"], tuple(row["window"]) if row["window"] else None)
            times.setdefault(key, {})[row["backend"].removeprefix("qkv ")] = row["time_s"]
    assert len(times) >= 20
    for (variant, n, causal, window), measured in times.items():
        q, k, v = meta_qkv(n, config["heads"], config["head_dim"])
        picked = qkv.explain_dispatch(q, k, v, causal=causal, window=window).backend
        fastest = min(measured.values())
        assert picked in measured and measured[picked] <= 1.1 * fastest, (variant, n, picked, measured)

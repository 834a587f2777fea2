"""The same contract on a CUDA device (skipped without one; CI has none).

The error rule each (backend, dtype) uses on CUDA is :func:`qkv.functional.oracle.rule_factors`:
2x the plain reference's error, except SDPA in float32, which PyTorch serves with its
memory-efficient kernel and which gets PyTorch's own factors for that kernel (the oracle's
docstring says why). The fast paths also run under ``torch.cuda.set_sync_debug_mode("error")``:
no host-device synchronisation once a call signature has been seen.
"""

from __future__ import annotations

import math

import pytest
import torch

import qkv
from conftest import make_qkv, run_backend
from qkv.functional.oracle import MEMORY_EFFICIENT_FACTORS, outputs_and_grads, rule_factors, two_x_rule

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
    factors = rule_factors("cuda", dtype, backend)
    expected = MEMORY_EFFICIENT_FACTORS if (backend, dtype) == ("sdpa", torch.float32) else dict.fromkeys(factors, 2.0)
    assert factors == expected
    for nq, nk, q_heads, kv_heads in ((97, 127, 4, 4), (127, 61, 4, 1), (1023, 1023, 2, 2)):
        q, k, v = (t.cuda() for t in make_qkv(batch=2, q_heads=q_heads, kv_heads=kv_heads,
                                              nq=nq, nk=nk, head_dim=64))
        kwargs = cuda_cases(2, nq, nk)[case]
        checks = two_x_rule(lambda a, b, c, kw=kwargs: run_backend(backend, a, b, c, **kw), q, k, v, dtype,
                            factors=factors, **kwargs)
        for check in checks:
            assert check.dtype == dtype and check.factor == factors[check.name]
            assert check.ok, f"{backend} {check.describe()}"


@pytest.mark.parametrize("case", ["none", "causal", "causal+padding", "window+float"])
def test_float32_sdpa_on_cuda_is_the_memory_efficient_kernel(case):
    """The float32 rule above is the memory-efficient kernel's: SDPA serves float32 with it (the
    same numbers, forward and backward, as with that kernel pinned)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (t.cuda() for t in make_qkv(batch=2, q_heads=4, kv_heads=4, nq=127, nk=127, head_dim=64,
                                          dtype=torch.float32))
    kwargs = cuda_cases(2, 127, 127)[case]
    chosen = outputs_and_grads(lambda a, b, c: qkv.attention(a, b, c, backend="sdpa", **kwargs), q, k, v)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        pinned = outputs_and_grads(lambda a, b, c: qkv.attention(a, b, c, backend="sdpa", **kwargs), q, k, v)
    for a, b in zip(chosen, pinned):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["sdpa", "tiled", "auto", "triton"])
@pytest.mark.parametrize("case", ["none", "causal", "window", "causal+padding", "window+float"])
def test_fast_paths_never_synchronise_on_cuda(backend, case):
    """After a first call of a signature (which may probe the kernel once), a call queues its work
    and returns without waiting for the GPU: torch.cuda.set_sync_debug_mode("error") raises on any
    synchronisation."""
    if backend == "triton" and case == "window+float":
        pytest.skip("the triton backend takes no mask= (the registry refuses it)")
    q, k, v = (t.cuda() for t in make_qkv(batch=2, q_heads=4, kv_heads=2, nq=97, nk=127, head_dim=64,
                                          dtype=torch.bfloat16))
    kwargs = cuda_cases(2, 97, 127)[case]
    if backend == "sdpa" or backend == "auto":
        kwargs = {key: value.to(torch.bfloat16) if key == "mask" else value for key, value in kwargs.items()}
    with torch.no_grad():
        qkv.attention(q, k, v, backend=backend, **kwargs)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            qkv.attention(q, k, v, backend=backend, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")


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

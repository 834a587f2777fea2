"""Shared helpers: random inputs, backends with chosen blocks, the 2x error rule as an assertion."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, qkv's Triton kernel runs on the CPU under Triton's interpreter, which
# Triton fixes when it is first imported: so here, before any test imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import qkv
from qkv.functional.api import build_spec, zero_unread_keys
from qkv.functional.oracle import two_x_rule
from qkv.functional.sliding import sliding_attention
from qkv.functional.tiled import tiled_attention


def make_qkv(
    batch: int = 2,
    q_heads: int = 4,
    kv_heads: int = 4,
    nq: int = 17,
    nk: int = 17,
    head_dim: int = 8,
    value_dim: int | None = None,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv)."""
    generator = torch.Generator().manual_seed(seed)
    value_dim = head_dim if value_dim is None else value_dim
    q = torch.randn(batch, q_heads, nq, head_dim, generator=generator, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, nk, head_dim, generator=generator, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, nk, value_dim, generator=generator, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def run_tiled(q, k, v, *, block_q: int, block_k: int, return_lse: bool = False, **masking):
    """The tiled backend with chosen block sizes, through the same validation as attention()."""
    spec, scale = build_spec(q, k, v, **{"causal": False, "window": None, "mask": None,
                                         "key_padding_mask": None, "scale": None, **masking})
    k, v = zero_unread_keys(k, v, spec)
    return tiled_attention(q, k, v, spec, scale, return_lse, block_q=block_q, block_k=block_k)


def run_sliding(q, k, v, *, block: int, return_lse: bool = False, **masking):
    """The sliding backend with a chosen band block, through attention()'s validation."""
    spec, scale = build_spec(q, k, v, **{"causal": False, "window": None, "mask": None,
                                         "key_padding_mask": None, "scale": None, **masking})
    k, v = zero_unread_keys(k, v, spec)
    return sliding_attention(q, k, v, spec, scale, return_lse, block=block)


def run_backend(backend: str, q, k, v, blocks: tuple[int, ...] | None = None, **kwargs):
    """qkv.attention with ``backend``; ``blocks`` selects tiled or triton tile sizes or sliding's band block."""
    if backend == "triton" and blocks is not None:
        options = qkv.TritonOptions(block_m=blocks[0], block_n=blocks[1])
        return qkv.attention(q, k, v, backend="triton", options=options, **kwargs)
    if backend == "tiled" and blocks is not None:
        return run_tiled(q, k, v, block_q=blocks[0], block_k=blocks[1], **kwargs)
    if backend == "sliding" and blocks is not None:
        return run_sliding(q, k, v, block=blocks[0], **kwargs)
    return qkv.attention(q, k, v, backend=backend, **kwargs)


def contract_mask(nq: int, nk: int, left: int | None, right: int | None, causal: bool = False,
                  global_tokens: tuple[int, ...] = ()) -> torch.Tensor:
    """(Nq, Nk) bool: which keys each query may see, by brute force."""
    visible = torch.zeros(nq, nk, dtype=torch.bool)
    for i in range(nq):
        p = i + nk - nq
        for j in range(nk):
            causal_ok = j <= p or not causal
            in_window = (left is None or j >= p - left) and (right is None or j <= p + right)
            visible[i, j] = causal_ok and (in_window or p in global_tokens or j in global_tokens)
    return visible


def seen_keys(backend: str, nq: int, nk: int, block: int | None = None, device: str = "cpu",
              **masking) -> torch.Tensor:
    """(Nq, Nk) bool of the keys each query actually reads, measured through the outputs.

    With q = 0 every visible key gets the same weight; one-hot values make output[i, j]
    the weight of key j for query i.
    """
    q = torch.zeros(1, 1, nq, nk, dtype=torch.float64)  # as wide as v, so the fused path runs too
    k = torch.randn(1, 1, nk, nk, dtype=torch.float64)
    v = torch.eye(nk, dtype=torch.float64)[None, None]  # (1, 1, Nk, Nk)
    q, k, v = (t.to(device) for t in (q, k, v))
    if block is not None:
        out = run_sliding(q, k, v, block=block, **masking)
    else:
        out = qkv.attention(q, k, v, backend=backend, **masking)
    return out[0, 0].cpu() > 0


def assert_two_x_rule(backend: str, dtype: torch.dtype, q, k, v, *, blocks=None, grads=True,
                      **kwargs) -> None:
    """A backend's error against the float64 oracle is at most 2x the plain reference's
    error in the backend's dtype, plus a tiny floor; the same for every gradient
    (:func:`qkv.functional.oracle.two_x_rule`), and it returns the dtype it was given."""
    def tested(q_, k_, v_):
        return run_backend(backend, q_, k_, v_, blocks=blocks, **kwargs)

    for check in two_x_rule(tested, q, k, v, dtype, grads=grads, **kwargs):
        assert check.dtype == dtype, f"{check.name} came back as {check.dtype}, expected {dtype}"
        assert check.ok, f"{backend} {check.describe()}"


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Keep tests reproducible regardless of what a previous test set."""
    torch.manual_seed(0)
    yield

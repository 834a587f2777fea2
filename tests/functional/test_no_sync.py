"""The fast paths never read a tensor's values on the host: no host-device synchronisation.

On a GPU, ``.item()``, ``bool(tensor)``, ``.tolist()``, ``.cpu()``, ``.numpy()`` or a Python branch on
a tensor's value make the CPU wait for every queued kernel. Here, on the CPU, a ``TorchFunctionMode``
fails on any of them while each fast path runs (after a first call of the signature, which may probe
a kernel once); ``tests/functional/test_cuda.py`` does the same on a GPU with
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

import qkv
from conftest import make_qkv, run_sliding, run_tiled

# What reads a tensor on the host (and so, on a GPU, waits for it), or sizes an output by its values.
HOST_READS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__,
    torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero,
    torch.Tensor.unique, torch.unique, torch.masked_select, torch.Tensor.masked_select, torch.equal,
    torch.allclose, torch.Tensor.allclose,
}


class HostReadError(AssertionError):
    pass


class NoHostReads(TorchFunctionMode):
    """Raise on every call that reads a tensor's values on the host."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            raise HostReadError(f"{getattr(func, '__qualname__', func)} read a tensor on the host")
        return func(*args, **(kwargs or {}))


def cases(batch: int, nq: int, nk: int) -> dict[str, dict]:
    generator = torch.Generator().manual_seed(3)
    padding = torch.rand(batch, nk, generator=generator) > 0.3
    return {
        "none": {},
        "causal": {"causal": True},
        "padding": {"key_padding_mask": padding},
        "causal+padding": {"causal": True, "key_padding_mask": padding},
        "window": {"window": (5, 3)},
        "causal+window+padding": {"causal": True, "window": (6, 0), "key_padding_mask": padding},
        "bool": {"mask": torch.rand(batch, 1, nq, nk, generator=generator) > 0.2},
        "float": {"mask": torch.randn(1, 1, nq, nk, generator=generator)},
    }


def run_without_host_reads(call) -> torch.Tensor:
    call()  # the first call of a signature may probe PyTorch's kernel once
    with NoHostReads():
        return call()


WINDOWED = ["window", "causal+window+padding"]
# (name, the path as a function, the cases it runs): every fast path, and "auto" over every kind of call.
PATHS = {
    "sdpa": (lambda q, k, v, **kw: qkv.attention(q, k, v, backend="sdpa", **kw), list(cases(1, 1, 1))),
    "auto": (lambda q, k, v, **kw: qkv.attention(q, k, v, **kw), list(cases(1, 1, 1))),
    "tiled": (lambda q, k, v, **kw: run_tiled(q, k, v, block_q=16, block_k=24, **kw), list(cases(1, 1, 1))),
    "sliding-bands": (lambda q, k, v, **kw: run_sliding(q, k, v, block=8, **kw), WINDOWED),
    "sliding": (lambda q, k, v, **kw: qkv.attention(q, k, v, backend="sliding", **kw), WINDOWED),
}
RUNS = [(path, case) for path, (_, served) in PATHS.items() for case in served]


@pytest.mark.parametrize(("path", "case"), RUNS, ids=[f"{p}-{c}" for p, c in RUNS])
@pytest.mark.parametrize("shape", [(17, 17, 4), (13, 41, 2), (70, 70, 1)], ids=lambda s: "x".join(map(str, s)))
def test_fast_paths_read_nothing_on_the_host(path, case, shape):
    """(Nq, Nk, Hkv) with Hq = 4: multi-head, grouped and multi-query attention."""
    attend = PATHS[path][0]
    nq, nk, kv_heads = shape
    q, k, v = make_qkv(batch=2, q_heads=4, kv_heads=kv_heads, nq=nq, nk=nk, head_dim=8, dtype=torch.float32)
    kwargs = cases(2, nq, nk)[case]
    with torch.no_grad():
        expected = qkv.attention(q, k, v, backend="reference", **kwargs)
        out = run_without_host_reads(lambda: attend(q, k, v, **kwargs))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_auto_with_gradients_reads_nothing_on_the_host():
    q, k, v = (t.requires_grad_(True) for t in make_qkv(batch=2, q_heads=4, kv_heads=2, nq=37, nk=37,
                                                        head_dim=8, dtype=torch.float32))
    padding = torch.rand(2, 37, generator=torch.Generator().manual_seed(1)) > 0.3
    for kwargs in ({"causal": True}, {"key_padding_mask": padding}, {"window": (4, 4), "key_padding_mask": padding}):
        run_without_host_reads(lambda kwargs=kwargs: qkv.attention(q, k, v, **kwargs))


def test_a_module_forward_reads_nothing_on_the_host():
    layer = qkv.nn.MultiHeadAttention(32, 4, num_kv_heads=2, causal=True)
    x = torch.randn(2, 19, 32)
    padding = torch.ones(2, 19, dtype=torch.bool)
    padding[1, :5] = False
    with torch.no_grad():
        run_without_host_reads(lambda: layer(x, key_padding_mask=padding))
        layer.set_backend("auto", window=(4, 0))
        run_without_host_reads(lambda: layer(x, key_padding_mask=padding))


def test_the_mode_catches_each_host_read():
    """The detector itself: each way of reading a value on the host fails under it."""
    t = torch.ones(3)
    reads = [lambda: t.sum().item(), lambda: bool(t.any()), lambda: t.tolist(), lambda: t.cpu(),
             lambda: t.numpy(), lambda: t.nonzero(), lambda: float(t[0])]
    for read in reads:
        with NoHostReads(), pytest.raises(HostReadError):
            read()
    with NoHostReads():
        assert (t + 1).shape == (3,)  # ordinary computation passes

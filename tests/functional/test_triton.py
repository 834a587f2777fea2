"""The Triton kernel under the same rules as every backend.

Without a GPU the kernels run on CPU tensors under Triton's interpreter
(TRITON_INTERPRET=1, set by conftest.py before anything imports Triton); with one,
the same tests run on CUDA. Shapes stay small: the interpreter runs every program in
Python. Full-size GPU checks and the speed targets: ``python -m qkv.bench triton``.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest
import torch

import qkv
from conftest import assert_two_x_rule, contract_mask, make_qkv, seen_keys
from qkv.functional.oracle import outputs_and_grads, two_x_rule

pytest.importorskip("triton", reason="Triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module", autouse=True)
def kernel_runs_here():
    from qkv.functional.triton_backend import unavailable_reason

    reason = unavailable_reason(DEVICE)
    if reason is not None:
        pytest.skip(f"the Triton kernel cannot {reason}")


def on_device(*tensors):
    return tuple(t.to(DEVICE) for t in tensors)


def triton_cases(batch: int, nq: int, nk: int) -> dict[str, dict]:
    generator = torch.Generator().manual_seed(nq * 1000 + nk)
    padding = torch.rand(batch, nk, generator=generator) > 0.25
    padding[:, -1] = True
    padding = padding.to(DEVICE)
    return {
        "none": {},
        "causal": {"causal": True},
        "window": {"window": (3, 5)},
        "window-left-only": {"window": (4, None)},
        "window-right-only": {"window": (None, 2)},
        "causal-window": {"causal": True, "window": (6, 0)},
        "padding": {"key_padding_mask": padding},
        "causal+padding": {"causal": True, "key_padding_mask": padding},
        "window+padding": {"window": (2, 7), "key_padding_mask": padding},
    }


# (Nq, Nk, D, Hq, Hkv): lengths that are not multiples of the 16-row blocks, Nq != Nk both
# ways, head dims 1, 3, 59, 64 (and 16-padded), GQA ratios 1, 2, 4.
SHAPES = [
    (1, 1, 1, 2, 2),
    (1, 17, 3, 4, 1),
    (17, 1, 8, 4, 2),
    (37, 50, 16, 4, 2),
    (50, 37, 59, 4, 4),
    (33, 33, 64, 4, 1),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float64_matches_oracle_on_odd_sizes(shape):
    nq, nk, dim, q_heads, kv_heads = shape
    q, k, v = on_device(*make_qkv(2, q_heads, kv_heads, nq, nk, dim, value_dim=dim + 2, seed=nq + nk))
    cases = triton_cases(2, nq, nk)
    for name in ("none", "causal", "window+padding"):
        assert_two_x_rule("triton", torch.float64, q, k, v, **cases[name])


@pytest.mark.parametrize("case", list(triton_cases(2, 3, 3)))
def test_every_mask_kind_float64(case):
    for nq, nk in ((19, 45), (45, 19)):
        q, k, v = on_device(*make_qkv(2, 4, 2, nq, nk, 8, seed=nq))
        assert_two_x_rule("triton", torch.float64, q, k, v, **triton_cases(2, nq, nk)[case])


@pytest.mark.parametrize("blocks", [(16, 32), (32, 16), (16, 16)], ids=["16x32", "32x16", "16x16"])
def test_block_sizes_that_do_not_divide_the_lengths(blocks):
    q, k, v = on_device(*make_qkv(1, 4, 2, 45, 71, 8, seed=3))
    for name in ("none", "causal", "window+padding"):
        assert_two_x_rule("triton", torch.float64, q, k, v, blocks=blocks, **triton_cases(1, 45, 71)[name])


@pytest.mark.parametrize("scale", [-0.7, 0.0, 1e-3])
def test_any_finite_scale_float64(scale):
    """The kernels scale inside exp2 and assume a positive scale; negative and zero scales are
    mapped onto it (negated or zero queries) and must give the oracle's outputs and gradients."""
    q, k, v = on_device(*make_qkv(2, 4, 2, 21, 30, 8, seed=5))
    for name in ("none", "causal", "window+padding"):
        assert_two_x_rule("triton", torch.float64, q, k, v, scale=scale, **triton_cases(2, 21, 30)[name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["none", "causal", "causal-window", "window+padding"])
def test_two_x_error_rule_low_precision(dtype, case):
    for nq, nk, q_heads, kv_heads in ((37, 50, 4, 4), (50, 29, 4, 1)):
        q, k, v = on_device(*make_qkv(2, q_heads, kv_heads, nq, nk, 64, seed=nq))
        assert_two_x_rule("triton", dtype, q, k, v, **triton_cases(2, nq, nk)[case])


def test_head_dims_32_to_256_bfloat16():
    for dim in (32, 96, 128, 256):
        q, k, v = on_device(*make_qkv(1, 2, 1, 21, 21, dim, seed=dim))
        assert_two_x_rule("triton", torch.bfloat16, q, k, v, causal=True)


@pytest.mark.parametrize("nq,nk", [(23, 23), (9, 40), (40, 9)])
@pytest.mark.parametrize("causal", [False, True])
def test_each_query_sees_exactly_its_window(nq, nk, causal):
    for window in [(0, 0), (1, nk - 1), (nk, 0), (nk + 1, 3), (5, None)]:
        seen = seen_keys("triton", nq, nk, device=DEVICE, window=window, causal=causal)
        expected = contract_mask(nq, nk, window[0], 0 if causal else window[1], causal)
        assert torch.equal(seen, expected), f"window={window} causal={causal}"


def test_rows_with_no_visible_key_are_zero_without_nan():
    q, k, v = on_device(*make_qkv(2, 2, 2, 6, 4))
    padding = torch.ones(2, 4, dtype=torch.bool, device=DEVICE)
    padding[1] = False
    for kwargs, empty in [({"causal": True}, (slice(None), slice(None), slice(0, 2))), ({"key_padding_mask": padding},
                                                                                         (1,))]:
        out, dq, dk, dv = outputs_and_grads(lambda a, b, c, kw=kwargs: qkv.attention(a, b, c, backend="triton", **kw),
                                            q, k, v)
        assert all(not torch.isnan(t).any() for t in (out, dq, dk, dv))
        assert (out[empty] == 0).all() and (dq[empty] == 0).all()
        _, lse = qkv.attention(q, k, v, backend="triton", return_lse=True, **kwargs)
        assert (lse[empty] == -math.inf).all()
        assert_two_x_rule("triton", torch.float64, q, k, v, **kwargs)


@pytest.mark.parametrize("poison", [math.nan, 1e30, -math.inf])
def test_poisoned_padding_never_reaches_visible_outputs(poison):
    q, k, v = on_device(*make_qkv(2, 4, 2, 40, 50, 16, dtype=torch.float32))
    padding = torch.ones(2, 50, dtype=torch.bool, device=DEVICE)
    padding[0, 30:] = False
    padding[1, :7] = False
    kwargs = {"key_padding_mask": padding, "causal": True, "window": (20, 0)}
    k_bad, v_bad = k.clone(), v.clone()
    padded = ~padding[:, None, :].expand(-1, 2, -1)
    k_bad[padded] = poison
    v_bad[padded] = poison

    def run(a, b, c):
        return qkv.attention(a, b, c, backend="triton", **kwargs)

    clean = outputs_and_grads(run, q, k, v)
    dirty = outputs_and_grads(run, q, k_bad, v_bad)
    for name, a, b in zip(["out", "dq", "dk", "dv"], clean, dirty):
        keep = slice(None) if name in ("out", "dq") else ~padded
        assert torch.equal(a[keep], b[keep]), name


def test_nan_in_a_visible_input_comes_out_as_nan():
    q, k, v = on_device(*make_qkv(1, 2, 2, 20, 20, 8))
    v[0, 0, 3] = math.nan
    out = qkv.attention(q, k, v, backend="triton", window=(2, 2))
    assert torch.isnan(out[0, 0, 1:6]).all()  # the queries that see key 3


def test_lse_and_its_gradient():
    q, k, v = on_device(*make_qkv(2, 4, 2, 21, 34, 8))

    def loss(backend, a, b, c):
        out, lse = qkv.attention(a, b, c, backend=backend, return_lse=True, window=(5, 3))
        return out, lse, (out.sin().sum() + (lse * torch.linspace(-1, 1, lse.shape[-1], device=DEVICE,
                                                                dtype=lse.dtype)).sum())

    tensors = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, lse, total = loss("triton", *tensors)
    grads = torch.autograd.grad(total, tensors)
    tensors = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref_out, ref_lse, ref_total = loss("reference", *tensors)
    ref_grads = torch.autograd.grad(ref_total, tensors)
    assert lse.dtype == torch.float64 and (lse - ref_lse).abs().max() < 1e-12
    assert (out - ref_out).abs().max() < 1e-12
    for ours, truth in zip(grads, ref_grads):
        assert (ours - truth).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tensor_descriptor_reads_match_pointer_reads(dtype):
    """K and V through tensor descriptors (TMA on Hopper): the same numbers as per-element loads, and
    the 2x rule on odd sizes (rows past Nk and columns past D are zero-filled by the descriptor)."""
    descriptors = qkv.TritonOptions(tma=True)
    for nq, nk, dim, value_dim in ((37, 45, 32, 48), (29, 17, 16, 16)):
        q, k, v = on_device(*make_qkv(2, 4, 2, nq, nk, dim, value_dim=value_dim, seed=nq, dtype=dtype))
        for name, masking in triton_cases(2, nq, nk).items():
            with_descriptors = qkv.attention(q, k, v, backend="triton", options=descriptors, **masking)
            with_pointers = qkv.attention(q, k, v, backend="triton", options=qkv.TritonOptions(tma=False), **masking)
            assert torch.equal(with_descriptors, with_pointers), name
    q, k, v = on_device(*make_qkv(2, 4, 2, 37, 45, 64, seed=9))
    for name in ("none", "causal-window", "window+padding"):
        masking = triton_cases(2, 37, 45)[name]
        for check in two_x_rule(lambda a, b, c, masking=masking: qkv.attention(
                a, b, c, backend="triton", options=descriptors, **masking), q, k, v, dtype, **masking):
            assert check.ok, check.describe()


def test_tensor_descriptors_refused_where_they_cannot_be_used():
    q, k, v = on_device(*make_qkv(1, 2, 2, 8, 8, 16, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"tma=True.*float16/bfloat16"):
        qkv.attention(q, k, v, backend="triton", options=qkv.TritonOptions(tma=True))
    q, k, v = on_device(*make_qkv(1, 2, 2, 8, 8, 12, dtype=torch.bfloat16))  # rows of 24 bytes
    with pytest.raises(ValueError, match="multiples of 16 bytes"):
        qkv.attention(q, k, v, backend="triton", options=qkv.TritonOptions(tma=True))


def test_backward_is_bitwise_reproducible():
    """No atomics: dK/dV by key block and dQ by query block, each summed in a fixed order."""
    q, k, v = on_device(*make_qkv(2, 4, 1, 50, 50, 32, dtype=torch.float32))
    runs = [outputs_and_grads(lambda a, b, c: qkv.attention(a, b, c, backend="triton", causal=True), q, k, v)
            for _ in range(2)]
    for first, second in zip(*runs):
        assert torch.equal(first, second)


def test_gradcheck_float64():
    q, k, v = (t.requires_grad_(True) for t in on_device(*make_qkv(1, 2, 1, 7, 9, 2, seed=7)))
    padding = torch.ones(1, 9, dtype=torch.bool, device=DEVICE)
    padding[0, 4] = False
    assert torch.autograd.gradcheck(
        lambda a, b, c: qkv.attention(a, b, c, backend="triton", window=(3, 2), key_padding_mask=padding), (q, k, v))


def test_refuses_what_it_cannot_honour():
    q, k, v = on_device(*make_qkv(1, 2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"backend='triton' cannot honour mask=.*tiled"):
        qkv.attention(q, k, v, backend="triton", mask=torch.ones(8, 8, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match=r"cannot honour global_tokens=.*sliding"):
        qkv.attention(q, k, v, backend="triton", window=2, global_tokens=[0])
    with pytest.raises(ValueError, match="power of two"):
        qkv.TritonOptions(block_m=24, block_n=16)
    with pytest.raises(ValueError, match="both"):
        qkv.TritonOptions(block_m=32)
    with pytest.raises(TypeError, match="TritonOptions"):
        qkv.attention(q, k, v, backend="triton", options=qkv.PerformerOptions())


def test_multi_head_attention_module_runs_on_the_kernel():
    torch.manual_seed(0)
    layer = qkv.nn.MultiHeadAttention(32, num_heads=4, num_kv_heads=2, causal=True).double().to(DEVICE)
    x = torch.randn(2, 19, 32, dtype=torch.float64, device=DEVICE)
    padding = torch.ones(2, 19, dtype=torch.bool, device=DEVICE)
    padding[1, 12:] = False
    expected = layer(x, key_padding_mask=padding)
    layer.set_backend("triton")
    assert (layer(x, key_padding_mask=padding) - expected).abs().max() < 1e-12


def refusal_in_a_fresh_interpreter(prelude: str) -> str:
    """What ``qkv.attention(..., backend="triton")`` on a CPU tensor raises, in a fresh Python without
    TRITON_INTERPRET, after running ``prelude``."""
    code = (
        f"{prelude}\n"
        "import torch, qkv\n"
        "q = torch.randn(1, 1, 4, 8)\n"
        "try:\n"
        "    qkv.attention(q, q, q, backend='triton')\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_qkv_never_needs_triton_and_the_backend_says_why():
    """Without Triton (blocked in a fresh interpreter) qkv imports and the backend explains itself."""
    message = refusal_in_a_fresh_interpreter("import sys; sys.modules['triton'] = None")
    assert "backend='triton' cannot import Triton: it is not installed" in message
    assert "sdpa" in message  # the backends that can serve the call are named


def test_cpu_without_the_interpreter_is_refused_with_the_fix():
    from qkv.functional.triton_backend import unavailable_reason

    assert "TRITON_INTERPRET=1" in refusal_in_a_fresh_interpreter("")
    assert unavailable_reason("mps") is not None


def test_autotuning_tries_only_the_tiles_of_the_call_class():
    """Each configuration tried costs a compile on a shape's first call: the pruner keeps a few."""
    from qkv.functional import triton_launch as kernels

    for shapes in (kernels._FORWARD_SHAPES, kernels._BACKWARD_KV_SHAPES, kernels._BACKWARD_Q_SHAPES):
        prune = kernels._pruner(shapes)
        every = kernels._all_configs(shapes)
        assert len({str(config) for config in every}) == len(every)
        for head_dim, band, expected in ((64, False, "small"), (128, False, "medium"), (256, False, "wide"),
                                         (128, True, "band"), (256, True, "wide")):
            meta = {"BLOCK_D": head_dim, "BLOCK_DV": head_dim, "HAS_LEFT": band, "HAS_RIGHT": True}
            kept = prune(every, {}, **meta)
            assert sorted(map(str, kept)) == sorted(map(str, kernels._configs(shapes[expected])))
            assert 1 <= len(kept) <= 5
        assert len(kernels._configs(shapes["medium"])) <= 2  # the cold-compile budget of a D=128 call


@pytest.mark.slow
def test_kernels_compile_for_a_hopper_gpu(tmp_path):
    """What the interpreter cannot check: the kernels compile to sm_90 machine code (no GPU needed)."""
    worker = os.path.join(os.path.dirname(__file__), "triton_compile_worker.py")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from an earlier run's cache
    result = subprocess.run([sys.executable, worker], capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0 and "ptxas" in result.stderr and "not found" in result.stderr:
        pytest.skip("this Triton build has no ptxas")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len([line for line in lines if "shared=" in line]) == 7, result.stdout

    def count(line: str, what: str) -> int:
        return int(re.search(rf"\b{re.escape(what)}=(\d+)", line).group(1))

    matrix_kernels = [line for line in lines if " bf16" in line and not line.startswith("_delta_kernel")]
    assert len(matrix_kernels) == 5, result.stdout
    for line in matrix_kernels:
        # Hopper's warpgroup matrix products, fed by pipelined asynchronous copies in the hot loops:
        # per-thread copies, or bulk tensor copies (TMA) where the forward reads K and V through descriptors.
        assert count(line, "wgmma") > 0, line
        if "USE_TMA" in line:
            assert count(line, "tma") > 0 and count(line, "cp.async") == 0, line
        else:
            assert count(line, "cp.async") > 0 and count(line, "tma") == 0, line
    assert all(count(line, "atom") == 0 for line in lines), result.stdout  # reproducible: no atomics

"""Attention rollout and flow against independent computations.

Rollout is checked against a product of matrices written out with numpy; flow and
max_flow against a brute-force minimum cut (max-flow = min-cut), found by trying every
set of intermediate nodes on small graphs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qkv.inspect import FLOW_MAX_WORK, attention_flow, attention_rollout, max_flow, residual_attention


def random_weights(L: int, H: int, N: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """Row-stochastic attention (L, H, N, N) in float64; larger temperature, peakier rows."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(L, H, N, N, generator=generator, dtype=torch.float64) * temperature
    return torch.softmax(scores, dim=-1)


def layer_matrices(weights: np.ndarray, residual: float) -> list[np.ndarray]:
    """Â_l for (L, H, N, N) numpy weights, written out with loops (rows renormalised)."""
    L, H, N, _ = weights.shape
    out = []
    for layer in range(L):
        mixed = np.zeros((N, N))
        for i in range(N):
            for j in range(N):
                mean = sum(weights[layer, h, i, j] for h in range(H)) / H
                mixed[i, j] = (1 - residual) * mean + (residual if i == j else 0.0)
            total = mixed[i].sum()
            if total == 0:
                mixed[i, i] = 1.0
            else:
                mixed[i] /= total
        out.append(mixed)
    return out


def brute_force_min_cut(capacity: np.ndarray, source: int, sink: int) -> float:
    """Smallest capacity of a source-sink cut of a (V, V) capacity matrix, every cut tried."""
    V = capacity.shape[0]
    others = [v for v in range(V) if v not in (source, sink)]
    subsets = (np.arange(2 ** len(others))[:, None] >> np.arange(len(others))) & 1  # (2^k, k): every subset
    side = np.zeros((len(subsets), V))  # (2^k, V): 1 = on the source side
    side[:, source] = 1.0
    if others:
        side[:, others] = subsets
    cut = ((side @ capacity) * (1.0 - side)).sum(axis=1)  # capacity from the source side to the rest
    return float(cut.min())


# ---------------------------------------------------------------------------- rollout


@pytest.mark.parametrize("N", [7, 13])
@pytest.mark.parametrize("L", [1, 2, 3, 4])
def test_rollout_is_the_product_of_layer_matrices(L: int, N: int) -> None:
    weights = random_weights(L, 3, N, seed=10 * L + N)
    A = weights.numpy().mean(axis=1)  # (L, N, N)
    layers = [0.5 * np.eye(N) + 0.5 * A[layer] for layer in range(L)]
    rolled = attention_rollout(weights)
    assert rolled.shape == (L, N, N)
    for top in range(1, L + 1):
        chain = layers[:top][::-1]  # Â_top @ ... @ Â_1
        expected = chain[0] if top == 1 else np.linalg.multi_dot(chain)
        np.testing.assert_allclose(rolled[top - 1].numpy(), expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(rolled[top - 1].sum(-1).numpy(), np.ones(N), atol=1e-12)


@pytest.mark.parametrize("residual", [0.0, 0.3, 1.0])
def test_rollout_with_masked_rows_and_other_residuals(residual: float) -> None:
    weights = random_weights(3, 2, 7, seed=5)
    weights[0, :, 2] = 0.0  # query 2 saw no key in layer 1, in every head
    weights[1, 0, 4] = 0.0  # query 4 saw no key in one head of layer 2
    weights[2, :, 6] = 0.0
    expected_layers = layer_matrices(weights.numpy(), residual)
    np.testing.assert_allclose(residual_attention(weights, residual).numpy(), np.stack(expected_layers), atol=1e-12)
    expected = expected_layers[0]
    rolled = attention_rollout(weights, residual)
    for top in range(3):
        if top:
            expected = expected_layers[top] @ expected
        np.testing.assert_allclose(rolled[top].numpy(), expected, atol=1e-12)


def test_residual_attention_edge_cases() -> None:
    weights = random_weights(2, 4, 5, seed=1)
    assert torch.allclose(residual_attention(weights, 1.0), torch.eye(5, dtype=torch.float64).expand(2, 5, 5))
    assert torch.allclose(residual_attention(weights, 0.0), weights.mean(1))
    weights[1, :, 3] = 0.0
    assert torch.equal(residual_attention(weights, 0.0)[1, 3], torch.eye(5, dtype=torch.float64)[3])
    # (L, N, N) is one head.
    assert torch.allclose(residual_attention(weights[:, 0]), residual_attention(weights[:, :1]))


def test_dtypes() -> None:
    weights = random_weights(2, 2, 6, seed=2)
    assert attention_rollout(weights.float()).dtype == torch.float32
    assert attention_rollout(weights.bfloat16()).dtype == torch.float32
    assert attention_flow(weights.float(), 0).dtype == torch.float32
    assert torch.allclose(attention_rollout(weights.float()).double(), attention_rollout(weights), atol=1e-6)


# --------------------------------------------------------------------------- max flow


def test_max_flow_textbook_network() -> None:
    # Cormen et al., Introduction to Algorithms, Figure 26.1: maximum flow 23.
    s, v1, v2, v3, v4, t = range(6)
    capacity = {
        s: {v1: 16, v2: 13},
        v1: {v3: 12},
        v2: {v1: 4, v4: 14},
        v3: {v2: 9, t: 20},
        v4: {v3: 7, t: 4},
    }
    assert max_flow(capacity, s, t) == 23


@pytest.mark.parametrize("dag", [True, False])
def test_max_flow_matches_brute_force_min_cut(dag: bool) -> None:
    rng = np.random.default_rng(7 if dag else 8)
    for _ in range(40):
        V = int(rng.integers(2, 8))
        keep = rng.random((V, V)) < 0.5
        if dag:
            keep &= np.triu(np.ones((V, V), dtype=bool), k=1)  # edges go to later nodes only
        np.fill_diagonal(keep, False)
        values = rng.random((V, V)) if rng.random() < 0.5 else rng.integers(0, 4, (V, V)).astype(float)
        capacity = np.where(keep, values, 0.0)
        graph = {u: {v: float(capacity[u, v]) for v in range(V) if keep[u, v]} for u in range(V)}
        source, sink = (0, V - 1) if dag else tuple(int(x) for x in rng.choice(V, 2, replace=False))
        assert max_flow(graph, source, sink) == pytest.approx(brute_force_min_cut(capacity, source, sink), abs=1e-12)


def test_max_flow_undoes_a_bad_first_path() -> None:
    # The first shortest path s-a-b-t blocks both a's way out and b's; the maximum (2)
    # needs the later path s-e-b-a-c-d-t, which sends flow back along a → b.
    s, a, b, c, d, e, t = range(7)
    capacity = {s: {a: 1.0, e: 1.0}, a: {b: 1.0, c: 1.0}, b: {t: 1.0}, e: {b: 1.0}, c: {d: 1.0}, d: {t: 1.0}}
    assert max_flow(capacity, s, t) == 2.0


def test_max_flow_ignores_self_loops_and_handles_antiparallel_edges() -> None:
    graph = {0: {0: 5.0, 1: 2.0}, 1: {0: 3.0, 1: 1.0, 2: 4.0}}
    assert max_flow(graph, 0, 2) == 2.0
    assert max_flow(graph, 1, 0) == 3.0
    assert max_flow({0: {1: 0.0}}, 0, 1) == 0.0


# ------------------------------------------------------------------------------- flow


def layered_capacity(layers: list[np.ndarray], top: int) -> np.ndarray:
    """The full layered graph up to layer ``top``: node (l, i) is l * N + i."""
    N = layers[0].shape[0]
    capacity = np.zeros(((top + 1) * N, (top + 1) * N))
    for layer in range(1, top + 1):
        for i in range(N):
            for j in range(N):
                capacity[(layer - 1) * N + j, layer * N + i] = layers[layer - 1][i, j]
    return capacity


def flow_min_cut(layers: list[np.ndarray], top: int, j: int, target: int, full: bool) -> float:
    """Min cut from (0, j) to (top, target), on the full layered graph or without the
    other inputs (no edge enters them) and the other top nodes (no edge leaves them)."""
    N = layers[0].shape[0]
    capacity = layered_capacity(layers, top)
    source, sink = j, top * N + target
    if full:
        return brute_force_min_cut(capacity, source, sink)
    keep = [source, *range(N, top * N), sink]
    return brute_force_min_cut(capacity[np.ix_(keep, keep)], 0, len(keep) - 1)


@pytest.mark.parametrize(("L", "N"), [(2, 3), (3, 3), (3, 4)])
def test_flow_matches_brute_force_min_cut_of_the_full_graph(L: int, N: int) -> None:
    weights = random_weights(L, 2, N, seed=100 * N + 10 * L, temperature=3.0)
    layers = layer_matrices(weights.numpy(), 0.5)
    flows = attention_flow(weights, N - 1)
    assert flows.shape == (L, N)
    for top in range(1, L + 1):
        for j in range(N):
            expected = flow_min_cut(layers, top, j, N - 1, full=True)
            assert flows[top - 1, j].item() == pytest.approx(expected, abs=1e-12), (top, j)


@pytest.mark.parametrize(("L", "N"), [(2, 4), (3, 4), (4, 3), (4, 4), (5, 3)])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_flow_matches_brute_force_min_cut(L: int, N: int, temperature: float) -> None:
    # Peaky weights (temperature 3) make cuts that run through the middle layers and
    # flows that must be sent back along used edges (L = 4, N = 4 holds such cases).
    for seed in range(3):
        weights = random_weights(L, 2, N, seed=seed, temperature=temperature)
        target = seed % N
        layers = layer_matrices(weights.numpy(), 0.5)
        flows = attention_flow(weights, target)
        for top in range(1, L + 1):
            for j in range(N):
                expected = flow_min_cut(layers, top, j, target, full=False)
                assert flows[top - 1, j].item() == pytest.approx(expected, abs=1e-12), (top, j)


def test_flow_is_bounded_by_rollout_and_capacities() -> None:
    weights = random_weights(4, 3, 13, seed=3, temperature=2.0)
    target = 5
    flows = attention_flow(weights, target)
    rolled = attention_rollout(weights)[:, target]  # (L, N)
    first = residual_attention(weights)[0]  # (N, N)
    tol = 1e-9
    assert (flows >= rolled - tol).all()  # the path products are a feasible flow
    assert (flows <= 1 + tol).all()  # everything reaching the target enters through its row
    assert (flows <= first.sum(0) + tol).all()  # everything leaving input j goes through column j
    assert torch.allclose(flows[0], first[target], atol=1e-15)  # one layer: a single edge
    assert torch.allclose(attention_flow(weights, target - 13), flows)  # negative positions
    normalized = attention_flow(weights, target, normalize=True)
    assert torch.allclose(normalized.sum(-1), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(normalized, flows / flows.sum(-1, keepdim=True))


def test_flow_from_padding_is_zero() -> None:
    N, real = 8, 6
    weights = random_weights(4, 2, N, seed=4)
    weights[..., real:] = 0.0  # nothing attends to the padding keys
    weights = weights / weights.sum(-1, keepdim=True)
    weights[:, :, real:] = 0.0  # the padding queries saw no key
    flows = attention_flow(weights, 2)
    assert torch.equal(flows[:, real:], torch.zeros(4, N - real, dtype=torch.float64))
    assert (flows[:, :real] > 0).all()


def test_flow_refuses_large_inputs() -> None:
    weights = torch.full((12, 1, 128, 128), 1 / 128)
    with pytest.raises(ValueError, match="attention_rollout"):
        attention_flow(weights, 0)
    small = random_weights(3, 1, 5, seed=0)
    with pytest.raises(ValueError, match="max_work"):
        attention_flow(small, 0, max_work=10)
    assert attention_flow(small[:2], 0, max_work=0).shape == (2, 5)  # two layers need no search
    assert FLOW_MAX_WORK >= 64 * (1 + 2 + 3 + 4) * 64**2  # 64 tokens through 6 layers pass


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("weights", "error", "match"),
    [
        (torch.ones(4, 4) / 4, ValueError, "weights must have shape"),
        (torch.ones(1, 1, 3, 4) / 4, ValueError, "square"),
        (torch.ones(1, 1, 3, 3), ValueError, "sum to 1"),
        (torch.full((1, 1, 2, 2), -0.5), ValueError, r"\[0, 1\]"),
        (torch.full((1, 1, 2, 2), math.nan), ValueError, "finite"),
        (torch.ones(1, 1, 2, 2, dtype=torch.long), TypeError, "floating point"),
        (np.ones((1, 1, 2, 2)) / 2, TypeError, "torch.Tensor"),
        (torch.ones(0, 1, 2, 2), ValueError, "at least one layer"),
    ],
)
def test_bad_weights(weights, error, match) -> None:
    for fn in (residual_attention, attention_rollout, lambda w: attention_flow(w, 0)):
        with pytest.raises(error, match=match):
            fn(weights)


def test_bad_residual_and_target() -> None:
    weights = random_weights(2, 1, 4, seed=0)
    for residual in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="residual"):
            attention_rollout(weights, residual)
    with pytest.raises(TypeError, match="residual"):
        attention_rollout(weights, True)
    with pytest.raises(ValueError, match="target"):
        attention_flow(weights, 4)
    with pytest.raises(TypeError, match="target"):
        attention_flow(weights, 1.0)


def test_bad_max_flow_input() -> None:
    with pytest.raises(ValueError, match=r"capacity\[0\]\[1\]"):
        max_flow({0: {1: -1.0}}, 0, 1)
    with pytest.raises(ValueError, match=r"capacity\[0\]\[1\]"):
        max_flow({0: {1: math.inf}}, 0, 1)
    with pytest.raises(ValueError, match="source and sink"):
        max_flow({0: {1: 1.0}}, 0, 0)
    with pytest.raises(ValueError, match="sink"):
        max_flow({0: {1: 1.0}}, 0, 2)
    with pytest.raises(TypeError, match="capacity"):
        max_flow([[0, 1]], 0, 1)

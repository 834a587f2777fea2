"""Attention rollout and attention flow (Abnar & Zuidema, 2020).

"Quantifying Attention Flow in Transformers" (ACL 2020) turns the per-layer attention
weights of a transformer into a statement about *input* tokens. Both methods model the
residual connection by mixing each layer's head-averaged attention with the identity,

    Â_l = residual * I + (1 - residual) * mean_h A_l,   rows renormalised to sum to 1,

and read the stack of layers as a layered graph: node (l, i) is token i after layer l,
and the edge (l-1, j) → (l, i) has weight Â_l[i, j] (query rows, key columns).

* Rollout multiplies the matrices: R_1 = Â_1, R_l = Â_l @ R_{l-1}. Row i of R_L says how
  much each input token contributes to position i at the top (the sum over all paths of
  the product of the edge weights). It is cheap: L matrix products.
* Flow treats the weights as capacities and takes, for each input token j, the maximum
  flow from (0, j) to the target node. A path's flow is limited by its weakest edge rather
  than damped by every edge, so flow is less concentrated than rollout; it is also far
  more expensive (one max-flow problem per input token and layer), so it is meant for
  short sentences and few layers.

Every function here is pure: tensors in, tensors out, nothing stored.
"""

from __future__ import annotations

import numbers
from collections import deque

import torch
from torch import Tensor

__all__ = ["residual_attention", "attention_rollout", "attention_flow", "max_flow", "flat_note", "FLOW_MAX_WORK",
           "FLAT_TOLERANCE"]

# How far a row sum may stray from 1 (or 0) before the weights are refused, per dtype.
_ROW_SUM_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}

# attention_flow refuses inputs whose estimated work, the sum over target layers l >= 3 of
# N * (l - 2) * N**2 edges (one max-flow problem per input token, each on a graph with
# (l - 2) * N**2 middle edges), exceeds this: 64 tokens through 6 layers (2.6e6) and 40
# through 12 (3.5e6) pass, and pure Python solves them in a few seconds at most.
FLOW_MAX_WORK = 4_000_000

# Residual capacities at or below this (times the largest capacity) count as saturated,
# so that rounding error never creates a spurious augmenting path.
_FLOW_EPS = 1e-12

# Shares that all lie within this fraction of the even share 1/N are called flat: they single
# out no token, and a bar chart of them only shows noise around 1/N.
FLAT_TOLERANCE = 0.25


# --------------------------------------------------------------------------- validation


def _check_weights(weights: object, name: str = "weights", allow_3d: bool = True) -> Tensor:
    """Validate attention weights and return them as (L, H, N, N).

    Rows (queries) must be probability distributions over the keys: entries in [0, 1]
    and each row summing to 1, or to 0 for a query that saw no key.
    """
    layout = "(L, H, N, N) or (L, N, N)" if allow_3d else "(L, H, N, N)"
    if not isinstance(weights, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}; got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"{name} must be floating point; got dtype {weights.dtype}. Cast it with .float()")
    if weights.dim() == 3 and allow_3d:
        weights = weights.unsqueeze(1)  # (L, 1, N, N)
    if weights.dim() != 4:
        raise ValueError(
            f"{name} must have shape {layout} (layers, heads, queries, keys); got shape {tuple(weights.shape)}. "
            f"Stack per-layer (H, N, N) weights of one sentence with torch.stack."
        )
    L, H, Nq, Nk = weights.shape
    if Nq != Nk:
        raise ValueError(
            f"{name} must be square in its last two dimensions (self-attention over one sequence, N queries "
            f"and N keys); got shape {tuple(weights.shape)}"
        )
    if L == 0 or H == 0 or Nq == 0:
        raise ValueError(f"{name} must have at least one layer, head and token; got shape {tuple(weights.shape)}")
    if not torch.isfinite(weights).all():
        raise ValueError(f"{name} must be finite; it holds NaN or inf")
    tol = _ROW_SUM_TOLERANCE.get(weights.dtype, 1e-4)
    low, high = weights.min().item(), weights.max().item()
    if low < 0 or high > 1 + tol:
        raise ValueError(
            f"{name} must hold probabilities in [0, 1] (softmax outputs, not scores); got values in "
            f"[{low:.4g}, {high:.4g}]"
        )
    sums = weights.double().sum(-1)  # (L, H, N)
    bad = ((sums - 1).abs() > tol) & (sums.abs() > tol)
    if bad.any():
        layer, head, query = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"{name}: every query row must sum to 1 (or to 0 for a query that saw no key); row "
            f"[{layer}, {head}, {query}] sums to {sums[layer, head, query].item():.6g}. Pass attention "
            f"probabilities with queries on dimension -2 and keys on dimension -1."
        )
    return weights


def _check_residual(residual: object) -> float:
    if isinstance(residual, bool) or not isinstance(residual, numbers.Real):
        raise TypeError(f"residual must be a real number in [0, 1]; got {type(residual).__name__} {residual!r}")
    value = float(residual)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(
            f"residual must be in [0, 1] (the weight of the identity, 0.5 in Abnar & Zuidema); got {residual!r}"
        )
    return value


def _check_index(name: str, index: object, size: int) -> int:
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise TypeError(f"{name} must be an int position; got {type(index).__name__} {index!r}")
    index = int(index)
    if not -size <= index < size:
        raise ValueError(f"{name} must be a position in [-{size}, {size}) for N = {size} tokens; got {index}")
    return index % size


# ------------------------------------------------------------------------------ rollout


def residual_attention(weights: Tensor, residual: float = 0.5) -> Tensor:
    """Per-layer attention matrices with the residual connection folded in.

    Â_l = residual * I + (1 - residual) * mean_h A_l, with each row renormalised to sum
    to 1. A query row of zeros (a query that saw no key) keeps only the identity part, so
    its row of Â_l is the unit vector e_i: the token passes itself on unchanged.

    Args:
        weights: attention probabilities of one sequence, (L, H, N, N) or (L, N, N):
            layers, heads, queries (rows), keys (columns). Rows sum to 1, or to 0 for a
            masked query.
        residual: weight of the identity, in [0, 1]. 0.5 is the paper's choice; 0 is
            raw attention, 1 ignores attention altogether.

    Returns:
        (L, N, N) row-stochastic matrices Â_l, in weights' dtype (at least float32).

    Raises:
        TypeError: weights is not a floating-point tensor, or residual is not a number.
        ValueError: weights has the wrong shape or holds values that are not
            probabilities; residual is outside [0, 1].
    """
    weights = _check_weights(weights)  # (L, H, N, N)
    r = _check_residual(residual)
    dtype = torch.promote_types(weights.dtype, torch.float32)
    L, _, N, _ = weights.shape
    mean = weights.to(dtype).mean(dim=1)  # (L, N, N)
    eye = torch.eye(N, dtype=dtype, device=weights.device)  # (N, N)
    mixed = r * eye + (1 - r) * mean  # (L, N, N)
    sums = mixed.sum(dim=-1, keepdim=True)  # (L, N, 1)
    # Only possible with residual = 0: a masked query row is all zeros; it keeps itself.
    empty = sums <= 0  # (L, N, 1)
    mixed = torch.where(empty, eye.expand(L, N, N), mixed)  # (L, N, N)
    return mixed / torch.where(empty, torch.ones_like(sums), sums)  # (L, N, N)


def attention_rollout(weights: Tensor, residual: float = 0.5) -> Tensor:
    """Attention rollout: the product of the per-layer residual attention matrices.

    R_1 = Â_1 and R_l = Â_l @ R_{l-1}, with Â_l from :func:`residual_attention`. Row i of
    R_l is a distribution over the input tokens: how much each of them contributes to
    position i after layer l (summed over all paths through the layers, each path
    weighted by the product of its edges).

    Args:
        weights: attention probabilities of one sequence, (L, H, N, N) or (L, N, N).
        residual: weight of the identity in each layer, in [0, 1].

    Returns:
        (L, N, N) tensor R: R[l - 1] is R_l (queries at layer l, input tokens). Rows sum
        to 1.

    Raises:
        TypeError, ValueError: as :func:`residual_attention`.
    """
    layers = residual_attention(weights, residual)  # (L, N, N)
    rolled = [layers[0]]  # each (N, N)
    for layer in layers[1:]:
        rolled.append(layer @ rolled[-1])  # (N, N) @ (N, N)
    return torch.stack(rolled)  # (L, N, N)


# ---------------------------------------------------------------------------- max flow


class _ResidualNetwork:
    """A directed graph with residual capacities, stored in flat lists.

    Edge ``e`` runs from a node to ``head[e]`` with residual capacity ``residual[e]``.
    Edges come in pairs: ``e ^ 1`` is the reverse of ``e`` (capacity 0 to begin with), so
    pushing ``x`` along ``e`` is ``residual[e] -= x; residual[e ^ 1] += x``.
    ``adjacency[u]`` lists the edges leaving ``u``, forward and reverse ones alike.
    """

    def __init__(self, num_nodes: int) -> None:
        self.adjacency: list[list[int]] = [[] for _ in range(num_nodes)]
        self.head: list[int] = []
        self.residual: list[float] = []

    def add_edge(self, tail: int, head: int, capacity: float) -> int:
        """Add ``tail → head`` with ``capacity`` (and its reverse); return its edge id."""
        edge = len(self.head)
        self.head += [head, tail]
        self.residual += [capacity, 0.0]
        self.adjacency[tail].append(edge)
        self.adjacency[head].append(edge + 1)
        return edge

    def forward_edges_first(self) -> None:
        """List each node's own edges (even ids) before the reverse ones, keeping their order.

        Reverse edges carry nothing until flow is pushed, so searches that meet the
        forward edges first waste less time.
        """
        for edges in self.adjacency:
            edges.sort(key=lambda e: e & 1)


def _dinic(network: _ResidualNetwork, residual: list[float], source: int, sink: int, eps: float,
           upper_bound: float = float("inf"), first_levels: list[int] | None = None) -> float:
    """Maximum flow value from ``source`` to ``sink`` by Dinic's algorithm.

    E. A. Dinic, "Algorithm for solution of a problem of maximum flow in networks with
    power estimation", Soviet Math. Doklady 11 (1970). Each phase
      1. runs a breadth-first search from the source over edges with residual capacity,
         giving every node its distance (level) from the source; if the sink is not
         reached the flow is maximum (the reached nodes are the source side of a minimum
         cut) and the algorithm stops;
      2. finds a blocking flow in the level graph (edges that go from one level to the
         next) by repeated depth-first searches that only move forward, remembering for
         every node the first edge not yet known to be useless ("current arc"), so each
         edge is given up at most once per phase.
    The sink's level grows with every phase, so there are at most V phases; each costs
    O(V E), and Edmonds–Karp (one shortest path per search) is the special case that
    stops after one path. Capacities are floats: a residual at or below ``eps`` counts as
    saturated. ``residual`` is modified in place (it ends as the residual network).
    ``upper_bound`` (a known cut capacity) lets the search stop once it is reached.
    ``first_levels`` may give the first phase's levels when the graph's structure tells
    them (in a layered graph carrying no flow yet, a node's level is its layer; a level
    given to a node the source cannot reach is harmless, as no search enters it).
    """
    adjacency, head = network.adjacency, network.head
    flow = 0.0
    while flow < upper_bound - eps:
        # 1. Levels by breadth-first search.
        if first_levels is not None:
            level, first_levels = first_levels, None
        else:
            level = [-1] * len(adjacency)
            level[source] = 0
            queue = deque([source])
            while queue:
                u = queue.popleft()
                for e in adjacency[u]:
                    v = head[e]
                    if level[v] < 0 and residual[e] > eps:
                        level[v] = level[u] + 1
                        queue.append(v)
            if level[sink] < 0:
                break
        # 2. Blocking flow by depth-first searches along the level graph.
        current = [0] * len(adjacency)  # per node: index of its current arc
        path: list[int] = []  # edges from the source to u
        u = source
        while True:
            if u == sink:
                pushed = min(residual[e] for e in path)
                for e in path:
                    residual[e] -= pushed
                    residual[e ^ 1] += pushed
                flow += pushed
                # Resume from the tail of the first edge the push saturated.
                first_saturated = next(k for k, e in enumerate(path) if residual[e] <= eps)
                del path[first_saturated:]
                u = head[path[-1]] if path else source
                continue
            edges, k, next_level = adjacency[u], current[u], level[u] + 1
            while k < len(edges):  # skip edges that are saturated or do not go one level up
                e = edges[k]
                if residual[e] > eps and level[head[e]] == next_level:
                    break
                k += 1
            current[u] = k
            if k < len(edges):  # advance
                path.append(e)
                u = head[e]
            elif u == source:  # no augmenting path left in this level graph
                break
            else:  # dead end: retreat and give up the edge that led here
                path.pop()
                u = head[path[-1]] if path else source
                current[u] += 1
    return flow


def max_flow(capacity: dict[int, dict[int, float]], source: int, sink: int) -> float:
    """Maximum flow value from ``source`` to ``sink`` (Dinic's algorithm).

    Args:
        capacity: ``capacity[u][v]`` is the capacity of the directed edge u → v, a finite
            number >= 0. Missing entries mean no edge; edges in both directions, cycles
            and self-loops are allowed.
        source: the node the flow leaves.
        sink: the node the flow reaches; different from source.

    Returns:
        The maximum flow value, which equals the capacity of a minimum source-sink cut.
        Residual capacities below 1e-12 times the largest capacity count as zero.

    Raises:
        TypeError: capacity is not a dict of dicts.
        ValueError: a capacity is negative or not finite; source equals sink; source or
            sink is not a node of capacity.
    """
    if not isinstance(capacity, dict) or not all(isinstance(row, dict) for row in capacity.values()):
        raise TypeError(f"capacity must be a dict of dicts, capacity[u][v] = capacity of u → v; got {capacity!r}")
    nodes: dict[int, int] = {}
    for u, row in capacity.items():
        nodes.setdefault(u, len(nodes))
        for v, c in row.items():
            nodes.setdefault(v, len(nodes))
            if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0 <= float(c) < float("inf"):
                raise ValueError(f"capacity[{u!r}][{v!r}] must be a finite number >= 0; got {c!r}")
    for name, node in (("source", source), ("sink", sink)):
        if node not in nodes:
            raise ValueError(f"{name} {node!r} is not a node of capacity (no edge enters or leaves it)")
    if source == sink:
        raise ValueError(f"source and sink must differ; both are {source!r}")
    network = _ResidualNetwork(len(nodes))
    largest = 0.0
    for u, row in capacity.items():
        for v, c in row.items():
            if u != v and c > 0:  # self-loops and empty edges never carry flow
                network.add_edge(nodes[u], nodes[v], float(c))
                largest = max(largest, float(c))
    network.forward_edges_first()
    return _dinic(network, network.residual, nodes[source], nodes[sink], _FLOW_EPS * largest)


# ------------------------------------------------------------------------------- flow


def _flow_work(num_layers: int, num_tokens: int) -> int:
    """Edges touched by attention_flow's max-flow searches, summed over all problems."""
    return sum(num_tokens * (layer - 2) * num_tokens**2 for layer in range(3, num_layers + 1))


def attention_flow(weights: Tensor, target: int, residual: float = 0.5, *, normalize: bool = False,
                   max_work: int = FLOW_MAX_WORK) -> Tensor:
    """Attention flow: maximum flow from every input token to one position, per layer.

    The layered graph has node (l, i) for token i after layer l (layer 0 = the inputs)
    and the edge (l-1, j) → (l, i) with capacity Â_l[i, j] (:func:`residual_attention`).
    For each layer l = 1..L and input token j, the result is the maximum flow from
    (0, j) to (l, target). Only the nodes of layers 1..l-1, plus (0, j) and (l, target),
    can carry such a flow. Layer 1 is a single edge and layer 2 has disjoint two-edge
    paths, so both are exact closed forms; from layer 3 on each value is one run of
    Dinic's algorithm (:func:`max_flow`), in pure Python.

    Every flow is at least the rollout value (the path products form a feasible flow)
    and at most 1, the capacity into (l, target).

    Cost: the work grows as N**3 L**2 (one max-flow problem per token and layer, each on
    (l - 2) N**2 middle edges). The default max_work admits 64 tokens through 6 layers or
    40 through 12 (about a second on one core; several for very local attention, whose
    flows need more phases); larger inputs are refused — use :func:`attention_rollout`
    for those. 128 tokens through 12 layers is about 30 times the default limit.

    Args:
        weights: attention probabilities of one sequence, (L, H, N, N) or (L, N, N).
        target: the position whose inputs are measured (negative counts from the end).
        residual: weight of the identity in each layer, in [0, 1].
        normalize: divide each layer's flows by their sum, as Abnar & Zuidema do for
            their plots; each row then sums to 1 (a row of zeros stays zeros).
        max_work: refuse inputs whose estimated work (edges searched, summed over all
            problems) exceeds this; raise it to run a larger input anyway.

    Returns:
        (L, N) tensor F: F[l - 1, j] is the maximum flow from input token j to position
        ``target`` after layer l. In weights' dtype (at least float32), on weights' device.

    Raises:
        TypeError: as :func:`residual_attention`; target is not an int.
        ValueError: as :func:`residual_attention`; target is outside [-N, N); the input
            is too large for max_work.
    """
    layers = residual_attention(weights, residual)  # (L, N, N)
    L, N, _ = layers.shape
    target = _check_index("target", target, N)
    work = _flow_work(L, N)
    if work > max_work:
        raise ValueError(
            f"weights of shape {tuple(weights.shape)} ({L} layers, {N} tokens) are too large for attention_flow: "
            f"about {work:,} edge visits in {L * N} max-flow problems, more than max_work={max_work:,} (a few "
            f"seconds). Use attention_rollout(weights, residual) instead, or pass a larger max_work to wait."
        )
    A = layers.detach().to("cpu", torch.float64)  # (L, N, N)
    flows = torch.zeros(L, N, dtype=torch.float64)  # (L, N)
    flows[0] = A[0, target]  # (N,): one edge (0, j) → (1, target)
    if L >= 2:
        # Paths (0, j) → (1, i) → (2, target) share no edge: sum of their bottlenecks.
        flows[1] = torch.minimum(A[0], A[1, target].unsqueeze(1)).sum(0)  # (N, N) → (N,)
    for layer in range(3, L + 1):
        flows[layer - 1] = _layered_flows(A[:layer], target)  # (N,)
    if normalize:
        totals = flows.sum(dim=1, keepdim=True)  # (L, 1)
        flows = flows / torch.where(totals > 0, totals, torch.ones_like(totals))  # (L, N)
    return flows.to(layers.dtype).to(layers.device)


def _layered_flows(A: Tensor, target: int) -> Tensor:
    """Max flow from each input token to (l, target) through l = A.shape[0] >= 3 layers.

    A: (l, N, N) float64 capacities, A[k - 1][i, j] on (k-1, j) → (k, i). Returns (N,).
    Nodes: 0 = the input token, then the N tokens of each layer 1..l-1, then the target.
    The network is built once; each input token only changes the source's edges.
    """
    top, N, _ = A.shape  # top = l
    sink = 1 + (top - 1) * N

    def node(layer: int, token: int) -> int:
        return 1 + (layer - 1) * N + token

    network = _ResidualNetwork(sink + 1)
    source_edges = [network.add_edge(0, node(1, i), 0.0) for i in range(N)]  # capacities set per input
    for layer in range(2, top):
        caps = A[layer - 1].tolist()  # caps[i][j] on (layer-1, j) → (layer, i)
        for j in range(N):
            # Widest edges first: the depth-first searches then find fat paths early.
            for i in sorted(range(N), key=lambda i: -caps[i][j]):
                if caps[i][j] > 0:
                    network.add_edge(node(layer - 1, j), node(layer, i), caps[i][j])
    into_sink = A[top - 1, target].tolist()  # (N,)
    for j in range(N):
        if into_sink[j] > 0:
            network.add_edge(node(top - 1, j), sink, into_sink[j])
    network.forward_edges_first()
    layer_of = [0] + [layer for layer in range(1, top) for _ in range(N)] + [top]  # per node
    out = torch.zeros(N, dtype=torch.float64)  # (N,)
    first_layer = A[0].tolist()  # first_layer[i][j] on (0, j) → (1, i)
    sink_in = sum(into_sink)
    for j in range(N):
        residual = list(network.residual)
        for i, e in enumerate(source_edges):
            residual[e] = first_layer[i][j]
        network.adjacency[0] = sorted(source_edges, key=lambda e: -residual[e])  # widest first
        bound = min(sum(first_layer[i][j] for i in range(N)), sink_in)  # cuts around source and sink
        out[j] = _dinic(network, residual, 0, sink, _FLOW_EPS, upper_bound=bound, first_levels=list(layer_of))
    return out


def flat_note(name: str, shares, tolerance: float = FLAT_TOLERANCE) -> str | None:
    """One sentence saying that ``shares`` are flat, or None when they are not.

    Args:
        name: what the shares are ("flow"), the sentence's subject.
        shares: (N,) non-negative numbers summing to 1 (a row of rollout, normalised flow), a
            sequence or a tensor.
        tolerance: flat means every share lies within ``tolerance`` x 1/N of the even share 1/N.
    """
    values = torch.as_tensor(shares, dtype=torch.float64).flatten()  # (N,)
    if values.numel() < 2:
        return None
    even = 1.0 / values.numel()
    if not bool(((values - even).abs() <= tolerance * even).all()):
        return None
    return (f"{name} is flat: every token gets {values.min().item():.3f} to {values.max().item():.3f}, within "
            f"{tolerance:.0%} of the even share 1/{values.numel()} = {even:.3f}; it singles out no word here")

"""Which input tokens a metric depends on: gradient attributions next to attention-based scores.

All methods score the input tokens of the same metric (a decoder's logit difference, an
encoder's sense cosine; see :mod:`qkv.inspect.patching`), so they can be compared and tested
for faithfulness (:mod:`qkv.inspect.faithfulness`). "Input" is the embedding layer's output,
``embed.embed`` (B, N, d_model): the vectors the first block reads.

* ``grad_x_input``: sum over d of x * dm/dx (Shrikumar et al., 2016), one backward pass.
* ``integrated_gradients`` (Sundararajan et al., 2017): (x - x') * the mean gradient along
  the straight line from a baseline x' to x. The integral is taken by Gauss-Legendre
  quadrature with ``steps`` nodes (:data:`IG_STEPS` by default), all nodes in batched forward
  passes. Completeness: the attributions sum to m(x) - m(x'), up to the quadrature's error,
  which :class:`Attributions` reports. The baseline replaces every token that is not special
  and not read by the metric: by [MASK] (its embedding at the same position) when the
  tokenizer has one, else by a zero vector; the metric's own tokens and [CLS]/[SEP] stay.
* ``attention_x_gradient``: sum over layers, heads and queries of A * dm/dA for each key:
  a first-order estimate of what removing the attention paid to that token would change.
* ``attention``: the last layer's attention from the metric's tokens, averaged over heads.
* ``rollout``, ``flow``: the same row of attention rollout and attention flow
  (:mod:`qkv.inspect.rollout`, Abnar & Zuidema, 2020), residual 0.5.

The signed gradient scores say how the metric moves; the faithfulness test ranks tokens
by them, largest first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from qkv.inspect.rollout import FLOW_MAX_WORK, attention_flow, attention_rollout

if TYPE_CHECKING:
    from qkv.inspect.patching import Metric
    from qkv.models.tokenizer import Tokenizer
    from qkv.nn.stack import TransformerOutput, TransformerStack

__all__ = ["METHODS", "GRADIENT_METHODS", "ATTENTION_METHODS", "IG_STEPS", "gradient_x_input",
           "integrated_gradients", "gauss_legendre", "Attributions", "attribute", "baseline_ids",
           "attribute_sentence"]

GRADIENT_METHODS = ("grad_x_input", "integrated_gradients", "attention_x_gradient")
ATTENTION_METHODS = ("attention", "rollout", "flow")
METHODS = GRADIENT_METHODS + ATTENTION_METHODS
#: Integrated gradients' default quadrature nodes; the completeness error is measured at it.
IG_STEPS = 16

#: score(output, rows) -> (R,): the metric of each row of a forward pass; ``rows`` (R,) says which
#: input row each forward row is (integrated gradients runs each input at several points).
Score = Callable[["TransformerOutput", Tensor], Tensor]


def gauss_legendre(steps: int) -> tuple[Tensor, Tensor]:
    """Nodes (steps,) in (0, 1) and weights (steps,) summing to 1 of Gauss-Legendre quadrature on [0, 1]."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return torch.tensor((nodes + 1) / 2), torch.tensor(weights / 2)


def gradient_x_input(fn: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
    """sum_d x * d fn(x) / dx for each token.

    Args:
        fn: (B, N, d) -> (B,), each row's value depending on its own row only.
        inputs: (B, N, d).

    Returns:
        (B, N) attributions.
    """
    x = inputs.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(x).sum(), x)  # (B, N, d)
    return (x * grad).sum(dim=-1).detach()  # (B, N)


def integrated_gradients(fn: Callable[[Tensor], Tensor], inputs: Tensor, baseline: Tensor, steps: int = IG_STEPS,
                         batch_size: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Integrated gradients along the straight line from ``baseline`` to ``inputs``.

    Args:
        fn: (R, N, d) -> (R,), each row's value depending on its own row only; called on
            ``steps`` copies of the batch at once (rows ordered node-major: row s * B + b).
        inputs: (B, N, d) x.
        baseline: (B, N, d) x'.
        steps: Gauss-Legendre nodes on the path.
        batch_size: rows per forward pass (None: all B * steps at once); must be a multiple of B.

    Returns:
        (attributions (B, N), fn(inputs) (B,), fn(baseline) (B,)). Completeness:
        attributions.sum(-1) approximates fn(inputs) - fn(baseline).
    """
    batch = inputs.shape[0]
    nodes, weights = gauss_legendre(steps)
    nodes, weights = nodes.to(inputs), weights.to(inputs)
    delta = (inputs - baseline).detach()  # (B, N, d)
    total = torch.zeros_like(delta)  # (B, N, d) weighted sum of gradients
    per_pass = steps if batch_size is None else max(1, batch_size // batch)
    for start in range(0, steps, per_pass):
        alphas = nodes[start:start + per_pass]  # (S,)
        points = baseline.detach()[None] + alphas[:, None, None, None] * delta[None]  # (S, B, N, d)
        points = points.reshape(-1, *delta.shape[1:]).requires_grad_(True)  # (S*B, N, d)
        (grad,) = torch.autograd.grad(fn(points).sum(), points)
        grad = grad.view(len(alphas), *delta.shape)  # (S, B, N, d)
        total += (weights[start:start + per_pass, None, None, None] * grad).sum(dim=0)
    with torch.no_grad():
        ends = fn(torch.cat([inputs, baseline]).detach())  # (2B,)
    return (delta * total).sum(dim=-1).detach(), ends[:batch].detach(), ends[batch:].detach()


@dataclass
class Attributions:
    """Per-token scores of every method for a batch of inputs."""

    scores: dict[str, Tensor]  # method -> (B, N); 0 at padding
    metric: Tensor  # (B,) the metric of each input
    baseline_metric: Tensor | None  # (B,) the metric at integrated gradients' baseline
    steps: int | None  # integrated gradients' nodes
    baseline: str | None  # "mask" or "zero"

    def completeness_error(self) -> Tensor:
        """(B,) |sum of IG attributions - (m(x) - m(x'))| / |m(x) - m(x')|."""
        total = self.scores["integrated_gradients"].sum(dim=-1)  # (B,)
        difference = self.metric - self.baseline_metric  # (B,)
        return (total - difference).abs() / difference.abs()


def baseline_ids(input_ids: Tensor, keep: Tensor, mask_token_id: int | None) -> Tensor | None:
    """Integrated gradients' baseline as token ids: [MASK] wherever ``keep`` (B, N) is False; None without [MASK]."""
    if mask_token_id is None:
        return None
    return torch.where(keep, input_ids, torch.full_like(input_ids, mask_token_id))


def _run(model: TransformerStack, input_ids: Tensor, attention_mask: Tensor | None,
         embeddings: Tensor | None = None, keep_weights: list[Tensor] | None = None) -> TransformerOutput:
    """A forward pass whose ``embed.embed`` output is ``embeddings`` when given; attention weights
    kept (with their gradients) in ``keep_weights`` when given."""
    hooks = []
    if embeddings is not None:
        hooks.append(("embed.embed", lambda value, point: embeddings))
    if keep_weights is not None:
        def keep(weights: Tensor, point) -> None:
            weights.retain_grad()
            keep_weights.append(weights)
        hooks.append(("blocks.*.attn.weights", keep))
    with model.hooks(hooks):
        return model(input_ids, attention_mask)


def _embeddings(model: TransformerStack, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    with torch.no_grad(), model.capture("embed.embed") as store:
        model(input_ids, attention_mask)
    return store["embed.embed"]  # (B, N, d)


def attribute(
    model: TransformerStack, input_ids: Tensor, attention_mask: Tensor | None, read: Tensor, score: Score, *,
    methods: Sequence[str] = METHODS, steps: int = IG_STEPS, baseline: Tensor | None = None,
    batch_size: int = 64, flow_max_work: int = FLOW_MAX_WORK,
) -> Attributions:
    """Score each input token by each method, for a batch of inputs.

    Args:
        model: a qkv model (hook points ``embed.embed`` and ``blocks.i.attn.weights``).
        input_ids: (B, N) token ids.
        attention_mask: (B, N) bool, True for real tokens (None: all real).
        read: (B, N) weights of the positions the metric reads (1 / pieces on the focus word's
            pieces; 1 on a decoder's last position): the attention methods read these rows.
        score: the metric, ``score(output, rows) -> (R,)`` (see :data:`Score`).
        methods: some of :data:`METHODS`.
        steps: integrated gradients' quadrature nodes.
        baseline: (B, N) token ids of integrated gradients' baseline (:func:`baseline_ids`), run
            through the embeddings; None: the zero vector at every position that ``read`` does
            not read.
        batch_size: rows per forward pass of integrated gradients.
        flow_max_work: attention flow is skipped (NaN) for inputs above this work (see
            :func:`qkv.inspect.rollout.attention_flow`).

    Returns:
        :class:`Attributions`, scores (B, N) per method.

    Raises:
        ValueError: an unknown method.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods {unknown} are not among {list(METHODS)}")
    device = model.device
    input_ids = input_ids.to(device)
    mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
            else attention_mask.to(device=device, dtype=torch.bool))  # (B, N)
    read = read.to(device)
    batch = input_ids.shape[0]
    rows = torch.arange(batch, device=device)
    embeddings = _embeddings(model, input_ids, mask)  # (B, N, d)
    scores: dict[str, Tensor] = {}
    wants_weights = any(m in methods for m in ("attention_x_gradient", *ATTENTION_METHODS))
    weights: list[Tensor] = []
    x = embeddings.clone().requires_grad_(True)
    with torch.enable_grad():
        output = _run(model, input_ids, mask, x, weights if wants_weights else None)
        metric = score(output, rows)  # (B,)
        metric.sum().backward()
    zero = ~mask
    if "grad_x_input" in methods:
        scores["grad_x_input"] = (x * x.grad).sum(dim=-1).detach().masked_fill(zero, 0.0)  # (B, N)
    if wants_weights:
        stacked = torch.stack([w.detach() for w in weights], dim=1)  # (B, L, H, N, N)
        if "attention_x_gradient" in methods:
            grads = torch.stack([w.grad for w in weights], dim=1)  # (B, L, H, N, N)
            scores["attention_x_gradient"] = (stacked * grads).sum(dim=(1, 2, 3)).masked_fill(zero, 0.0)  # (B, N)
        if "attention" in methods:
            last = stacked[:, -1].mean(dim=1)  # (B, N, N) head mean
            scores["attention"] = torch.einsum("bq,bqk->bk", read, last)  # (B, N)
        if "rollout" in methods or "flow" in methods:
            scores.update(_graph_scores(stacked, mask, read, methods, flow_max_work))
    baseline_metric, used = None, None
    if "integrated_gradients" in methods:
        if baseline is not None:
            start = _embeddings(model, baseline.to(device), mask)  # (B, N, d)
            used = "mask"
        else:
            start = embeddings * (read > 0)[..., None]  # zero except the positions the metric reads
            used = "zero"

        def along(points: Tensor) -> Tensor:  # (S*B, N, d) -> (S*B,)
            repeat = points.shape[0] // batch
            path_rows = rows.repeat(repeat)
            return score(_run(model, input_ids[path_rows], mask[path_rows], points), path_rows)

        with torch.enable_grad():
            ig, _, baseline_metric = integrated_gradients(along, embeddings, start, steps, batch_size)
        scores["integrated_gradients"] = ig.masked_fill(zero, 0.0)
    return Attributions({m: scores[m].float().cpu() for m in methods}, metric.detach().float().cpu(),
                        None if baseline_metric is None else baseline_metric.float().cpu(),
                        steps if "integrated_gradients" in methods else None, used)


def _graph_scores(weights: Tensor, mask: Tensor, read: Tensor, methods: Sequence[str], max_work: int
                  ) -> dict[str, Tensor]:
    """Rollout and flow rows of the read positions, per input on its real tokens. weights (B, L, H, N, N)."""
    batch, n = mask.shape
    out = {m: torch.zeros(batch, n, device=weights.device) for m in ("rollout", "flow") if m in methods}
    for b in range(batch):
        real = mask[b].nonzero().squeeze(1)  # (n_b,)
        w = weights[b][:, :, real][:, :, :, real].double()  # (L, H, n_b, n_b)
        w = w / w.sum(dim=-1, keepdim=True).clamp(min=1e-30)  # exact rows again after the slice
        r = read[b, real].double()  # (n_b,)
        if "rollout" in out:
            out["rollout"][b, real] = (r @ attention_rollout(w)[-1]).float()
        if "flow" in out:
            targets = r.nonzero().squeeze(1).tolist()
            try:
                flows = sum(float(r[t]) * attention_flow(w, t, max_work=max_work)[-1] for t in targets)
                out["flow"][b, real] = flows.float()
            except ValueError:  # too large for attention_flow's max_work
                out["flow"][b] = float("nan")
    return out


def attribute_sentence(model: TransformerStack, tokenizer: Tokenizer, text: str, metric: Metric, *,
                       focus: str | None = None, methods: Sequence[str] = METHODS, steps: int = IG_STEPS
                       ) -> tuple[list[str], Attributions]:
    """Every method's token scores for one input and one metric.

    Args:
        metric: a :class:`qkv.inspect.patching.Metric` (logit difference, sense cosine).
        focus: the word the metric reads (encoders; its first occurrence); None: the last token.

    Returns:
        (the N tokens, :class:`Attributions` with scores (1, N)).
    """
    from qkv.inspect.words import word_view

    batch = tokenizer(text)
    n = batch.input_ids.shape[1]
    if focus is None:
        positions = [n - 1]
    else:
        view = word_view(batch)
        positions = view.pieces[view.index_of(focus)]
    read = torch.zeros(1, n)
    read[0, positions] = 1.0 / len(positions)
    keep = torch.tensor([batch.special_tokens_mask[0]]) | (read > 0)  # (1, N)
    ids = baseline_ids(batch.input_ids, keep, tokenizer.token_to_id("[MASK]"))

    def score(output: TransformerOutput, rows: Tensor) -> Tensor:
        return metric(output, positions)

    return batch.tokens[0], attribute(model, batch.input_ids, None, read, score, methods=methods, steps=steps,
                                      baseline=ids)

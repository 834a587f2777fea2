"""Head importance by ablation: zero one head, see how far a token's final vector moves.

Attention weights show where a head looks, not whether what it brings matters (Jain &
Wallace, 2019; Michel et al., 2019). Zeroing a head's output (its weighted average of
values, before the output projection) and measuring the change in the focus token's
final vector tells heads that look from heads that matter. Every head is ablated in one
batched forward pass (or a few, for long inputs): row r of the batch has one head switched off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from qkv.nn.stack import TransformerStack

__all__ = ["head_ablation"]


@torch.no_grad()
def head_ablation(model: TransformerStack, input_ids: Tensor, focus_positions: list[int], *,
                  rows_per_pass: int | None = None) -> Tensor:
    """How much each head matters to one token's final vector.

    Args:
        model: a qkv model with ``blocks.i.attn.z`` hook points.
        input_ids: (1, N) one unpadded sentence.
        focus_positions: the pieces of the focus word (their mean is its vector).
        rows_per_pass: run the 1 + L*H rows (the clean one, then one per ablated head) in
            passes of this many (None: one pass); 1 keeps the memory of a single forward
            pass, for long inputs.

    Returns:
        (L, H) cosine distance, 1 - cos(ablated, clean), of the focus vector when that
        head's output is zeroed.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one sentence (1, N); got shape {tuple(input_ids.shape)}")
    layers = len(model.blocks)
    heads = model.blocks[0].attn.num_heads
    plan = [None, *((layer, head) for layer in range(layers) for head in range(heads))]  # row 0 clean
    size = len(plan) if rows_per_pass is None else max(1, rows_per_pass)

    def ablate(layer: int, rows: list):
        zeroed = [(row, pair[1]) for row, pair in enumerate(rows) if pair is not None and pair[0] == layer]

        def hook(z: Tensor, point) -> Tensor:  # z: (R, H, N, Dh)
            if not zeroed:
                return z
            z = z.clone()
            z[[row for row, _ in zeroed], [head for _, head in zeroed]] = 0.0
            return z
        return hook

    finals = []
    for start in range(0, len(plan), size):
        rows = plan[start:start + size]
        with model.hooks([(f"blocks.{layer}.attn.z", ablate(layer, rows)) for layer in range(layers)]):
            output = model(input_ids.expand(len(rows), -1).to(model.device))
        finals.append(output.last_hidden_state[:, focus_positions].mean(dim=1))  # (R, d)
    final = torch.cat(finals)  # (1 + L*H, d)
    distance = 1.0 - F.cosine_similarity(final[1:], final[:1], dim=-1)  # (L*H,)
    return distance.view(layers, heads)

"""Head importance by ablation: zero one head, see how far a token's final vector moves.

Attention weights show where a head looks, not whether what it brings matters (Jain &
Wallace, 2019; Michel et al., 2019). Zeroing a head's output (its weighted average of
values, before the output projection) and measuring the change in the focus token's
final vector tells heads that look from heads that matter. Every head is ablated in one
batched forward pass: row r of the batch has one head switched off.
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
def head_ablation(model: TransformerStack, input_ids: Tensor, focus_positions: list[int]) -> Tensor:
    """How much each head matters to one token's final vector.

    Args:
        model: a qkv model with ``blocks.i.attn.z`` hook points.
        input_ids: (1, N) one unpadded sentence.
        focus_positions: the pieces of the focus word (their mean is its vector).

    Returns:
        (L, H) cosine distance, 1 - cos(ablated, clean), of the focus vector when that
        head's output is zeroed.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one sentence (1, N); got shape {tuple(input_ids.shape)}")
    layers = len(model.blocks)
    heads = model.blocks[0].attn.num_heads
    batch = input_ids.expand(1 + layers * heads, -1)  # row 0 clean, row 1 + l*H + h ablates (l, h)

    def ablate(layer: int):
        def hook(z: Tensor, point) -> Tensor:  # z: (R, H, N, Dh)
            z = z.clone()
            rows = torch.arange(heads, device=z.device) + 1 + layer * heads
            z[rows, torch.arange(heads, device=z.device)] = 0.0
            return z
        return hook

    with model.hooks([(f"blocks.{layer}.attn.z", ablate(layer)) for layer in range(layers)]):
        final = model(batch.to(model.device)).last_hidden_state[:, focus_positions].mean(dim=1)  # (R, d)
    distance = 1.0 - F.cosine_similarity(final[1:], final[:1], dim=-1)  # (L*H,)
    return distance.view(layers, heads)

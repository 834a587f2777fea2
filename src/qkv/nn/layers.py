"""Blocks a transformer is stacked from: embeddings, the MLP, the transformer block."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.nn.attention import KVCache, MultiHeadAttention
from qkv.nn.hooks import HookPoint

__all__ = ["Embeddings", "MLP", "GatedMLP", "RMSNorm", "TransformerBlock", "ACTIVATIONS", "NORMS"]


def gelu_tanh(x: Tensor) -> Tensor:
    """GPT-2's GELU: the tanh approximation (Hugging Face's "gelu_new")."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {
    "gelu": F.gelu,  # exact, erf-based (BERT)
    "gelu_new": gelu_tanh,  # tanh approximation (GPT-2)
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class Embeddings(nn.Module):
    """Token + learned absolute position (+ token type) embeddings, optionally normalised.

    Args:
        vocab_size: number of token ids.
        d_model: width of the vectors.
        max_positions: learned positions (0: none, e.g. with rotary attention).
        type_vocab_size: token types (BERT's segments; 0: none).
        layer_norm_eps: LayerNorm after the sum (None: no LayerNorm, as GPT-2).
        padding_idx: token id whose embedding is not trained (from scratch only).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        max_positions: int = 0,
        type_vocab_size: int = 0,
        layer_norm_eps: float | None = None,
        padding_idx: int | None = None,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)
        self.positions = nn.Embedding(max_positions, d_model) if max_positions else None
        self.token_types = nn.Embedding(type_vocab_size, d_model) if type_vocab_size else None
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps) if layer_norm_eps is not None else None
        self.hook_embed = HookPoint()  # (B, N, d_model) the sum of the embeddings, normalised

    def forward(
        self, input_ids: Tensor, positions: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Embed.

        Args:
            input_ids: (B, N) token ids.
            positions: (B, N) or (N,) position ids (default 0 .. N-1).
            token_type_ids: (B, N) segment ids (default 0).

        Returns:
            (B, N, d_model).
        """
        x = self.tokens(input_ids)
        # Summed in BERT's order (tokens, types, positions) so that float32 rounding matches.
        if self.token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_types(token_type_ids)
        if self.positions is not None:
            if positions is None:
                positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            if int(positions.max()) >= self.positions.num_embeddings:
                raise ValueError(
                    f"position {int(positions.max())} is beyond the model's "
                    f"{self.positions.num_embeddings} learned positions; shorten the input"
                )
            x = x + self.positions(positions)
        if self.norm is not None:
            x = self.norm(x)
        return self.hook_embed(x)


class MLP(nn.Module):
    """The position-wise feed-forward network: d_model -> d_ff -> d_model.

    Args:
        d_model: width of the token vectors in and out.
        d_ff: hidden width.
        activation: one of :data:`ACTIVATIONS` ("gelu", ...), between the two linear maps.
        bias: biases in both linear maps.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)
        self.activation = ACTIVATIONS[activation]
        self.activation_name = activation
        self.hook_hidden = HookPoint()  # (B, N, d_ff) after the activation
        self.hook_out = HookPoint()  # (B, N, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, d_model) -> (B, N, d_model), each position on its own."""
        return self.hook_out(self.fc_out(self.hook_hidden(self.activation(self.fc_in(x)))))

    def extra_repr(self) -> str:
        return f"activation={self.activation_name!r}"


class GatedMLP(nn.Module):
    """The gated feed-forward network of Llama-family models (SwiGLU with "silu"):
    ``down(act(gate(x)) * up(x))``.

    Args:
        d_model: width of the token vectors in and out.
        d_ff: hidden width.
        activation: one of :data:`ACTIVATIONS`, applied to the gate.
        bias: biases in the three linear maps.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "silu", bias: bool = False) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.activation = ACTIVATIONS[activation]
        self.activation_name = activation
        self.hook_hidden = HookPoint()  # (B, N, d_ff) the gated hidden layer: act(gate) * up
        self.hook_out = HookPoint()  # (B, N, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, d_model) -> (B, N, d_model), each position on its own."""
        hidden = self.hook_hidden(self.activation(self.gate_proj(x)) * self.up_proj(x))  # (B, N, d_ff)
        return self.hook_out(self.down_proj(hidden))

    def extra_repr(self) -> str:
        return f"activation={self.activation_name!r}"


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang and Sennrich, 2019): ``w * x / sqrt(mean(x^2) + eps)``.

    Computed in float32 whatever the input dtype, then cast back before the weight, as
    Llama's reference code does.
    """

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """(..., d_model) -> (..., d_model)."""
        compute = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        normalised = compute * torch.rsqrt(compute.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normalised.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": RMSNorm}


class TransformerBlock(nn.Module):
    """Attention then MLP, each in a residual branch with a LayerNorm.

    ``norm_first=False`` is post-LN as BERT: ``x = LN(x + attn(x))``; ``norm_first=True``
    is pre-LN as GPT-2: ``x = x + attn(LN(x))``. ``norm="rmsnorm"`` uses RMSNorm (Llama).
    """

    def __init__(
        self, attn: MultiHeadAttention, mlp: MLP | GatedMLP, d_model: int, norm_first: bool, layer_norm_eps: float,
        norm: str = "layernorm",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}; got {norm!r}")
        self.attn, self.mlp, self.norm_first = attn, mlp, norm_first
        self.norm_attn = NORMS[norm](d_model, eps=layer_norm_eps)
        self.norm_mlp = NORMS[norm](d_model, eps=layer_norm_eps)
        self.hook_resid_pre = HookPoint()  # (B, N, d_model) the block's input
        self.hook_resid_mid = HookPoint()  # (B, N, d_model) after the attention branch
        self.hook_resid_post = HookPoint()  # (B, N, d_model) the block's output

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """(B, N, d_model) -> (B, N, d_model); arguments as :class:`MultiHeadAttention`."""
        x = self.hook_resid_pre(x)
        kwargs = {"key_padding_mask": key_padding_mask, "kv_cache": kv_cache, "positions": positions}
        if self.norm_first:
            x = self.hook_resid_mid(x + self.attn(self.norm_attn(x), **kwargs))
            x = x + self.mlp(self.norm_mlp(x))
        else:
            x = self.hook_resid_mid(self.norm_attn(x + self.attn(x, **kwargs)))
            x = self.norm_mlp(x + self.mlp(x))
        return self.hook_resid_post(x)

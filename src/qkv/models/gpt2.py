"""GPT-2 decoders built from qkv.nn parts, with a tied LM head and generation."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qkv.models.config import GPT2Config
from qkv.models.weights import Source
from qkv.nn import (
    MLP,
    Embeddings,
    GenerationMixin,
    KVCache,
    MultiHeadAttention,
    TransformerBlock,
    TransformerOutput,
    TransformerStack,
)

__all__ = ["GPT2Model", "GPT2LMHeadModel", "gpt2_key_map", "GPT2_IGNORED", "GPT2_PREFIX", "GPT2_ANCHOR"]

GPT2_PREFIX = "transformer."  # GPT2LMHeadModel nests the decoder under this name
GPT2_ANCHOR = "wte.weight"
# Old checkpoints store the causal mask as buffers; a tied LM head repeats wte.
GPT2_IGNORED = ("h.*.attn.bias", "h.*.attn.masked_bias")


class GPT2Model(TransformerStack):
    """GPT-2: token + position embeddings, pre-LN causal blocks, a final LayerNorm.

    Hook points as :class:`qkv.models.BertModel`; attention is causal (bottom-right, so a
    KV cache works without extra masking).
    """

    def __init__(self, config: GPT2Config) -> None:
        d_model, head_dim = config.n_embd, config.n_embd // config.n_head
        embed = Embeddings(config.vocab_size, d_model, max_positions=config.n_positions)
        blocks = []
        for i in range(config.n_layer):
            scale = 1.0 / math.sqrt(head_dim) if config.scale_attn_weights else 1.0
            if config.scale_attn_by_inverse_layer_idx:
                scale /= i + 1
            blocks.append(TransformerBlock(
                MultiHeadAttention(d_model, config.n_head, fused_qkv=True, causal=True, scale=scale),
                MLP(d_model, config.inner_size, activation=config.activation_function),
                d_model, norm_first=True, layer_norm_eps=config.layer_norm_epsilon,
            ))
        super().__init__(embed, blocks, nn.LayerNorm(d_model, eps=config.layer_norm_epsilon))
        self.config = config
        self.eos_token_id = config.eos_token_id
        self.setup_hooks()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        kv_cache: KVCache | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> TransformerOutput:
        """Decode.

        Args:
            input_ids: (B, N) token ids (only the new ones when a KV cache is given).
            attention_mask: (B, Nk) bool, True for real tokens, over cached and new positions.
            positions: (B, N) or (N,) position ids (default: continue after the cache).
            kv_cache: keys and values of earlier positions, extended in place.
            output_hidden_states: also return the embeddings and every block's output.
            output_attentions: also return every layer's attention weights, ``attentions``: a
                tuple of L tensors (B, H, N, Nk), as ``transformers`` does.

        Returns:
            :class:`TransformerOutput` with ``last_hidden_state`` (B, N, d_model); from
            :class:`GPT2LMHeadModel`, also ``logits`` (B, N, vocab).
        """
        output = self.run_blocks(input_ids, attention_mask, positions=positions, kv_cache=kv_cache,
                                 output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        return self.add_head(output)

    def add_head(self, output: TransformerOutput) -> TransformerOutput:
        """What a model with a head adds to the blocks' output (nothing here)."""
        return output


class GPT2LMHeadModel(GPT2Model, GenerationMixin):
    """GPT-2 with its language-model head, tied to the token embeddings by default."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(
            config.n_embd, config.vocab_size, bias=False
        )

    def add_head(self, output: TransformerOutput) -> TransformerOutput:
        """Next-token scores: ``logits`` (B, N, vocab) from the final vectors."""
        weight = self.embed.tokens.weight if self.lm_head is None else self.lm_head.weight
        output.logits = torch.matmul(output.last_hidden_state, weight.t())
        return output


def gpt2_key_map(config: GPT2Config) -> dict[str, Source]:
    """qkv parameter name -> checkpoint tensor (Hugging Face GPT2Model names).

    GPT-2 stores its linear layers as Conv1D with (in, out) weights: those are declared
    ``transpose=True`` here, the only transformation applied.
    """
    key_map = {
        "embed.tokens.weight": Source("wte.weight"),
        "embed.positions.weight": Source("wpe.weight"),
        "norm_final.weight": Source("ln_f.weight"),
        "norm_final.bias": Source("ln_f.bias"),
    }
    parts = {
        "norm_attn": ("ln_1", False),
        "attn.qkv_proj": ("attn.c_attn", True),
        "attn.out_proj": ("attn.c_proj", True),
        "norm_mlp": ("ln_2", False),
        "mlp.fc_in": ("mlp.c_fc", True),
        "mlp.fc_out": ("mlp.c_proj", True),
    }
    for i in range(config.n_layer):
        for ours, (theirs, conv1d) in parts.items():
            key_map[f"blocks.{i}.{ours}.weight"] = Source(f"h.{i}.{theirs}.weight", transpose=conv1d)
            key_map[f"blocks.{i}.{ours}.bias"] = Source(f"h.{i}.{theirs}.bias")
    if not config.tie_word_embeddings:
        key_map["lm_head.weight"] = Source("lm_head.weight")
    return key_map

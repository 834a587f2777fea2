"""The Llama family (llama, mistral, qwen2) built from qkv.nn parts.

A pre-norm decoder: token embeddings (no learned positions), blocks of RMSNorm ->
grouped-query causal attention with rotary positions (optional QKV bias, optional
per-layer sliding window) -> RMSNorm -> SwiGLU MLP, a final RMSNorm and an LM head
(tied to the embeddings or not). Checkpoints come from Hugging Face folders (key map
:func:`llama_key_map`) or from GGUF files (:mod:`qkv.models.gguf`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qkv.models.config import LlamaConfig
from qkv.models.weights import Source
from qkv.nn import (
    Embeddings,
    GatedMLP,
    GenerationMixin,
    KVCache,
    MultiHeadAttention,
    RMSNorm,
    RotaryEmbedding,
    TransformerBlock,
    TransformerOutput,
    TransformerStack,
)

__all__ = ["LlamaForCausalLM", "llama_key_map", "LLAMA_PREFIX", "LLAMA_ANCHOR", "LLAMA_IGNORED"]

LLAMA_PREFIX = "model."  # LlamaForCausalLM nests the decoder under this name
LLAMA_ANCHOR = "embed_tokens.weight"
LLAMA_IGNORED = ("layers.*.self_attn.rotary_emb.inv_freq",)  # old checkpoints store the frequencies


class LlamaForCausalLM(TransformerStack, GenerationMixin):
    """A Llama-family causal language model.

    Hook points as the other families (``embed``, ``blocks.{i}.attn.q/k/v/scores/weights/z/out``,
    ``blocks.{i}.mlp.hidden/out``, ``blocks.{i}.resid_pre/mid/post``), plus the rotary
    inputs ``blocks.{i}.attn.q_pre_rotary`` (B, H, N, Dh) and ``k_pre_rotary``
    (B, Hkv, N, Dh); ``attn.q``/``attn.k`` are after the rotation. One rotary module
    serves every layer, so cos and sin are computed once per forward.
    """

    # Most heads of trained Llama-family models park attention on the first token (an attention
    # sink; Xiao et al., 2023): qkv explain sets it aside as it does BERT's [CLS] and [SEP].
    first_token_sink = True

    def __init__(self, config: LlamaConfig) -> None:
        d_model, head_dim = config.hidden_size, config.head_size
        rotary = RotaryEmbedding(head_dim, config.rope_theta, scaling=config.rope_scaling,
                                 max_positions=config.max_position_embeddings)
        blocks = [
            TransformerBlock(
                MultiHeadAttention(
                    d_model, config.num_attention_heads, config.kv_heads, head_dim,
                    bias=config.attention_bias or config.qkv_bias, out_bias=config.attention_bias,
                    causal=True, rotary=rotary, window=config.layer_window(i),
                ),
                GatedMLP(d_model, config.intermediate_size, activation=config.hidden_act, bias=config.mlp_bias),
                d_model, norm_first=True, layer_norm_eps=config.rms_norm_eps, norm="rmsnorm",
            )
            for i in range(config.num_hidden_layers)
        ]
        super().__init__(Embeddings(config.vocab_size, d_model), blocks, RMSNorm(d_model, eps=config.rms_norm_eps))
        self.config = config
        self.eos_token_id = config.eos_token_id
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(d_model, config.vocab_size, bias=False)
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
            positions: (B, N) or (N,) rotary positions (default: 0 .. N-1 after the cache,
                as Hugging Face; left-padded batches pass the positions that skip the pads).
            kv_cache: keys and values of earlier positions, extended in place.
            output_hidden_states: also return the embeddings and every block's output.
            output_attentions: also return every layer's attention weights, ``attentions``: a
                tuple of L tensors (B, H, N, Nk), as ``transformers`` does.

        Returns:
            :class:`TransformerOutput` with ``last_hidden_state`` (B, N, d_model) and
            ``logits`` (B, N, vocab).
        """
        self.check_input_ids(input_ids)
        if positions is None:  # one tensor for every layer, so the shared rotary computes cos/sin once
            start = len(kv_cache) if kv_cache is not None else 0
            positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        output = self.run_blocks(input_ids, attention_mask, positions=positions, kv_cache=kv_cache,
                                 output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        weight = self.embed.tokens.weight if self.lm_head is None else self.lm_head.weight
        output.logits = torch.matmul(output.last_hidden_state, weight.t())  # (B, N, vocab)
        return output

    def kv_groups(self) -> list[list[int]]:
        """Which query heads share each key/value head: group g holds heads g*r .. g*r + r - 1."""
        ratio = self.config.num_attention_heads // self.config.kv_heads
        return [list(range(g * ratio, (g + 1) * ratio)) for g in range(self.config.kv_heads)]


def llama_key_map(config: LlamaConfig) -> dict[str, Source]:
    """qkv parameter name -> checkpoint tensor (Hugging Face LlamaModel/MistralModel/Qwen2Model names)."""
    key_map = {
        "embed.tokens.weight": Source("embed_tokens.weight"),
        "norm_final.weight": Source("norm.weight"),
    }
    biased = {"q_proj": config.attention_bias or config.qkv_bias, "k_proj": config.attention_bias or config.qkv_bias,
              "v_proj": config.attention_bias or config.qkv_bias}
    for i in range(config.num_hidden_layers):
        layer = f"layers.{i}"
        key_map[f"blocks.{i}.norm_attn.weight"] = Source(f"{layer}.input_layernorm.weight")
        key_map[f"blocks.{i}.norm_mlp.weight"] = Source(f"{layer}.post_attention_layernorm.weight")
        for proj, bias in biased.items():
            key_map[f"blocks.{i}.attn.{proj}.weight"] = Source(f"{layer}.self_attn.{proj}.weight")
            if bias:
                key_map[f"blocks.{i}.attn.{proj}.bias"] = Source(f"{layer}.self_attn.{proj}.bias")
        key_map[f"blocks.{i}.attn.out_proj.weight"] = Source(f"{layer}.self_attn.o_proj.weight")
        if config.attention_bias:
            key_map[f"blocks.{i}.attn.out_proj.bias"] = Source(f"{layer}.self_attn.o_proj.bias")
        for proj in ("gate_proj", "up_proj", "down_proj"):
            key_map[f"blocks.{i}.mlp.{proj}.weight"] = Source(f"{layer}.mlp.{proj}.weight")
            if config.mlp_bias:
                key_map[f"blocks.{i}.mlp.{proj}.bias"] = Source(f"{layer}.mlp.{proj}.bias")
    if not config.tie_word_embeddings:
        key_map["lm_head.weight"] = Source("lm_head.weight")
    return key_map

"""BERT encoders (all-MiniLM-L6-v2, bert-base-uncased, ...) built from qkv.nn parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.models.config import BertConfig
from qkv.models.weights import Source
from qkv.nn import MLP, Embeddings, MultiHeadAttention, TransformerBlock, TransformerOutput, TransformerStack

__all__ = ["BertModel", "bert_key_map", "BERT_IGNORED", "BERT_PREFIX", "BERT_ANCHOR"]

BERT_PREFIX = "bert."  # BertForMaskedLM and friends nest the encoder under this name
BERT_ANCHOR = "embeddings.word_embeddings.weight"
# Checkpoint tensors that BertModel does not use: a buffer and the pretraining heads.
BERT_IGNORED = ("embeddings.position_ids", "cls.*")


class BertModel(TransformerStack):
    """BERT: embeddings (+ LayerNorm), post-LN blocks, an optional pooler.

    Hook points, per block i: ``blocks.i.resid_pre``, ``blocks.i.attn.{q,k,v,scores,weights,z,out}``,
    ``blocks.i.resid_mid``, ``blocks.i.mlp.{hidden,out}``, ``blocks.i.resid_post``; and ``embed.embed``.
    """

    def __init__(self, config: BertConfig, with_pooler: bool = True) -> None:
        d_model = config.hidden_size
        embed = Embeddings(
            config.vocab_size, d_model, max_positions=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size, layer_norm_eps=config.layer_norm_eps,
        )
        blocks = [
            TransformerBlock(
                MultiHeadAttention(d_model, config.num_attention_heads, causal=False),
                MLP(d_model, config.intermediate_size, activation=config.hidden_act),
                d_model, norm_first=False, layer_norm_eps=config.layer_norm_eps,
            )
            for _ in range(config.num_hidden_layers)
        ]
        super().__init__(embed, blocks, norm_final=None)
        self.config = config
        self.pooler = nn.Linear(d_model, d_model) if with_pooler else None
        # Tokens encode() reads per text: a sentence-transformers folder sets its own (MiniLM:
        # 256, in sentence_bert_config.json; qkv.load reads it); None: the tokenizer's limit.
        self.sentence_max_length: int | None = None
        self.setup_hooks()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        positions: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> TransformerOutput:
        """Encode.

        Args:
            input_ids: (B, N) token ids.
            attention_mask: (B, N) bool or 0/1, True for real tokens.
            token_type_ids: (B, N) segment ids (default 0).
            positions: (B, N) or (N,) position ids (default 0 .. N-1).
            output_hidden_states: also return the embeddings and every block's output.
            output_attentions: also return every layer's attention weights, ``attentions``: a
                tuple of L tensors (B, H, N, N), as ``transformers`` does.

        Returns:
            :class:`TransformerOutput` with ``last_hidden_state`` (B, N, d_model) and
            ``pooler_output`` (B, d_model) when the model has a pooler.
        """
        output = self.run_blocks(
            input_ids, attention_mask, positions=positions, token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        if self.pooler is not None:
            output.pooler_output = torch.tanh(self.pooler(output.last_hidden_state[:, 0]))
        return output

    def sentence_embedding(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Mean of the real tokens' final vectors, L2-normalised (sentence-transformers' recipe).

        Args:
            input_ids: (B, N) token ids.
            attention_mask: (B, N) bool, True for real tokens.

        Returns:
            (B, d_model) unit vectors.
        """
        hidden = self(input_ids, attention_mask).last_hidden_state  # (B, N, d)
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, N, 1)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1)

    @torch.no_grad()
    def encode(self, texts: str | list[str], batch_size: int = 32) -> Tensor:
        """Sentence embeddings of texts: (len(texts), d_model), batched by length.

        Each text is truncated to ``sentence_max_length`` tokens when it is set (as
        sentence-transformers does with its ``max_seq_length``), else to the tokenizer's limit.
        """
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; load it with qkv.load(...)")
        texts = [texts] if isinstance(texts, str) else list(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.config.hidden_size)
        for start in range(0, len(texts), batch_size):
            chunk = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in chunk], max_length=self.sentence_max_length).to(self.device)
            out[chunk] = self.sentence_embedding(batch.input_ids, batch.attention_mask).float().cpu()
        return out


def bert_key_map(config: BertConfig, with_pooler: bool) -> dict[str, Source]:
    """qkv parameter name -> checkpoint tensor (Hugging Face BertModel names)."""
    key_map = {
        "embed.tokens.weight": Source("embeddings.word_embeddings.weight"),
        "embed.positions.weight": Source("embeddings.position_embeddings.weight"),
        "embed.token_types.weight": Source("embeddings.token_type_embeddings.weight"),
        "embed.norm.weight": Source("embeddings.LayerNorm.weight"),
        "embed.norm.bias": Source("embeddings.LayerNorm.bias"),
    }
    parts = {
        "attn.q_proj": "attention.self.query",
        "attn.k_proj": "attention.self.key",
        "attn.v_proj": "attention.self.value",
        "attn.out_proj": "attention.output.dense",
        "norm_attn": "attention.output.LayerNorm",
        "mlp.fc_in": "intermediate.dense",
        "mlp.fc_out": "output.dense",
        "norm_mlp": "output.LayerNorm",
    }
    for i in range(config.num_hidden_layers):
        for ours, theirs in parts.items():
            for kind in ("weight", "bias"):
                key_map[f"blocks.{i}.{ours}.{kind}"] = Source(f"encoder.layer.{i}.{theirs}.{kind}")
    if with_pooler:
        key_map["pooler.weight"] = Source("pooler.dense.weight")
        key_map["pooler.bias"] = Source("pooler.dense.bias")
    return key_map

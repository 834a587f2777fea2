"""How qkv numbers layers, the same in every output (terminal, page, figures, JSON).

Layer ``i`` is the model's block ``i``, counted from 0: the hook names ``blocks.{i}.*``
and ``transformers``' ``outputs.attentions[i]``. A word's vector is named after the layer
that produced it: ``"emb"`` is the embeddings, before any layer (``transformers``'
``hidden_states[0]``), and ``"i"`` the vector after layer ``i`` (``blocks.{i}.resid_post``,
``hidden_states[i + 1]``). Every JSON file qkv writes with layers in it states this in
its ``"layer_numbering"`` field (:data:`LAYER_NUMBERING`).
"""

from __future__ import annotations

__all__ = ["EMBEDDINGS", "LAYER_NUMBERING", "vector_label", "vector_labels"]

EMBEDDINGS = "emb"  # the vectors before any layer
LAYER_NUMBERING = (
    "layers from 0: layer i is blocks.{i} and transformers' attentions[i]; word vectors are named after "
    "the layer that produced them: 'emb' the embeddings (hidden_states[0]), 'i' after layer i "
    "(blocks.{i}.resid_post, hidden_states[i + 1])"
)


def vector_label(hidden_state: int) -> str:
    """The name of ``transformers``' ``hidden_states[hidden_state]``: "emb" for 0, else the layer before it."""
    if hidden_state < 0:
        raise ValueError(f"hidden_state must be >= 0 (0 is the embeddings); got {hidden_state}")
    return EMBEDDINGS if hidden_state == 0 else str(hidden_state - 1)


def vector_labels(num_layers: int) -> list[str]:
    """The names of a ``num_layers``-layer model's L + 1 vectors per word: "emb", "0", ..., str(L - 1)."""
    return [vector_label(i) for i in range(num_layers + 1)]

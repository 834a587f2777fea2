"""Modules on top of :func:`qkv.attention`: attention, blocks, stacks, hooks, generation."""

from qkv.nn.attention import KVCache, LinformerProjection, MultiHeadAttention, SinkCache
from qkv.nn.generation import GenerationMixin
from qkv.nn.hooks import ActivationCache, HookedModule, HookPoint
from qkv.nn.layers import MLP, Embeddings, GatedMLP, RMSNorm, TransformerBlock
from qkv.nn.rotary import RotaryEmbedding
from qkv.nn.stack import TransformerDecoder, TransformerEncoder, TransformerOutput, TransformerStack

__all__ = [
    "MultiHeadAttention",
    "KVCache",
    "SinkCache",
    "RotaryEmbedding",
    "LinformerProjection",
    "MLP",
    "GatedMLP",
    "RMSNorm",
    "Embeddings",
    "TransformerBlock",
    "TransformerStack",
    "TransformerEncoder",
    "TransformerDecoder",
    "TransformerOutput",
    "HookPoint",
    "HookedModule",
    "ActivationCache",
    "GenerationMixin",
]

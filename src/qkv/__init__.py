"""qkv: self-attention end to end on PyTorch.

The functional core is :func:`qkv.attention` (layout (B, H, N, D), many backends);
:func:`qkv.attention_weights` and :func:`qkv.attention_stats` look inside it.
"""

from qkv.attention import (
    AttentionStats,
    attention,
    attention_stats,
    attention_weights,
    available_backends,
)

__version__ = "0.1.0"

__all__ = [
    "attention",
    "attention_weights",
    "attention_stats",
    "AttentionStats",
    "available_backends",
    "__version__",
]

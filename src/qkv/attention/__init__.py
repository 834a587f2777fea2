"""The functional core: ``attention`` with one signature and many backends."""

from qkv.attention.api import AttentionStats, attention, attention_stats, attention_weights
from qkv.attention.dispatch import DispatchPlan, explain_dispatch
from qkv.attention.linear import LinearOptions
from qkv.attention.linformer import LinformerOptions
from qkv.attention.masks import MaskSpec
from qkv.attention.nystrom import NystromOptions
from qkv.attention.performer import PerformerOptions
from qkv.attention.registry import Backend, available_backends, get_backend, register
from qkv.attention.triton_backend import TritonOptions

__all__ = [
    "attention",
    "attention_weights",
    "attention_stats",
    "AttentionStats",
    "explain_dispatch",
    "DispatchPlan",
    "MaskSpec",
    "Backend",
    "available_backends",
    "get_backend",
    "register",
    "LinearOptions",
    "PerformerOptions",
    "NystromOptions",
    "LinformerOptions",
    "TritonOptions",
]

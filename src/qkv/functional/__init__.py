"""The functional core: ``attention`` with one signature and many backends."""

from qkv.functional.api import AttentionStats, attention, attention_stats, attention_weights
from qkv.functional.dispatch import DispatchPlan, explain_dispatch
from qkv.functional.linear import LinearOptions
from qkv.functional.linformer import LinformerOptions
from qkv.functional.masks import MaskSpec
from qkv.functional.nystrom import NystromOptions
from qkv.functional.performer import PerformerOptions
from qkv.functional.registry import Backend, available_backends, get_backend, register
from qkv.functional.triton_backend import TritonOptions

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

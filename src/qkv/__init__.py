"""qkv: self-attention end to end on PyTorch.

The functional core is :func:`qkv.attention` (layout (B, H, N, D), many backends);
:func:`qkv.attention_weights` and :func:`qkv.attention_stats` look inside it. The modules
behind them are the package :mod:`qkv.functional` (``import qkv.functional.oracle``); its
former path, ``qkv.attention.<module>``, imports for one release with a DeprecationWarning.
:mod:`qkv.nn` builds modules on it, :mod:`qkv.models` runs pretrained BERT and GPT-2
families through those modules, and :func:`qkv.load` loads them from local files.
:mod:`qkv.distributed` splits one sequence across processes (ring attention).
:func:`qkv.explain` explains one word of a sentence as a report that shows itself in a notebook.
"""

from qkv import (
    _deprecated,
    distributed,
    functional,
    models,
    nn,
)
from qkv.functional import (
    AttentionStats,
    DispatchPlan,
    LinearOptions,
    LinformerOptions,
    NystromOptions,
    PerformerOptions,
    TritonOptions,
    attention,
    attention_stats,
    attention_weights,
    available_backends,
    explain_dispatch,
    get_backend,
)
from qkv.models import load

__version__ = "0.1.0"

_deprecated.install()  # the package's former path, qkv.attention.<module>, for one release

__all__ = [
    "attention",
    "attention_weights",
    "attention_stats",
    "AttentionStats",
    "explain_dispatch",
    "DispatchPlan",
    "available_backends",
    "get_backend",
    "LinearOptions",
    "PerformerOptions",
    "NystromOptions",
    "LinformerOptions",
    "TritonOptions",
    "load",
    "explain",
    "functional",
    "nn",
    "models",
    "distributed",
    "__version__",
]


def __getattr__(name: str):
    # qkv.explain sits in the viz layer (it draws): imported on first use, so `import qkv` stays light.
    if name == "explain":
        from qkv.viz.notebook import explain

        return explain
    raise AttributeError(f"module 'qkv' has no attribute {name!r}")

"""Views of explain reports: terminal tables, matplotlib figures, a self-contained HTML page,
and the notebook views (:mod:`qkv.viz.notebook`): ``model_view`` and ``head_view``."""

from __future__ import annotations

__all__ = ["model_view", "head_view", "ExplainReport", "AttentionView"]


def __getattr__(name: str):
    # Imported on first use: `import qkv.viz.terminal` need not load the notebook views.
    if name in __all__:
        from qkv.viz import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'qkv.viz' has no attribute {name!r}")

"""qkv in a notebook: the explain report as an object that shows itself, and bertviz's two views.

:func:`explain` returns an :class:`ExplainReport`: the report dict of
:func:`qkv.inspect.explain.explain` (every number, by key, as ``qkv explain --json`` writes
it) that also shows the interactive page inline in Jupyter Notebook/Lab and VS Code, and saves
its page, JSON and figures. ``qkv explain`` builds the same object and writes from it.

:func:`model_view` (every layer x head as a small heatmap; a click enlarges one) and
:func:`head_view` (one layer's heads as lines from each word to the words it attends to) show
attention from a model and a sentence, an explain report, or attention tensors.

Inline, each view is a complete page inside an ``<iframe srcdoc>`` sandboxed to its own
scripts (:func:`qkv.viz.html.framed`), so its script and style cannot clash with the notebook's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qkv.files import write_text
from qkv.text import DEFAULT_FOCUS, DEFAULT_SENTENCE
from qkv.viz.html import framed, render_html, render_view

if TYPE_CHECKING:
    from qkv.models.tokenizer import Tokenizer
    from qkv.nn.stack import TransformerStack

__all__ = ["ExplainReport", "AttentionView", "explain", "model_view", "head_view", "view_data"]

REPORT_HEIGHT = 900  # pixels of the inline explain page; it scrolls inside its frame


class ExplainReport(dict):
    """``qkv explain``'s report: the JSON dict itself, plus its views.

    Index it as the JSON (``report["last_layer"]["top_content"]``, ``report["attention"]``
    (L, H, W, W) word-level weights, ``report["ablation"]`` (L, H)); ``json.dumps(report)``
    is what ``qkv explain --json`` writes. In a notebook the report shows the interactive page.
    """

    def html(self, *, back_href: str | None = None) -> str:
        """The self-contained interactive page (:func:`qkv.viz.html.render_html`)."""
        return render_html(self, back_href=back_href)

    def save_html(self, path: str | Path) -> Path:
        """Write the page to ``path`` (atomically, missing folders created); return the path."""
        return write_text(path, self.html())

    def save_json(self, path: str | Path) -> Path:
        """Write every number as JSON to ``path`` (atomically); return the path."""
        return write_text(path, json.dumps(self))

    def figures(self, out_dir: str | Path) -> list[Path]:
        """Write the PNG figures into the folder ``out_dir``; return their paths.

        :func:`qkv.viz.figures.skipped_figures` names the figures this report cannot have, and why.
        """
        from qkv.viz.figures import save_figures

        return save_figures(self, out_dir)

    def model_view(self, *, layers: Any = None, heads: Any = None) -> AttentionView:
        """:func:`model_view` of this report (its word-level weights, its focus word)."""
        return model_view(self, layers=layers, heads=heads)

    def head_view(self, *, layers: Any = None, heads: Any = None) -> AttentionView:
        """:func:`head_view` of this report."""
        return head_view(self, layers=layers, heads=heads)

    def _repr_html_(self) -> str:
        return framed(self.html(), height=REPORT_HEIGHT, title=f"qkv explain: {self['focus']['token']}")

    def __repr__(self) -> str:
        model = self.get("model", {})
        return (f"ExplainReport({self.get('sentence', '')!r}, focus={self.get('focus', {}).get('token')!r}, "
                f"model={model.get('name')!r}, {model.get('layers')} layers x {model.get('heads')} heads; "
                f"keys: {', '.join(self)})")


def explain(model: TransformerStack, tokenizer: Tokenizer, sentence: str = DEFAULT_SENTENCE,
            focus: str = DEFAULT_FOCUS, **options: Any) -> ExplainReport:
    """Explain how ``model`` attends in ``sentence``, following ``focus``, as a report object.

    The same computation and options as :func:`qkv.inspect.explain.explain` (``occurrence``,
    ``layer``, ``head``, ``senses``, ``contrast``, ``truncate``, ...); the result shows the
    interactive page inline in a notebook and has ``save_html``, ``save_json``, ``figures``,
    ``model_view`` and ``head_view``.

    Example::

        model, tokenizer = qkv.load()
        report = qkv.explain(model, tokenizer, "She deposited her check at the bank.", focus="bank")
        report                       # in a notebook: the interactive page
        report["last_layer"]["top_content"]
    """
    from qkv.inspect.explain import explain as compute

    return ExplainReport(compute(model, tokenizer, sentence, focus, **options))


@dataclass(frozen=True)
class AttentionView:
    """A model view or head view: a page that shows itself inline in a notebook.

    ``data`` is the view data (:func:`view_data`); ``kind`` is "model" or "head".
    """

    kind: str
    data: dict
    title: str

    def html(self) -> str:
        """The view as a self-contained HTML page."""
        return render_view(self.data, self.kind, self.title)

    def save_html(self, path: str | Path) -> Path:
        """Write the page to ``path`` (atomically, missing folders created); return the path."""
        return write_text(path, self.html())

    def _repr_html_(self) -> str:
        return framed(self.html(), height=self.height(), title=self.title)

    def height(self) -> int:
        """The inline frame's height in pixels: the heading, the whole grid and room for an enlarged head
        (model view), or every word's lines (head view); at most 1000, the page scrolls inside."""
        words, rows = len(self.data["tokens"]), len(self.data["layers"])
        if self.kind == "head":
            return min(1000, 190 + 22 * words)
        thumbnail = max(3, min(12, 96 // max(1, words))) * words + 6  # views.js's largest thumbnail
        enlarged = 160 + max(8, min(30, 520 // max(1, words))) * words  # views.js's heatmap and its labels
        return min(1000, 140 + rows * thumbnail + enlarged)

    def __repr__(self) -> str:
        return (f"AttentionView({self.kind!r}, {self.title!r}, layers={self.data['layers']}, "
                f"heads={self.data['heads']}, words={len(self.data['tokens'])})")


def model_view(source: Any, tokenizer: Tokenizer | None = None, sentence: str | None = None, *,
               tokens: Sequence[str] | None = None, focus: int | str | None = None,
               layers: Any = None, heads: Any = None) -> AttentionView:
    """bertviz's model view on qkv's data: every layer x head as a small heatmap.

    Rows are queries, columns keys, darker is more weight (absolute, square-root scale); the
    focus word's row is outlined; a click enlarges a head with its words and weights.
    Sources, and ``tokens``/``focus``/``layers``/``heads``, as :func:`view_data`.

    Example::

        qkv.viz.model_view(model, tokenizer, "She deposited her check at the bank.", focus="bank")
        qkv.viz.model_view(report, layers=range(3, 6), heads=[0, 4])
        qkv.viz.model_view(outputs.attentions, tokens=words)   # L tensors (1, H, N, N)
    """
    data = view_data(source, tokenizer, sentence, tokens=tokens, focus=focus, layers=layers, heads=heads)
    return AttentionView("model", data, _title("Model view", data))


def head_view(source: Any, tokenizer: Tokenizer | None = None, sentence: str | None = None, *,
              tokens: Sequence[str] | None = None, focus: int | str | None = None,
              layers: Any = None, heads: Any = None) -> AttentionView:
    """bertviz's head view on qkv's data: one layer at a time (a menu), each head a colour, a
    line from each word to each word it attends to, as dark as the weight; the focus word's
    lines are shown first. Sources and options as :func:`view_data`."""
    data = view_data(source, tokenizer, sentence, tokens=tokens, focus=focus, layers=layers, heads=heads)
    return AttentionView("head", data, _title("Head view", data))


def _title(name: str, data: dict, words: int = 16) -> str:
    """"Model view: [CLS] She deposited ... · focus “bank”", the text cut after ``words`` words."""
    tokens, focus = data["tokens"], data["focus"]
    text = " ".join(tokens[:words]) + (" …" if len(tokens) > words else "")
    return f"{name}: {text}" + (f" · focus “{tokens[focus]}”" if focus is not None else "")


def view_data(source: Any, tokenizer: Tokenizer | None = None, sentence: str | None = None, *,
              tokens: Sequence[str] | None = None, focus: int | str | None = None,
              layers: Any = None, heads: Any = None) -> dict:
    """The data the model and head views draw, from any of three sources.

    Args:
        source: one of
            - a model (e.g. from ``qkv.load()``) with ``tokenizer`` and ``sentence``: it runs
              once, and word pieces are merged into words as in ``qkv explain`` (rows: mean
              over a word's pieces; columns: sum);
            - an explain report (:func:`explain`, or its JSON loaded as a dict): its word-level
              ``attention`` (L, H, W, W) and its focus word;
            - attention weights: a sequence of L tensors (1, H, N, N), one per layer (as
              ``outputs.attentions`` or ``cache["pattern", i]``), or one tensor (L, 1, H, N, N)
              (``cache.stack("attn.weights")``).
        tokenizer, sentence: with a model only.
        tokens: with tensors, the N labels (default "0" .. "N-1").
        focus: the word whose row is highlighted: an index, or a word of the tokens (the
            first occurrence); default the report's focus word, else none.
        layers: the layers shown: None (all), an int, or any iterable of ints such as
            ``range(3, 6)``; negative numbers count from the last layer.
        heads: the heads shown, as ``layers``.

    Returns:
        ``tokens`` [W], ``focus`` (int or None), ``layers`` [Lv] and ``heads`` [Hv] (the numbers
        shown), ``attention`` [Lv][Hv][W][W] rounded to 4 decimals, and ``selected``: the head
        the model view enlarges first, [layer, head] (a report's step-by-step head, when shown)
        or None.

    Raises:
        ValueError / TypeError naming the argument, what it was and the fix.
    """
    weights, labels, default_focus = _weights_and_tokens(source, tokenizer, sentence, tokens)  # (L, H, W, W)
    count_layers, count_heads, words = weights.shape[0], weights.shape[1], weights.shape[2]
    chosen_layers = _indices("layers", layers, count_layers, "layer")
    chosen_heads = _indices("heads", heads, count_heads, "head")
    focus_index = _focus_index(focus, labels, default_focus, words)
    shown = weights[chosen_layers][:, chosen_heads].double()  # (Lv, Hv, W, W)
    walkthrough = source.get("walkthrough") if isinstance(source, Mapping) else None
    selected = [walkthrough["layer"], walkthrough["head"]] if walkthrough else None  # the report's chosen head
    return {
        "tokens": labels,
        "focus": focus_index,
        "layers": chosen_layers,
        "heads": chosen_heads,
        "attention": (torch.round(shown * 1e4) / 1e4).tolist(),
        "selected": selected if selected and selected[0] in chosen_layers and selected[1] in chosen_heads else None,
    }


def _weights_and_tokens(source: Any, tokenizer: Any, sentence: str | None,
                        tokens: Sequence[str] | None) -> tuple[torch.Tensor, list[str], int | None]:
    """(weights (L, H, W, W), W labels, the source's focus index or None) from a view's source."""
    if isinstance(source, Mapping):
        if "attention" not in source or "tokens" not in source:
            raise ValueError("source: a dict must be an explain report (with 'attention' and 'tokens'); got keys "
                             f"{sorted(source)[:8]}; pass qkv.explain(...)'s result or its JSON")
        if source["attention"] is None:
            raise ValueError(f"source: this report keeps no attention matrices (its input has "
                             f"{len(source['tokens'])} words, more than the report keeps for heatmaps); pass the "
                             f"model, tokenizer and sentence instead: model_view(model, tokenizer, sentence)")
        weights = torch.tensor(source["attention"], dtype=torch.float64)  # (L, H, W, W)
        return weights, [str(t) for t in source["tokens"]], source.get("focus", {}).get("index")
    if hasattr(source, "run_with_cache"):
        if tokenizer is None or not isinstance(sentence, str) or not sentence.strip():
            raise ValueError("with a model as source, give its tokenizer and a sentence: "
                             "model_view(model, tokenizer, 'She deposited her check at the bank.')")
        from qkv.inspect.words import word_view

        batch = tokenizer(sentence, truncation=False)
        _, cache = source.run_with_cache(batch, names="blocks.*.attn.weights")
        view = word_view(batch)
        weights = view.attention_to_words(cache.stack("attn.weights")[:, 0].float())  # (L, H, W, W)
        return weights, list(view.tokens), None
    if isinstance(source, torch.Tensor):
        if source.dim() != 5:
            raise ValueError(f"source: a tensor must be every layer's weights, (L, 1, H, N, N); got shape "
                             f"{tuple(source.shape)}; for one layer pass [weights] with weights (1, H, N, N)")
        layers = list(source)
    elif isinstance(source, Sequence) and source and all(isinstance(t, torch.Tensor) for t in source):
        layers = list(source)
    else:
        raise TypeError(f"source: expected a model (with tokenizer and sentence), an explain report, or attention "
                        f"tensors (L tensors (1, H, N, N)); got {type(source).__name__}")
    first = tuple(layers[0].shape)
    for i, layer in enumerate(layers):
        shape = tuple(layer.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[2] != shape[3] or shape != first:
            raise ValueError(f"source: layer {i}'s weights have shape {shape}; every layer needs (1, H, N, N) with "
                             f"one sentence (B=1), the same H and N (layer 0: {first}); select one sentence with "
                             f"weights[i:i+1]")
    weights = torch.stack([layer[0].detach().float().cpu() for layer in layers])  # (L, H, N, N)
    count = weights.shape[-1]
    if tokens is None:
        labels = [str(i) for i in range(count)]
    else:
        labels = [str(t) for t in tokens]
        if len(labels) != count:
            raise ValueError(f"tokens: {len(labels)} labels for weights over N={count} positions; give one per "
                             f"position")
    return weights, labels, None


def _indices(name: str, chosen: Any, count: int, what: str) -> list[int]:
    """``chosen`` (None, an int or ints, negative from the end) as a list of indices in 0..count-1."""
    if chosen is None:
        return list(range(count))
    items = [chosen] if isinstance(chosen, int) else list(chosen)
    if not items:
        raise ValueError(f"{name}: selects no {what}; give at least one, e.g. {name}=[0]")
    result = []
    for item in items:
        if not isinstance(item, int) or isinstance(item, bool):
            raise TypeError(f"{name}: expected {what} numbers (ints); got {item!r}")
        if not -count <= item < count:
            raise ValueError(f"{name}: {what} {item} does not exist; there are {count}, numbered 0 to {count - 1} "
                             f"(or -{count} to -1 from the end)")
        result.append(item % count)
    return result


def _focus_index(focus: int | str | None, labels: list[str], default: int | None, words: int) -> int | None:
    """The highlighted row: ``focus`` as an index or a word of ``labels``, else ``default``."""
    if focus is None:
        return default
    if isinstance(focus, str):
        wanted = focus.strip().lower()
        for i, label in enumerate(labels):
            if label.strip().lower() == wanted:
                return i
        raise ValueError(f"focus: {focus!r} is not among the words {labels}; give one of them or its index")
    if not isinstance(focus, int) or not 0 <= focus < words:
        raise ValueError(f"focus: {focus!r} is not a word index 0..{words - 1}; give an index or a word")
    return focus

"""The explain report as one self-contained, interactive HTML page.

:func:`render_html` turns a :func:`qkv.inspect.explain.explain` report into a single
file: inline CSS and JavaScript, no network, no fonts or libraries from elsewhere, so it
works opened straight from disk. The report travels inside the page as JSON, in
``<script type="application/json" id="report">``, and the script draws every view from
it. :func:`render_view` makes the same kind of page for one notebook view (the model view
or the head view), and :func:`framed` puts a page in a sandboxed ``<iframe srcdoc>`` for a
notebook cell.

Safety: the sentence is untrusted text. Server-side text (the title and the heading)
goes through :func:`html.escape`; the JSON has ``<``, ``>``, ``&``, U+2028 and U+2029
escaped as ``\\u003c`` and so on, so nothing in it can close the script element; the
script only ever writes data with ``textContent`` and ``setAttribute``. A Content
Security Policy allows the page's own script (by its SHA-256 hash) and nothing else: no
other script, no request to anywhere. Bidirectional-control characters (e.g. U+202E,
right-to-left override) are shown as visible ``⟨U+202E⟩`` marks instead of reordering the
text around them.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from importlib import resources

__all__ = ["render_html", "render_view", "framed", "json_for_script", "show_controls", "content_security_policy",
           "page_asset"]

# Bidi embeddings, overrides and isolates, and the invisible marks: shown, never obeyed.
_CONTROLS = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c]")


def show_controls(text: str) -> str:
    """``text`` with bidirectional-control characters replaced by visible ``⟨U+XXXX⟩`` marks."""
    return _CONTROLS.sub(lambda m: f"⟨U+{ord(m.group()):04X}⟩", text)


def _finite(value):
    """NaN and infinities to None (JSON has neither), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_for_script(data) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element.

    ``<``, ``>`` and ``&`` become ``\\u003c``, ``\\u003e``, ``\\u0026`` (so no ``</script>``
    or ``<!--`` can appear), and U+2028 / U+2029 are escaped too.
    """
    text = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def _script_hash(script: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


def content_security_policy(script: str) -> str:
    """The pages' Content Security Policy: their own ``script`` (by hash), inline style, nothing else."""
    return (f"default-src 'none'; script-src '{_script_hash(script)}'; style-src 'unsafe-inline'; "
            "img-src data:; base-uri 'none'; form-action 'none'")


def render_html(report: dict, *, back_href: str | None = None) -> str:
    """One self-contained HTML page for an explain ``report``.

    Args:
        report: the dict :func:`qkv.inspect.explain.explain` returns.
        back_href: if given, a "new sentence" link to this address at the top (the web
            app uses it); it is escaped.

    Returns:
        The page, a complete HTML document. Save it with ``qkv.files.write_text(path, page)``
        (whole or not at all); it needs nothing else.
    """
    sentence = show_controls(str(report.get("sentence", "")))
    focus = show_controls(str(report.get("focus", {}).get("token", "")))
    model = report.get("model", {})
    summary = (f"{model.get('layers', '?')} layers × {model.get('heads', '?')} heads · "
               f"d_model {model.get('d_model', '?')} · head dim {model.get('head_dim', '?')}")
    if model.get("name"):
        summary = f"{model['name']} · {summary}"
    csp = content_security_policy(_SCRIPT)
    back = (f'<p class="back"><a id="back" href="{html.escape(back_href, quote=True)}">← explain another '
            f"sentence</a></p>" if back_href is not None else "")
    note = str((report.get("length") or {}).get("note") or "")
    length = f'<p id="length-note" class="warn">{html.escape(note, quote=True)}</p>' if note else ""
    causal = ('<p id="causal-note" class="help">A causal model (a decoder such as GPT-2 or SmolLM2): every word '
              "attends only to itself and the words before it, so later words get no attention and cannot change "
              "its vector.</p>"
              if model.get("causal") else "")
    note = report.get("focus", {}).get("note")  # the focus word repeats, or is read as [UNK]
    focus_note = (f'<p id="focus-note" class="help">{html.escape(show_controls(note))}</p>' if note else "")
    values = {
        "CSP": html.escape(csp, quote=True),
        "TITLE": html.escape(f"qkv · {focus} · {sentence}", quote=True),
        "BACK": back,
        "SENTENCE": html.escape(sentence, quote=True),
        "FOCUS": html.escape(focus, quote=True),
        "SUMMARY": html.escape(summary, quote=True),
        "SETASIDE": html.escape(report.get("set_aside", _SET_ASIDE), quote=True),
        "CAUSAL": causal,
        "FOCUSNOTE": focus_note,
        "LENGTH": length,
        "STYLE": _STYLE,
        "SCRIPT": _SCRIPT,
        "DATA": json_for_script(report),
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _PAGE)


def render_view(data: dict, kind: str, title: str) -> str:
    """One self-contained HTML page that draws the model view or the head view of ``data``.

    Args:
        data: view data, as :func:`qkv.viz.notebook.view_data` makes it (tokens, focus,
            layers, heads and the (Lv, Hv, W, W) attention as nested lists).
        kind: "model" (every layer x head as a small heatmap) or "head" (one layer's heads as
            lines between the words).
        title: the page's heading (escaped here).

    Returns:
        A complete HTML document with the same safety as :func:`render_html`: the data as
        escaped JSON, the script allowed by its hash and nothing else.
    """
    if kind not in ("model", "head"):
        raise ValueError(f"kind must be 'model' or 'head'; got {kind!r}")
    values = {
        "CSP": html.escape(content_security_policy(_VIEW_SCRIPT), quote=True),
        "TITLE": html.escape(show_controls(title), quote=True),
        "KIND": kind,
        "STYLE": _VIEW_STYLE,
        "SCRIPT": _VIEW_SCRIPT,
        "DATA": json_for_script(data),
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _VIEW_PAGE)


def framed(page: str, *, height: int, title: str) -> str:
    """``page`` (a complete HTML document) inside an ``<iframe srcdoc>``, for a notebook cell.

    The frame is sandboxed with ``allow-scripts`` only: the page runs its script in an origin
    of its own, so neither its script nor its style can touch the notebook's, and it cannot
    navigate the notebook or open windows. ``srcdoc`` holds the page escaped as an attribute
    value (``&``, ``<``, ``>`` and both quotes), so nothing in it can end the attribute.

    Args:
        page: the document to show.
        height: the frame's height in CSS pixels (the page scrolls inside it).
        title: the frame's accessible name (escaped here).
    """
    return (f'<iframe class="qkv-frame" title="{html.escape(title, quote=True)}" sandbox="allow-scripts" '
            f'style="width: 100%; height: {int(height)}px; border: 1px solid #d8dde6; border-radius: 4px;" '
            f'srcdoc="{html.escape(page, quote=True)}"></iframe>')


_PLACEHOLDER = re.compile(
    r"%(CSP|TITLE|BACK|SENTENCE|FOCUS|SUMMARY|SETASIDE|CAUSAL|FOCUSNOTE|LENGTH|STYLE|SCRIPT|DATA|KIND)%")
_SET_ASIDE = "[CLS], [SEP] and punctuation"  # reports without "set_aside" come from BERT models


_PAGE_ASSETS = resources.files("qkv.viz") / "page"


def page_asset(name: str) -> str:
    """The text of ``qkv/viz/page/NAME`` (a page's HTML, CSS or script), from the installed package."""
    return (_PAGE_ASSETS / name).read_text(encoding="utf-8")


# The pages (their %NAME% placeholders are filled in one pass, so text from the report is never
# scanned for placeholders), their style and their script, as files beside this module. The
# model and head views (views.js, views.css) are drawn both on the explain page and on the page
# of a notebook view (views.html).
_PAGE = page_asset("page.html")
_STYLE = page_asset("page.css") + page_asset("views.css")
_SCRIPT = page_asset("views.js") + page_asset("page.js")
_VIEW_PAGE = page_asset("views.html")
_VIEW_STYLE = page_asset("views.css")
_VIEW_SCRIPT = page_asset("views.js") + page_asset("views-main.js")


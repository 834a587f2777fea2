"""The explain report in a terminal: rich tables and bars sized to the console's width.

Every line fits the console: notes wrap with their indent, bars and the number of vector
dimensions shrink on narrow consoles, grids of heads split into several tables, and long
inputs show a window of tokens around the focus word, saying which.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from qkv.inspect.heads import ROLE_NAMES
from qkv.numbering import EMBEDDINGS
from qkv.text import terminal_safe

__all__ = ["print_report", "markup_safe", "wsd_tables", "contextuality_table", "fidelity_table", "VECTORS_CAPTION"]

SHADES = " ░▒▓█"
INDENT = 3  # notes under a heading
NAMED = 3  # keys named in a sentence ("looks most at ...")
LONG_TABLE = 30  # longer tables show their top rows by exact weight and count the rest


def bar(value: float, width: int = 20, full: float = 1.0) -> str:
    """A horizontal bar of ``value`` out of ``full``."""
    cells = max(0.0, min(1.0, value / full if full else 0.0)) * width
    return "█" * int(cells) + ("▌" if cells - int(cells) >= 0.5 else "")


def shade(value: float, full: float) -> str:
    """One character whose darkness shows ``value`` out of ``full``."""
    level = 0 if full <= 0 else min(len(SHADES) - 1, round(value / full * (len(SHADES) - 1)))
    return SHADES[level]


def fmt_vector(values: list[float], shown: int = 6) -> str:
    body = ", ".join(f"{v:+.2f}" for v in values[:shown])
    return f"[{body}{', …' if len(values) > shown else ''}]"


def _set_aside(report: dict) -> str:
    """What the report sets aside as parking places: "[CLS], [SEP] and punctuation" for BERT,
    "punctuation" for GPT-2 (older reports lack the field and were BERT's)."""
    return report.get("set_aside", "[CLS], [SEP] and punctuation")


def ranking_text(report: dict, ranked: dict, source: int, count: int = NAMED, share: bool = True) -> str:
    """A ranking of :func:`qkv.inspect.explain.rank_attention` in words: "'check' (itself) 0.734,
    'deposited' 0.113, '[CLS]' 0.053; 7% to [CLS], [SEP] and punctuation" (``source``: the
    word whose row it is; ``share``: end with the parked share)."""
    named = ", ".join(f"'{report['tokens'][j]}'{' (itself)' if j == source else ''} {w:.3f}"
                      for j, w in zip(ranked["order"][:count], ranked["weights"][:count]))
    return f"{named}; {ranked['parked_share']:.0%} to {_set_aside(report)}" if share else named


def _left_out_note(left_out: int, below: float, what: str) -> str:
    """The rows a long table leaves out: "and 341 more keys, each at most 0.004"."""
    return f"and {left_out} more {what}, each at most {math.ceil(below * 1000) / 1000:.3f}" if left_out else ""


def _causal(report: dict) -> bool:
    return bool(report["model"].get("causal", False))


def _note(console: Console, text: str | Text, indent: int = INDENT) -> None:
    """``text`` under a heading: wrapped to the console's width, every line indented."""
    console.print(Padding(text if isinstance(text, Text) else Text(text), (0, 0, 0, indent), expand=False))


def _heading(console: Console, text: str) -> None:
    console.print(Text("\n" + text, style="bold"))


def _compact_table() -> Table:
    """A table without lines, one space between columns: for many narrow columns."""
    return Table(box=None, pad_edge=False, padding=(0, 0, 0, 1), header_style="bold")


def _widest(console: Console, build, low: int, high: int) -> Table:
    """``build(n)`` for the largest ``n`` in ``low..high`` whose table fits the console (``low`` if none)."""
    options = console.options.update(max_width=10_000)  # the table's natural width, not squeezed to fit

    def fits(n: int) -> bool:
        return Measurement.get(console, options, build(n)).maximum <= console.width

    while low < high:  # wider tables for larger n: a binary search
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return build(low)


def _window(count: int, focus: int, size: int) -> range:
    """``size`` consecutive indices of ``range(count)`` around ``focus`` (all of them if they fit)."""
    if count <= size:
        return range(count)
    start = max(0, min(focus - size // 2, count - size))
    return range(start, start + size)


def _window_note(report: dict, shown: range, what: str) -> str:
    """What a window of tokens shows: "rows: tokens 23–53 of 65, around the focus word ...", or
    "rows: all 10 tokens"."""
    count = len(report["tokens"])
    if len(shown) == count:
        return f"{what}: all {count} tokens"
    return (f"{what}: tokens {shown.start}–{shown.stop - 1} of {count} (numbered from 0), around the focus word "
            f"'{report['focus']['token']}' ({report['focus']['index']}); --json or --html has all of them")


def _shown(value):
    """``value`` (a report, or any part of it) with every string made safe for a terminal: control
    characters in the sentence, tokens and sense names are shown escaped (``\x1b``)."""
    if isinstance(value, str):
        return terminal_safe(value)
    if isinstance(value, dict):
        return {key: _shown(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shown(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_shown(item) for item in value)
    return value


def print_report(report: dict, console: Console | None = None) -> None:
    """Print every section of an :func:`qkv.inspect.explain` report, as wide as ``console``
    (default: a console as wide as the terminal). Control characters in its text are shown
    escaped (``\x1b``), never sent to the terminal."""
    console = console or Console()
    report = _shown(report)
    focus, model = report["focus"], report["model"]
    length_note = (report.get("length") or {}).get("note")
    causal = (f"\ncausal model: '{focus['token']}', like every token, attends only to itself and the tokens "
              f"before it" if _causal(report) else "")
    console.print(Panel(
        Text.assemble((report["sentence"], "bold"), "\nfocus: ", (focus["token"], "bold cyan"),
                      f" (token {focus['index']}) · model: {model['layers']} layers x {model['heads']} heads, "
                      f"d_model {model['d_model']}, head dim {model['head_dim']}{causal}{_gqa(model)}",
                      ("\n" + focus["note"], "yellow") if focus.get("note") else ""),
        title="qkv explain", expand=False,
    ))
    if length_note:
        console.print(Panel(Text(length_note), title="input length", border_style="yellow", expand=False))
    _tokens(report, console)
    _walkthrough(report, console)
    _layers(report, console)
    _senses(report, console)
    _rollout(report, console)
    _heads(report, console)
    last = report["last_layer"]
    top = ", ".join(f"'{t['token']}' ({t['weight']:.3f})" for t in last["top_content"]) or "none"
    if _causal(report):
        others, parking = ("earlier words (the only ones it can see)",
                           "causal models tend to park attention on the first token instead: F in the head roles")
    else:
        others, parking = "other words", "models park attention there"
    ranked = (f" In all, it looks most at {ranking_text(report, last['ranked'], focus['index'], 4, share=False)}."
              if last.get("ranked") else "")
    console.print(Panel(Text(
        f"In the last layer, averaged over heads, '{focus['token']}' gives {last['parked_share']:.0%} of its "
        f"attention to {_set_aside(report)} ({parking}); among the {others} it attends most to {top}.{ranked}"),
        title="in short", expand=False,
    ))


def _gqa(model: dict) -> str:
    """A header line naming the query heads that share each key/value head (grouped-query attention)."""
    groups = model.get("kv_groups")
    if not groups or len(groups) == model["heads"]:
        return ""
    shared = ", ".join(f"h{g[0]}-h{g[-1]}" if len(g) > 1 else f"h{g[0]}" for g in groups)
    return f"\ngrouped-query attention: {model['heads']} query heads share {len(groups)} key/value heads ({shared})"


def _tokens(report: dict, console: Console) -> None:
    positions = ("token embedding; positions enter as rotations of q and k in every layer"
                 if report["model"].get("positions") == "rotary" else "token embedding + position")
    _heading(console, f"1. Tokens and their initial vectors ({positions})")
    shown = _window(len(report["tokens"]), report["focus"]["index"], 31)
    if len(shown) < len(report["tokens"]):
        _note(console, _window_note(report, shown, "rows"))
    dims = max(1, min(6, (console.width - 50) // 7))  # 4 at 80 columns
    table = Table(show_edge=False)
    for column in ("#", "token", "pieces", "|x|", "first dimensions"):
        table.add_column(column, overflow="fold")
    vectors = report["initial_vectors"]
    for i in shown:
        token = report["tokens"][i]
        pieces = " ".join(report["pieces"][p] for p in report["word_pieces"][i])
        style = "bold cyan" if i == report["focus"]["index"] else ("dim" if report["kinds"][i] != "word" else "")
        table.add_row(str(i), Text(token, style=style), Text(pieces), f"{vectors['norm'][i]:.2f}",
                      fmt_vector(vectors["first_dims"][i], dims))
    console.print(table)


def _walkthrough(report: dict, console: Console) -> None:
    w = report["walkthrough"]
    piece = report["pieces"][w["query_piece"]]
    _heading(console, f"2. One head step by step: layer {w['layer']}, head {w['head']} (query of '{piece}')")
    if w.get("chosen"):
        _note(console, f"why this head: {w['chosen']}")
    if w.get("window"):
        _note(console, f"window {tuple(w['window'])}: the query sees only {len(w['keys'])} of the "
                       f"{len(report['pieces'])} pieces (the layer runs with this window); the others are hidden")
    elif w.get("causal"):
        _note(console, f"causal: the query sees only the {len(w['keys'])} pieces up to itself; later ones are "
                       f"hidden (weight 0)")
    _note(console, f"query q = {fmt_vector(w['query'])}  ({len(w['query'])} numbers)")
    keys = range(len(w["keys"]))
    key_pieces = w.get("key_pieces") or list(keys)  # the piece each listed key belongs to
    if w.get("rotary"):
        before = ", ".join(f"{report['pieces'][key_pieces[i]]} {w['rotary']['dot'][i]:+.1f}" for i in list(keys)[:12])
        _note(console, f"rotary positions: q and every k are rotated by their own position first (q before: "
                       f"{fmt_vector(w['rotary']['query'])}), so q·k depends on how far apart they are; q·k "
                       f"before the rotation: {before}")
    left_out = ""
    if len(w["keys"]) > LONG_TABLE:  # a long input: the keys with the largest exact weights, largest first
        order = w.get("order") or sorted(keys, key=lambda i: -w["weights"][i])
        keys = order[:LONG_TABLE]
        left_out = _left_out_note(len(order) - LONG_TABLE, w["weights"][order[LONG_TABLE]], "keys")
        _note(console, f"rows: the {LONG_TABLE} of {len(w['keys'])} keys with the largest weights, largest first")

    def build(size: int) -> Table:  # size 1..16: the bar's width; the key's dimensions shrink with it
        dims = 3 if size >= 12 else 2 if size >= 8 else 1
        table = Table(show_edge=False)
        for column in ("key of", "k (first dims)", "q·k", f"× {w['scale']:.3f}", "softmax", ""):
            table.add_column(column, overflow="fold")
        for i in keys:
            table.add_row(Text(report["pieces"][key_pieces[i]]), fmt_vector(w["keys"][i], dims), f"{w['dot'][i]:+.2f}",
                          f"{w['scores'][i]:+.2f}", f"{w['weights'][i]:.3f}", bar(w["weights"][i], size))
        return table

    table = _widest(console, build, 4, 16)
    console.print(table)
    if left_out:
        _note(console, left_out)
    summary = report["heads"][w["layer"] * report["model"]["heads"] + w["head"]]
    if "ranked" in summary:
        pieces = " (all its pieces)" if len(report["focus"]["pieces"]) > 1 else ""
        _note(console, f"'{report['focus']['token']}'{pieces} in layer {w['layer']}, head {w['head']} looks most at: "
                       + ranking_text(report, summary["ranked"], report["focus"]["index"]))
    check = "equals" if w["matches_model"] else "DIFFERS FROM"
    _note(console, f"output = Σ weight × v = {fmt_vector(w['output'])}; {check} the model's own "
                   f"(max difference {w['max_difference']:.1e})")


def _layers(report: dict, console: Console) -> None:
    tokens, focus, kinds = report["tokens"], report["focus"]["index"], report["kinds"]
    _heading(console, f"3. Where '{tokens[focus]}' looks, every layer (mean over heads)")
    if _causal(report):
        _note(console, "causal: it can only look at itself and the words before it; later columns stay empty")
    # A column of 2 shade characters and a space per token (3 for indices over 99); "layer" and "aside" ~15.
    shown = _window(len(tokens), focus, max(4, (console.width - INDENT - 15) // (3 if len(tokens) <= 100 else 4)))
    _note(console, "shade: darker = more attention, relative to the largest weight in the row; "
                   f"aside: the share that goes to {_set_aside(report)}")
    _note(console, _window_note(report, shown, "columns") + ": " + "  ".join(f"{i}={tokens[i]}" for i in shown))
    table = _compact_table()
    table.add_column("layer")
    for i in shown:
        table.add_column(str(i), justify="center", style="bold cyan" if i == focus else None)
    table.add_column("aside", justify="right")
    per_head = {(h["layer"], h["head"]): h for h in report["heads"]}
    layer_ranked = report["layer_ranked"]
    best_words = []
    for layer, by_head in enumerate(report["focus_attention"]):
        focus_row = [sum(column) / len(column) for column in zip(*by_head)]  # mean over heads
        peak = max(focus_row)
        parked = sum(w for w, k in zip(focus_row, kinds) if k != "word")
        table.add_row(str(layer), *[shade(focus_row[i], peak) * 2 for i in shown], f"{parked:.0%}")
        heads = [per_head[(layer, h)] for h in range(report["model"]["heads"])]
        sharpest = max(heads, key=lambda h: h["top_content"][0][1] if h["top_content"] else 0.0)
        ranked = {key: (value[layer] if isinstance(value, list) else value) for key, value in layer_ranked.items()}
        best_words.append(
            f"layer {layer}: " + ranking_text(report, ranked, focus)
            + (f"  · sharpest head h{sharpest['head']} → {sharpest['top_content'][0][0]} "
               f"{sharpest['top_content'][0][1]:.2f}" if sharpest["top_content"] else "")
        )
    console.print(Padding(table, (0, 0, 0, INDENT)))
    if report.get("sink"):
        _note(console, f"attention sink: the share of the attention of '{tokens[focus]}' on the first token "
                       f"'{report['sink']['token']}', per layer: "
                       + ", ".join(f"{i}: {share:.0%}" for i, share in enumerate(report["sink"]["share"]))
                       + ". What a sliding window costs without it: qkv perplexity (README: Long context in a "
                         "real LLM)")
    _note(console, f"where it looks most (mean over heads, by exact weight, itself and {_set_aside(report)} "
                   "included; the sharpest head's share is of its attention left for the other words):")
    for line in best_words:
        _note(console, line)


def _senses(report: dict, console: Console) -> None:
    senses = report.get("senses")
    word = report["focus"]["token"]
    if not senses:
        _heading(console, "4. Sense trajectory")
        _note(console, f"no sense examples for '{word}'; pass --senses \"sense1: sentence | sentence; sense2: "
                       f"sentence\" (or senses= in Python)")
        return
    names = senses["names"]
    _heading(console, f"4. Context changing meaning: '{word}' against sense prototypes, layer by layer")
    _note(console, "rows: the word's vector from the embeddings (emb, before any attention), then after each "
                   "layer, numbered as in sections 2 and 3")
    if _causal(report):
        _note(console, f"causal: the vector of '{word}' depends only on the words before it, here, in the "
                       f"examples and in the contrast sentence; words after it cannot change it")
    contrast = senses["contrast_cosine"] is not None
    if contrast:
        _note(console, f"contrast: cosine to '{word}' in the contrast sentence, {senses['contrast_sentence']!r}"
                       + (f"; {senses['contrast_reason']}" if senses.get("contrast_reason") else ""))

    def build(size: int) -> Table:  # size: the margin bar's width
        table = Table(show_edge=False)
        table.add_column("after layer")
        for name in names:
            table.add_column(f"cos to {name}", overflow="fold")
        table.add_column("nearest", overflow="fold")
        table.add_column("margin", no_wrap=True)
        if contrast:
            table.add_column("contrast", overflow="fold")
        for layer, row in enumerate(senses["cosine"]):
            ranked = sorted(row, reverse=True)
            cells = ["emb" if layer == 0 else str(layer - 1), *[f"{c:.3f}" for c in row],
                     senses["predicted"][layer], f"{ranked[0] - ranked[1]:+.3f} " + bar(ranked[0] - ranked[1], size,
                                                                                         0.15)]
            if contrast:
                cells.append(f"{senses['contrast_cosine'][layer]:.3f}")
            table.add_row(*cells)
        return table

    console.print(_widest(console, build, 3, 12))


def _rollout(report: dict, console: Console) -> None:
    tokens = report["tokens"]
    _heading(console, "5. What reaches the focus token through all layers: attention rollout and flow")
    _note(console, "Abnar & Zuidema, 2020; flow normalised to sum to 1; both bars on one scale")
    rollout, flow = report["rollout"], report["flow"]
    if rollout is None:
        _note(console, "(not for long inputs: both need every token's attention in every layer)")
        streamed = report.get("streamed")
        if streamed:
            _note(console, f"attention received, streamed with {streamed['method']}:")
            for layer, info in enumerate(streamed["layers"]):
                words = ", ".join(f"{t} {v:.2f}" for t, v in info["most_received"])
                _note(console, f"layer {layer}: {words} · mean entropy {info['mean_entropy']:.2f} nats")
        return
    if flow is None:
        _note(console, "flow: not computed (exact max-flow would take too long for this input)")
    full = max([*rollout, *(flow or [])]) or 1.0
    rows, left_out = range(len(tokens)), ""
    if len(tokens) > LONG_TABLE:  # the words with the largest exact rollout, largest first
        order = report.get("rollout_order") or sorted(rows, key=lambda i: -rollout[i])
        rows = order[:LONG_TABLE]
        left_out = _left_out_note(len(order) - LONG_TABLE, rollout[order[LONG_TABLE]], "words") + " (rollout)"
        _note(console, f"rows: the {LONG_TABLE} of {len(tokens)} words with the largest rollout, largest first")

    def build(size: int) -> Table:  # size: each bar's width
        table = Table(show_edge=False)
        for column in ("token", "rollout", "", "flow", ""):
            table.add_column(column, overflow="fold")
        for i in rows:  # out of sentence order, each word says its place
            label = tokens[i] if left_out == "" else f"{tokens[i]} ({i})"
            table.add_row(Text(label), f"{rollout[i]:.3f}", bar(rollout[i], size, full),
                          "-" if flow is None else f"{flow[i]:.3f}", "" if flow is None else bar(flow[i], size, full))
        return table

    console.print(_widest(console, build, 4, 20))
    if left_out:
        _note(console, left_out)
    for note in report.get("flat_notes", []):
        _note(console, note)


def _head_tables(console: Console, layers: int, heads: int, row_cells) -> None:
    """Grids of layers x heads, split into as many tables as the console's width needs.

    ``row_cells(layer, head_range)`` gives the cells of one row, strings or Texts.
    """
    cells = [row_cells(layer, range(heads)) for layer in range(layers)]
    cell = max(len(f"h{heads - 1}"), *(len(str(c)) for row in cells for c in row))
    per_table = max(1, min(heads, (console.width - INDENT - len("layer")) // (cell + 1)))
    for start in range(0, heads, per_table):
        part = range(start, min(heads, start + per_table))
        table = _compact_table()
        table.add_column("layer")
        for h in part:
            table.add_column(f"h{h}", justify="right", no_wrap=True)
        for layer in range(layers):
            table.add_row(str(layer), *cells[layer][part.start:part.stop])
        console.print(Padding(table, (0, 0, 0, INDENT)))


def _heads(report: dict, console: Console) -> None:
    ablation = report["ablation"]
    layers, heads = len(ablation), len(ablation[0])
    peak = max(max(row) for row in ablation)
    _heading(console, "6. Heads that matter and what heads do")
    _note(console, "importance: how far the focus vector moves when one head is zeroed, (1 - cos) × 1000; "
                   "bold = at least half the largest")
    _head_tables(console, layers, heads, lambda layer, part: [
        Text(f"{ablation[layer][h] * 1000:.1f}", style="bold" if ablation[layer][h] >= 0.5 * peak else "dim")
        for h in part])
    roles = report["head_roles"]
    legend = {"previous": "P", "next": "N", "self": "S", "cls": "C", "first": "F", "sep": "E", "punctuation": "."}
    letters = {name: letter for name, letter in legend.items() if name in roles}
    described = ", ".join(f"{letter} {ROLE_NAMES[name]}" for name, letter in letters.items())
    _note(console, f"head roles (Clark et al., 2019): the kind of token each head attends to most, with its "
                   f"share — {described}; lower case below 50% ('.' has no lower case: read its share)")

    def role_cells(layer: int, part: range) -> list[str]:
        cells = []
        for h in part:
            name, value = max(((n, roles[n][layer][h]) for n in letters), key=lambda nv: nv[1])
            cells.append(f"{letters[name] if value >= 0.5 else letters[name].lower()}{value:.0%}")
        return cells

    _head_tables(console, len(roles["previous"]), len(roles["previous"][0]), role_cells)


# ---- the data commands' tables (qkv wsd, qkv contextuality, qkv fidelity) ----

VECTORS_CAPTION = f"{EMBEDDINGS}: the embeddings, before any layer; i: after layer i (blocks.i)"


def markup_safe(text: str) -> str:
    """User text (a model name, a word) for a rich markup string such as a table title: control
    characters shown escaped (``\\x1b``), brackets printed rather than read as markup."""
    return escape(terminal_safe(text))


def wsd_tables(result: dict, method: str, model_name: str) -> list[Table]:
    """``qkv wsd``'s tables: F1 per layer averaged over the words (with the most frequent sense),
    then micro-F1 per word and layer, from :func:`qkv.inspect.wsd.run_wsd`'s result."""
    layers = result["layers"]
    table = Table(title=f"word-sense disambiguation, {method}, {markup_safe(model_name)}: F1 (%) averaged over "
                        f"{len(result['words'])} words", caption=VECTORS_CAPTION)
    table.add_column("after layer")
    table.add_column("micro-F1", justify="right")
    table.add_column("macro-F1", justify="right")
    for layer in layers:
        label = {"last4": "last 4 summed"}.get(layer, layer)
        scores = result["average"][layer]
        table.add_row(label, f"{scores['micro_f1']:.1f}", f"{scores['macro_f1']:.1f}")
    table.add_row("most frequent sense", f"{result['mfs']['micro_f1']:.1f}", f"{result['mfs']['macro_f1']:.1f}",
                  style="dim")
    per_word = Table(title="micro-F1 per word and layer")
    per_word.add_column("word")
    for layer in layers:
        per_word.add_column(layer, justify="right")
    per_word.add_column("MFS", justify="right")
    for word, scores in result["words"].items():
        per_word.add_row(Text(terminal_safe(word)), *[f"{scores[layer]['micro_f1']:.1f}" for layer in layers],
                         f"{scores['mfs']['micro_f1']:.1f}")
    return [table, per_word]


def contextuality_table(result: dict, model_name: str) -> Table:
    """``qkv contextuality``'s table: each measure per layer, from
    :func:`qkv.inspect.contextuality.contextuality`'s result."""
    name = markup_safe(model_name)
    table = Table(title=f"contextuality per layer (Ethayarajh, 2019), {name}, {result['sentences']} sentences",
                  caption=VECTORS_CAPTION)
    columns = ["self_similarity", "intra_similarity", "anisotropy", "adjusted_self_similarity",
               "adjusted_intra_similarity"]
    table.add_column("after layer")
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for i, layer in enumerate(result["layers"]):
        table.add_row(layer, *[f"{result[c][i]:.3f}" for c in columns])
    return table


def fidelity_table(result: dict, model_name: str) -> Table:
    """``qkv fidelity``'s table: each attention variant against the exact model, from
    :func:`qkv.inspect.fidelity.fidelity`'s result."""
    exact = result["exact"]
    name = markup_safe(model_name)
    table = Table(title=f"{name}: each attention variant against the exact model, {result['tokens']} tokens"
                        + (f"; WSD on {result['wsd_sentences']} CoarseWSD-20 sentences"
                           if result.get("wsd_sentences") else ""))
    for column in ("variant", "token cos", "worst token cos", "sentence cos", "attention TV", "WSD F1",
                   "ms", "speed-up"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    f1 = exact["wsd_micro_f1"]
    table.add_row("exact", "1.0000", "1.000", "1.0000", "0.000", "-" if f1 is None else f"{f1:.1f}",
                  f"{exact['time_ms']:.1f}", "1.00", style="bold")
    for row in result["variants"]:
        table.add_row(
            row["label"], f"{row['token_cosine']:.4f}", f"{row['min_token_cosine']:.3f}",
            f"{row['sentence_cosine']:.4f}", f"{row['attention_distance']:.3f}",
            "-" if row["wsd_micro_f1"] is None else f"{row['wsd_micro_f1']:.1f}",
            f"{row['time_ms']:.1f}", f"{row['speedup']:.2f}",
        )
    return table


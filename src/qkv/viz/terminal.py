"""The explain report in a terminal: rich tables and bars that fit 100 columns."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = ["print_report"]

SHADES = " ░▒▓█"


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


def _set_aside_short(report: dict) -> str:
    """The same, short enough for a column header: "[CLS]/[SEP]/punct." or "punct."."""
    return "/".join([*report.get("special_tokens", ["[CLS]", "[SEP]"]), "punct."])


def _causal(report: dict) -> bool:
    return bool(report["model"].get("causal", False))


def print_report(report: dict, console: Console | None = None) -> None:
    """Print every section of an :func:`qkv.inspect.explain` report."""
    console = console or Console(width=100)
    tokens, focus = report["tokens"], report["focus"]
    model = report["model"]
    causal = (f"\ncausal model: '{focus['token']}', like every token, attends only to itself and the tokens "
              f"before it" if _causal(report) else "")
    console.print(Panel(
        Text.assemble((report["sentence"], "bold"), "\nfocus: ", (focus["token"], "bold cyan"),
                      f" (token {focus['index']}) · model: {model['layers']} layers x {model['heads']} heads, "
                      f"d_model {model['d_model']}, head dim {model['head_dim']}{causal}"),
        title="qkv explain", expand=False,
    ))
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
    console.print(Panel(Text(
        f"In the last layer, averaged over heads, '{focus['token']}' gives {last['parked_share']:.0%} of its "
        f"attention to {_set_aside(report)} ({parking}); among the {others} it attends most to {top}."),
        title="in short", expand=False,
    ))
    del tokens


def _tokens(report: dict, console: Console) -> None:
    table = Table(title="1. Tokens and their initial vectors (token embedding + position)", title_justify="left")
    for column in ("#", "token", "pieces", "|x|", "first dimensions"):
        table.add_column(column, overflow="fold")
    vectors = report["initial_vectors"]
    for i in _shown(report):
        token = report["tokens"][i]
        pieces = " ".join(report["pieces"][p] for p in report["word_pieces"][i])
        style = "bold cyan" if i == report["focus"]["index"] else ("dim" if report["kinds"][i] != "word" else "")
        table.add_row(str(i), Text(token, style=style), Text(pieces), f"{vectors['norm'][i]:.2f}",
                      fmt_vector(vectors["first_dims"][i], 4))
    console.print(table)


def _shown(report: dict, around: int = 15) -> list[int]:
    """Token indices to list: all of a short input, the focus's neighbourhood of a long one."""
    count, focus = len(report["tokens"]), report["focus"]["index"]
    if count <= 2 * around + 1:
        return list(range(count))
    start = max(0, min(focus - around, count - 2 * around - 1))
    return list(range(start, start + 2 * around + 1))


def _walkthrough(report: dict, console: Console) -> None:
    w = report["walkthrough"]
    piece = report["pieces"][w["query_piece"]]
    console.print(Text(
        f"\n2. One head step by step: layer {w['layer']}, head {w['head']} (query of '{piece}')", style="bold"
    ))
    if w.get("causal"):
        console.print(f"   causal: the query sees only the {len(w['keys'])} pieces up to itself; later ones are "
                      f"hidden (weight 0)")
    console.print(f"   query q = {fmt_vector(w['query'])}  ({len(w['query'])} numbers)")
    table = Table(show_edge=False)
    for column in ("key of", "k (first dims)", "q·k", f"× {w['scale']:.3f}", "softmax", ""):
        table.add_column(column)
    keys = range(len(w["keys"]))
    if len(w["keys"]) > 30:  # a long input: the 30 keys with the largest weights
        keys = sorted(sorted(keys, key=lambda i: -w["weights"][i])[:30])
        console.print(f"   (the 30 of {len(w['keys'])} keys with the largest weights)")
    for i in keys:
        key = w["keys"][i]
        table.add_row(Text(report["pieces"][i]), fmt_vector(key, 3), f"{w['dot'][i]:+.2f}",
                      f"{w['scores'][i]:+.2f}", f"{w['weights'][i]:.3f}", bar(w["weights"][i], 16))
    console.print(table)
    check = "equals" if w["matches_model"] else "DIFFERS FROM"
    console.print(f"   output = Σ weight × v = {fmt_vector(w['output'])}; {check} the model's own "
                  f"(max difference {w['max_difference']:.1e})")


def _layers(report: dict, console: Console) -> None:
    tokens, focus, kinds = report["tokens"], report["focus"]["index"], report["kinds"]
    console.print(Text(f"\n3. Where '{tokens[focus]}' looks, every layer (mean over heads; darker = more)",
                       style="bold"))
    if _causal(report):
        console.print("   causal: it can only look at itself and the words before it; later columns stay empty")
    if len(tokens) <= 16:
        console.print("   columns: " + "  ".join(f"{i}={t}" for i, t in enumerate(tokens)))
    table = Table(show_edge=False)
    table.add_column("layer")
    for i in range(len(tokens)):
        table.add_column(str(i), justify="center")
    table.add_column(f"to {_set_aside_short(report)}", justify="right")
    per_head = {(h["layer"], h["head"]): h for h in report["heads"]}
    best_words = []
    for layer, by_head in enumerate(report["focus_attention"]):
        focus_row = [sum(column) / len(column) for column in zip(*by_head)]  # mean over heads
        peak = max(focus_row)
        parked = sum(w for w, k in zip(focus_row, kinds) if k != "word")
        if len(tokens) <= 16:
            table.add_row(str(layer), *[shade(v, peak) * 2 for v in focus_row], f"{parked:.0%}")
        kept = sorted(((w, t) for t, w, k in zip(tokens, focus_row, kinds) if k == "word" and t != tokens[focus]),
                      reverse=True)
        heads = [per_head[(layer, h)] for h in range(report["model"]["heads"])]
        sharpest = max(heads, key=lambda h: h["top_content"][0][1] if h["top_content"] else 0.0)
        best_words.append(
            f"   layer {layer}: " + ", ".join(f"{t} {w:.2f}" for w, t in kept[:3])
            + (f"  · sharpest head h{sharpest['head']} → {sharpest['top_content'][0][0]} "
               f"{sharpest['top_content'][0][1]:.2f}" if sharpest["top_content"] else "")
        )
    if len(tokens) <= 16:
        console.print(table)
    console.print(Text(f"   most attended words, leaving out {_set_aside(report)} (the sharpest head's share\n"
                       "   is of its attention left for the other words):"))
    for line in best_words:
        console.print(Text(line))


def _senses(report: dict, console: Console) -> None:
    senses = report.get("senses")
    word = report["focus"]["token"]
    if not senses:
        console.print(f"\n4. Sense trajectory: no sense examples for '{word}'; pass --senses "
                      f"\"sense1: sentence | sentence; sense2: sentence\"")
        return
    names = senses["names"]
    console.print(Text(f"\n4. Context changing meaning: '{word}' against sense prototypes, layer by layer",
                       style="bold"))
    console.print("   rows: the word's vector from the embeddings (emb, before any attention), then after each "
                  "layer,\n   numbered as in sections 2 and 3")
    if _causal(report):
        console.print(Text(f"   causal: the vector of '{word}' depends only on the words before it, here, in the "
                           f"examples and in\n   the contrast sentence; words after it cannot change it"))
    table = Table(show_edge=False)
    table.add_column("after layer")
    for name in names:
        table.add_column(f"cos to {name}")
    table.add_column("nearest")
    table.add_column("margin")
    if senses["contrast_cosine"] is not None:
        table.add_column("cos to the word in the contrast sentence")
    for layer, row in enumerate(senses["cosine"]):
        ranked = sorted(row, reverse=True)
        cells = ["emb" if layer == 0 else str(layer - 1), *[f"{c:.3f}" for c in row], senses["predicted"][layer],
                 f"{ranked[0] - ranked[1]:+.3f} " + bar(ranked[0] - ranked[1], 12, 0.15)]
        if senses["contrast_cosine"] is not None:
            cells.append(f"{senses['contrast_cosine'][layer]:.3f}")
        table.add_row(*cells)
    console.print(table)
    if senses["contrast_sentence"]:
        console.print(Text(f"   contrast sentence: {senses['contrast_sentence']!r}"))


def _rollout(report: dict, console: Console) -> None:
    tokens = report["tokens"]
    console.print(Text("\n5. What reaches the focus token through all layers: attention rollout and flow "
                       "(Abnar & Zuidema, 2020; flow normalised to sum to 1)", style="bold"))
    rollout, flow = report["rollout"], report["flow"]
    if rollout is None:
        console.print("   (not for long inputs: both need every token's attention in every layer)")
        streamed = report.get("streamed")
        if streamed:
            console.print(f"   attention received, streamed with {streamed['method']}:")
            for layer, info in enumerate(streamed["layers"]):
                words = ", ".join(f"{t} {v:.2f}" for t, v in info["most_received"])
                console.print(f"   layer {layer}: {words} · mean entropy {info['mean_entropy']:.2f} nats")
        return
    table = Table(show_edge=False)
    for column in ("token", "rollout", "", "flow", ""):
        table.add_column(column)
    top_r = max(rollout)
    top_f = max(flow) if flow else 1.0
    for i, token in enumerate(tokens):
        table.add_row(Text(token), f"{rollout[i]:.3f}", bar(rollout[i], 14, top_r),
                      "-" if flow is None else f"{flow[i]:.3f}", "" if flow is None else bar(flow[i], 14, top_f))
    console.print(table)


def _heads(report: dict, console: Console) -> None:
    ablation = report["ablation"]
    peak = max(max(row) for row in ablation)
    console.print(Text("\n6. Heads that matter and what heads do", style="bold"))
    table = Table(title="how far the focus vector moves when one head is zeroed: (1 - cos) x 1000; bold = "
                        "at least half the largest", show_edge=False, title_justify="left")
    table.add_column("layer")
    for h in range(len(ablation[0])):
        table.add_column(f"h{h}", justify="right")
    for layer, row in enumerate(ablation):
        table.add_row(str(layer), *[Text(f"{v * 1000:.1f}", style="bold" if v >= 0.5 * peak else "dim")
                                    for v in row])
    console.print(table)
    roles = report["head_roles"]
    legend = {"previous": ("P", "previous"), "next": ("N", "next"), "self": ("S", "itself"),
              "cls": ("C", "[CLS]"), "first": ("F", "the first token"), "sep": ("E", "[SEP]"),
              "punctuation": (".", "punctuation")}
    letters = {name: letter for name, (letter, _) in legend.items() if name in roles}
    described = ", ".join(f"{letter} {legend[name][1]}" for name, letter in letters.items())
    table = Table(title=f"head roles (Clark et al., 2019): the kind of token each head attends to most — {described}; "
                        "lower case below 50%", show_edge=False, title_justify="left")
    table.add_column("layer")
    heads = len(roles["previous"][0])
    for h in range(heads):
        table.add_column(f"h{h}", justify="center")
    for layer in range(len(roles["previous"])):
        cells = []
        for h in range(heads):
            name, value = max(((n, roles[n][layer][h]) for n in letters), key=lambda nv: nv[1])
            letter = letters[name]
            cells.append(f"{letter if value >= 0.5 else letter.lower()}{value:.0%}".rjust(4))
        table.add_row(str(layer), *cells)
    console.print(table)

"""The whole explanation of one sentence: every step of attention on a real model.

:func:`explain` runs the model once with every activation captured and returns a
report, a plain dict of lists and numbers (what ``qkv explain --json`` writes and the
terminal, figure and HTML views read):

1. tokens (word pieces merged into words) and their initial vectors;
2. one layer and head step by step: the focus token's query, every key, the scaled dot
   products, the softmax weights and the weighted average of the values;
3. the focus token's attention in every layer and head, with and without the special
   tokens ([CLS], [SEP]; GPT-2 has none) and punctuation, and the share those receive;
   where each word looks most is one ranking by exact weight, :func:`rank_attention`,
   which every view renders;
4. the focus vector against sense prototypes, layer by layer;
5. attention rollout and flow, and head importance by ablation;
6. head roles (Clark et al., 2019).

``report["length"]`` compares the input's length with what the model was trained on
(:func:`input_length`) and says, in words, what a longer input means for the attention shown.

BERT-family encoders and GPT-2- and Llama-family decoders work. In a causal model a
token attends only to itself and the tokens before it: the walkthrough lists those keys
only, ``report["model"]["causal"]`` says so, and the views mention it where it matters.
A Llama-family model also gets its attention sink set aside (``report["sink"]``), its
grouped-query heads named (``report["model"]["kv_groups"]``) and the walkthrough's q and k
before the rotary rotation (``report["walkthrough"]["rotary"]``).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch

from qkv.functional import attention_stats, attention_weights
from qkv.functional.api import build_spec
from qkv.inspect.ablation import head_ablation
from qkv.inspect.heads import ROLE_NAMES, attention_share, head_roles
from qkv.inspect.rollout import attention_flow, attention_rollout, flat_note
from qkv.inspect.senses import DEFAULT_SENSES, sense_trajectory
from qkv.inspect.words import WordView, unknown_token, word_view
from qkv.numbering import LAYER_NUMBERING
from qkv.text import DEFAULT_FOCUS, DEFAULT_SENTENCE

if TYPE_CHECKING:
    from qkv.functional import AttentionStats
    from qkv.models.tokenizer import Tokenizer
    from qkv.nn.hooks import ActivationCache
    from qkv.nn.stack import TransformerStack
    from qkv.text import Batch

__all__ = ["explain", "rank_attention", "input_length", "DEFAULT_SENTENCE", "DEFAULT_FOCUS", "STOPWORDS",
           "LONG_INPUT", "RANKED"]

LONG_INPUT = 512  # longer inputs get streamed top-k views instead of (N, N) matrices
POSITIONAL = 0.9  # a head giving this share of the focus's attention to a neighbouring word is positional
MAX_MATRIX_WORDS = 128  # beyond this the report leaves out every head's (W, W) matrix (heatmaps)
RANKED = 10  # keys listed per ranking in the report; the views name the first few
# Function words: the default head is the one where the focus attends most to the rest.
STOPWORDS = frozenset((
    "a an the and or but if of at by for with about to from in on into onto over under up down out off "
    "is am are was were be been being have has had do does did will would can could should may might must "
    "i me my mine you your yours he him his she her hers it its we us our ours they them their theirs "
    "this that these those there here what which who whom whose as than so not no nor too very just s t"
).split())


def _round(values, digits: int = 5):
    """Tensors to nested lists of rounded floats, for JSON."""
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, list):
        return [_round(v, digits) for v in values]
    if isinstance(values, float):
        return round(values, digits) if math.isfinite(values) else None
    return values


def rank_attention(weights: torch.Tensor, parked: torch.Tensor, top: int = RANKED) -> dict:
    """Where a word looks most: the keys of each row of ``weights`` ranked by their exact weight.

    The one ranking every view shows (page captions and side panel, terminal, JSON). The word
    itself and the parked tokens (special tokens, punctuation) are ranked like any other key;
    the views mark them, and ``parked_share`` states how much goes to the parked ones. Ties
    keep sentence order. Only the listed weights are rounded, after ranking.

    Args:
        weights: (..., W) attention rows, each summing to 1 over the W keys.
        parked: (W,) bool, True for the keys set aside as parking places.
        top: how many keys to list per row.

    Returns:
        Nested lists with the leading shape (...): ``order`` (..., k) key indices, largest
        weight first, k = min(top, W); ``weights`` (..., k) their weights; ``parked_share``
        (...); ``left_out_max`` (...), the largest weight among the keys not listed (0.0 when
        all are listed); and ``left_out``, the number of keys not listed per row.
    """
    count = weights.shape[-1]
    k = min(top, count)
    values, order = torch.sort(weights.float(), dim=-1, descending=True, stable=True)  # (..., W)
    left_out_max = values[..., k] if k < count else values.new_zeros(values.shape[:-1])  # (...)
    return {
        "order": order[..., :k].tolist(),
        "weights": _round(values[..., :k]),
        "parked_share": _round(weights[..., parked.to(weights.device)].float().sum(-1)),
        "left_out": count - k,
        "left_out_max": _round(left_out_max),
    }


def input_length(model: TransformerStack, tokens: int, truncated_from: int | None = None) -> dict:
    """The input's length against what ``model`` was trained on, for the report.

    ``trained``: the longest input the model was trained for (a sentence-transformers
    folder's ``max_seq_length``, which :func:`qkv.load` reads; MiniLM: 256), else its
    position table; ``positions``: the rows of its position table (MiniLM: 512).
    ``beyond_trained``: the input is longer than ``trained``; ``truncated_from``: the
    input's length before truncation (None: not truncated); ``note``: what this means for
    the attention shown, in words, for every view ("" for an input of a trained length).
    """
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    trained = getattr(model, "sentence_max_length", None) or positions
    beyond = trained is not None and tokens > trained
    if truncated_from is not None:
        note = (f"Truncated: the input had {truncated_from} tokens; this report explains its first {tokens} "
                f"(whole words), within the {trained} the model was trained on.")
    elif beyond:
        note = (f"This input has {tokens} tokens; the model was trained on inputs of at most {trained} "
                f"(its position table has {positions} rows). Positions from {trained} on were rarely or never seen "
                f"in training, so the attention shown there, positional heads above all, may not be what the model "
                f"does on text like its training data: a head may jump far away or spread out. To stay within what "
                f"it was trained on, truncate to the first {trained} tokens (qkv explain --truncate).")
    else:
        note = ""
    return {"tokens": tokens, "trained": trained, "positions": positions, "beyond_trained": beyond,
            "truncated_from": truncated_from, "note": note}


def _truncated(tokenizer: Tokenizer, sentence: str, limit: int) -> str:
    """The longest start of ``sentence`` made of whole words that fits in ``limit`` tokens,
    special tokens included."""
    batch = tokenizer(sentence, truncation=False)
    words, offsets, special = batch.word_ids[0], batch.offsets[0], batch.special_tokens_mask[0]
    content = [i for i, flag in enumerate(special) if not flag]
    trailing = len(special) - 1 - content[-1] if content else 0  # [SEP]
    last = limit - 1 - trailing  # the last position a content piece may take
    end = 0  # characters kept
    for i in range(min(last + 1, len(words))):
        whole = words[i] is not None and (i + 1 >= len(words) or words[i + 1] != words[i])
        if whole:
            end = offsets[i][1]
    return sentence[:end]


def content_mask(view: WordView, focus: int) -> torch.Tensor:
    """(W,) True for words that carry content: not special, punctuation, stopwords or the focus."""
    return torch.tensor([
        kind == "word" and token.lower() not in STOPWORDS and i != focus
        for i, (token, kind) in enumerate(zip(view.tokens, view.kinds))
    ])


def set_aside_phrase(special_tokens: list[str]) -> str:
    """What the report sets aside as places to park attention: "[CLS], [SEP] and punctuation",
    or "punctuation" for a model without special tokens (GPT-2)."""
    return ", ".join(special_tokens) + " and punctuation" if special_tokens else "punctuation"


def _roles_for_model(roles: dict[str, torch.Tensor], view: WordView, causal: bool) -> dict[str, torch.Tensor]:
    """Keep the head roles that exist in this model: without a leading special token, "cls"
    becomes "first" (the first word, where causal models park attention); "sep" and
    "special" need such tokens; "next" is always 0 in a causal model, so it is left out."""
    roles = dict(roles)
    if view.kinds[0] != "special":
        roles = {("first" if name == "cls" else name): value for name, value in roles.items()}
    if "[SEP]" not in view.tokens:
        roles.pop("sep")
    if not view.special_mask.any():
        roles.pop("special")
    if causal:
        roles.pop("next")
    return roles


@torch.no_grad()
def explain(
    model: TransformerStack,
    tokenizer: Tokenizer,
    sentence: str = DEFAULT_SENTENCE,
    focus: str = DEFAULT_FOCUS,
    *,
    occurrence: int | None = None,
    layer: int | None = None,
    head: int | None = None,
    senses: dict[str, list[str]] | None = None,
    contrast: str | None = None,
    top: int = 3,
    long_view: bool | None = None,
    truncate: bool = False,
) -> dict:
    """Explain how ``model`` attends in ``sentence``, following the word ``focus``.

    Args:
        model: a qkv BERT- or GPT-2-family model (e.g. from ``qkv.load()``).
        tokenizer: its tokenizer.
        sentence: the text.
        focus: a word of the sentence (case-insensitive, surrounding spaces ignored), or a
            symbol or emoji of it (one the tokenizer reads as [UNK] is followed, and
            ``report["focus"]["note"]`` says what that means).
        occurrence: which occurrence of a repeated ``focus`` to follow, from 1 (default: the
            first; ``report["focus"]["note"]`` then says that it repeats and how to choose).
        layer, head: the head to walk through step by step, counted from 0 (default: the
            head where the focus pays most attention to content words, passing over heads
            that put 90% or more of it on the word just before or after it; see
            :func:`choose_head`; ``report["walkthrough"]["chosen"]`` says why, in words).
        senses: sense name -> example sentences using ``focus`` in that sense (default
            for 'bank': money and river contexts; None otherwise skips the section).
        contrast: a sentence using ``focus`` in another sense (default: the example of the
            sense the focus is farthest from at the last layer that is nearest that sense's
            mean; see :func:`qkv.inspect.senses.sense_trajectory`).
        top: how many most-attended tokens to list per head.
        long_view: compute without materialising any (N, N) matrix: the focus token's
            rows exactly, every other statistic streamed by :func:`qkv.attention_stats`
            (no heatmaps, rollout or flow). Default: for inputs over 512 tokens.
        truncate: an input longer than the model was trained on (``report["length"]``,
            see :func:`input_length`) is cut, at a word boundary, to that length; without
            it the whole input is explained and ``report["length"]["beyond_trained"]`` says
            that it is longer.

    Returns:
        A JSON-ready dict; see the module docstring for its sections.

    Raises:
        ValueError: an empty sentence, one longer than the model reads (without
            ``truncate``), ``focus`` not among its words (or not in the part ``truncate``
            keeps), or ``occurrence``/``layer``/``head`` out of range; all before the model runs.
    """
    if not sentence.strip():
        raise ValueError("the sentence is empty; give a sentence that contains the focus word")
    batch = tokenizer(sentence, truncation=False)
    length = input_length(model, batch.input_ids.shape[1])
    if truncate and length["beyond_trained"]:
        sentence = _truncated(tokenizer, sentence, length["trained"])
        batch = tokenizer(sentence, truncation=False)
        length = input_length(model, batch.input_ids.shape[1], truncated_from=length["tokens"])
    if length["positions"] is not None and length["tokens"] > length["positions"]:
        raise ValueError(
            f"the sentence has {length['tokens']} tokens; this model reads at most {length['positions']}. "
            f"Shorten it, or truncate it to the {length['trained']} tokens the model was trained on "
            f"(qkv explain --truncate, or truncate=True)."
        )
    view = word_view(batch)
    try:
        chosen_focus = view.find(focus, occurrence, unknown_token=unknown_token(tokenizer))
    except ValueError as err:
        if length["truncated_from"] is None:
            raise
        raise ValueError(f"focus word {focus!r} is not in the first {length['tokens']} tokens that truncation "
                         f"keeps (of {length['truncated_from']}); choose a word near the start, or leave out "
                         f"--truncate") from err
    focus_word = chosen_focus.index
    focus_pieces = view.pieces[focus_word]
    word = view.tokens[focus_word].lower()
    senses = senses if senses is not None else DEFAULT_SENSES.get(word)
    check_contrast(tokenizer, word, senses, contrast)
    layers, heads = len(model.blocks), model.blocks[0].attn.num_heads
    causal = bool(model.blocks[0].attn.causal)
    if layer is not None and not 0 <= layer < layers:
        raise ValueError(f"layer must be in 0..{layers - 1} (the model has {layers} layers); got {layer}")
    if head is not None and not 0 <= head < heads:
        raise ValueError(f"head must be in 0..{heads - 1} (each layer has {heads} heads); got {head}")
    long_view = batch.input_ids.shape[1] > LONG_INPUT if long_view is None else long_view
    if long_view:  # never materialise (N, N): the focus rows exactly, the rest streamed
        _, cache = model.run_with_cache(batch, names=[f"blocks.*.attn.{n}" for n in ("q", "k", "v", "z")])
        focus_rows = streamed_focus_rows(model, cache, view, focus_pieces, causal=causal)  # (L, H, W)
        weights = None
    else:
        _, cache = model.run_with_cache(batch)
        piece_weights = cache.stack("attn.weights")[:, 0]  # (L, H, N, N)
        weights = view.attention_to_words(piece_weights)  # (L, H, W, W)
        focus_rows = weights[:, :, focus_word]  # (L, H, W)
    parked = view.special_mask | view.punctuation_mask  # (W,)
    content = content_mask(view, focus_word)
    kinds, set_aside = list(view.kinds), None
    # A model whose heads park attention on the first token (the attention sink) gets it set aside
    # as BERT's [CLS] and [SEP] are: kind "sink", left out of the content words.
    sink = bool(getattr(model, "first_token_sink", False)) and focus_word != 0
    if sink:
        kinds[0] = "sink"
        parked, content = parked.clone(), content.clone()
        parked[0], content[0] = True, False
        set_aside = f"the first token ('{view.tokens[0]}', the attention sink) and punctuation"
    content_share = focus_rows[..., content].sum(-1)  # (L, H)
    layer, head, chosen = choose_head(focus_rows, content_share, focus_word, view.tokens, layer, head)

    special_tokens = list(dict.fromkeys(t for t, kind in zip(view.tokens, view.kinds) if kind == "special"))
    report = {
        "layer_numbering": LAYER_NUMBERING,
        "model": {"layers": layers, "heads": heads, "d_model": model.blocks[0].attn.d_model,
                  "head_dim": model.blocks[0].attn.head_dim, "name": getattr(model, "name", None),
                  "causal": causal, "kv_heads": model.blocks[0].attn.num_kv_heads,
                  "positions": "learned" if model.embed.positions is not None else "rotary",
                  # query heads sharing each key/value head (grouped-query attention)
                  "kv_groups": [list(range(g * (heads // model.blocks[0].attn.num_kv_heads),
                                           (g + 1) * (heads // model.blocks[0].attn.num_kv_heads)))
                                for g in range(model.blocks[0].attn.num_kv_heads)]},
        "sentence": sentence,  # as explained: cut to its first words when truncated
        "length": length,  # tokens, against what the model was trained on; see input_length
        "long_view": long_view,
        "tokens": view.tokens,
        "kinds": kinds,
        "pieces": view.piece_tokens,
        "word_pieces": view.pieces,
        "focus": {"index": focus_word, "token": view.tokens[focus_word], "pieces": focus_pieces,
                  "occurrence": chosen_focus.occurrence,  # which occurrence of the word, from 1
                  "occurrences": chosen_focus.occurrences,  # the token index of each occurrence
                  "note": chosen_focus.note},  # the word repeats / is read as [UNK], in words; or None
        "special_tokens": special_tokens,  # distinct, in order: ["[CLS]", "[SEP]"] for BERT, [] for GPT-2
        "set_aside": set_aside or set_aside_phrase(special_tokens),  # what "parked" attention goes to, in words
        # the focus's attention on the first token: per layer (mean over heads) and per head
        "sink": {"token": view.tokens[0], "share": _round(focus_rows[..., 0].mean(-1)),
                 "share_by_head": _round(focus_rows[..., 0])} if sink else None,
    }
    report["initial_vectors"] = initial_vectors(model, batch, view)
    attn = model.blocks[layer].attn
    report["walkthrough"] = walkthrough(cache, layer, head, focus_pieces[0], view, scale=attn.effective_scale,
                                        causal=attn.causal, window=attn.options.get("window"),
                                        global_tokens=attn.options.get("global_tokens"))
    report["walkthrough"]["chosen"] = chosen  # why this head, in words
    report["focus_attention"] = _round(focus_rows)  # (L, H, W)
    report["heads"] = head_summaries(focus_rows, parked, view, top)
    report["layer_ranked"] = rank_attention(focus_rows.mean(dim=1), parked)  # (L, k): the focus, mean over heads
    # Every head's (W, W) weights, for the heatmaps; long inputs have top-k views instead.
    matrices = weights is not None and len(view) <= MAX_MATRIX_WORDS
    report["attention_layer_mean"] = _round(weights.mean(dim=1), 4) if matrices else None  # (L, W, W)
    report["attention"] = _round(weights, 4) if matrices else None  # (L, H, W, W)
    report["ranked"] = rank_attention(weights, parked) if matrices else None  # (L, H, W, k): every word
    report["content_share"] = _round(content_share)

    last = focus_rows[-1].mean(dim=0)  # (W,) last layer, mean over heads
    share, kept = attention_share(last, parked)
    order = [i for i in kept.argsort(descending=True, stable=True).tolist() if not parked[i] and i != focus_word]
    report["last_layer"] = {
        "mean_attention": _round(last),
        "parked_share": round(float(share), 5),
        "top_content": [{"index": i, "token": view.tokens[i], "weight": round(float(last[i]), 5)}
                        for i in order[:top]],
        "ranked": rank_attention(last, parked),
    }
    report["rollout"], report["flow"], report["rollout_order"] = None, None, None  # need every row of every layer
    if weights is not None:
        rollout = attention_rollout(weights)[-1, focus_word]  # (W,)
        report["rollout"] = _round(rollout)
        report["rollout_order"] = torch.sort(rollout, descending=True, stable=True).indices.tolist()
        # Refused (ValueError) when exact max-flow would take more than seconds; rollout still shows paths.
        with contextlib.suppress(ValueError):
            report["flow"] = _round(attention_flow(weights, focus_word, normalize=True)[-1])  # (W,), sums to 1
    # Near-even shares single out no word: say so rather than let their bars look meaningful.
    report["flat_notes"] = [note for name in ("rollout", "flow")
                            if report[name] is not None and (note := flat_note(name, report[name]))]
    # A long input ablates one head per forward pass: the memory of the forward pass, not L*H times it.
    report["ablation"] = _round(head_ablation(model, batch.input_ids, focus_pieces,
                                              rows_per_pass=1 if long_view else None))  # (L, H)
    if weights is not None:
        sep_mask = torch.tensor([t == "[SEP]" for t in view.tokens])
        roles = head_roles(weights, view.special_mask, view.punctuation_mask, cls_index=0, sep_mask=sep_mask)
    else:
        stats = streamed_layer_stats(model, cache, top, causal=causal)
        roles = streamed_head_roles(model, cache, view, stats, causal=causal)
    roles = _roles_for_model(roles, view, causal)
    report["head_roles"] = {name: _round(value) for name, value in roles.items()}  # each (L, H)
    report["role_names"] = {name: ROLE_NAMES[name] for name in roles}  # in words, for every view's labels
    if long_view:
        report["streamed"] = streamed_summaries(view, stats, top)

    if senses:
        trajectory = sense_trajectory(model, tokenizer, sentence, word, senses, contrast, chosen_focus.occurrence)
        report["senses"] = {
            "names": trajectory.senses,
            "examples": senses,
            "cosine": _round(trajectory.cosine),  # (L+1, S)
            "predicted": trajectory.predicted,
            "contrast_sentence": trajectory.contrast_sentence,
            "contrast_cosine": _round(trajectory.contrast_cosine),  # (L+1,)
            "contrast_sense": trajectory.contrast_sense,
            "contrast_reason": trajectory.contrast_reason,  # why this contrast, in words
        }
    else:
        report["senses"] = None
    return report


def check_contrast(tokenizer: Tokenizer, word: str, senses: dict[str, list[str]] | None,
                   contrast: str | None) -> None:
    """Refuse, before the model runs, a contrast sentence that would not be shown (no senses to
    compare it in) or that does not contain ``word``."""
    if contrast is None:
        return
    if not senses:
        raise ValueError(f"contrast: '{word}' has no built-in sense examples, and the contrast sentence is shown "
                         f"in the sense section; give senses too (--senses \"sense1: sentence | sentence; sense2: "
                         f"sentence\")")
    try:
        word_view(tokenizer(contrast, truncation=False)).find(word)
    except ValueError as error:
        raise ValueError(f"contrast sentence {contrast!r}: {error}") from error


def choose_head(focus_rows: torch.Tensor, content_share: torch.Tensor, focus: int, tokens: list[str],
                layer: int | None = None, head: int | None = None) -> tuple[int, int, str]:
    """The head to walk through, and why it was chosen, in words.

    Given ``layer`` and ``head`` are kept; a missing one is chosen among the heads they allow:
    the head where word ``focus`` gives the largest share of its attention to content words
    (``content_share``, (L, H)), passing over positional heads, which put at least
    :data:`POSITIONAL` of its attention (``focus_rows``, (L, H, W)) on the word just before or
    after it: their walkthrough would show nothing but position. If every allowed head is
    positional, the best of them is taken anyway.
    """
    if layer is not None and head is not None:
        return layer, head, "the layer and head asked for"
    among = ("all heads" if layer is None and head is None
             else f"the heads of layer {layer}" if layer is not None else f"head {head} of every layer")
    allowed = torch.zeros_like(content_share, dtype=torch.bool)  # (L, H)
    allowed[slice(None) if layer is None else layer, slice(None) if head is None else head] = True
    neighbours = torch.tensor([i for i in (focus - 1, focus + 1) if 0 <= i < len(tokens)], dtype=torch.long)
    if len(neighbours):
        on_neighbour, which = focus_rows[..., neighbours].max(-1)  # (L, H)
    else:  # a one-word input without special tokens (GPT-2): no head can be positional
        on_neighbour = which = torch.zeros_like(content_share, dtype=torch.long)
    positional = on_neighbour >= POSITIONAL

    def best(candidates: torch.Tensor) -> tuple[int, int]:
        return divmod(int(content_share.masked_fill(~candidates, -1.0).flatten().argmax()), content_share.shape[1])

    layer, head = best(allowed & ~positional) if (allowed & ~positional).any() else best(allowed)
    why = (f"among {among}, the one where '{tokens[focus]}' gives the largest share of its attention to content "
           f"words ({float(content_share[layer, head]):.0%})")
    top_layer, top_head = best(allowed)
    if (top_layer, top_head) != (layer, head):
        neighbour = int(neighbours[which[top_layer, top_head]])
        why += (f"; layer {top_layer} head {top_head} gives more ({float(content_share[top_layer, top_head]):.0%}) "
                f"but puts {float(on_neighbour[top_layer, top_head]):.0%} on '{tokens[neighbour]}', the word just "
                f"{'before' if neighbour < focus else 'after'} it: a positional head, passed over")
    elif positional[layer, head]:
        why += f" (every such head puts at least {POSITIONAL:.0%} on a neighbouring word)"
    return layer, head, why


def initial_vectors(model: TransformerStack, batch: Batch, view: WordView) -> dict:
    """Token embedding + position embedding of each word (mean of its pieces), before LayerNorm.

    A model with rotary positions (Llama family) has no position embedding: its positions
    enter as rotations of q and k inside every layer, so the vector is the token's alone.
    """
    ids = batch.input_ids.to(model.device)
    raw = model.embed.tokens(ids)[0]  # (N, d)
    if model.embed.positions is not None:
        raw = raw + model.embed.positions(torch.arange(ids.shape[1], device=ids.device))
    words = view.vectors_to_words(raw)  # (W, d)
    return {"norm": _round(words.norm(dim=-1)), "first_dims": _round(words[:, :8], 4)}


def walkthrough(cache: ActivationCache, layer: int, head: int, query_piece: int, view: WordView, *,
                scale: float | None = None, causal: bool = False, window: object = None,
                global_tokens: object = None) -> dict:
    """Query, keys, scores, weights and output of one head for the focus's first piece.

    ``scale`` multiplies q·k (None: 1/sqrt(Dh)), as the layer's own. ``causal``, ``window``
    and ``global_tokens`` (as :func:`qkv.attention` takes them, and as the layer runs) decide
    which keys the query sees: only those K keys are listed, their piece indices in
    ``key_pieces`` (all N without either). Returns lists: query (Dh,), keys and values
    (K, Dh), dot, scores and weights (K,), output (Dh,).
    """
    prefix = f"blocks.{layer}.attn."
    queries = cache[prefix + "q"]  # (1, H, N, Dh)
    k = cache[prefix + "k"][0]  # (Hkv, N, Dh)
    v = cache[prefix + "v"][0]
    spec, _ = build_spec(queries, k[None], v[None], causal=causal, window=window, mask=None,
                         key_padding_mask=None, scale=scale, global_tokens=global_tokens)
    keys = torch.arange(k.shape[1])
    visible = spec.pair_structure(torch.tensor([query_piece + spec.offset]), keys)[0]  # (N,) bool
    key_pieces = keys[visible]  # (K,) the pieces this query sees
    q = queries[0, head, query_piece]  # (Dh,)
    group = queries.shape[1] // k.shape[0]
    k, v = k[head // group][key_pieces], v[head // group][key_pieces]  # (K, Dh)
    dots = k @ q  # (K,)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = dots * scale
    weights = torch.softmax(scores, dim=-1)
    output = weights @ v  # (Dh,)
    captured = cache[prefix + "z"][0, head, query_piece]
    rotary = None
    if prefix + "q_pre_rotary" in cache:  # rotary positions: q and k before the rotation, and their dot products
        raw_q = cache[prefix + "q_pre_rotary"][0, head, query_piece]  # (Dh,)
        raw_k = cache[prefix + "k_pre_rotary"][0, head // group][key_pieces]  # (K, Dh)
        rotary = {"query": _round(raw_q, 4), "keys": _round(raw_k, 4), "dot": _round(raw_k @ raw_q)}
    return {
        "layer": layer,
        "head": head,
        "query_piece": query_piece,
        "scale": scale,
        "causal": causal,
        "window": None if spec.left is None and (spec.right is None or causal) else [spec.left, spec.right],
        "key_pieces": key_pieces.tolist(),
        "query": _round(q, 4),
        "keys": _round(k, 4),
        "values": _round(v, 4),
        "dot": _round(dots),
        "scores": _round(scores),
        "weights": _round(weights),
        "order": torch.sort(weights, descending=True, stable=True).indices.tolist(),  # (K,) by exact weight
        "output": _round(output, 4),
        "rotary": rotary,  # before rotation (None without rotary positions); query, keys, dot as above
        "matches_model": bool(torch.allclose(output, captured, atol=1e-5)),
        "max_difference": float((output - captured).abs().max()),
    }


def head_summaries(focus_rows: torch.Tensor, parked: torch.Tensor, view: WordView, top: int) -> list[dict]:
    """Per layer and head: the focus word's ranking (:func:`rank_attention`), its top content
    words (without special tokens, punctuation and itself, renormalised), and the parked share."""
    summaries = []
    for layer in range(focus_rows.shape[0]):
        for head in range(focus_rows.shape[1]):
            row = focus_rows[layer, head]  # (W,)
            share, kept = attention_share(row, parked)
            summaries.append({
                "layer": layer,
                "head": head,
                "ranked": rank_attention(row, parked),
                "top_content": [[view.tokens[i], round(float(kept[i]), 4)]
                                for i in kept.argsort(descending=True, stable=True)[:top] if not parked[i]],
                "parked_share": round(float(share), 4),
                "entropy": round(float(-(row * torch.log(row.clamp(min=1e-12))).sum()), 4),
            })
    return summaries



def _layer_qk(model: TransformerStack, cache: ActivationCache, layer: int):
    """Queries (1, H, N, Dh), keys (1, Hkv, N, Dh) and the scale of one layer."""
    attn = model.blocks[layer].attn
    q, k = cache[f"blocks.{layer}.attn.q"], cache[f"blocks.{layer}.attn.k"]
    return q, k, attn.effective_scale


def streamed_focus_rows(model: TransformerStack, cache: ActivationCache, view: WordView, focus_pieces: list[int],
                        *, causal: bool = False) -> torch.Tensor:
    """The focus word's attention rows (L, H, W), exactly, from its own queries only."""
    # A causal piece p sees keys 0..p (an explicit mask: qkv's causal=True would align these
    # P queries with the last P keys).
    mask = None
    if causal:
        mask = torch.arange(len(view.piece_tokens))[None, :] <= torch.tensor(focus_pieces)[:, None]  # (P, N)
    rows = []
    for layer in range(len(model.blocks)):
        q, k, scale = _layer_qk(model, cache, layer)
        piece_rows = attention_weights(q[:, :, focus_pieces], k, scale=scale,
                                       mask=None if mask is None else mask.to(q.device))[0]  # (H, P, N)
        rows.append(view.sum_over_words(piece_rows.mean(dim=1).float()))  # (H, W): a word gets its pieces' sum
    return torch.stack(rows)


def streamed_layer_stats(model: TransformerStack, cache: ActivationCache, top: int, *,
                         causal: bool = False) -> list[AttentionStats]:
    """Every layer's :func:`qkv.attention_stats` (LSE, entropy, top-``top`` keys, attention
    received), each in O(N) memory; computed once for the head roles and the summaries."""
    stats = []
    for layer in range(len(model.blocks)):
        q, k, scale = _layer_qk(model, cache, layer)
        stats.append(attention_stats(q, k, scale=scale, topk=top, causal=causal))
    return stats


def _diagonal_weights(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, shift: int, scale: float | None):
    """Weight of query i on key i + shift, exp(q_i . k_(i+shift) * scale - lse_i): (1, H, N - |shift|)."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    n = q.shape[2]
    queries = slice(max(0, -shift), n - max(0, shift))
    keys = slice(max(0, shift), n - max(0, -shift))
    scores = (q[:, :, queries] * k[:, :, keys]).sum(-1) * scale  # (1, H, N - |shift|)
    return torch.exp(scores - lse[:, :, queries])


# Scores held at once by _weight_on: query rows x chosen keys per head.
_WEIGHT_ON_BLOCK = 1 << 18


def _weight_on(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, positions: list[int], scale: float | None, *,
               causal: bool = False) -> torch.Tensor:
    """The weight each query puts on a set of key ``positions`` together: (1, H, N).

    sum over j in positions of exp(q_i . k_j * scale - lse_i), for a block of queries at a
    time, so that at most :data:`_WEIGHT_ON_BLOCK` scores per head are held however many
    positions there are (every punctuation mark of a long text). q: (1, H, N, Dh);
    k: (1, Hkv, N, Dh); lse: (1, H, N). A causal query sees only the positions up to its own.
    """
    n = q.shape[2]
    total = q.new_zeros(q.shape[:3], dtype=torch.float32)  # (1, H, N)
    if not positions:
        return total
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    chosen = torch.tensor(positions, device=q.device)  # (S,)
    keys = k[:, :, chosen].repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (1, H, S, Dh)
    rows = max(1, _WEIGHT_ON_BLOCK // len(positions))
    for start in range(0, n, rows):
        end = min(start + rows, n)
        scores = q[:, :, start:end] @ keys.transpose(-1, -2) * scale  # (1, H, rows, S)
        weights = torch.exp(scores.float() - lse[:, :, start:end, None].float())
        if causal:
            weights = weights.masked_fill(chosen[None, :] > torch.arange(start, end, device=q.device)[:, None], 0.0)
        total[:, :, start:end] = weights.sum(-1)
    return total


def streamed_head_roles(model: TransformerStack, cache: ActivationCache, view: WordView,
                        stats: list[AttentionStats], *, causal: bool = False) -> dict[str, torch.Tensor]:
    """Clark et al.'s head roles at the piece level, in O(N) memory from each layer's LSE.

    previous, self, next: exp(q_i . k_j * scale - lse_i) for j = i - 1, i, i + 1 (next is 0
    when ``causal``); [CLS] (position 0), [SEP], punctuation and special tokens: the weight
    on those positions together. ``stats``: :func:`streamed_layer_stats`. Each (L, H).
    """
    kinds = [view.kinds[w] for w, pieces in enumerate(view.pieces) for _ in pieces]
    tokens = view.piece_tokens
    groups = {"cls": [0], "sep": [i for i, t in enumerate(tokens) if t == "[SEP]"],
              "punctuation": [i for i, kind in enumerate(kinds) if kind == "punctuation"],
              "special": [i for i, kind in enumerate(kinds) if kind == "special"]}
    roles: dict[str, list[torch.Tensor]] = {n: [] for n in ("previous", "next", "self", *groups)}
    for layer, layer_stats in enumerate(stats):
        q, k, scale = _layer_qk(model, cache, layer)
        for name, positions in groups.items():
            roles[name].append(_weight_on(q, k, layer_stats.lse, positions, scale, causal=causal)[0].mean(-1))
        for name, shift in (("previous", -1), ("self", 0), ("next", 1)):
            weights = _diagonal_weights(q, k, layer_stats.lse, shift, scale)[0]  # (H, N - |shift|)
            roles[name].append(weights.new_zeros(weights.shape[0]) if causal and shift > 0 else weights.mean(-1))
    return {name: torch.stack(values) for name, values in roles.items()}  # each (L, H)


def streamed_summaries(view: WordView, stats: list[AttentionStats], top: int) -> dict:
    """Per layer: the words that receive the most attention, and how spread out attention is.
    ``stats``: :func:`streamed_layer_stats`."""
    word_of_piece = view.piece_words.tolist()
    layers = []
    for layer_stats in stats:
        received = layer_stats.received[0].mean(dim=0)  # (N,) mean over heads
        best = received.argsort(descending=True)[:top].tolist()
        layers.append({
            "most_received": [[view.tokens[word_of_piece[i]], round(float(received[i]), 3)] for i in best],
            "mean_entropy": round(float(layer_stats.entropy[0].mean()), 4),
        })
    return {"layers": layers, "method": "qkv.attention_stats: two streamed passes, O(N) memory"}

"""Activation patching: which activations carry the difference between two inputs.

Attention weights show where a head looks, not whether what it brings matters. Patching
tests it causally (Vig et al., 2020; Meng et al., 2022; TransformerLens): run a *clean*
input and a *corrupted* one that differs in one respect ("France" against "Italy",
"deposited her check" against "sat on ... the river"), then rerun the corrupted input
with one activation copied from the clean run, and see how much of the clean metric
comes back. One patch per row of a batch, through the models' hook points:

* ``resid``: the residual stream entering layer i (``blocks.{i}.resid_pre``) at one position;
* ``z``: one head's output, its weighted average of the values (``blocks.{i}.attn.z``),
  at every position;
* ``weights``: one head's attention weights (``blocks.{i}.attn.weights``), every row.

The metric is a number read from the model's output. For a decoder it is the logit
difference between the clean answer and the corrupted one at the last position
(:class:`LogitDifference`); for an encoder, the focus word's cosine to a sense prototype
(:class:`SenseCosine`). Results are given raw and as the share of the clean effect
restored, ``(patched - corrupted) / (clean - corrupted)``: 0 is the corrupted run, 1 the
clean one.

The two inputs are aligned position by position. With equal token counts (and the focus
word, if any, at the same position) position p pairs with position p. Otherwise the focus
word is aligned: a corrupted position pairs with the clean position at the same distance
from the focus word's first piece, the special tokens pair in order ([CLS] with [CLS],
[SEP] with [SEP]), and a position without a partner is not patched (NaN in the grid). A
decoder's metric reads the last position, so decoder inputs need equal token counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.numbering import LAYER_NUMBERING

if TYPE_CHECKING:
    from qkv.models.tokenizer import Tokenizer
    from qkv.nn.stack import TransformerOutput, TransformerStack

__all__ = [
    "SITES", "Metric", "LogitDifference", "SenseCosine", "logit_difference", "sense_cosine", "PatchingPair",
    "prepare_pair", "Patch", "clean_activations", "run_patches", "PatchingResult", "activation_patching", "runs_needed",
]

#: What can be patched, and the hook point that holds it in layer i.
SITES = {"resid": "resid_pre", "z": "attn.z", "weights": "attn.weights"}
SITE_NAMES = {
    "resid": "residual stream entering each layer, per position",
    "z": "each head's output (its weighted average of the values), every position",
    "weights": "each head's attention weights, every row",
}


class Metric(Protocol):
    """A number per row read from a model's output: what patching and attribution explain."""

    name: str  # what it measures, in words

    def __call__(self, output: TransformerOutput, positions: Sequence[int]) -> Tensor:
        """(B,) metric of each row; ``positions`` are the positions it reads (the same in every row)."""
        ...


@dataclass(frozen=True)
class LogitDifference:
    """logit(answer) - logit(wrong) at the last read position (a decoder's next-token prediction)."""

    answer_id: int
    wrong_id: int
    answer: str  # the answer token as text, " Paris"
    wrong: str  # the corrupted run's answer, " Rome"

    @property
    def name(self) -> str:
        return f"logit({self.answer!r}) - logit({self.wrong!r})"

    def __call__(self, output: TransformerOutput, positions: Sequence[int]) -> Tensor:
        if output.logits is None:
            raise ValueError("a logit difference needs a language model's logits; this model returns none "
                             "(an encoder): use a sense cosine instead")
        logits = output.logits[:, positions[-1]]  # (B, vocab)
        return logits[:, self.answer_id] - logits[:, self.wrong_id]  # (B,)


@dataclass(frozen=True)
class SenseCosine:
    """Cosine of the focus word's final vector (mean of its pieces) to one sense's prototype."""

    prototype: Tensor  # (d_model,) mean final vector of the word in the sense's example sentences
    word: str
    sense: str

    @property
    def name(self) -> str:
        return f"cos({self.word!r}, {self.sense} prototype)"

    def __call__(self, output: TransformerOutput, positions: Sequence[int]) -> Tensor:
        vector = output.last_hidden_state[:, list(positions)].mean(dim=1)  # (B, d)
        return F.cosine_similarity(vector, self.prototype.to(vector)[None], dim=-1)  # (B,)


def logit_difference(tokenizer: Tokenizer, answer: str, wrong: str) -> LogitDifference:
    """The :class:`LogitDifference` of two answers, each one token (" Paris", " Rome").

    Raises:
        ValueError: an answer the tokenizer splits into several tokens (the message shows them).
    """
    ids = []
    for option, text in (("answer", answer), ("wrong", wrong)):
        batch = tokenizer(text)
        pieces = [t for t, s in zip(batch.tokens[0], batch.special_tokens_mask[0]) if not s]
        if len(pieces) != 1:
            raise ValueError(f"{option} {text!r} is {len(pieces)} tokens {pieces}; a logit difference compares "
                             f"single tokens: give one token (with its leading space, ' Paris')")
        position = batch.special_tokens_mask[0].index(False)
        ids.append(int(batch.input_ids[0, position]))
    return LogitDifference(ids[0], ids[1], answer, wrong)


def sense_cosine(model: TransformerStack, tokenizer: Tokenizer, word: str, senses: dict[str, list[str]],
                 sense: str) -> SenseCosine:
    """The :class:`SenseCosine` of ``word`` to the prototype of ``senses[sense]`` (mean of its final vectors).

    Raises:
        ValueError: ``sense`` is not one of ``senses``, or an example lacks ``word``.
    """
    from qkv.inspect.senses import word_vectors_by_layer

    if sense not in senses:
        raise ValueError(f"sense {sense!r} is not one of the senses given, {list(senses)}")
    vectors = word_vectors_by_layer(model, tokenizer, senses[sense], word)  # (S, L+1, d)
    return SenseCosine(vectors[:, -1].mean(dim=0), word, sense)


# --------------------------------------------------------------------------- the pair


@dataclass(frozen=True)
class PatchingPair:
    """A clean and a corrupted input, tokenised, with the positions the metric reads and their alignment."""

    clean_ids: Tensor  # (1, Nc) token ids of the clean input
    corrupted_ids: Tensor  # (1, N) token ids of the corrupted input
    clean_tokens: list[str]  # Nc tokens as the tokenizer wrote them
    corrupted_tokens: list[str]  # N tokens
    clean_positions: list[int]  # positions the metric reads in the clean input
    corrupted_positions: list[int]  # ... and in the corrupted one
    alignment: list[int | None]  # N: the clean position paired with each corrupted one (None: no partner)
    alignment_note: str  # how the positions were paired, in words

    @property
    def identity(self) -> bool:
        """Every position pairs with itself."""
        return len(self.clean_tokens) == len(self.corrupted_tokens) and self.alignment == list(
            range(len(self.alignment)))


def _focus_pieces(tokenizer: Tokenizer, text: str, word: str, role: str):
    from qkv.inspect.words import word_view

    batch = tokenizer(text)
    view = word_view(batch)
    try:
        pieces = view.pieces[view.index_of(word)]
    except ValueError as error:
        raise ValueError(f"{role} {text!r}: {error}") from error
    return batch, pieces


def prepare_pair(tokenizer: Tokenizer, clean: str, corrupted: str, focus: str | None = None) -> PatchingPair:
    """Tokenise a clean and a corrupted input and pair their positions.

    Args:
        clean: the input whose activations are copied.
        corrupted: the input they are copied into.
        focus: the word whose vector the metric reads (encoders), at its first occurrence;
            None: the metric reads the last position, and the inputs must have equal token counts.

    Raises:
        ValueError: without ``focus``, token counts that differ (the message lists both); a
            focus missing from either input.
    """
    if focus is None:
        clean_batch, corrupted_batch = tokenizer(clean), tokenizer(corrupted)
        nc, n = clean_batch.input_ids.shape[1], corrupted_batch.input_ids.shape[1]
        if nc != n:
            raise ValueError(
                f"the clean input has {nc} tokens {clean_batch.tokens[0]} and the corrupted one {n} "
                f"{corrupted_batch.tokens[0]}; patching pairs them position by position and the metric reads the "
                f"last one, so give inputs of equal token counts (change one word for another of one token)")
        clean_read, corrupted_read = [nc - 1], [n - 1]
    else:
        clean_batch, clean_read = _focus_pieces(tokenizer, clean, focus, "clean")
        corrupted_batch, corrupted_read = _focus_pieces(tokenizer, corrupted, focus, "corrupted")
    nc, n = clean_batch.input_ids.shape[1], corrupted_batch.input_ids.shape[1]
    if nc == n and clean_read == corrupted_read:
        alignment: list[int | None] = list(range(n))
        note = "equal token counts: each position pairs with the same position"
    else:
        alignment = _align_on_focus(clean_batch.special_tokens_mask[0], corrupted_batch.special_tokens_mask[0],
                                    clean_read[0], corrupted_read[0])
        note = (f"the inputs differ in length ({nc} and {n} tokens) or in where {focus!r} is, so positions pair by "
                f"their distance from {focus!r}, special tokens with special tokens in order; "
                f"{alignment.count(None)} corrupted position(s) have no partner and are not patched")
    return PatchingPair(clean_batch.input_ids, corrupted_batch.input_ids, clean_batch.tokens[0],
                        corrupted_batch.tokens[0], clean_read, corrupted_read, alignment, note)


def _align_on_focus(clean_special: list[bool], corrupted_special: list[bool], clean_focus: int,
                    corrupted_focus: int) -> list[int | None]:
    """Corrupted position -> clean position at the same distance from the focus word; specials in order."""
    clean_specials = [i for i, s in enumerate(clean_special) if s]
    corrupted_specials = [i for i, s in enumerate(corrupted_special) if s]
    alignment: list[int | None] = []
    for p, special in enumerate(corrupted_special):
        if special:
            rank = corrupted_specials.index(p)
            # the first special pairs with the first, the last with the last
            from_end = len(corrupted_specials) - 1 - rank
            if rank < len(corrupted_specials) / 2:
                alignment.append(clean_specials[rank] if rank < len(clean_specials) else None)
            else:
                alignment.append(clean_specials[-1 - from_end] if from_end < len(clean_specials) else None)
            continue
        q = p - corrupted_focus + clean_focus
        alignment.append(q if 0 <= q < len(clean_special) and not clean_special[q] else None)
    return alignment


# --------------------------------------------------------------------------- patching


@dataclass(frozen=True)
class Patch:
    """One activation copied from the clean run into the corrupted one.

    ``site`` is a key of :data:`SITES`; ``position`` (a corrupted position) is for
    ``resid`` (None: every aligned position); ``head`` is for ``z`` and ``weights``.
    """

    site: str
    layer: int
    position: int | None = None
    head: int | None = None

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.{SITES[self.site]}"


def _check_patch(patch: Patch, layers: int, heads: int, n: int) -> None:
    if patch.site not in SITES:
        raise ValueError(f"patch site {patch.site!r} is not one of {list(SITES)}")
    if not 0 <= patch.layer < layers:
        raise ValueError(f"patch layer {patch.layer} is outside the model's layers 0 .. {layers - 1}")
    if patch.site == "resid":
        if patch.position is not None and not 0 <= patch.position < n:
            raise ValueError(f"patch position {patch.position} is outside the corrupted input's 0 .. {n - 1}")
    elif patch.head is None or not 0 <= patch.head < heads:
        raise ValueError(f"a {patch.site!r} patch needs a head in 0 .. {heads - 1}; got {patch.head}")


def clean_activations(model: TransformerStack, pair: PatchingPair, sites: Sequence[str] = tuple(SITES)
                      ) -> dict[str, Tensor]:
    """The clean run's activations that ``sites`` patch, by hook name, each (1, ...)."""
    names = [f"blocks.{i}.{SITES[site]}" for site in sites for i in range(len(model.blocks))]
    with torch.no_grad(), model.capture(names) as store:
        model(pair.clean_ids.to(model.device))
    return dict(store)


def _patch_value(value: Tensor, row: int, patch: Patch, clean: Tensor, pair: PatchingPair) -> None:
    """Copy ``patch``'s part of ``clean`` (1, ...) into row ``row`` of ``value`` in place."""
    pairs = [(p, q) for p, q in enumerate(pair.alignment) if q is not None]
    if patch.site == "resid":  # value (R, N, d)
        if patch.position is not None:
            pairs = [(p, q) for p, q in pairs if p == patch.position]
        mine, theirs = [p for p, _ in pairs], [q for _, q in pairs]
        value[row, mine] = clean[0, theirs]
    elif patch.site == "z":  # value (R, H, N, Dh)
        mine, theirs = [p for p, _ in pairs], [q for _, q in pairs]
        value[row, patch.head, mine] = clean[0, patch.head, theirs]
    elif pair.identity:  # weights (R, H, N, N), the clean head's pattern as it is
        value[row, patch.head] = clean[0, patch.head]
    else:  # weights: each aligned row keeps the clean weights on the keys both inputs have, renormalised
        mine, theirs = [p for p, _ in pairs], [q for _, q in pairs]
        rows = torch.zeros_like(value[row, patch.head, mine])  # (n_aligned, N)
        rows[:, mine] = clean[0, patch.head][theirs][:, theirs]
        total = rows.sum(dim=-1, keepdim=True)  # (n_aligned, 1)
        value[row, patch.head, mine] = torch.where(total > 0, rows / total.clamp(min=1e-30),
                                                   value[row, patch.head, mine])


@torch.no_grad()
def run_patches(model: TransformerStack, pair: PatchingPair, patches: Sequence[Sequence[Patch]], metric: Metric,
                clean: dict[str, Tensor] | None = None, batch_size: int = 32,
                on_batch: Callable[[int], None] | None = None) -> Tensor:
    """The metric of the corrupted input rerun with each group of patches applied.

    Args:
        patches: one group per run; every patch of a group is applied in that run (an empty
            group reruns the corrupted input unchanged).
        clean: :func:`clean_activations` of the pair (computed when None).
        batch_size: runs per forward pass.
        on_batch: called with the number of runs after each forward pass (progress).

    Returns:
        (P,) the metric of each run, on the CPU.

    Raises:
        ValueError: a patch with an unknown site, or a layer, head or position out of range.
    """
    layers, heads = len(model.blocks), model.blocks[0].attn.num_heads
    n = pair.corrupted_ids.shape[1]
    for group in patches:
        for patch in group:
            _check_patch(patch, layers, heads, n)
    sites = sorted({p.site for group in patches for p in group})
    if clean is None:
        clean = clean_activations(model, pair, sites) if sites else {}
    results = []
    # Runs that patch attention weights make their layers compute the weights explicitly; keeping
    # them in batches of their own leaves every other run on the layers' usual path.
    explicit = [any(p.site == "weights" for p in group) for group in patches]
    chunks = [
        kind[start:start + batch_size]
        for kind in ([i for i, e in enumerate(explicit) if not e], [i for i, e in enumerate(explicit) if e])
        for start in range(0, len(kind), batch_size)
    ]
    for chunk in chunks:
        by_hook: dict[str, list[tuple[int, Patch]]] = {}
        for row, index in enumerate(chunk):
            for patch in patches[index]:
                by_hook.setdefault(patch.hook, []).append((row, patch))

        def hook_for(name: str, row_patches: list[tuple[int, Patch]]):
            def hook(value: Tensor, point) -> Tensor:
                value = value.clone()
                for row, patch in row_patches:
                    _patch_value(value, row, patch, clean[name], pair)
                return value
            return hook

        ids = pair.corrupted_ids.to(model.device).expand(len(chunk), -1)  # (R, N)
        with model.hooks([(name, hook_for(name, found)) for name, found in by_hook.items()]):
            values = metric(model(ids), pair.corrupted_positions)  # (R,)
        results.append((chunk, values.float().cpu()))
        if on_batch is not None:
            on_batch(len(chunk))
    out = torch.empty(len(patches))
    for chunk, values in results:
        out[chunk] = values
    return out


# --------------------------------------------------------------------------- the grids


@dataclass
class PatchingResult:
    """What patching found: the metric of every patched run, as grids."""

    metric: str  # the metric's name
    clean_text: str
    corrupted_text: str
    clean_tokens: list[str]
    corrupted_tokens: list[str]
    alignment: list[int | None]
    alignment_note: str
    clean_metric: float
    corrupted_metric: float
    grids: dict[str, Tensor] = field(default_factory=dict)  # site -> (L, N) for resid, (L, H) for z and weights

    def restored(self, site: str) -> Tensor:
        """The share of the clean effect each patch restores: (patched - corrupted) / (clean - corrupted)."""
        difference = self.clean_metric - self.corrupted_metric
        if difference == 0:
            return torch.full_like(self.grids[site], float("nan"))
        return (self.grids[site] - self.corrupted_metric) / difference

    def top(self, site: str, k: int = 3) -> list[tuple[int, int, float]]:
        """The ``k`` patches that restore the most: (layer, position or head, share restored)."""
        share = self.restored(site)
        flat = torch.nan_to_num(share, nan=-math.inf).flatten()
        best = flat.argsort(descending=True)[:k].tolist()
        columns = share.shape[1]
        return [(i // columns, i % columns, float(share.flatten()[i])) for i in best if flat[i] > -math.inf]

    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-ready (NaN, a position without a partner, becomes null)."""
        def rows(grid: Tensor) -> list[list[float | None]]:
            return [[None if math.isnan(x) else round(x, 6) for x in row] for row in grid.tolist()]

        return {
            "layer_numbering": LAYER_NUMBERING,
            "metric": self.metric,
            "clean": {"text": self.clean_text, "tokens": self.clean_tokens, "metric": self.clean_metric},
            "corrupted": {"text": self.corrupted_text, "tokens": self.corrupted_tokens,
                          "metric": self.corrupted_metric},
            "alignment": self.alignment,
            "alignment_note": self.alignment_note,
            "restored_definition": "(patched - corrupted) / (clean - corrupted): 0 is the corrupted run, 1 the clean",
            "sites": {
                site: {"description": SITE_NAMES[site],
                       "rows": "layer", "columns": "corrupted position" if site == "resid" else "head",
                       "metric": rows(grid), "restored": rows(self.restored(site))}
                for site, grid in self.grids.items()
            },
        }


def activation_patching(
    model: TransformerStack, tokenizer: Tokenizer, clean: str, corrupted: str, metric: Metric, *,
    focus: str | None = None, sites: Sequence[str] = tuple(SITES), batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> PatchingResult:
    """Patch every site of ``sites`` from ``clean`` into ``corrupted``, one at a time.

    Args:
        metric: what to measure (:func:`logit_difference`, :func:`sense_cosine`).
        focus: the word the metric reads (encoders); None: the last position (decoders).
        sites: keys of :data:`SITES`: "resid" gives an (L, N) grid over the corrupted
            positions, "z" and "weights" (L, H) grids over the heads.
        batch_size: patched runs per forward pass.
        on_batch: progress callback, called with the runs done after each forward pass.

    Returns:
        A :class:`PatchingResult`; its grids hold the raw metric, ``restored(site)`` the share
        of the clean effect.

    Raises:
        ValueError: an unknown site; inputs that cannot be paired (see :func:`prepare_pair`).
    """
    unknown = [s for s in sites if s not in SITES]
    if unknown:
        raise ValueError(f"sites {unknown} are not among {list(SITES)}")
    pair = prepare_pair(tokenizer, clean, corrupted, focus)
    layers, heads = len(model.blocks), model.blocks[0].attn.num_heads
    n = pair.corrupted_ids.shape[1]
    with torch.no_grad():
        clean_metric = float(metric(model(pair.clean_ids.to(model.device)), pair.clean_positions)[0])
        corrupted_metric = float(metric(model(pair.corrupted_ids.to(model.device)), pair.corrupted_positions)[0])
    cache = clean_activations(model, pair, sites)
    grids = {}
    for site in sites:
        if site == "resid":
            groups = [[Patch("resid", layer, position=p)] for layer in range(layers) for p in range(n)]
            values = run_patches(model, pair, groups, metric, cache, batch_size, on_batch).view(layers, n)
            unpaired = torch.tensor([q is None for q in pair.alignment])  # (N,)
            values[:, unpaired] = float("nan")
        else:
            groups = [[Patch(site, layer, head=h)] for layer in range(layers) for h in range(heads)]
            values = run_patches(model, pair, groups, metric, cache, batch_size, on_batch).view(layers, heads)
        grids[site] = values
    return PatchingResult(metric.name, clean, corrupted, pair.clean_tokens, pair.corrupted_tokens, pair.alignment,
                          pair.alignment_note, clean_metric, corrupted_metric, grids)


def runs_needed(model: TransformerStack, pair: PatchingPair, sites: Sequence[str]) -> int:
    """How many patched runs :func:`activation_patching` makes (for a progress bar)."""
    layers, heads = len(model.blocks), model.blocks[0].attn.num_heads
    return sum(layers * (pair.corrupted_ids.shape[1] if site == "resid" else heads) for site in sites)

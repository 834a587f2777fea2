"""A generated word-sense task whose answer only attention can fetch.

Every sentence holds one ambiguous word (``bank``, ``bat``, ...) and exactly one cue word
that decides its sense (``deposited`` or ``loan`` for money, ``river`` or ``muddy`` for the
river bank), at a random distance from it, among distractor words that carry no sense
information. The rest of the sentence is a *template*: a fixed sequence of distractors.
Training and held-out sentences are built from disjoint sets of templates, so held-out
accuracy measures what was learnt about the words, not the sentences.

The label is the sense (one class per word and sense, e.g. ``bank/money``). Labels are
balanced per split, and the ambiguous word and the cue sit at independent uniformly random
positions, so a model whose ambiguous word cannot look at the other tokens is at chance:
it knows which word it is (two senses each, 1/2), never which sense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SENSES", "DISTRACTORS", "SenseSplit", "SenseTask", "make_task"]

# Ambiguous word -> sense -> cue words. A cue word belongs to one sense of one word only.
SENSES: dict[str, dict[str, tuple[str, ...]]] = {
    "bank": {
        "money": ("deposited", "check", "loan", "cash", "teller", "mortgage"),
        "river": ("river", "fishing", "muddy", "shore", "canoe", "reeds"),
    },
    "bat": {
        "animal": ("cave", "wings", "nocturnal", "fangs", "colony", "echolocation"),
        "sport": ("baseball", "swing", "cricket", "pitcher", "inning", "batter"),
    },
    "crane": {
        "bird": ("feathers", "nest", "migrating", "marsh", "flock", "beak"),
        "machine": ("construction", "lifted", "steel", "operator", "girders", "scaffold"),
    },
    "plant": {
        "flora": ("watered", "leaves", "garden", "seeds", "soil", "blossom"),
        "factory": ("workers", "assembly", "industrial", "shifts", "manufacturing", "machinery"),
    },
    "mouse": {
        "animal": ("cheese", "squeaked", "trap", "tail", "whiskers", "cat"),
        "computer": ("clicked", "cursor", "keyboard", "usb", "scroll", "laptop"),
    },
    "bass": {
        "fish": ("caught", "lake", "bait", "angler", "hooked", "trout"),
        "music": ("guitar", "band", "amplifier", "chords", "concert", "drummer"),
    },
}

# Words that say nothing about any sense: the filler of every template.
DISTRACTORS: tuple[str, ...] = (
    "the", "a", "she", "he", "they", "we", "it", "was", "is", "saw", "went", "near", "old", "new", "today",
    "yesterday", "then", "after", "before", "with", "and", "very", "big", "small", "morning", "evening",
    "friend", "city", "road", "house", "green", "blue", "talked", "looked", "often", "never", "again",
    "there", "here", "long", "quiet", "every", "said", "about", "that", "this", "his", "her",
)


@dataclass(frozen=True)
class SenseSplit:
    """Sentences of one split as tensors; S sentences of N tokens."""

    input_ids: Tensor  # (S, N) long token ids
    labels: Tensor  # (S,) long sense class, an index into SenseTask.senses
    word_pos: Tensor  # (S,) long position of the ambiguous word
    cue_pos: Tensor  # (S,) long position of the cue word (never word_pos)
    template: Tensor  # (S,) long template id (train and held-out ids never overlap)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def cue_hidden_mask(self) -> Tensor:
        """(S, N) bool attention mask, True everywhere except at the cue: hides the cue from attention."""
        mask = torch.ones_like(self.input_ids, dtype=torch.bool)
        mask[torch.arange(len(self)), self.cue_pos] = False
        return mask


@dataclass(frozen=True)
class SenseTask:
    """The vocabulary, the sense classes and the two splits."""

    vocab: tuple[str, ...]  # token id -> word
    senses: tuple[tuple[str, str], ...]  # class -> (ambiguous word, sense name)
    cues: dict[tuple[str, str], tuple[str, ...]]  # (word, sense) -> cue words
    train: SenseSplit
    heldout: SenseSplit
    train_templates: int  # distinct templates behind the training sentences
    heldout_templates: int  # distinct templates behind the held-out ones

    @property
    def length(self) -> int:
        """N, tokens per sentence."""
        return self.train.input_ids.shape[1]

    @property
    def chance(self) -> float:
        """Accuracy of a model that knows the ambiguous word but not its sense (balanced labels)."""
        per_word = {}
        for word, _ in self.senses:
            per_word[word] = per_word.get(word, 0) + 1
        return sum(1 / n for n in per_word.values()) / len(per_word)

    def decode(self, ids: Tensor) -> list[str]:
        """(N,) token ids -> the N words."""
        return [self.vocab[i] for i in ids.tolist()]

    def sense_name(self, label: int) -> str:
        """"bank/money" for a class index."""
        word, sense = self.senses[label]
        return f"{word}/{sense}"


def _check_vocabulary() -> None:
    """Every distractor, ambiguous word and cue word is spelt once, so no word carries two roles."""
    items = [*DISTRACTORS, *SENSES, *(c for senses in SENSES.values() for cues in senses.values() for c in cues)]
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise ValueError(f"words with two roles in the task's vocabulary: {repeated}")


def _templates(count: int, width: int, generator: torch.Generator, taken: set[tuple[int, ...]]) -> Tensor:
    """``count`` distinct distractor sequences of ``width`` tokens, none in ``taken``: (count, width)."""
    rows: list[tuple[int, ...]] = []
    while len(rows) < count:
        draw = torch.randint(len(DISTRACTORS), (2 * (count - len(rows)), width), generator=generator)
        for row in map(tuple, draw.tolist()):
            if row not in taken:
                taken.add(row)
                rows.append(row)
                if len(rows) == count:
                    break
    return torch.tensor(rows, dtype=torch.long).reshape(count, width)


def _sentences(
    size: int, templates: Tensor, template_offset: int, length: int, sense_words: Tensor, cue_ids: Tensor,
    generator: torch.Generator,
) -> SenseSplit:
    """``size`` sentences on ``templates`` (T, N - 2) with balanced labels; ids as in :func:`make_task`."""
    classes, cues_per_sense = cue_ids.shape
    labels = torch.arange(size) % classes  # balanced: every class size // classes times (+1 for the first few)
    labels = labels[torch.randperm(size, generator=generator)]
    template = torch.randint(templates.shape[0], (size,), generator=generator)
    word_pos = torch.randint(length, (size,), generator=generator)
    # Uniform over the other N - 1 positions: the distance is random, either side.
    cue_pos = (word_pos + torch.randint(1, length, (size,), generator=generator)) % length
    cue = cue_ids[labels, torch.randint(cues_per_sense, (size,), generator=generator)]
    rows = torch.arange(size)
    special = torch.zeros(size, length, dtype=torch.bool)
    special[rows, word_pos] = True
    special[rows, cue_pos] = True
    input_ids = torch.empty(size, length, dtype=torch.long)
    input_ids[~special] = templates[template].reshape(-1)  # row-major: each row gets its template in order
    input_ids[rows, word_pos] = sense_words[labels]
    input_ids[rows, cue_pos] = cue
    return SenseSplit(input_ids, labels, word_pos, cue_pos, template + template_offset)


def make_task(
    *,
    length: int = 12,
    train_size: int = 8192,
    heldout_size: int = 1200,
    train_templates: int = 600,
    heldout_templates: int = 150,
    words: tuple[str, ...] | None = None,
    cues_per_sense: int | None = None,
    seed: int = 0,
) -> SenseTask:
    """Generate the task: vocabulary, classes, and training and held-out sentences.

    Args:
        length: N, tokens per sentence (>= 3: the word, the cue and a distractor).
        train_size: training sentences.
        heldout_size: held-out sentences.
        train_templates: distractor templates of the training sentences.
        heldout_templates: distractor templates of the held-out sentences, none shared
            with training.
        words: the ambiguous words to use (default: every word of :data:`SENSES`).
        cues_per_sense: the first this many cue words of every sense (default: all).
        seed: seeds the torch.Generator behind every random choice; the same seed gives
            the same tensors.

    Returns:
        A :class:`SenseTask`; its splits hold (S, N) token ids, (S,) labels and (S,)
        positions of the ambiguous word and of its cue.

    Raises:
        ValueError: ``length`` < 3, a size or template count < 1, or an unknown word.
    """
    if length < 3:
        raise ValueError(f"length must be >= 3 (the ambiguous word, its cue and a distractor); got {length}")
    for name, value in (("train_size", train_size), ("heldout_size", heldout_size),
                        ("train_templates", train_templates), ("heldout_templates", heldout_templates)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    words = tuple(SENSES) if words is None else tuple(words)
    unknown = [w for w in words if w not in SENSES]
    if unknown or not words:
        raise ValueError(f"words must be a non-empty subset of {sorted(SENSES)}; got {list(words)}")
    available = len(DISTRACTORS) ** (length - 2)
    if train_templates + heldout_templates > available:
        raise ValueError(
            f"train_templates + heldout_templates = {train_templates + heldout_templates} but only {available} "
            f"distinct templates of length {length} exist; use fewer templates or a longer length"
        )
    _check_vocabulary()

    senses = tuple((word, sense) for word in words for sense in SENSES[word])
    cues = {(word, sense): SENSES[word][sense] for word, sense in senses}
    vocab = DISTRACTORS + words + tuple(c for key in senses for c in cues[key])
    index = {token: i for i, token in enumerate(vocab)}
    most = min(len(c) for c in cues.values())
    if cues_per_sense is None:
        cues_per_sense = most
    elif not 1 <= cues_per_sense <= most:
        raise ValueError(f"cues_per_sense must be in 1 .. {most}; got {cues_per_sense}")
    cues = {key: value[:cues_per_sense] for key, value in cues.items()}
    sense_words = torch.tensor([index[word] for word, _ in senses])  # (C,) class -> ambiguous word id
    cue_ids = torch.tensor([[index[c] for c in cues[key]] for key in senses])  # (C, cues)

    generator = torch.Generator().manual_seed(seed)
    taken: set[tuple[int, ...]] = set()
    train_frames = _templates(train_templates, length - 2, generator, taken)
    heldout_frames = _templates(heldout_templates, length - 2, generator, taken)
    train = _sentences(train_size, train_frames, 0, length, sense_words, cue_ids, generator)
    heldout = _sentences(heldout_size, heldout_frames, train_templates, length, sense_words, cue_ids, generator)
    return SenseTask(vocab, senses, cues, train, heldout, train_templates, heldout_templates)

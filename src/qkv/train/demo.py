"""Train a small transformer from scratch and watch its attention find the cue word.

The model is a :class:`qkv.nn.TransformerEncoder` (2 layers, 4 heads, width 64 by
default) with a linear classifier on the ambiguous word's final vector; it learns the
task of :mod:`qkv.train.task`. Every ``log_every`` steps the held-out sentences go
through :meth:`~qkv.nn.TransformerStack.run_with_cache`, which captures the attention
weights of every layer (``blocks.*.attn.weights``, (B, H, N, N)); from them comes the
weight from the ambiguous word to its cue, per layer and head.

The control is the same model, seed and data with attention disabled by a mask: every
layer runs ``set_attention("auto", window=(0, 0))``, so through the same
:func:`qkv.attention` path each token sees only itself. It cannot know the cue, and stays
at chance.

Training uses DropHead (Zhou et al., 2020): each head's output (``blocks.*.attn.z``, (B,
H, N, Dh)) is zeroed with probability ``head_dropout`` per sentence, through a hook. A
head can then not rely on another one to catch the cues it misses, so the heads do not
share the cues out between them (one catching money cues, another river cues), and one
head ends up attending to the cue whatever the sense: about 0.84 to 1.0 of its attention
over seeds 0 to 4, against 0.54 to 0.70 for the best head without DropHead.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.nn import HookPoint, TransformerEncoder
from qkv.numbering import LAYER_NUMBERING
from qkv.train.task import SENSES, SenseSplit, SenseTask, make_task

__all__ = [
    "DemoConfig", "QUICK", "LogEntry", "Evaluation", "RunResult", "DemoResult", "SenseClassifier",
    "evaluate", "train_run", "train_demo",
]


@dataclass(frozen=True)
class DemoConfig:
    """Everything that decides a run; the same config and seed give the same numbers."""

    steps: int = 2000  # optimiser steps of each run (the main one and the control)
    batch_size: int = 64  # training sentences per step, drawn at random from the training split
    lr: float = 1e-2  # peak AdamW learning rate: linear warm-up, then cosine decay to a tenth
    warmup: int = 100  # warm-up steps
    weight_decay: float = 0.01  # AdamW weight decay
    head_dropout: float = 0.3  # DropHead: probability of zeroing a head's output per sentence, in training
    d_model: int = 64  # width of the token vectors
    num_heads: int = 4  # heads per layer
    num_layers: int = 2  # transformer blocks
    length: int = 12  # N, tokens per sentence
    train_size: int = 9600  # training sentences
    heldout_size: int = 1200  # held-out sentences (their templates are never trained on)
    train_templates: int = 600  # distractor templates behind the training sentences
    heldout_templates: int = 150  # distractor templates behind the held-out sentences
    log_every: int = 25  # steps between logged evaluations (step 0 and the last step are always logged)
    seed: int = 0  # seeds the model's initialisation, the data and the sampling
    # torch threads while training, restored after. One, as `qkv train-demo` uses: this model's
    # products are too small to gain from more; None keeps torch's setting as it is.
    threads: int | None = 1
    control: bool = True  # also train the control with attention disabled

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "d_model", "num_heads", "num_layers", "log_every", "train_size",
                     "heldout_size", "train_templates", "heldout_templates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1); got {self.head_dropout}")
        if self.lr <= 0 or self.warmup < 0 or self.weight_decay < 0:
            raise ValueError(
                f"lr must be > 0 and warmup, weight_decay >= 0; got lr={self.lr}, warmup={self.warmup}, "
                f"weight_decay={self.weight_decay}"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None (torch's setting); got {self.threads}")


# A shortened run for tests and `qkv train-demo --quick`.
QUICK = {"steps": 400, "log_every": 20, "train_size": 4800, "heldout_size": 600, "train_templates": 300,
         "heldout_templates": 75}


@dataclass(frozen=True)
class LogEntry:
    """One logged evaluation on the held-out sentences."""

    step: int  # optimiser steps taken
    loss: float  # mean training loss over the steps since the previous entry (step 0: on the first batch)
    heldout_loss: float  # cross-entropy on the held-out sentences
    accuracy: float  # held-out accuracy
    attention_to_cue: list[list[float]]  # (L, H) weight from the ambiguous word to its cue, mean over held-out
    best_attention_to_cue: float  # the largest entry of attention_to_cue
    best_head: tuple[int, int]  # (layer, head) of that entry


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` measures on one split."""

    accuracy: float  # share of sentences whose sense is predicted right
    loss: float  # mean cross-entropy
    attention_to_cue: Tensor  # (L, H) weight from the ambiguous word to its cue, mean over sentences
    max_head_attention_to_cue: float  # per sentence the largest weight any head gives the cue, mean
    predictions: Tensor  # (S,) predicted classes


@dataclass
class RunResult:
    """One training run: its log, its time and the trained model."""

    name: str  # "main", "control" or what the caller called it
    log: list[LogEntry]
    seconds: float  # wall time of training and logging
    final: Evaluation  # the held-out evaluation after the last step
    model: SenseClassifier = field(repr=False)

    def to_json(self) -> dict:
        final = self.final
        return {
            "name": self.name, "seconds": self.seconds,
            "log": [dataclasses.asdict(entry) for entry in self.log],
            "final": {"accuracy": final.accuracy, "loss": final.loss,
                      "attention_to_cue": final.attention_to_cue.tolist(),
                      "max_head_attention_to_cue": final.max_head_attention_to_cue},
        }


class SenseClassifier(nn.Module):
    """A :class:`qkv.nn.TransformerEncoder` and a linear classifier on the ambiguous word's final vector.

    Args:
        vocab_size: token ids.
        num_classes: sense classes.
        length: the longest sentence (learned positions).
        d_model, num_heads, num_layers: the encoder's size.
    """

    def __init__(self, vocab_size: int, num_classes: int, length: int, d_model: int = 64, num_heads: int = 4,
                 num_layers: int = 2) -> None:
        super().__init__()
        self.encoder = TransformerEncoder(vocab_size, d_model, num_heads, num_layers, max_positions=length)
        self.classifier = nn.Linear(d_model, num_classes)

    def disable_attention(self) -> None:
        """Let every token see only itself: a diagonal mask (``window=(0, 0)``) in every layer."""
        self.encoder.set_attention("auto", window=(0, 0))

    def classify(self, hidden: Tensor, word_pos: Tensor) -> Tensor:
        """Logits (B, C) from the final hidden states (B, N, d_model) at ``word_pos`` (B,)."""
        return self.classifier(hidden[torch.arange(hidden.shape[0], device=hidden.device), word_pos])

    def forward(self, input_ids: Tensor, word_pos: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Sense logits.

        Args:
            input_ids: (B, N) token ids.
            word_pos: (B,) position of the ambiguous word.
            attention_mask: (B, N) bool, False for keys no token may attend to (None: all visible).

        Returns:
            (B, C) logits over the sense classes.
        """
        return self.classify(self.encoder(input_ids, attention_mask).last_hidden_state, word_pos)


def evaluate(model: SenseClassifier, split: SenseSplit, *, hide_cue: bool = False,
             batch_size: int = 1024) -> Evaluation:
    """Accuracy, loss and attention to the cue on ``split``, capturing every layer's attention weights.

    Args:
        model: the classifier.
        split: the sentences (S of them).
        hide_cue: hide the cue from attention (a key padding mask False at the cue).
        batch_size: sentences per forward pass.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    was_training = model.training
    model.eval()
    hidden_cue = split.cue_hidden_mask() if hide_cue else None
    predictions, losses, to_cue = [], [], []
    try:
        for start in range(0, len(split), batch_size):
            rows = slice(start, start + batch_size)
            ids, word_pos, cue_pos = split.input_ids[rows], split.word_pos[rows], split.cue_pos[rows]
            mask = None if hidden_cue is None else hidden_cue[rows]
            output, cache = model.encoder.run_with_cache(ids, "blocks.*.attn.weights", attention_mask=mask)
            with torch.no_grad():
                logits = model.classify(output.last_hidden_state, word_pos)  # (b, C)
            losses.append(F.cross_entropy(logits, split.labels[rows], reduction="sum"))
            predictions.append(logits.argmax(-1))
            weights = cache.stack("attn.weights").transpose(0, 1)  # (b, L, H, N, N)
            b = torch.arange(ids.shape[0])
            to_cue.append(weights[b, :, :, word_pos, cue_pos])  # (b, L, H): the word's row, the cue's column
    finally:
        model.train(was_training)
    predicted = torch.cat(predictions)
    attention = torch.cat(to_cue)  # (S, L, H)
    return Evaluation(
        accuracy=(predicted == split.labels).float().mean().item(),
        loss=(torch.stack(losses).sum() / len(split)).item(),
        attention_to_cue=attention.mean(dim=0),  # (L, H)
        max_head_attention_to_cue=attention.amax(dim=(1, 2)).mean().item(),
        predictions=predicted,
    )


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch threads, restoring the previous setting afterwards (None: unchanged)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _entry(step: int, loss: float, evaluation: Evaluation) -> LogEntry:
    attention = evaluation.attention_to_cue
    flat = int(attention.argmax())
    return LogEntry(
        step=step, loss=loss, heldout_loss=evaluation.loss, accuracy=evaluation.accuracy,
        attention_to_cue=attention.tolist(), best_attention_to_cue=attention.max().item(),
        best_head=divmod(flat, attention.shape[1]),
    )


OnStep = Callable[[str, int, int, "LogEntry | None"], None]


def train_run(
    task: SenseTask,
    config: DemoConfig = DemoConfig(),
    *,
    name: str = "main",
    control: bool = False,
    hide_cue: bool = False,
    on_step: OnStep | None = None,
) -> RunResult:
    """Train one model from scratch on ``task.train``, logging held-out figures as it goes.

    Args:
        task: the data (:func:`qkv.train.make_task`).
        config: sizes, optimiser and logging; ``config.seed`` seeds the initialisation and
            the sampling (the global torch RNG is left as it was).
        name: the run's name in the log and in ``on_step`` calls.
        control: disable attention (each token sees only itself, through a mask).
        hide_cue: hide the cue key from every query in training and evaluation (a key
            padding mask): the ambiguous word can then not see it.
        on_step: called as ``on_step(name, step, steps, entry)`` after every step (entry is
            the :class:`LogEntry` on logged steps, else None) and once at step 0.

    Returns:
        A :class:`RunResult` with the log, the final held-out evaluation and the model.
    """
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SenseClassifier(len(task.vocab), len(task.senses), task.length, config.d_model, config.num_heads,
                                config.num_layers)
    if control:
        model.disable_attention()
    generator = torch.Generator().manual_seed(config.seed + 1)  # batches and DropHead masks

    def drop_heads(z: Tensor, point: HookPoint) -> Tensor | None:
        """DropHead on a layer's per-head outputs z (B, H, N, Dh), in training only."""
        if not model.training or config.head_dropout == 0:
            return None
        keep = torch.rand(z.shape[0], z.shape[1], 1, 1, generator=generator) >= config.head_dropout
        return z * keep.to(z.dtype) / (1.0 - config.head_dropout)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)

    def schedule(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    train = task.train
    train_mask = train.cue_hidden_mask() if hide_cue else None
    log: list[LogEntry] = []
    losses: list[float] = []

    def batch() -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        rows = torch.randint(len(train), (config.batch_size,), generator=generator)
        mask = None if train_mask is None else train_mask[rows]
        return train.input_ids[rows], train.word_pos[rows], train.labels[rows], mask

    with _torch_threads(config.threads), model.encoder.hooks([("blocks.*.attn.z", drop_heads)]):
        ids, word_pos, labels, mask = batch()
        with torch.no_grad():
            model.eval()
            first_loss = F.cross_entropy(model(ids, word_pos, mask), labels).item()
        evaluation = evaluate(model, task.heldout, hide_cue=hide_cue)
        entry = _entry(0, first_loss, evaluation)
        log.append(entry)
        if on_step is not None:
            on_step(name, 0, config.steps, entry)
        model.train()
        for step in range(1, config.steps + 1):
            loss = F.cross_entropy(model(ids, word_pos, mask), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            entry = None
            if step % config.log_every == 0 or step == config.steps:
                evaluation = evaluate(model, task.heldout, hide_cue=hide_cue)
                entry = _entry(step, sum(losses) / len(losses), evaluation)
                log.append(entry)
                losses.clear()
            if on_step is not None:
                on_step(name, step, config.steps, entry)
            if step < config.steps:
                ids, word_pos, labels, mask = batch()
        model.eval()
    return RunResult(name, log, time.perf_counter() - started, evaluation, model)  # the last step is logged


@dataclass
class DemoResult:
    """The main run, the control, and an example sentence's attention."""

    config: DemoConfig
    task: SenseTask
    main: RunResult
    control: RunResult | None
    example: dict  # tokens, word_index, cue_index, sense, predicted, attention (L, H, N, N) as lists

    @property
    def best_head(self) -> tuple[int, int]:
        """(layer, head) attending most to the cue at the end, mean over held-out sentences."""
        attention = self.main.final.attention_to_cue
        return divmod(int(attention.argmax()), attention.shape[1])

    def final(self) -> dict:
        """The headline figures (the ``final`` object of the JSON)."""
        layer, head = self.best_head
        main = self.main.final
        first = self.main.log[0]
        return {
            "accuracy": main.accuracy,
            "attention_to_cue": main.attention_to_cue[layer, head].item(),
            "best_head": {"layer": layer, "head": head},
            "attention_to_cue_by_head": main.attention_to_cue.tolist(),
            "max_head_attention_to_cue": main.max_head_attention_to_cue,
            "initial_attention_to_cue": first.attention_to_cue[layer][head],
            "uniform_attention": 1.0 / self.task.length,
            "heldout_loss": main.loss,
            "control_accuracy": None if self.control is None else self.control.final.accuracy,
            "control_attention_to_cue": None if self.control is None else
            self.control.final.attention_to_cue.max().item(),
            "chance": self.task.chance,
            "seconds": self.main.seconds + (0.0 if self.control is None else self.control.seconds),
        }

    def to_json(self) -> dict:
        """Everything as plain JSON types: config, task, logs, final figures, the example."""
        task = self.task
        return {
            "layer_numbering": LAYER_NUMBERING,
            "config": dataclasses.asdict(self.config),
            "task": {
                "length": task.length, "senses": [task.sense_name(i) for i in range(len(task.senses))],
                "cues": {task.sense_name(i): list(task.cues[key]) for i, key in enumerate(task.senses)},
                "train_sentences": len(task.train), "heldout_sentences": len(task.heldout),
                "train_templates": task.train_templates, "heldout_templates": task.heldout_templates,
                "vocab_size": len(task.vocab), "chance": task.chance,
            },
            "final": self.final(),
            "main": self.main.to_json(),
            "control": None if self.control is None else self.control.to_json(),
            "example": self.example,
        }


def _example(task: SenseTask, model: SenseClassifier, index: int | None = None) -> dict:
    """The attention of every layer and head on one held-out sentence (a 'bank' one if there is one)."""
    split = task.heldout
    if index is None:
        bank = [i for i in range(len(split)) if task.senses[int(split.labels[i])][0] == "bank"
                and abs(int(split.word_pos[i]) - int(split.cue_pos[i])) >= 3]
        index = bank[0] if bank else 0
    ids = split.input_ids[index:index + 1]
    output, cache = model.encoder.run_with_cache(ids, "blocks.*.attn.weights")
    with torch.no_grad():
        predicted = int(model.classify(output.last_hidden_state, split.word_pos[index:index + 1]).argmax())
    return {
        "index": index, "tokens": task.decode(split.input_ids[index]),
        "word_index": int(split.word_pos[index]), "cue_index": int(split.cue_pos[index]),
        "sense": task.sense_name(int(split.labels[index])), "predicted": task.sense_name(predicted),
        "attention": cache.stack("attn.weights")[:, 0].tolist(),  # (L, H, N, N)
    }


def train_demo(config: DemoConfig = DemoConfig(), *, on_step: OnStep | None = None) -> DemoResult:
    """Generate the task, train the model and (with ``config.control``) the attention-disabled control.

    Args:
        config: sizes and seed (:class:`DemoConfig`; ``DemoConfig(**QUICK)`` is a short run).
        on_step: progress callback, as for :func:`train_run` (called by both runs).

    Returns:
        A :class:`DemoResult`; ``result.to_json()`` holds every figure, ``result.final()``
        the headline ones.
    """
    task = make_task(length=config.length, train_size=config.train_size, heldout_size=config.heldout_size,
                     train_templates=config.train_templates, heldout_templates=config.heldout_templates,
                     words=tuple(SENSES), seed=config.seed)
    main = train_run(task, config, name="main", on_step=on_step)
    control = train_run(task, config, name="control", control=True, on_step=on_step) if config.control else None
    with _torch_threads(config.threads):
        example = _example(task, main.model)
    return DemoResult(config, task, main, control, example)

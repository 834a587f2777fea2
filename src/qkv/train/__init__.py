"""Training from scratch: watch attention learn which words decide a word's sense.

:func:`make_task` generates sentences whose ambiguous word's sense is decided by one cue
word at a random distance; :func:`train_demo` trains a small :class:`qkv.nn.TransformerEncoder`
on them, logging the attention from the ambiguous word to its cue per layer and head,
beside a control whose attention is disabled by a mask (``qkv train-demo``).
"""

from qkv.train.demo import (
    QUICK,
    DemoConfig,
    DemoResult,
    Evaluation,
    LogEntry,
    RunResult,
    SenseClassifier,
    evaluate,
    train_demo,
    train_run,
)
from qkv.train.task import DISTRACTORS, SENSES, SenseSplit, SenseTask, make_task

__all__ = [
    "SENSES",
    "DISTRACTORS",
    "SenseSplit",
    "SenseTask",
    "make_task",
    "DemoConfig",
    "QUICK",
    "LogEntry",
    "Evaluation",
    "RunResult",
    "DemoResult",
    "SenseClassifier",
    "evaluate",
    "train_run",
    "train_demo",
]

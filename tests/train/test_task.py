"""The generated word-sense task: one cue per sentence, balanced labels, disjoint templates, determinism."""

from __future__ import annotations

import pytest
import torch

from qkv.train import DISTRACTORS, SENSES, SenseTask, make_task


@pytest.fixture(scope="module")
def task() -> SenseTask:
    return make_task(length=11, train_size=1203, heldout_size=360, train_templates=100, heldout_templates=40,
                     seed=3)


def _frames(task: SenseTask, split) -> list[tuple[int, ...]]:
    """The distractor sequence of every sentence: its tokens without the ambiguous word and the cue."""
    keep = torch.ones_like(split.input_ids, dtype=torch.bool)
    rows = torch.arange(len(split))
    keep[rows, split.word_pos] = False
    keep[rows, split.cue_pos] = False
    return list(map(tuple, split.input_ids[keep].view(len(split), task.length - 2).tolist()))


def test_shapes_and_vocabulary(task: SenseTask) -> None:
    assert task.length == 11
    assert task.train.input_ids.shape == (1203, 11) and task.heldout.input_ids.shape == (360, 11)
    for split in (task.train, task.heldout):
        assert split.labels.shape == split.word_pos.shape == split.cue_pos.shape == split.template.shape
        assert split.input_ids.dtype == torch.long
    assert len(task.senses) == 2 * len(SENSES) and len(set(task.vocab)) == len(task.vocab)
    assert task.sense_name(0) == "bank/money"
    assert task.chance == pytest.approx(0.5)


def test_templates_are_disjoint_between_splits(task: SenseTask) -> None:
    train_ids, heldout_ids = set(task.train.template.tolist()), set(task.heldout.template.tolist())
    assert not train_ids & heldout_ids
    assert max(train_ids) < task.train_templates <= min(heldout_ids)
    train_frames, heldout_frames = set(_frames(task, task.train)), set(_frames(task, task.heldout))
    assert not train_frames & heldout_frames
    assert len(train_frames) <= task.train_templates and len(heldout_frames) <= task.heldout_templates
    # Each template id always stands for the same frame.
    for split in (task.train, task.heldout):
        by_template: dict[int, set] = {}
        for template, frame in zip(split.template.tolist(), _frames(task, split)):
            by_template.setdefault(template, set()).add(frame)
        assert all(len(frames) == 1 for frames in by_template.values())


def test_one_ambiguous_word_and_exactly_one_cue(task: SenseTask) -> None:
    index = {token: i for i, token in enumerate(task.vocab)}
    distractors = {index[d] for d in DISTRACTORS}
    words = {index[w] for w in SENSES}
    for split in (task.train, task.heldout):
        assert bool((split.word_pos != split.cue_pos).all())
        for ids, label, word_pos, cue_pos in zip(split.input_ids.tolist(), split.labels.tolist(),
                                                 split.word_pos.tolist(), split.cue_pos.tolist()):
            word, sense = task.senses[label]
            assert ids[word_pos] == index[word]
            own = {index[c] for c in task.cues[(word, sense)]}
            every_cue = {index[c] for key, cues in task.cues.items() for c in cues}
            assert [i for i, t in enumerate(ids) if t in every_cue] == [cue_pos]  # once, and no other cue
            assert ids[cue_pos] in own
            others = [t for i, t in enumerate(ids) if i not in (word_pos, cue_pos)]
            assert all(t in distractors for t in others)  # the rest carries no sense information
            assert sum(t in words for t in ids) == 1


def test_labels_balanced_and_positions_uniform(task: SenseTask) -> None:
    for split in (task.train, task.heldout):
        counts = torch.bincount(split.labels, minlength=len(task.senses))
        assert int(counts.max() - counts.min()) <= 1
    assert set(task.heldout.labels.bincount().tolist()) == {30}
    # Every position holds the word and the cue somewhere; the distance takes every value.
    train = task.train
    assert set(train.word_pos.tolist()) == set(range(11)) == set(train.cue_pos.tolist())
    assert set((train.cue_pos - train.word_pos).tolist()) == set(range(-10, 11)) - {0}


def test_same_seed_same_task_other_seed_other_task() -> None:
    a, b, c = (make_task(train_size=200, heldout_size=60, train_templates=20, heldout_templates=10, seed=s)
               for s in (5, 5, 6))
    for name in ("input_ids", "labels", "word_pos", "cue_pos", "template"):
        assert torch.equal(getattr(a.train, name), getattr(b.train, name))
        assert torch.equal(getattr(a.heldout, name), getattr(b.heldout, name))
    assert not torch.equal(a.train.input_ids, c.train.input_ids)


def test_cue_hidden_mask(task: SenseTask) -> None:
    mask = task.heldout.cue_hidden_mask()
    assert mask.shape == task.heldout.input_ids.shape and mask.dtype == torch.bool
    assert int((~mask).sum()) == len(task.heldout)
    assert not bool(mask[torch.arange(len(task.heldout)), task.heldout.cue_pos].any())


def test_options_and_errors() -> None:
    small = make_task(words=("bank", "mouse"), cues_per_sense=2, train_size=40, heldout_size=8,
                      train_templates=5, heldout_templates=2)
    assert [s for s, _ in small.senses] == ["bank", "bank", "mouse", "mouse"]
    assert all(len(c) == 2 for c in small.cues.values())
    with pytest.raises(ValueError, match="length"):
        make_task(length=2)
    with pytest.raises(ValueError, match="train_size"):
        make_task(train_size=0)
    with pytest.raises(ValueError, match="words"):
        make_task(words=("bank", "jaguar"))
    with pytest.raises(ValueError, match="cues_per_sense"):
        make_task(cues_per_sense=99)
    with pytest.raises(ValueError, match="templates"):
        make_task(length=3, train_templates=40, heldout_templates=40)

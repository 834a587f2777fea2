"""The ``qkv`` command: walkthrough numbers, output, errors, bench forwarding."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import qkv
from qkv.cli import main
from qkv.inspect.toy_walkthrough import tokenize, walkthrough_numbers

SCRIPT = Path(sys.executable).parent / "qkv"


def _weights_in_table(text: str, tokens: list[str]) -> list[float]:
    """The weight column of the walkthrough's score table (5th cell of its rows)."""
    weights = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 6 and cells[0].isdigit():
            weights.append(float(cells[4]))
    assert len(weights) == len(tokens)
    return weights


def test_tokenize_splits_words_and_punctuation() -> None:
    assert tokenize("She deposited her check at the bank.") == [
        "She", "deposited", "her", "check", "at", "the", "bank", ".",
    ]
    assert tokenize("Don't stop, river-bank!") == ["Don't", "stop", ",", "river", "-", "bank", "!"]


def test_default_walkthrough_prints_every_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["walkthrough"]) == 0
    out = capsys.readouterr().out
    assert "bank" in out
    words = " ".join(out.replace("│", " ").split())  # panel borders and wrapping removed
    assert "random, not learnt" in words and "mean nothing about these words" in words
    assert "chance, with random vectors" in words
    assert "█" in out
    for step in ("1. Tokens", "2. Projections", "3. Scores", "4. Weights", "5. Output"):
        assert step in out
    weights = _weights_in_table(out, tokenize("She deposited her check at the bank."))
    assert sum(weights) == pytest.approx(1.0, abs=5e-3)  # printed to 3 decimals
    assert "sum of weights = 1.000000" in out


@pytest.mark.parametrize("dim", [1, 3, 4, 17])
def test_numbers_match_the_library(dim: int) -> None:
    n = walkthrough_numbers("Time flies like an arrow; fruit flies like a banana.", "flies", dim, 3)
    N = len(n["tokens"])
    assert n["focus_index"] == 1
    assert n["weights"].shape == (N,) and n["output"].shape == (dim,)
    q = (n["x"] @ n["w_q"]).view(1, 1, N, dim)
    k = n["k"].view(1, 1, N, dim)
    expected = qkv.attention_weights(q, k)[0, 0, n["focus_index"]]
    torch.testing.assert_close(n["weights"], expected, atol=1e-12, rtol=0)
    assert n["weights"].sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(n["scores"], n["raw"] / dim**0.5)
    torch.testing.assert_close(n["output"], n["weights"] @ n["v"])


def test_causal_hides_tokens_after_the_focus() -> None:
    n = walkthrough_numbers(focus="her", causal=True)
    i = n["focus_index"]
    assert i == 2
    assert torch.all(n["weights"][i + 1:] == 0)
    assert torch.all(n["weights"][: i + 1] > 0)
    assert n["weights"].sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(n["library_weights"], n["weights"], atol=1e-12, rtol=0)


def test_causal_flag_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["walkthrough", "--focus", "HER", "--causal", "--dim", "3", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    weights = _weights_in_table(out, tokenize("She deposited her check at the bank."))
    assert weights[3:] == [0.0] * 5
    assert "-inf" in out


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    a, b, c = (walkthrough_numbers(seed=s) for s in (0, 0, 1))
    assert torch.equal(a["weights"], b["weights"])
    assert not torch.equal(a["weights"], c["weights"])


def test_unknown_focus_word_exits_2_listing_the_tokens(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["walkthrough", "The river bank.", "--focus", "money"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "'money'" in captured.err
    for token in ("The", "river", "bank", "."):
        assert f"'{token}'" in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("argv", [["walkthrough", "--dim", "0"], ["walkthrough", "--dim", "x"]])
def test_bad_dim_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "--dim" in capsys.readouterr().err


def test_empty_sentence_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["walkthrough", "   "]) == 2
    assert "no tokens" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert qkv.__version__ in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "walkthrough" in capsys.readouterr().err


def test_bench_forwards_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("qkv.bench")
    fake.main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "qkv.bench", fake)
    assert main(["bench", "--help", "--sizes", "128"]) == 0
    assert seen == [["--help", "--sizes", "128"]]


@pytest.mark.skipif(not SCRIPT.exists(), reason=f"console script {SCRIPT} is not installed")
def test_console_script_runs_without_a_terminal() -> None:
    result = subprocess.run(
        [str(SCRIPT), "walkthrough", "--focus", "check"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "check" in result.stdout
    assert not re.search(r"\x1b\[", result.stdout)  # no colour codes when piped


def test_a_library_that_disagrees_with_the_hand_computation_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qkv.inspect import toy_walkthrough

    real = qkv.attention_weights
    monkeypatch.setattr(toy_walkthrough, "attention_weights", lambda q, k, **kw: real(q, k, **kw) * 0.9)
    with pytest.raises(RuntimeError, match="weights differ"):
        walkthrough_numbers()


# ---- usage errors name the option, before any model is loaded ----

@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: these errors must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(qkv, "load", refuse)


def test_explain_empty_sentence(no_model, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "  "]) == 2
    assert "the sentence is empty" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "path", "expected"), [
    ("--json", "a-file/report.json", "--json {tmp}/a-file/report.json: cannot create a folder inside"),
    ("--html", "a-file/deeper/page.html", "--html {tmp}/a-file/deeper/page.html: cannot create a folder inside"),
    ("--html", ".", "--html {tmp}/.: this is a folder"),
    ("--out", "a-file", "--out {tmp}/a-file: this is a file"),
])
def test_explain_output_paths_are_checked_first(no_model, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                option: str, path: str, expected: str) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["explain", option, f"{tmp_path}/{path}"]) == 2
    captured = capsys.readouterr()
    assert expected.format(tmp=tmp_path) in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("command", [["wsd", "--data", "."], ["contextuality", "--data", "."], ["fidelity"],
                                     ["train-demo", "--quick"]])
def test_every_command_checks_its_output_paths_first(no_model, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     command: list[str]) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    assert main([*command, "--json", str(tmp_path / "a-file" / "x.json")]) == 2
    assert "--json" in capsys.readouterr().err


def test_wsd_words_that_name_no_word(no_model, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wsd", "--data", str(tmp_path), "--words", ","]) == 2
    assert "--words ',' names no word" in capsys.readouterr().err


def test_fidelity_missing_text_file(no_model, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fidelity", "--text", "/no/such/file.txt"]) == 2
    assert "--text /no/such/file.txt: no such file" in capsys.readouterr().err


def test_serve_port_in_use(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from qkv.viz.serve import ExplainServer

    monkeypatch.setattr(qkv, "load", lambda *args, **kwargs: (object(), object()))
    monkeypatch.setattr(ExplainServer, "serve_forever", lambda self, *args: None)  # never block the test
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: the port is already in use" in err and "--port 0" in err


@pytest.mark.parametrize(("argv", "expected"), [
    (["walkthrough", "--dim", "abc"], "argument --dim: must be a whole number >= 1; got 'abc'"),
    (["serve", "--port", "70000"], "argument --port: must be a port number"),
])
def test_bad_numbers_are_described_not_named_after_a_function(argv: list[str], expected: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert expected in capsys.readouterr().err


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    def help_of(*argv: str) -> str:
        assert main([*argv, "--help"]) == 0
        return " ".join(capsys.readouterr().out.split())  # argparse wraps lines

    top = help_of()
    for word in ("attention", "models", "ring", "Triton", "report"):
        assert word in top.split("bench", 1)[1]
    explain = help_of("explain")
    assert "GPT-2" in explain and "BERT folder" not in explain
    assert "--contrast SENTENCE a sentence that uses the focus word in another sense" in explain
    assert "--batch-size BATCH_SIZE sentences per forward pass" in help_of("wsd")


# ---- output paths that cannot be written: one line naming the option, exit 2, before any work ----

def _refuse_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model, training or measuring fails the test: the path check must come first."""
    from qkv import train
    from qkv.bench import model, report, ring, sweep

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the output paths were checked")

    monkeypatch.setattr(qkv, "load", refuse)
    monkeypatch.setattr(train, "train_demo", refuse)
    for module, name in ((sweep, "run_sweep"), (model, "run_model_bench"), (ring, "run_ring_bench"),
                         (report, "write_report")):
        monkeypatch.setattr(module, name, refuse)


COMMANDS_WITH_OUTPUTS = {
    "explain": (["explain"], ("--json", "--html", "--out")),
    "wsd": (["wsd", "--data", "."], ("--json", "--out")),
    "contextuality": (["contextuality", "--data", "."], ("--json", "--out")),
    "fidelity": (["fidelity"], ("--json", "--out")),
    "perplexity": (["perplexity"], ("--json", "--out")),
    "patch": (["patch"], ("--json", "--html", "--out")),
    "faithfulness": (["faithfulness"], ("--json", "--out")),
    "train-demo": (["train-demo", "--quick"], ("--json", "--out")),
    "bench attention": (["bench", "attention", "--quick"], ("--json", "--out")),
    "bench model": (["bench", "model", "--quick"], ("--json", "--out")),
    "bench ring": (["bench", "ring", "--quick"], ("--json", "--out")),
    "bench report": (["bench", "report", "{tmp}/result.json"], ("--out",)),
}
CASES = [(name, option) for name, (_, options) in COMMANDS_WITH_OUTPUTS.items() for option in options]
FOLDER_OPTIONS = ("--out",)


@pytest.mark.parametrize("where", ["/proc/x/y", "/sys/x", "{tmp}/a-file/x"])
@pytest.mark.parametrize(("command", "option"), CASES)
def test_unwritable_output_paths_are_refused_before_any_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str], command: str,
                                                             option: str, where: str) -> None:
    if not Path("/" + where.split("/")[1]).is_dir() and not where.startswith("{tmp}"):
        pytest.skip(f"no {where.split('/')[1]} here")
    _refuse_work(monkeypatch)
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "result.json").write_text("{}")
    path = where.format(tmp=tmp_path) + ("" if option in FOLDER_OPTIONS else ".json")
    argv = [part.format(tmp=tmp_path) for part in COMMANDS_WITH_OUTPUTS[command][0]]
    assert main([*argv, option, path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    assert err.startswith(f"qkv {command}: error: {option} {path}: "), err


@pytest.mark.parametrize(("argv", "patch"), [
    (["explain"], "qkv.load"),
    (["wsd", "--data", "."], "qkv.inspect.wsd.read_dataset"),
    (["contextuality", "--data", "."], "qkv.inspect.wsd.read_dataset"),
    (["fidelity"], "qkv.load"),
    (["perplexity"], "qkv.load"),
    (["patch"], "qkv.load"),
    (["faithfulness"], "qkv.load"),
    (["train-demo", "--quick"], "qkv.train.train_demo"),
    (["walkthrough"], "qkv.commands.walkthrough.walkthrough_numbers"),
    (["bench", "attention", "--quick", "--out", "{tmp}"], "qkv.bench.sweep.run_sweep"),
    (["bench", "model", "--quick", "--out", "{tmp}"], "qkv.bench.model.run_model_bench"),
    (["bench", "ring", "--quick", "--out", "{tmp}"], "qkv.bench.ring.run_ring_bench"),
])
def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str], argv: list[str], patch: str) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(patch, interrupted)
    assert main([part.format(tmp=tmp_path) for part in argv]) == 130
    err = capsys.readouterr().err
    command = " ".join(argv[:2]) if argv[0] == "bench" else argv[0]
    assert err.count("\n") == 1 and err.startswith(f"qkv {command}: interrupted (Ctrl-C)"), err
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_an_interrupted_sweep_writes_what_it_measured_and_exits_130(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from qkv.bench import sweep

    real, calls = sweep.measure_point, []

    def ctrl_c_at_the_second_point(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "measure_point", ctrl_c_at_the_second_point)
    assert main(["bench", "attention", "--quick", "--variants", "full", "--backends", "sdpa (torch)",
                 "--no-memory", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.startswith("qkv bench attention: interrupted (Ctrl-C)")
    result = json.loads((tmp_path / "bench-attention-cpu.json").read_text())
    assert result["interrupted"] is True
    by_n = {row["n"]: row for row in result["rows"]}
    assert set(by_n) == set(sweep.QUICK_SIZES)  # every point has its row
    assert by_n[256]["time_s"] > 0 and not by_n[256]["skipped"]  # measured before the Ctrl-C
    assert all(by_n[n]["skipped"].startswith(sweep.INTERRUPTED) for n in (512, 1024))
    assert "interrupted (Ctrl-C)" in (tmp_path / "BENCHMARKS.md").read_text()
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]  # no temporary file left


def test_the_overhead_json_is_checked_before_measuring(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from qkv.bench import overhead

    def refuse(*args, **kwargs):
        raise AssertionError("measured before --json was checked")

    monkeypatch.setattr(overhead, "run_overhead", refuse)
    assert main(["bench", "attention", "--section", "overhead", "--quick", "--json", "/proc/x/overhead.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qkv bench attention: error: --json /proc/x/overhead.json: ")

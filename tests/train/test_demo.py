"""Training from scratch: attention finds the cue, the control and a hidden cue stay at chance, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from qkv.cli import main
from qkv.train import QUICK, DemoConfig, DemoResult, evaluate, make_task, train_demo, train_run
from qkv.viz.training import save_training_figures

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick() -> DemoResult:
    """The shortened run (about 10 s on 2 cores): the model, then the control."""
    return train_demo(DemoConfig(**QUICK, threads=1))


def test_attention_learns_the_cue(quick: DemoResult) -> None:
    final = quick.final()
    uniform = 1 / quick.task.length
    assert final["accuracy"] >= 0.95
    # At initialisation every head spreads its attention about evenly: 1/N to the cue.
    assert 0.6 * uniform <= final["initial_attention_to_cue"] <= 1.6 * uniform
    assert max(max(row) for row in quick.main.log[0].attention_to_cue) < 2 * uniform
    # After training one head puts most of the ambiguous word's attention on the cue.
    assert final["attention_to_cue"] >= 0.5 > 6 * uniform - 0.01
    assert final["attention_to_cue"] == pytest.approx(max(max(row) for row in final["attention_to_cue_by_head"]))
    assert final["max_head_attention_to_cue"] >= final["attention_to_cue"]
    log = quick.main.log
    assert [e.step for e in log] == list(range(0, QUICK["steps"] + 1, QUICK["log_every"]))
    assert log[-1].loss < 0.1 * log[0].loss
    assert log[-1].accuracy == pytest.approx(final["accuracy"])


def test_control_without_attention_stays_at_chance(quick: DemoResult) -> None:
    control = quick.control
    assert control is not None
    assert control.final.accuracy <= 0.6
    assert abs(control.final.accuracy - quick.task.chance) < 0.1
    assert float(control.final.attention_to_cue.max()) == 0.0  # each token sees only itself
    # The mask goes through qkv's attention path: a (0, 0) window in every layer.
    layers = quick.config.num_layers
    assert control.model.encoder.attention_backends() == [("auto", {"window": (0, 0)})] * layers
    # The same initialisation and data: the main run's start and the control's are the same model.
    assert control.log[0].loss == pytest.approx(quick.main.log[0].loss, rel=0.2)


def test_hiding_the_cue_from_the_trained_model_drops_it_to_chance(quick: DemoResult) -> None:
    hidden = evaluate(quick.main.model, quick.task.heldout, hide_cue=True)
    assert hidden.accuracy <= 0.65
    assert float(hidden.attention_to_cue.max()) == 0.0
    visible = evaluate(quick.main.model, quick.task.heldout)
    assert visible.accuracy == pytest.approx(quick.final()["accuracy"])


def test_training_with_the_cue_hidden_does_not_learn() -> None:
    config = DemoConfig(**{**QUICK, "steps": 250, "control": False, "threads": 1})
    task = make_task(length=config.length, train_size=config.train_size, heldout_size=config.heldout_size,
                     train_templates=config.train_templates, heldout_templates=config.heldout_templates)
    run = train_run(task, config, name="cue hidden", hide_cue=True)
    assert run.final.accuracy <= 0.6
    assert run.log[-1].loss > 0.5  # it cannot fit the labels: about log 2 per sentence


def test_reported_weights_are_the_ones_the_model_uses(quick: DemoResult) -> None:
    """Capturing weights switches to the explicit steps; the model's output must not change."""
    model, split = quick.main.model, quick.task.heldout
    ids, word_pos = split.input_ids[:64], split.word_pos[:64]
    with torch.no_grad():
        fast = model(ids, word_pos)
    output, cache = model.encoder.run_with_cache(ids, "blocks.*.attn.weights")
    explicit = model.classify(output.last_hidden_state, word_pos)
    torch.testing.assert_close(explicit, fast, atol=1e-4, rtol=1e-4)
    weights = cache.stack("attn.weights")  # (L, B, H, N, N)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


def test_same_seed_same_numbers_and_no_side_effects() -> None:
    config = DemoConfig(**{**QUICK, "steps": 20, "log_every": 10, "heldout_size": 120, "control": False,
                           "seed": 4, "threads": 1})
    task = make_task(length=config.length, train_size=600, heldout_size=120, train_templates=30,
                     heldout_templates=10, seed=4)
    threads = torch.get_num_threads()
    rng = torch.random.get_rng_state()
    first = train_run(task, config)
    second = train_run(task, config)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global generator is left alone
    assert [dataclasses.asdict(e) for e in first.log] == [dataclasses.asdict(e) for e in second.log]
    other = train_run(task, dataclasses.replace(config, seed=5))
    assert other.log[-1].loss != first.log[-1].loss


def test_json_and_figures(quick: DemoResult, tmp_path: Path) -> None:
    data = json.loads(json.dumps(quick.to_json()))
    final = data["final"]
    for key in ("accuracy", "attention_to_cue", "control_accuracy", "best_head", "initial_attention_to_cue",
                "uniform_attention", "chance"):
        assert key in final
    layers, heads, n = quick.config.num_layers, quick.config.num_heads, quick.task.length
    entry = data["main"]["log"][-1]
    assert {"step", "loss", "accuracy", "attention_to_cue", "best_attention_to_cue", "best_head"} <= set(entry)
    assert len(entry["attention_to_cue"]) == layers and len(entry["attention_to_cue"][0]) == heads
    example = data["example"]
    assert len(example["tokens"]) == n and example["tokens"][example["word_index"]] == "bank"
    assert torch.tensor(example["attention"]).shape == (layers, heads, n, n)
    paths = save_training_figures(data, tmp_path / "figs")
    assert [p.name for p in paths] == ["training.png", "attention_example.png"]
    assert all(p.read_bytes()[:8] == PNG for p in paths)
    # A run without the control draws too.
    assert save_training_figures({**data, "control": None, "final": {**final, "control_accuracy": None}},
                                 tmp_path / "no-control")


def test_config_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        DemoConfig(num_heads=3)
    with pytest.raises(ValueError, match="head_dropout"):
        DemoConfig(head_dropout=1.0)
    with pytest.raises(ValueError, match="steps"):
        DemoConfig(steps=0)
    with pytest.raises(ValueError, match="threads"):
        DemoConfig(threads=0)


def test_cli_writes_json_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, out = tmp_path / "train.json", tmp_path / "figs"
    assert main(["train-demo", "--quick", "--steps", "60", "--seed", "1", "--json", str(path),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "final figures" in printed and "control accuracy" in printed
    data = json.loads(path.read_text())
    assert data["config"]["steps"] == 60 and data["config"]["seed"] == 1
    assert data["config"]["train_size"] == QUICK["train_size"]
    for key in ("accuracy", "attention_to_cue", "control_accuracy"):
        assert 0.0 <= data["final"][key] <= 1.0
    assert [e["step"] for e in data["main"]["log"]][-1] == 60
    assert sorted(p.name for p in out.iterdir()) == ["attention_example.png", "training.png"]
    assert all(p.read_bytes()[:8] == PNG and p.stat().st_size > 10_000 for p in out.iterdir())


def test_cli_bad_size_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train-demo", "--heads", "5"]) == 2
    assert "num_heads" in capsys.readouterr().err

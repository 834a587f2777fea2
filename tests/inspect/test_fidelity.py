"""qkv fidelity: variants measured against the exact model, through the model's own hooks."""

from __future__ import annotations

import json

import pytest

from qkv.cli import main
from qkv.inspect.fidelity import Variant, fidelity, subsample
from qkv.inspect.wsd import read_dataset
from qkv.viz.measures import _value_ranges, plot_fidelity

TEXT = "She deposited her check at the bank, then walked along the river bank to watch the boats go by."


def test_an_exact_variant_measures_as_exact_and_a_narrow_window_does_not(minilm, tiny_dataset):
    model, tokenizer = minilm
    before = model.attention_backends()
    variants = [
        Variant("window wider than the text", "sliding", {"window": (600, 600)}),
        Variant("window 1", "sliding", {"window": (1, 1)}),
        Variant("window 1 + [CLS]", "sliding", {"window": (1, 1), "global_tokens": [0]}),
    ]
    dataset = read_dataset(tiny_dataset)
    result = fidelity(model, tokenizer, TEXT, variants, dataset=dataset, repeats=1)
    wide, narrow, with_global = result["variants"]
    assert wide["token_cosine"] > 0.99999 and wide["sentence_cosine"] > 0.99999
    assert wide["attention_distance"] < 1e-5
    assert wide["wsd_micro_f1"] == result["exact"]["wsd_micro_f1"]
    assert narrow["token_cosine"] < 0.95 and narrow["attention_distance"] > 0.3
    # A global [CLS] gives every token one more key: closer to exact than the bare window.
    assert with_global["attention_distance"] < narrow["attention_distance"]
    assert result["tokens"] == len(tokenizer(TEXT).input_ids[0])
    assert model.attention_backends() == before  # the model is left as it was


def test_subsample_is_seeded_and_bounded(tiny_dataset):
    dataset = read_dataset(tiny_dataset)
    once, again = subsample(dataset, 2), subsample(dataset, 2)
    assert [len(w.train) for w in once] == [2, 2] and [len(w.test) for w in once] == [1, 1]
    assert [e.tokens for w in once for e in w.train] == [e.tokens for w in again for e in w.train]
    assert subsample(dataset, None) is dataset


def test_cli_writes_table_json_and_plot(minilm, tiny_dataset, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "figures"
    code = main(["fidelity", "--text", str(text), "--data", str(tiny_dataset), "--backends", "sliding",
                 "--json", str(tmp_path / "fidelity.json"), "--out", str(out)])
    assert code == 0
    result = json.loads((tmp_path / "fidelity.json").read_text())
    assert {row["backend"] for row in result["variants"]} == {"sliding"}
    assert all(0 < row["token_cosine"] <= 1.0001 and row["wsd_micro_f1"] is not None for row in result["variants"])
    assert (out / "fidelity.png").stat().st_size > 1000
    assert "sliding w=8" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["fidelity", "--backends", "nonsense"]) == 2
    assert main(["fidelity", "--backends", "sliding,slidng"]) == 2  # a typo is refused, not dropped
    assert "unknown ['slidng']; choose from" in capsys.readouterr().err


@pytest.mark.parametrize("backend,options", [("performer", {"features": 64}), ("nystrom", {"landmarks": 8}),
                                             ("linformer", {"k": 8}), ("linear", {})])
def test_approximate_variants_run_inside_the_model(minilm, backend, options):
    model, tokenizer = minilm
    result = fidelity(model, tokenizer, TEXT, [Variant(backend, backend, options)], repeats=1)
    row = result["variants"][0]
    assert -1 <= row["token_cosine"] <= 1.0001 and row["attention_distance"] >= 0
    assert row["token_cosine"] < 0.99999  # an approximation, measured as one


def test_cli_skips_what_a_causal_model_cannot_run(tiny_gpt2_folder, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("The river bank was muddy after the rain. She deposited her check at the bank.")
    argv = ["fidelity", "--model", str(tiny_gpt2_folder), "--text", str(text)]
    assert main([*argv, "--backends", "nystrom,linear"]) == 0
    captured = capsys.readouterr()
    assert "skipped nystrom landmarks=8" in " ".join(captured.out.split()) and "linear (elu+1)" in captured.out
    assert main([*argv, "--backends", "nystrom"]) == 2
    assert "--backends 'nystrom': this model can run none of them" in capsys.readouterr().err


def _plot_result(wsd: bool) -> dict:
    """A made-up result: a sliding window near the exact model, Linformer's WSD score far below."""
    rows = [{"label": f"sliding w={w}", "family": "sliding", "speedup": s, "token_cosine": c,
             "wsd_micro_f1": f if wsd else None} for w, s, c, f in ((8, 0.4, 0.5, 82.0), (64, 0.95, 0.9, 91.5))]
    rows += [{"label": f"linformer k={k}", "family": "linformer", "speedup": s, "token_cosine": c,
              "wsd_micro_f1": f if wsd else None} for k, s, c, f in ((16, 1.2, 0.0, 51.0), (64, 1.05, 0.05, 56.0))]
    rows.append({"label": "linear (elu+1)", "family": "linear", "speedup": 1.1, "token_cosine": 0.6,
                 "wsd_micro_f1": 85.0 if wsd else None})
    return {"model": "test", "tokens": 10, "exact": {"time_ms": 1.0, "wsd_micro_f1": 92.0 if wsd else None},
            "variants": rows}


@pytest.mark.parametrize("wsd", [True, False])
def test_plot_fidelity_writes_a_png(tmp_path, wsd):
    path = tmp_path / "fidelity.png"
    plot_fidelity(_plot_result(wsd), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_fidelity_breaks_the_y_axis_between_far_groups():
    f1 = [row["wsd_micro_f1"] for row in _plot_result(True)["variants"]] + [92.0]
    upper, lower = _value_ranges(f1)  # Linformer's 51-56 apart from 82-92: two ranges, upper first
    assert lower[0] < 51 and 56 < lower[1] < upper[0] < 82 and upper[1] > 92
    assert (upper[1] - upper[0]) > (lower[1] - lower[0])  # drawn at one scale: the wider range is taller
    (only,) = _value_ranges([0.5, 0.6, 0.8, 0.9, 1.0])  # no wide gap: one range, padded
    assert only[0] < 0.5 and only[1] > 1.0

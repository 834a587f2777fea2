"""Activation patching: the end points are the clean and corrupted runs, and a planted head is found."""

from __future__ import annotations

import pytest
import torch

from qkv.inspect.patching import (
    LogitDifference,
    Patch,
    activation_patching,
    clean_activations,
    logit_difference,
    prepare_pair,
    run_patches,
    sense_cosine,
)
from qkv.nn.stack import TransformerDecoder

VOCAB, SOURCE, PLANTED = 11, 2, (1, 2)  # tokens; the position the planted head copies; its (layer, head)
ANSWER, WRONG = 7, 8  # the token at SOURCE in the clean and in the corrupted input


class _Ids:
    """A tokenizer for token ids written as text: "3 7 1 4" -> ids [3, 7, 1, 4]."""

    def __call__(self, text: str):
        from types import SimpleNamespace

        ids = [int(t) for t in text.split()]
        return SimpleNamespace(input_ids=torch.tensor([ids]), tokens=[[str(i) for i in ids]],
                               special_tokens_mask=[[False] * len(ids)])


def planted_decoder() -> TransformerDecoder:
    """A random 2-layer decoder whose layer 1, head 2 attends from every position to position SOURCE
    and copies that token's identity, strongly, into the residual stream."""
    torch.manual_seed(3)
    model = TransformerDecoder(VOCAB, d_model=16, num_heads=4, num_layers=2, max_positions=9).eval()
    layer, head = PLANTED
    dh = 4
    rows = slice(head * dh, (head + 1) * dh)
    with torch.no_grad():
        # position SOURCE is marked on dimension 0 (large enough to survive the LayerNorm)
        model.embed.positions.weight[:, 0] = 0.0
        model.embed.positions.weight[SOURCE, 0] = 6.0
        # the answers differ on dimensions 1 .. 4 only: the head's values read those
        model.embed.tokens.weight[ANSWER] = model.embed.tokens.weight[WRONG]
        model.embed.tokens.weight[ANSWER, 1:5] += 2.0
        attn = model.blocks[layer].attn
        attn.q_proj.weight[rows] = 0.0
        attn.q_proj.bias[rows] = 0.0
        attn.q_proj.bias[head * dh] = 8.0  # a constant query ...
        attn.k_proj.weight[rows] = 0.0
        attn.k_proj.bias[rows] = 0.0
        attn.k_proj.weight[head * dh, 0] = 8.0  # ... that meets the key of position SOURCE only
        attn.v_proj.weight[rows] = 0.0
        attn.v_proj.bias[rows] = 0.0
        attn.v_proj.weight[rows, 1:5] = torch.eye(dh)
        attn.out_proj.weight[:, rows] = 0.0
        attn.out_proj.weight[1:5, rows] = 6.0 * torch.eye(dh)  # writes the copied token back, amplified
    return model


def _tiny_pair(model):
    clean = f"3 5 {ANSWER} 4 1 6"
    corrupted = f"3 5 {WRONG} 4 1 6"
    metric = LogitDifference(ANSWER, WRONG, str(ANSWER), str(WRONG))
    return prepare_pair(_Ids(), clean, corrupted), metric, clean, corrupted


def _metric_of(model, ids, metric, positions):
    with torch.no_grad():
        return metric(model(ids), positions)


def test_patching_every_position_at_the_first_layer_gives_the_clean_metric_exactly():
    model = planted_decoder()
    pair, metric, _, _ = _tiny_pair(model)
    clean = _metric_of(model, pair.clean_ids, metric, pair.clean_positions)
    corrupted = _metric_of(model, pair.corrupted_ids, metric, pair.corrupted_positions)
    assert abs(float(clean - corrupted)) > 1.0  # the pair differs, so the checks below can fail
    patched = run_patches(model, pair, [[Patch("resid", 0)]], metric, batch_size=1)
    assert torch.equal(patched, clean.float())
    every = [[Patch("resid", 0, position=p) for p in range(pair.corrupted_ids.shape[1])]]
    assert torch.equal(run_patches(model, pair, every, metric, batch_size=1), clean.float())
    # in a batch with other runs, the same up to float32 rounding
    batched = run_patches(model, pair, [[], [Patch("resid", 0)], [Patch("z", 1, head=0)]], metric)
    torch.testing.assert_close(batched[1], clean[0].float(), rtol=1e-5, atol=1e-5)


def test_patching_nothing_gives_the_corrupted_metric_exactly():
    model = planted_decoder()
    pair, metric, _, _ = _tiny_pair(model)
    corrupted = _metric_of(model, pair.corrupted_ids, metric, pair.corrupted_positions)
    assert torch.equal(run_patches(model, pair, [[]], metric, batch_size=1), corrupted.float())
    # a patch at a position where both inputs agree, before anything differs, changes nothing either
    same = run_patches(model, pair, [[Patch("resid", 0, position=0)]], metric, batch_size=1)
    assert torch.equal(same, corrupted.float())


def test_head_patching_ranks_the_planted_copying_head_first():
    model = planted_decoder()
    _, metric, clean, corrupted = _tiny_pair(model)
    result = activation_patching(model, _Ids(), clean, corrupted, metric, sites=("z", "resid", "weights"))
    layer, head, share = result.top("z", 1)[0]
    assert (layer, head) == PLANTED
    assert share > 0.5
    second = result.top("z", 2)[1][2]
    assert share > 2 * second
    # its attention weights are the same in both inputs (it looks at a position, not a token),
    # so patching them restores nothing: looking is not what carries the difference
    assert abs(float(result.restored("weights")[PLANTED])) < 0.05
    # the residual stream carries the difference at SOURCE until the planted layer reads it
    resid = result.restored("resid")  # (L, N)
    assert float(resid[1, SOURCE]) > 0.5
    assert torch.allclose(resid[:, [0, 1]], torch.zeros(2, 2), atol=1e-5)  # before SOURCE: nothing to restore
    assert result.grids["resid"].shape == (2, 6) and result.grids["z"].shape == (2, 4)


def test_patched_weights_are_the_clean_heads_pattern():
    from qkv.inspect.patching import _patch_value

    model = planted_decoder()
    pair, _, _, _ = _tiny_pair(model)
    clean = clean_activations(model, pair, ["weights"])["blocks.0.attn.weights"]  # (1, H, N, N)
    value = torch.zeros(2, 4, 6, 6)
    _patch_value(value, 1, Patch("weights", 0, head=1), clean, pair)
    assert torch.equal(value[1, 1], clean[0, 1])
    assert not value[0].any() and not value[1, [0, 2, 3]].any()  # other rows and heads untouched


def test_unequal_token_counts_without_a_focus_are_refused():
    with pytest.raises(ValueError, match="equal token counts"):
        prepare_pair(_Ids(), "1 2 3", "1 2 3 4")


def test_bad_patches_are_refused():
    model = planted_decoder()
    pair, metric, _, _ = _tiny_pair(model)
    with pytest.raises(ValueError, match=r"head in 0 \.\. 3"):
        run_patches(model, pair, [[Patch("z", 0, head=4)]], metric)
    with pytest.raises(ValueError, match=r"layers 0 \.\. 1"):
        run_patches(model, pair, [[Patch("resid", 2)]], metric)
    with pytest.raises(ValueError, match="not one of"):
        run_patches(model, pair, [[Patch("mlp", 0)]], metric)


def test_encoder_pair_of_unequal_length_aligns_the_focus_word(minilm):
    _, tokenizer = minilm
    pair = prepare_pair(tokenizer, "She deposited her check at the bank.", "He sat on the bank of the river.",
                        focus="bank")
    clean, corrupted = pair.clean_tokens, pair.corrupted_tokens
    assert len(clean) != len(corrupted)
    assert clean[pair.alignment[pair.corrupted_positions[0]]] == "bank"
    assert pair.alignment[0] == 0 and clean[pair.alignment[-1]] == "[SEP]"
    for p, q in enumerate(pair.alignment):  # words pair at the same distance from the focus
        if q is not None and p not in (0, len(corrupted) - 1):
            assert q - pair.clean_positions[0] == p - pair.corrupted_positions[0]
    assert "distance from 'bank'" in pair.alignment_note


def test_sense_cosine_patching_on_minilm(minilm):
    from qkv.inspect.senses import DEFAULT_SENSES

    model, tokenizer = minilm
    metric = sense_cosine(model, tokenizer, "bank", DEFAULT_SENSES["bank"], "money")
    result = activation_patching(model, tokenizer, "She deposited her check at the bank.",
                                 "He sat on the bank of the river.", metric, focus="bank", sites=("resid",))
    assert result.clean_metric > result.corrupted_metric
    resid = result.restored("resid")
    bank = result.corrupted_tokens.index("bank")
    # the focus word's own vector, patched early, carries the clean sense into it
    assert float(resid[1, bank]) > 0.5
    assert torch.isnan(resid[:, [p for p, q in enumerate(result.alignment) if q is None]]).all()
    data = result.to_dict()
    assert data["sites"]["resid"]["restored"][0][bank] is not None


def test_logit_difference_needs_single_tokens(tiny_gpt2):
    _, tokenizer = tiny_gpt2
    with pytest.raises(ValueError, match="single tokens"):
        logit_difference(tokenizer, " bank deposited", " river")


def test_qkv_patch_on_a_decoder_writes_json_png_and_a_page_that_shows_every_cell(tiny_gpt2_folder, tmp_path, capsys):
    import json

    from qkv.cli import main

    out = tmp_path / "out"
    code = main(["patch", "She deposited her check at the bank.", "She deposited her check at the river.",
                 "--model", str(tiny_gpt2_folder), "--answer", " bank", "--wrong", " river", "--sites", "resid,z",
                 "--json", str(tmp_path / "p.json"), "--html", str(tmp_path / "p.html"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "logit(' bank') - logit(' river')" in printed and "equal token counts" in printed
    data = json.loads((tmp_path / "p.json").read_text())
    tokens = data["corrupted"]["tokens"]
    assert set(data["sites"]) == {"resid", "z"}
    assert len(data["sites"]["resid"]["restored"]) == 2 and len(data["sites"]["resid"]["restored"][0]) == len(tokens)
    # at layer 0, patching the one position where the inputs differ makes them the same: all restored
    differs = [p for p, (a, b) in enumerate(zip(data["clean"]["tokens"], tokens)) if a != b]
    assert len(differs) == 1
    assert abs(data["sites"]["resid"]["restored"][0][differs[0]] - 1.0) < 1e-4
    assert abs(data["sites"]["resid"]["restored"][0][0]) < 1e-4
    assert (out / "patching.png").stat().st_size > 10_000
    _check_page_in_browser(tmp_path / "p.html", cells=2 * len(tokens) + 2 * 3)


def _check_page_in_browser(path, cells: int) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    from pathlib import Path

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("no /usr/bin/chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        errors, requests = [], []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("request", lambda request: requests.append(request.url) if not request.url.startswith("file:")
                else None)
        page.goto(path.as_uri())
        assert page.locator("table.grid td").count() == cells
        page.locator("table.grid td").nth(cells - 1).hover()
        assert "layer 1" in page.locator("#tip").inner_text()
        browser.close()
    assert errors == [] and requests == []


def test_qkv_patch_refuses_bad_options_in_one_line(tiny_gpt2_folder, capsys):
    from qkv.cli import main

    assert main(["patch", "--sites", "mlp"]) == 2
    assert "--sites 'mlp'" in capsys.readouterr().err
    model = ["--model", str(tiny_gpt2_folder)]
    assert main(["patch", "She deposited her check at the bank.", "The river.", *model, "--answer", " bank",
                 "--wrong", " river"]) == 2
    assert "equal token counts" in capsys.readouterr().err
    assert main(["patch", "a bank.", "a river.", *model]) == 2
    assert "needs --answer" in capsys.readouterr().err
    assert main(["patch", "a bank.", *model]) == 2
    assert "both inputs" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "option", "path"), [
    ("patch", "--json", "/sys/x.json"), ("patch", "--html", "/sys/x.html"), ("patch", "--out", "/proc/x/y"),
    ("faithfulness", "--json", "/sys/x.json"), ("faithfulness", "--out", "/proc/x/y"),
])
def test_unwritable_outputs_are_refused_before_the_model_loads(monkeypatch, capsys, command, option, path):
    import qkv
    from qkv.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("the model loaded before the output paths were checked")

    monkeypatch.setattr(qkv, "load", refuse)
    assert main([command, option, path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"qkv {command}: error: {option} {path}: "), err


def test_terminal_grids_show_tokens_as_text_not_markup():
    from rich.console import Console

    from qkv.viz.patching import patching_tables

    data = {"corrupted": {"tokens": ["[bold]", "x\x1b[31m"]},
            "sites": {"resid": {"restored": [[0.5, None]], "metric": [[1.0, None]]}}}
    console = Console(width=80, record=True, color_system=None)
    for table in patching_tables(data):
        console.print(table)
    shown = console.export_text()
    assert "[bold]" in shown and "\x1b" not in shown and "+0.50" in shown and "·" in shown

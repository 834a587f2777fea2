"""Our BERT and GPT-2, loaded from the same files, equal Hugging Face transformers."""

from __future__ import annotations

import pytest
import torch
from hf_reference import hf_model

import qkv

SENTENCES = [
    "She deposited her check at the bank.",
    "The river bank was muddy.",
    "Attention turns each token into a query, a key and a value, and mixes values by weight.",
]


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        a, b = a[mask], b[mask]
    return (a.float() - b.float()).abs().max().item()


def compare_with_transformers(folder, kind: str, padding_side: str):
    """Run ours and transformers on SENTENCES; check hidden states and attention weights.

    Returns (ours, theirs, real-token mask) for family-specific checks.
    """
    model, tokenizer = qkv.load(folder)
    theirs = hf_model(folder, kind)
    batch = tokenizer(SENTENCES, padding_side=padding_side)
    with torch.no_grad():
        expected = theirs(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(),
                          output_hidden_states=True, output_attentions=True)
    output, cache = model.run_with_cache(batch, output_hidden_states=True)
    real = batch.attention_mask  # (B, N): compare the real tokens
    assert len(output.hidden_states) == len(expected.hidden_states)
    for layer, (ours, reference) in enumerate(zip(output.hidden_states, expected.hidden_states)):
        assert max_diff(ours, reference, real) < 1e-5, f"hidden state {layer}"
    for layer, reference in enumerate(expected.attentions):
        ours = cache[f"blocks.{layer}.attn.weights"]
        assert max_diff(ours, reference, real[:, None, :, None].expand_as(ours)) < 1e-6, f"weights {layer}"
    return output, expected, real


def compare_encoder(folder, padding_side: str) -> None:
    output, expected, _ = compare_with_transformers(folder, "bert", padding_side)
    assert max_diff(output.pooler_output, expected.pooler_output) < 1e-5


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_minilm_matches_transformers(minilm_folder, padding_side):
    compare_encoder(minilm_folder, padding_side)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_tiny_bert_matches_transformers(tiny_bert_folder, padding_side):
    compare_encoder(tiny_bert_folder, padding_side)


def test_minilm_sentence_embeddings_match_transformers(minilm_folder):
    model, tokenizer = qkv.load(minilm_folder)
    theirs = hf_model(minilm_folder, "bert")
    batch = tokenizer(SENTENCES)
    with torch.no_grad():
        hidden = theirs(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).last_hidden_state
        weights = batch.attention_mask.float().unsqueeze(-1)
        expected = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
    assert max_diff(model.encode(SENTENCES), expected) < 1e-5
    # Contextual sense: the money 'bank' sentence is closer to a deposit than to a river.
    money, river, deposit = model.encode(["She deposited her check at the bank.",
                                          "The river bank was muddy.", "I put cash in my account."])
    assert money @ deposit > river @ deposit


def test_minilm_encode_reads_at_most_its_sentence_transformers_length(minilm_folder):
    """sentence_bert_config.json sets max_seq_length 256: a longer text is cut there, as
    sentence-transformers cuts it ([CLS], 254 tokens, [SEP]), not at BERT's 512."""
    model, tokenizer = qkv.load(minilm_folder)
    assert model.sentence_max_length == 256
    text = "The bank approved the loan after she deposited her check. " * 30  # about 330 tokens
    assert tokenizer(text).input_ids.shape[1] > 256
    theirs = hf_model(minilm_folder, "bert")
    batch = tokenizer(text, max_length=256)
    assert batch.input_ids.shape[1] == 256 and batch.input_ids[0, -1] == tokenizer.token_to_id("[SEP]")
    with torch.no_grad():
        expected = theirs(input_ids=batch.input_ids).last_hidden_state.mean(1)
    assert max_diff(model.encode(text), torch.nn.functional.normalize(expected, dim=-1)) < 1e-5


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_tiny_gpt2_matches_transformers(tiny_gpt2_folder, padding_side):
    output, expected, real = compare_with_transformers(tiny_gpt2_folder, "gpt2", padding_side)
    assert max_diff(output.logits, expected.logits, real) < 1e-4

def test_tiny_gpt2_greedy_generation_matches_transformers(tiny_gpt2_folder):
    model, tokenizer = qkv.load(tiny_gpt2_folder)
    theirs = hf_model(tiny_gpt2_folder, "gpt2")
    eos = model.config.eos_token_id
    single = tokenizer("Attention lets every")
    expected = theirs.generate(single.input_ids, attention_mask=single.attention_mask.long(),
                               max_new_tokens=20, do_sample=False, pad_token_id=eos)
    ours = model.generate(single.input_ids, 20)
    assert torch.equal(ours, expected)
    batch = tokenizer(["Attention lets every", "The river"], padding_side="left")
    expected = theirs.generate(batch.input_ids, attention_mask=batch.attention_mask.long(),
                               max_new_tokens=20, do_sample=False, pad_token_id=eos)
    ours = model.generate(batch.input_ids, 20, attention_mask=batch.attention_mask)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_kv_cache_decoding_equals_recomputing(tiny_gpt2_folder, padding_side):
    model, tokenizer = qkv.load(tiny_gpt2_folder)
    batch = tokenizer(["Queries ask, keys answer", "A small model"], padding_side=padding_side)
    ids, mask = batch.input_ids, batch.attention_mask
    positions = qkv.nn.generation.positions_from_mask(mask)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, positions=positions).logits
        cache = qkv.nn.KVCache()
        prefix = 3
        steps = [model(ids[:, :prefix], attention_mask=mask[:, :prefix], positions=positions[:, :prefix],
                       kv_cache=cache).logits]
        for i in range(prefix, ids.shape[1]):
            steps.append(model(ids[:, i:i + 1], attention_mask=mask[:, :i + 1],
                               positions=positions[:, i:i + 1], kv_cache=cache).logits)
    incremental = torch.cat(steps, dim=1)
    assert max_diff(incremental, full, mask) < 1e-5


def test_generation_with_and_without_cache_agree(tiny_gpt2_folder):
    model, _ = qkv.load(tiny_gpt2_folder)
    prompt = torch.tensor([[5, 17, 42]])
    assert torch.equal(model.generate(prompt, 15, use_cache=True), model.generate(prompt, 15, use_cache=False))
    sampled = model.generate(prompt, 15, do_sample=True, top_k=20, seed=3)
    assert torch.equal(sampled, model.generate(prompt, 15, do_sample=True, top_k=20, seed=3))
    assert sampled.shape == (1, 18)

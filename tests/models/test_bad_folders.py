"""A corpus of bad model folders and GGUF files, generated here from tiny valid ones.

Every case must be refused by ``qkv.load`` with a ValueError in one line that names the
file and the field, before the model is built (most before a weight is read), allocating
no more than the files' own size; a sample goes through every command (exit code 2, one
line on stderr, no traceback).

The tiny valid folders (BERT, GPT-2, Llama) are written without transformers: qkv's own
modules give random weights, saved under each family's checkpoint names (its key map),
with a word-level tokenizer.json.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import qkv
import qkv.models.gguf as gguf_module
import qkv.models.loading as loading
from qkv.cli import main as cli_main
from qkv.models.bert import BertModel, bert_key_map
from qkv.models.config import config_from_dict
from qkv.models.gpt2 import GPT2LMHeadModel, gpt2_key_map
from qkv.models.llama import LlamaForCausalLM, llama_key_map

WORDS = ("she deposited her check at the bank the river was muddy after rain attention lets every token "
         "look at other queries ask keys answer values carry message a small model can learn").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
TOKENS = [*SPECIALS, *dict.fromkeys(WORDS)]  # 34 ids
EXTRA_TOKENS = 30  # a tokenizer with ids up to 63, for an embedding table of 47 rows

# Odd sizes; the tokenizer has fewer ids (4 specials + the distinct words) than vocab_size.
BASE_CONFIGS = {
    "bert": {"model_type": "bert", "vocab_size": 47, "hidden_size": 12, "num_hidden_layers": 2,
             "num_attention_heads": 3, "intermediate_size": 13, "max_position_embeddings": 19,
             "type_vocab_size": 2, "layer_norm_eps": 1e-12},
    "gpt2": {"model_type": "gpt2", "vocab_size": 47, "n_positions": 19, "n_embd": 12, "n_layer": 2, "n_head": 3,
             "bos_token_id": 1, "eos_token_id": 1},
    "llama": {"model_type": "llama", "vocab_size": 47, "hidden_size": 12, "intermediate_size": 10,
              "num_hidden_layers": 2, "num_attention_heads": 3, "num_key_value_heads": 1,
              "max_position_embeddings": 19, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
}
# The config's own name for each role, per family.
FIELDS = {
    "bert": {"layers": "num_hidden_layers", "heads": "num_attention_heads", "width": "hidden_size",
             "inner": "intermediate_size", "positions": "max_position_embeddings", "eps": "layer_norm_eps",
             "act": "hidden_act"},
    "gpt2": {"layers": "n_layer", "heads": "n_head", "width": "n_embd", "inner": "n_inner",
             "positions": "n_positions", "eps": "layer_norm_epsilon", "act": "activation_function"},
    "llama": {"layers": "num_hidden_layers", "heads": "num_attention_heads", "width": "hidden_size",
              "inner": "intermediate_size", "positions": "max_position_embeddings", "eps": "rms_norm_eps",
              "act": "hidden_act"},
}
MODELS = {"bert": (lambda c: BertModel(c, with_pooler=True), lambda c: bert_key_map(c, True)),
          "gpt2": (GPT2LMHeadModel, gpt2_key_map), "llama": (LlamaForCausalLM, llama_key_map)}
# Python bookkeeping a failed load may add beyond the files' size (a 2-layer model's modules on the meta
# device, error messages); a model built from an absurd config needs thousands of times more.
PYTHON_ALLOWANCE = 4 * 2**20


def write_tokenizer(path: Path, extra_tokens: int = 0) -> int:
    """A word-level tokenizer.json ([CLS] ... [SEP] around each text); returns its number of ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(TOKENS)}
    for i in range(extra_tokens):
        vocab[f"extra{i}"] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.save(str(path))
    return len(vocab)


def checkpoint_tensors(family: str, values: dict) -> dict[str, torch.Tensor]:
    """Random weights of a family's model under its checkpoint names."""
    torch.manual_seed(0)
    config = config_from_dict(values)
    build, key_map = MODELS[family]
    parameters = dict(build(config).named_parameters())
    return {source.key: (parameters[name].t() if source.transpose else parameters[name]).detach().contiguous()
            for name, source in key_map(config).items()}


def write_gguf(path: Path, tensors: dict[str, torch.Tensor], values: dict, *, arch: str = "llama",
               vocab_size: int | None = None, block_count: int | None = None, tokens: int | None = None) -> Path:
    """A GGUF file of a Llama folder's weights (llama.cpp's names, float32, byte-level BPE vocabulary)."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(values["num_hidden_layers"] if block_count is None else block_count)
    writer.add_context_length(values["max_position_embeddings"])
    writer.add_embedding_length(values["hidden_size"])
    writer.add_feed_forward_length(values["intermediate_size"])
    writer.add_head_count(values["num_attention_heads"])
    writer.add_head_count_kv(values["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(values["rms_norm_eps"])
    if vocab_size is not None:
        writer.add_vocab_size(vocab_size)
    tokens = [*TOKENS, "t", *(f"extra{i}" for i in range((tokens or values["vocab_size"]) - len(TOKENS) - 1))]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    writer.add_token_merges(["a t"])
    names = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for key, value in tensors.items():
        name = names.get(key)
        if name is None:
            _, i, *rest = key.split(".")
            stem = ".".join(rest).removesuffix(".weight")
            name = f"blk.{i}.{parts[stem]}.weight"
        writer.add_tensor(name, value.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """One tiny valid folder per family, plus ``llama.gguf`` (the Llama weights as a GGUF file)."""
    root = tmp_path_factory.mktemp("valid")
    folders = {}
    for family, values in BASE_CONFIGS.items():
        folder = root / family
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(values))
        save_file(checkpoint_tensors(family, values), folder / "model.safetensors")
        write_tokenizer(folder / "tokenizer.json")
        folders[family] = folder
    folders["gguf"] = write_gguf(root / "llama.gguf", load_file(folders["llama"] / "model.safetensors"),
                                 BASE_CONFIGS["llama"])
    return folders


# The corpus: each case damages a copy of a valid folder (or GGUF file) one way.


@dataclass(frozen=True)
class Case:
    name: str
    base: str  # "bert", "gpt2", "llama" or "gguf"
    damage: Callable[[Path], None]  # applied to the copy (a folder, or the .gguf file)
    file: str  # the file the message must name ("" for the .gguf file itself)
    says: tuple[str, ...]  # the field (and what was seen) the message must name
    reads_weights: bool = False  # refused only after reading the weights (non-finite values)


def config_edit(**changes) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / "config.json"
        values = json.loads(path.read_text())
        for key, value in changes.items():
            if value is DELETE:
                del values[key]
            else:
                values[key] = value
        path.write_text(json.dumps(values))
    return damage


DELETE = object()


def config_text(text: str | bytes) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / "config.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return damage


def tensor_edit(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / "model.safetensors"
        tensors = load_file(path)
        change(tensors)
        save_file(tensors, path)
    return damage


def retype(key: str, dtype: torch.dtype) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors):
        tensors[key] = (tensors[key] * 10).to(dtype)
    return change


def poison(key: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors):
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[3] = value
    return change


def file_bytes(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / name if folder.is_dir() else folder
        path.write_bytes(change(path.read_bytes()))
    return damage


def safetensors_header(change: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    """Rewrite a safetensors file's JSON header (the data after it stays as it was)."""
    def rewrite(data: bytes) -> bytes:
        length = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + length])
        change(header)
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text + data[8 + length:]
    return rewrite


def larger_tokenizer(folder: Path) -> None:
    write_tokenizer(folder / "tokenizer.json", extra_tokens=EXTRA_TOKENS)


def shard_index(text: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        (folder / "model.safetensors.index.json").write_text(text)
    return damage


def regguf(**options) -> Callable[[Path], None]:
    """Write the GGUF file again with other metadata."""
    def damage(path: Path) -> None:
        folder = path.parent / "llama-source"
        values = dict(BASE_CONFIGS["llama"])
        tensors = load_file(folder / "model.safetensors")
        if options.pop("nan", False):
            tensors["layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
        rows = options.get("vocab_size")
        if rows is not None:  # an embedding table (and LM head) of fewer rows than the vocabulary has tokens
            for key in ("embed_tokens.weight", "lm_head.weight"):
                tensors[key] = tensors[key][:rows].contiguous()
            options["tokens"] = values["vocab_size"]
        write_gguf(path, tensors, values, **options)
    return damage


def family_cases(family: str) -> list[Case]:
    f = FIELDS[family]
    layers, heads, width, eps = f["layers"], f["heads"], f["width"], f["eps"]
    embedding = {"bert": "embeddings.word_embeddings.weight", "gpt2": "wte.weight",
                 "llama": "embed_tokens.weight"}[family]
    weight = {"bert": "encoder.layer.1.intermediate.dense.weight", "gpt2": "h.1.mlp.c_fc.weight",
              "llama": "layers.1.mlp.up_proj.weight"}[family]
    cases = [
        Case("layers-1e6", family, config_edit(**{layers: 10**6}), "config.json",
             (f"{layers}=1000000", "holds 2 layers")),
        Case("layers-3", family, config_edit(**{layers: 3}), "config.json", (f"{layers}=3", "holds 2 layers")),
        Case("layers-0", family, config_edit(**{layers: 0}), "config.json", (layers, "positive", "got 0")),
        Case("layers-negative", family, config_edit(**{layers: -2}), "config.json", (layers, "got -2")),
        Case("layers-1e30", family, config_edit(**{layers: 10**30}), "config.json", (layers, "at most")),
        Case("layers-float", family, config_edit(**{layers: 2.5}), "config.json", (layers, "float 2.5")),
        Case("layers-bool", family, config_edit(**{layers: True}), "config.json", (layers, "bool True")),
        Case("layers-string", family, config_edit(**{layers: "2"}), "config.json", (layers, "str '2'")),
        Case("heads-0", family, config_edit(**{heads: 0}), "config.json", (heads, "got 0")),
        Case("heads-negative", family, config_edit(**{heads: -3}), "config.json", (heads, "got -3")),
        Case("heads-not-dividing", family, config_edit(**{heads: 5}), "config.json", (heads, "5", "divisible")),
        Case("width-negative", family, config_edit(**{width: -12}), "config.json", (width, "got -12")),
        Case("vocab-1e9", family, config_edit(vocab_size=10**9), "config.json", ("vocab_size=1000000000", "largest")),
        Case("vocab-0", family, config_edit(vocab_size=0), "config.json", ("vocab_size", "got 0")),
        Case("inner-1e6", family, config_edit(**{f["inner"]: 10**6}), "config.json", (f"{f['inner']}=1000000",)),
        Case("eps-0", family, config_edit(**{eps: 0}), "config.json", (eps, "> 0", "got 0")),
        Case("eps-negative", family, config_edit(**{eps: -1e-5}), "config.json", (eps, "> 0")),
        Case("eps-nan", family, config_edit(**{eps: float("nan")}), "config.json", (eps, "nan")),
        Case("eps-string", family, config_edit(**{eps: "1e-5"}), "config.json", (eps, "str")),
        Case("activation-unknown", family, config_edit(**{f["act"]: "swish9"}), "config.json", (f["act"], "swish9")),
        Case("width-missing", family, config_edit(**{width: DELETE}), "config.json", (width,)),
        Case("tokenizer-larger-than-vocab", family, larger_tokenizer, "tokenizer.json",
             (f"ids up to {len(TOKENS) + EXTRA_TOKENS - 1}", "vocab_size", "47")),
        Case("weight-int64", family, tensor_edit(retype(weight, torch.int64)), "model.safetensors",
             (weight, "int64", "floating point")),
        Case("weight-bool", family, tensor_edit(retype(embedding, torch.bool)), "model.safetensors",
             (embedding, "bool", "floating point")),
        Case("weight-nan", family, tensor_edit(poison(weight, float("nan"))), "model.safetensors",
             (weight, "NaN"), reads_weights=True),
        Case("weight-inf", family, tensor_edit(poison(embedding, float("-inf"))), "model.safetensors",
             (embedding, "infinite"), reads_weights=True),
        Case("weight-missing", family, tensor_edit(lambda t: t.pop(weight)), "model.safetensors",
             ("missing tensors (1)", weight)),
        Case("weight-misshaped", family, tensor_edit(lambda t: t.update({weight: t[weight][:, :-1].contiguous()})),
             "model.safetensors", ("mis-shaped", weight)),
    ]
    if family != "llama":  # a Llama has no table of positions: its max_position_embeddings costs nothing
        cases.append(Case("positions-1e7", family, config_edit(**{f["positions"]: 10**7}), "config.json",
                          (f"{f['positions']}=10000000", "largest")))
    return [Case(f"{family}-{c.name}", c.base, c.damage, c.file, c.says, c.reads_weights) for c in cases]


FILE_CASES = [
    Case("config-deeply-nested", "bert", config_text("[" * 100_000 + "]" * 100_000), "config.json", ("nests",)),
    Case("config-nested-object", "bert", config_edit(num_hidden_layers={"a": {"b": [2]}}), "config.json",
         ("num_hidden_layers", "dict")),
    Case("config-a-list", "bert", config_text("[1, 2, 3]"), "config.json", ("JSON object", "list")),
    Case("config-empty", "bert", config_text(""), "config.json", ("not valid JSON",)),
    Case("config-null", "bert", config_text("null"), "config.json", ("JSON object", "NoneType")),
    Case("config-not-utf8", "bert", config_text(b'{"model_type": "bert\xff\xfe"}'), "config.json", ("not valid JSON",)),
    Case("config-int-of-5000-digits", "bert", config_text('{"hidden_size": ' + "9" * 5000 + "}"), "config.json",
         ("not valid JSON",)),
    Case("config-model-type-list", "bert", config_edit(model_type=["bert"]), "config.json", ("model_type",)),
    Case("config-model-type-missing", "bert", config_edit(model_type=DELETE), "config.json", ("model_type=None",)),
    Case("config-eps-huge-int", "bert", config_edit(layer_norm_eps=10**400), "config.json", ("layer_norm_eps",)),
    Case("config-type-vocab-0", "bert", config_edit(type_vocab_size=0), "config.json", ("type_vocab_size", "got 0")),
    Case("config-position-type", "bert", config_edit(position_embedding_type="relative_key"), "config.json",
         ("position_embedding_type",)),
    Case("llama-kv-heads-not-dividing", "llama", config_edit(num_key_value_heads=2), "config.json",
         ("num_key_value_heads=2", "num_attention_heads=3")),
    Case("llama-kv-heads-0", "llama", config_edit(num_key_value_heads=0), "config.json",
         ("num_key_value_heads", "got 0")),
    Case("llama-head-dim-odd", "llama", config_edit(head_dim=3), "config.json", ("head_dim", "3")),
    Case("llama-rope-theta-negative", "llama", config_edit(rope_theta=-10000.0), "config.json", ("rope_theta",)),
    Case("llama-rope-linear-without-factor", "llama", config_edit(rope_scaling={"rope_type": "linear"}),
         "config.json", ("rope_scaling", "factor")),
    Case("llama-rope-parameters-a-string", "llama", config_edit(rope_parameters="yarn"), "config.json",
         ("rope_parameters",)),
    Case("llama-layer-types-nested", "llama", config_edit(layer_types=[["full_attention"], "x"]), "config.json",
         ("layer_types",)),
    Case("llama-layer-types-too-short", "llama", config_edit(layer_types=["full_attention"]), "config.json",
         ("layer_types", "num_hidden_layers=2")),
    Case("mistral-sliding-window-0", "llama", config_edit(model_type="mistral", sliding_window=0), "config.json",
         ("sliding_window",)),
    Case("qwen2-window-layers-1e9", "llama", config_edit(model_type="qwen2", use_sliding_window=True,
                                                         sliding_window=4, num_hidden_layers=10**9),
         "config.json", ("num_hidden_layers=1000000000", "holds 2 layers")),
    Case("llama-positions-0", "llama", config_edit(max_position_embeddings=0), "config.json",
         ("max_position_embeddings", "got 0")),
    Case("safetensors-truncated", "bert", file_bytes("model.safetensors", lambda b: b[: len(b) // 2]),
         "model.safetensors", ("truncated",)),
    Case("safetensors-empty", "bert", file_bytes("model.safetensors", lambda b: b""), "model.safetensors",
         ("not a safetensors file",)),
    Case("safetensors-header-length-absurd", "bert",
         file_bytes("model.safetensors", lambda b: struct.pack("<Q", 2**62) + b[8:]), "model.safetensors",
         ("not a safetensors file",)),
    Case("safetensors-header-not-json", "bert",
         file_bytes("model.safetensors", lambda b: b[:8] + b"{" * 16 + b[24:]), "model.safetensors",
         ("not a safetensors file",)),
    Case("safetensors-offsets-past-the-end", "gpt2", file_bytes("model.safetensors", safetensors_header(
        lambda h: h["wte.weight"].update(data_offsets=[0, 10**12]))), "model.safetensors", ("truncated",)),
    Case("safetensors-shape-absurd", "gpt2", file_bytes("model.safetensors", safetensors_header(
        lambda h: h["wte.weight"].update(shape=[10**9, 10**9]))), "model.safetensors", ("truncated",)),
    Case("safetensors-unknown-dtype", "gpt2", file_bytes("model.safetensors", safetensors_header(
        lambda h: h["ln_f.bias"].update(dtype="C64"))), "model.safetensors", ("not a safetensors file",)),
    Case("safetensors-float8", "llama", tensor_edit(retype("norm.weight", torch.float8_e4m3fn)),
         "model.safetensors", ("norm.weight", "float8_e4m3fn", "floating point")),
    Case("safetensors-uint8", "gpt2", tensor_edit(retype("ln_f.weight", torch.uint8)), "model.safetensors",
         ("ln_f.weight", "uint8")),
    Case("shard-index-traversal", "bert", shard_index('{"weight_map": {"a": "../../etc/passwd"}}'),
         "model.safetensors.index.json", ("weight_map", "file names")),
    Case("shard-index-deep", "bert", shard_index("[" * 100_000), "model.safetensors.index.json", ("weight_map",)),
    Case("shard-index-numbers", "bert", shard_index('{"weight_map": {"a": 5}}'), "model.safetensors.index.json",
         ("weight_map",)),
    Case("sentence-config-bad", "bert",
         lambda folder: (folder / "sentence_bert_config.json").write_text('{"max_seq_length": "x"}'),
         "sentence_bert_config.json", ("max_seq_length",)),
    Case("gguf-truncated", "gguf", file_bytes("", lambda b: b[: len(b) // 2]), "", ("truncated",)),
    Case("gguf-header-only", "gguf", file_bytes("", lambda b: b[:40]), "", ("truncated",)),
    Case("gguf-empty", "gguf", file_bytes("", lambda b: b""), "", ("truncated",)),
    Case("gguf-wrong-architecture", "gguf", regguf(arch="gpt2"), "", ("architecture 'gpt2'",)),
    Case("gguf-block-count-1e6", "gguf", regguf(block_count=10**6), "", ("llama.block_count=1000000", "holds 2")),
    Case("gguf-vocabulary-larger-than-embedding", "gguf", regguf(vocab_size=40), "", ("ids up to 46", "40")),
    Case("gguf-nan", "gguf", regguf(nan=True), "", ("blk.1.ffn_up.weight", "NaN"), reads_weights=True),
]

CASES = [case for family in BASE_CONFIGS for case in family_cases(family)] + FILE_CASES


def make_case(case: Case, bases: dict[str, Path], tmp_path: Path) -> Path:
    """A damaged copy of the case's base: a folder, or a .gguf file (its Llama folder beside it)."""
    import shutil

    if case.base == "gguf":
        shutil.copytree(bases["llama"], tmp_path / "llama-source")
        path = Path(shutil.copy(bases["gguf"], tmp_path / "model.gguf"))
    else:
        path = Path(shutil.copytree(bases[case.base], tmp_path / "model"))
    case.damage(path)
    return path


def files_size(path: Path) -> int:
    return sum(p.stat().st_size for p in ([path] if path.is_file() else path.iterdir()) if p.is_file())


class TensorBytes(TorchDispatchMode):
    """Counts the bytes of every new tensor storage torch allocates off the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.total, self.seen = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and not tensor.is_meta:
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in self.seen:
                    self.seen.add(storage.data_ptr())
                    self.total += storage.nbytes()
        return out


def test_the_corpus_is_large_and_its_bases_are_valid(bases):
    assert 60 <= len(CASES) <= 140 and len({c.name for c in CASES}) == len(CASES)
    for family in BASE_CONFIGS:
        model, tokenizer = qkv.load(bases[family])
        output = model(tokenizer("the bank of the river").input_ids)
        assert output.last_hidden_state.shape == (1, 7, 12) and output.last_hidden_state.isfinite().all()
    model, _ = qkv.load(bases["gguf"])
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_bad_model_is_refused_in_one_line_before_it_is_built(case, bases, tmp_path, monkeypatch):
    path = make_case(case, bases, tmp_path)
    reads = []
    for module, name in ((loading, "read_safetensors"), (gguf_module, "dequantize_tensor")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _original=original, **k: reads.append(1) or _original(*a, **k))
    size = files_size(path)
    with TensorBytes() as torch_bytes:
        torch.empty(1, device="meta").t()  # the mode's first use imports modules: not the load's doing
        tracemalloc.start()
        try:
            with pytest.raises(ValueError) as info:
                qkv.load(path)
            python_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path / case.file if case.file else path) in message, message
    for said in case.says:
        assert said in message, (said, message)
    assert torch_bytes.total <= size, f"allocated {torch_bytes.total} bytes of tensors for files of {size}"
    assert python_peak <= size + PYTHON_ALLOWANCE, f"Python peak {python_peak} bytes for files of {size}"
    assert bool(reads) == case.reads_weights, "weights read" if reads else "weights not read"


# The same refusals through the commands: exit code 2 and one line on stderr.

CLI_SAMPLE = ["bert-layers-1e6", "bert-positions-1e7", "gpt2-heads-0", "llama-width-negative", "bert-weight-int64",
              "gpt2-tokenizer-larger-than-vocab", "config-deeply-nested", "llama-weight-nan", "gguf-truncated",
              "gguf-wrong-architecture"]


def cli_case(name: str, bases: dict[str, Path], tmp_path: Path) -> Path:
    return make_case(next(c for c in CASES if c.name == name), bases, tmp_path)


@pytest.mark.parametrize("name", CLI_SAMPLE)
def test_qkv_explain_refuses_a_bad_model_in_one_line(name, bases, tmp_path, capsys):
    path = cli_case(name, bases, tmp_path)
    assert cli_main(["explain", "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qkv explain: error: ") and err.count("\n") == 1 and str(path) in err, err


def tiny_dataset(root: Path) -> Path:
    folder = root / "data" / "bank"
    folder.mkdir(parents=True)
    (folder / "classes_map.txt").write_text(json.dumps({"0": "bank_money", "1": "bank_river"}))
    for split in ("train", "test"):
        (folder / f"{split}.data.txt").write_text("6\tshe deposited her check at the bank\n1\tthe bank of the river")
        (folder / f"{split}.gold.txt").write_text("0\n1")
    return root / "data"


@pytest.mark.parametrize("command", ["explain", "generate", "serve", "wsd", "contextuality", "fidelity"])
def test_every_command_refuses_a_bad_model_in_one_line(command, bases, tmp_path, capsys):
    path = cli_case("llama-layers-1e6", bases, tmp_path)
    data = ["--data", str(tiny_dataset(tmp_path))]
    extra = {"generate": ["the bank"], "serve": ["--port", "0"], "wsd": data, "contextuality": data}.get(command, [])
    assert cli_main([command, "--model", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qkv {command}: error: ") and err.count("\n") == 1, err
    assert str(path / "config.json") in err and "num_hidden_layers=1000000" in err, err


def test_absurd_sizes_fail_at_once_in_a_fresh_process(bases, tmp_path):
    """Peak RSS of a process that loads the absurd configs hardly grows, and the command shows no traceback."""
    folders = [cli_case(name, bases, tmp_path / name) for name in ("bert-layers-1e6", "bert-positions-1e7",
                                                                   "gpt2-positions-1e7", "llama-layers-1e6")]
    script = (
        "import resource, sys, qkv\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for folder in sys.argv[1:]:\n"
        "    try:\n"
        "        qkv.load(folder)\n"
        "    except ValueError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(f'{folder} loaded')\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(qkv.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", script, *map(str, folders)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    growth_kb = int(done.stdout.split()[-1])
    assert growth_kb * 1024 <= 64 * 2**20, f"peak RSS grew by {growth_kb} kB"
    explain = subprocess.run([sys.executable, "-m", "qkv.cli", "explain", "--model", str(folders[1])],
                             capture_output=True, text=True, timeout=300, env=env)
    assert explain.returncode == 2 and "Traceback" not in explain.stderr
    assert explain.stderr.count("\n") == 1 and "max_position_embeddings=10000000" in explain.stderr

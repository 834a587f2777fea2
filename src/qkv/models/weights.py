"""Checkpoint tensors into a model through an explicit key map; safetensors only."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.overrides import TorchFunctionMode

from qkv.models.config import ConfigError

__all__ = ["Source", "read_safetensors", "read_safetensors_header", "check_sizes", "check_weights", "assign_weights",
           "copy_weights", "build_on_meta", "checkpoint_layer_count", "WeightsError", "PICKLE_SUFFIXES",
           "WEIGHT_DTYPES"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded into the model; the message lists every problem."""


@dataclass(frozen=True)
class Source:
    """Where one model parameter comes from in the checkpoint."""

    key: str  # checkpoint tensor name, without the family prefix
    transpose: bool = False  # stored (in, out), as GPT-2's Conv1D; nn.Linear wants (out, in)


def safetensors_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files (one file, or the shards an index lists)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            if not all(isinstance(shard, str) and shard == Path(shard).name for shard in shards):
                raise TypeError(f"shards must be file names in the folder; got {shards!r:.200}")
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError) as error:
            raise WeightsError(
                f"could not read the shard index {index}: {type(error).__name__}: {' '.join(str(error).split())}; "
                f'it must be JSON with a "weight_map" from tensor names to safetensors files in the folder'
            ) from error
        missing = [str(folder / shard) for shard in shards if not (folder / shard).is_file()]
        if missing:
            raise WeightsError(f"{index} lists shards that do not exist: {missing}")
        return [folder / shard for shard in shards]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise WeightsError(
            f"{folder} holds {pickles} but no model.safetensors. qkv loads safetensors only and "
            f"never unpickles a checkpoint (unpickling runs arbitrary code). Convert it once, in an "
            f"environment you trust: python -c \"import torch, safetensors.torch as st; "
            f"st.save_file(torch.load('{folder / pickles[0]}', weights_only=True), "
            f"'{folder / 'model.safetensors'}')\" (or, with transformers: "
            f"AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True))"
        )
    raise WeightsError(f"{folder} has no model.safetensors (nor model.safetensors.index.json)")


# safetensors dtype names -> torch dtypes, for the header's meta tensors.
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}
# What a weight may be stored as: the floating-point dtypes qkv computes in.
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _unreadable(path: Path, error: Exception) -> WeightsError:
    size = path.stat().st_size if path.exists() else 0
    return WeightsError(
        f"could not read {path} ({size} bytes): {' '.join(str(error).split())}. The file is truncated or is "
        f"not a safetensors file; download or save it again."
    )


def read_safetensors_header(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint as a meta tensor of its stored shape and dtype; no data is read.

    The safetensors library checks each header against its file's size (offsets inside the file,
    byte counts matching shapes and dtypes) when it opens the file.
    """
    tensors: dict[str, torch.Tensor] = {}
    for path in safetensors_files(folder):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    stored = handle.get_slice(key)
                    dtype_name = stored.get_dtype()
                    if dtype_name not in SAFETENSORS_DTYPES:
                        raise WeightsError(f"{path}: tensor {key} has dtype {dtype_name}, which qkv does not read; "
                                           f"weights must be F16, BF16, F32 or F64")
                    tensors[key] = torch.empty(stored.get_shape(), dtype=SAFETENSORS_DTYPES[dtype_name],
                                               device="meta")
        except WeightsError:
            raise
        except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError) as error:
            raise _unreadable(path, error) from error
    return tensors


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in ``folder``; corrupt files are named in the error."""
    tensors: dict[str, torch.Tensor] = {}
    for path in safetensors_files(folder):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    tensors[key] = handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise _unreadable(path, error) from error
    return tensors


class _NoRandomInitOnMeta(TorchFunctionMode):
    """Skips random initialisation of meta tensors: they hold no values, and torch's meta version of
    ``normal_`` imports some 900 modules (seconds) the first time it runs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        initialises = func in (torch.Tensor.normal_, torch.Tensor.uniform_) or (
            getattr(func, "__module__", None) == "torch.nn.init")  # these return the tensor they fill
        target = args[0] if args else kwargs.get("tensor")
        if initialises and getattr(target, "is_meta", False):
            return target
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on the meta device: every parameter's shape, no storage, nothing initialised."""
    with torch.device("meta"), _NoRandomInitOnMeta():
        return build()


def checkpoint_layer_count(names: Iterable[str]) -> int:
    """Blocks a checkpoint holds: one more than the largest block index in its tensor names.

    Every family numbers its blocks as the first integer part of a name ("encoder.layer.3.",
    "h.3.", "layers.3.", GGUF's "blk.3."); names without one (embeddings, norms) do not count.
    """
    largest = -1
    for name in names:
        index = next((int(part) for part in name.split(".") if part.isdigit()), None)
        if index is not None:
            largest = max(largest, index)
    return largest + 1


def check_sizes(config: Any, tensors: dict[str, torch.Tensor], config_source: str, checkpoint: str,
                field_names: dict[str, str] | None = None) -> None:
    """Refuse a config that asks for more than its checkpoint holds, before any model is built.

    The layer count must equal the checkpoint's, and no size that is a tensor dimension
    (``config.TENSOR_SIZES``) may exceed the largest dimension in the checkpoint: a config
    that says ``num_hidden_layers: 1000000`` or ``max_position_embeddings: 10000000`` fails
    here, at no cost, instead of after building a model of that size.

    Args:
        config: a family config with ``LAYERS`` and ``TENSOR_SIZES``.
        tensors: the checkpoint's tensors (meta tensors from the header are enough), family prefix removed.
        config_source: where the config came from, for messages.
        checkpoint: the checkpoint file(s), for messages.
        field_names: how ``config_source`` spells a field, when not as the config does (GGUF metadata keys).
    """
    spelled = field_names or {}
    layers = checkpoint_layer_count(tensors)
    declared = getattr(config, config.LAYERS)
    if declared != layers:
        raise ConfigError(f"{config_source}: {spelled.get(config.LAYERS, config.LAYERS)}={declared}, but {checkpoint} "
                          f"holds {layers} layers; the config and the weights must describe the same model")
    largest = max((size for tensor in tensors.values() for size in tensor.shape), default=0)
    for name in config.TENSOR_SIZES:
        value = getattr(config, name)
        if value is not None and value > largest:
            raise ConfigError(f"{config_source}: {spelled.get(name, name)}={value} is larger than any tensor "
                              f"dimension in {checkpoint} (the largest is {largest}); the config and the weights "
                              f"must describe the same model")


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str, anchor: str) -> dict[str, torch.Tensor]:
    """Drop a family prefix ("bert.", "transformer.") when the checkpoint uses one.

    ``anchor`` is a key every checkpoint of the family has, written without the prefix.
    """
    if anchor in tensors or (prefix + anchor) not in tensors:
        return tensors
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)} | {
        k: v for k, v in tensors.items() if not k.startswith(prefix)
    }


def _finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite, without a temporary as large as the tensor (NaN propagates to min/max)."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_weights(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    key_map: dict[str, Source],
    ignored: tuple[str, ...],
    source_name: str,
) -> None:
    """Refuse checkpoint tensors that do not fit ``model`` as ``key_map`` says; every problem in one line.

    Every parameter must be mapped, every checkpoint tensor used or matched by an
    ``ignored`` glob, every used tensor of the parameter's shape and of a floating dtype
    (:data:`WEIGHT_DTYPES`), and, when its data is there (not a meta tensor), finite.
    ``model`` may live on the meta device: the check reads only shapes.
    """
    import fnmatch

    parameters = dict(model.named_parameters())
    unmapped = sorted(set(parameters) - set(key_map))
    if unmapped:  # a bug in a family's key map, not in the checkpoint
        raise RuntimeError(f"key map does not cover parameters {unmapped}")
    missing, misshaped, not_float, not_finite = [], [], [], []
    used = set()
    for name, source in key_map.items():
        if source.key not in tensors:
            missing.append(source.key)
            continue
        used.add(source.key)
        tensor = tensors[source.key]
        stored = tuple(tensor.shape)
        expected = tuple(parameters[name].shape)
        if (stored[::-1] if source.transpose else stored) != expected:
            note = " (stored transposed)" if source.transpose else ""
            misshaped.append(f"{source.key}: checkpoint {stored}{note}, model expects {expected}")
        elif tensor.dtype not in WEIGHT_DTYPES:
            not_float.append(f"{source.key}: {str(tensor.dtype).removeprefix('torch.')}")
        elif not tensor.is_meta and not _finite(tensor):
            not_finite.append(f"{source.key}: NaN or infinite values")
    unexpected = sorted(
        k for k in tensors if k not in used and not any(fnmatch.fnmatchcase(k, g) for g in ignored)
    )
    kinds = [("missing tensors", missing, ""), ("unexpected tensors", unexpected, ""),
             ("mis-shaped tensors", misshaped, ""),
             ("tensors that are not floating point", not_float,
              "; weights must be float16, bfloat16, float32 or float64"),
             ("non-finite tensors", not_finite, "")]
    problems = [f"{kind} ({len(items)}): {_some(items)}{fix}" for kind, items, fix in kinds if items]
    if problems:
        raise WeightsError(f"{source_name} cannot be loaded into the model its config describes: "
                           + "; ".join(problems))


def _some(items: list[str], shown: int = 12) -> str:
    """The first ``shown`` items as a list, and how many more: a message stays one readable line."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return f"{items[:shown]}{more}"


def assign_weights(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    key_map: dict[str, Source],
    ignored: tuple[str, ...],
    source_name: str,
) -> None:
    """Copy checkpoint tensors into ``model``'s parameters as ``key_map`` says, after :func:`check_weights`."""
    check_weights(model, tensors, key_map, ignored, source_name)
    copy_weights(model, tensors, key_map)


def copy_weights(model: nn.Module, tensors: dict[str, torch.Tensor], key_map: dict[str, Source]) -> None:
    """Copy checkpoint tensors into ``model``'s parameters as ``key_map`` says (checked by :func:`check_weights`)."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, source in key_map.items():
            tensor = tensors[source.key]
            parameters[name].copy_(tensor.t() if source.transpose else tensor)

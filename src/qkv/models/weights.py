"""Checkpoint tensors into a model through an explicit key map; safetensors only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

__all__ = ["Source", "read_safetensors", "assign_weights", "WeightsError", "PICKLE_SUFFIXES"]

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
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise WeightsError(
                f"could not read the shard index {index}: {type(error).__name__}: {error}; it must be "
                f'JSON with a "weight_map" from tensor names to safetensors files'
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


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in ``folder``; corrupt files are named in the error."""
    tensors: dict[str, torch.Tensor] = {}
    for path in safetensors_files(folder):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    tensors[key] = handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            size = path.stat().st_size if path.exists() else 0
            raise WeightsError(
                f"could not read {path} ({size} bytes): {error}. The file is truncated or is not "
                f"a safetensors file; download or save it again."
            ) from error
    return tensors


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str, anchor: str) -> dict[str, torch.Tensor]:
    """Drop a family prefix ("bert.", "transformer.") when the checkpoint uses one.

    ``anchor`` is a key every checkpoint of the family has, written without the prefix.
    """
    if anchor in tensors or (prefix + anchor) not in tensors:
        return tensors
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)} | {
        k: v for k, v in tensors.items() if not k.startswith(prefix)
    }


def assign_weights(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    key_map: dict[str, Source],
    ignored: tuple[str, ...],
    source_name: str,
) -> None:
    """Copy checkpoint tensors into ``model``'s parameters as ``key_map`` says.

    Every parameter must be mapped, every checkpoint tensor used or matched by an
    ``ignored`` glob, and every shape right; all problems are listed in one error.
    """
    import fnmatch

    parameters = dict(model.named_parameters())
    unmapped = sorted(set(parameters) - set(key_map))
    if unmapped:  # a bug in a family's key map, not in the checkpoint
        raise RuntimeError(f"key map does not cover parameters {unmapped}")
    missing, misshaped = [], []
    used = set()
    for name, source in key_map.items():
        if source.key not in tensors:
            missing.append(source.key)
            continue
        used.add(source.key)
        tensor = tensors[source.key]
        if source.transpose:
            tensor = tensor.t()
        expected = tuple(parameters[name].shape)
        if tuple(tensor.shape) != expected:
            shown = tuple(tensors[source.key].shape)
            note = " (stored transposed)" if source.transpose else ""
            misshaped.append(f"{source.key}: checkpoint {shown}{note}, model expects {expected}")
    unexpected = sorted(
        k for k in tensors if k not in used and not any(fnmatch.fnmatchcase(k, g) for g in ignored)
    )
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing tensors ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected tensors ({len(unexpected)}): {unexpected}")
        if misshaped:
            parts.append(f"mis-shaped tensors ({len(misshaped)}): {misshaped}")
        raise WeightsError(
            f"{source_name} does not match the model its config.json describes:\n  "
            + "\n  ".join(parts)
        )
    with torch.no_grad():
        for name, source in key_map.items():
            tensor = tensors[source.key]
            parameters[name].copy_(tensor.t() if source.transpose else tensor)

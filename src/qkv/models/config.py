"""Model configurations: frozen dataclasses read from a Hugging Face config.json."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

__all__ = ["BertConfig", "GPT2Config", "config_from_dict"]


class ConfigError(ValueError):
    """A config.json that qkv cannot honour."""


def _from_dict(cls, values: dict[str, Any], source: str):
    """Build ``cls`` from the keys it knows; Hugging Face configs carry many others."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a config must be a JSON object; got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    missing = sorted(
        name for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in values
    )
    if missing:
        raise ConfigError(f"{source}: config is missing {missing}")
    chosen = {k: v for k, v in values.items() if k in fields}
    for name, value in chosen.items():
        if not _fits(value, hints[name]):
            raise ConfigError(
                f"{source}: {name} must be {hints[name]}; got {type(value).__name__} {value!r}"
            )
    try:
        return cls(**chosen)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from error


def _fits(value: object, hint: object) -> bool:
    """Whether a JSON value has the annotated type (int passes for float; bool never for int)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is bool and isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option is str and isinstance(value, str):
            return True
    return False


@dataclass(frozen=True)
class BertConfig:
    """A BERT encoder (post-LN blocks, learned positions, token types)."""

    vocab_size: int  # token ids
    hidden_size: int  # width of the token vectors, d_model
    num_hidden_layers: int  # transformer blocks
    num_attention_heads: int  # heads per block
    intermediate_size: int  # width of the MLP's hidden layer
    hidden_act: str = "gelu"  # MLP activation (exact GELU)
    max_position_embeddings: int = 512  # learned positions
    type_vocab_size: int = 2  # segment ids
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon
    pad_token_id: int = 0  # id of [PAD]
    position_embedding_type: str = "absolute"  # only "absolute" is supported
    model_type: str = "bert"

    def __post_init__(self) -> None:
        if self.position_embedding_type != "absolute":
            raise ConfigError(
                f"position_embedding_type={self.position_embedding_type!r} is not supported; "
                f"qkv's BERT has learned absolute positions only"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config.json") -> BertConfig:
        if values.get("is_decoder") or values.get("add_cross_attention"):
            raise ConfigError(f"{source}: BERT as a decoder (is_decoder/add_cross_attention) is not supported")
        return _from_dict(cls, values, source)


@dataclass(frozen=True)
class GPT2Config:
    """A GPT-2 decoder (pre-LN blocks, learned positions, tied LM head)."""

    vocab_size: int = 50257  # token ids
    n_positions: int = 1024  # learned positions, the longest context
    n_embd: int = 768  # width of the token vectors, d_model
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # heads per block
    n_inner: int | None = None  # MLP hidden width (None: 4 * n_embd)
    activation_function: str = "gelu_new"  # MLP activation (tanh GELU)
    layer_norm_epsilon: float = 1e-5  # LayerNorm epsilon
    scale_attn_weights: bool = True  # divide scores by sqrt(head_dim)
    scale_attn_by_inverse_layer_idx: bool = False  # also divide by layer index + 1
    reorder_and_upcast_attn: bool = False  # a mixed-precision detail; float32 is unaffected
    bos_token_id: int = 50256  # <|endoftext|>
    eos_token_id: int = 50256  # <|endoftext|>
    tie_word_embeddings: bool = True  # LM head shares the token embedding matrix
    model_type: str = "gpt2"

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @property
    def inner_size(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config.json") -> GPT2Config:
        if values.get("add_cross_attention"):
            raise ConfigError(f"{source}: GPT-2 with cross-attention is not supported")
        return _from_dict(cls, values, source)


SUPPORTED = {"bert": BertConfig, "gpt2": GPT2Config}


def config_from_dict(values: dict[str, Any], source: str = "config.json") -> BertConfig | GPT2Config:
    """The config of the family named by ``model_type``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a config must be a JSON object; got {type(values).__name__}")
    model_type = values.get("model_type")
    if model_type not in SUPPORTED:
        raise ConfigError(
            f"{source}: model_type={model_type!r} is not supported; qkv runs the families "
            f"{sorted(SUPPORTED)}"
        )
    return SUPPORTED[model_type].from_dict(values, source)

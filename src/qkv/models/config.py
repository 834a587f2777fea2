"""Model configurations: frozen dataclasses read from a Hugging Face config.json."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["BertConfig", "GPT2Config", "LlamaConfig", "config_from_dict", "LLAMA_FAMILY"]


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


# An upper bound on every size: absurd values never reach shape arithmetic (int64 overflow), even on the meta device.
MAX_SIZE = 2**31 - 1


def _require_sizes(config: object, names: tuple[str, ...]) -> None:
    """Each named field (None allowed where the dataclass allows it) is an integer in 1 .. MAX_SIZE."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not 1 <= value <= MAX_SIZE:
            raise ConfigError(f"{name} must be a positive integer (at most {MAX_SIZE}); got {value}")


def _require_positive_finite(config: object, names: tuple[str, ...]) -> None:
    """Each named float field is finite and > 0 (an epsilon of 0 divides by zero on a constant vector)."""
    for name in names:
        value = getattr(config, name)
        try:
            usable = math.isfinite(value) and value > 0
        except OverflowError:  # an integer too large for a float
            usable = False
        if not usable:
            raise ConfigError(f"{name} must be a finite number > 0; got {value}")


def _require_activation(name: str, value: str) -> None:
    from qkv.nn.layers import ACTIVATIONS  # models build on nn

    if value not in ACTIVATIONS:
        raise ConfigError(f"{name}={value!r} is not supported; supported: {sorted(ACTIVATIONS)}")


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
        if typing.get_origin(option) in (dict, list) and isinstance(value, typing.get_origin(option)):
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

    # The field that counts blocks, and the sizes that are tensor dimensions (never larger than the checkpoint's).
    LAYERS: ClassVar[str] = "num_hidden_layers"
    TENSOR_SIZES: ClassVar[tuple[str, ...]] = ("vocab_size", "hidden_size", "num_attention_heads",
                                               "intermediate_size", "max_position_embeddings", "type_vocab_size")

    def __post_init__(self) -> None:
        _require_sizes(self, (self.LAYERS, *self.TENSOR_SIZES))
        _require_positive_finite(self, ("layer_norm_eps",))
        _require_activation("hidden_act", self.hidden_act)
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

    LAYERS: ClassVar[str] = "n_layer"
    TENSOR_SIZES: ClassVar[tuple[str, ...]] = ("vocab_size", "n_positions", "n_embd", "n_head", "n_inner")

    def __post_init__(self) -> None:
        _require_sizes(self, (self.LAYERS, *self.TENSOR_SIZES))
        _require_positive_finite(self, ("layer_norm_epsilon",))
        _require_activation("activation_function", self.activation_function)
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


LLAMA_FAMILY = ("llama", "mistral", "qwen2")  # model types run by qkv.models.llama


@dataclass(frozen=True)
class LlamaConfig:
    """A Llama-family decoder (llama, mistral, qwen2): RMSNorm, SwiGLU, rotary, GQA.

    Read from a Hugging Face config.json or from a GGUF file's metadata.
    """

    vocab_size: int  # token ids
    hidden_size: int  # width of the token vectors, d_model
    intermediate_size: int  # width of the gated MLP's hidden layer
    num_hidden_layers: int  # transformer blocks
    num_attention_heads: int  # query heads per block
    num_key_value_heads: int | None = None  # key/value heads (grouped-query attention; None: as many as queries)
    head_dim: int | None = None  # width of a head (None: hidden_size // num_attention_heads)
    hidden_act: str = "silu"  # activation on the MLP's gate
    max_position_embeddings: int = 2048  # the context the model was trained for
    rms_norm_eps: float = 1e-6  # RMSNorm epsilon
    rope_theta: float = 10000.0  # rotary base wavelength
    rope_scaling: dict[str, Any] | None = None  # rotary scaling: rope_type and its fields (qkv.nn.rotary)
    attention_bias: bool = False  # biases on q, k, v and the output projection (llama)
    qkv_bias: bool = False  # biases on q, k, v only (qwen2)
    mlp_bias: bool = False  # biases in the MLP
    tie_word_embeddings: bool = False  # LM head shares the token embedding matrix
    sliding_window: int | None = None  # Hugging Face's window W: a token sees itself and W - 1 before it
    layer_types: list[str] | None = None  # per layer "full_attention" or "sliding_attention" (None: all alike)
    max_window_layers: int | None = None  # with layer_types None, layers from this index on slide (qwen2)
    bos_token_id: int | None = None  # beginning-of-sequence token
    eos_token_id: int | None = None  # end-of-sequence token (the first, if the config lists several)
    pad_token_id: int | None = None  # padding token
    model_type: str = "llama"  # "llama", "mistral" or "qwen2"

    LAYERS: ClassVar[str] = "num_hidden_layers"
    TENSOR_SIZES: ClassVar[tuple[str, ...]] = ("vocab_size", "hidden_size", "intermediate_size",
                                               "num_attention_heads", "num_key_value_heads", "head_dim")

    def __post_init__(self) -> None:
        _require_sizes(self, (self.LAYERS, *self.TENSOR_SIZES, "max_position_embeddings"))
        _require_positive_finite(self, ("rms_norm_eps", "rope_theta"))
        _require_activation("hidden_act", self.hidden_act)
        heads, kv_heads = self.num_attention_heads, self.kv_heads
        if heads < 1 or kv_heads < 1 or heads % kv_heads:
            raise ConfigError(
                f"num_attention_heads={heads} must be a positive multiple of num_key_value_heads={kv_heads}"
            )
        if self.head_dim is None and self.hidden_size % heads:
            raise ConfigError(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={heads}; "
                              f"set head_dim")
        if self.head_size % 2:
            raise ConfigError(f"rotary positions need an even head_dim; got {self.head_size}")
        if self.layer_types is not None and len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(f"layer_types lists {len(self.layer_types)} layers but num_hidden_layers="
                              f"{self.num_hidden_layers}")
        if not all(isinstance(kind, str) for kind in self.layer_types or ()):
            raise ConfigError(f"layer_types must be a list of strings; got {self.layer_types!r:.200}")
        unknown = sorted(set(self.layer_types or ()) - {"full_attention", "sliding_attention"})
        if unknown:
            raise ConfigError(f"layer_types {unknown} are not supported; known: full_attention, sliding_attention")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"sliding_window must be >= 1 (or null); got {self.sliding_window}")
        if self.max_window_layers is not None and self.max_window_layers < 0:
            raise ConfigError(f"max_window_layers must be >= 0 (or null); got {self.max_window_layers}")
        from qkv.nn.rotary import ROPE_TYPES  # models build on nn

        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ConfigError(f"rope type {rope_type!r} is not supported; supported: {list(ROPE_TYPES)}")

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def layer_window(self, layer: int) -> tuple[int, int] | None:
        """The causal window ``(left, 0)`` of ``layer``, or None for full attention."""
        if self.sliding_window is None:
            return None
        if self.layer_types is not None and self.layer_types[layer] != "sliding_attention":
            return None
        if self.layer_types is None and self.max_window_layers is not None and layer < self.max_window_layers:
            return None
        return (self.sliding_window - 1, 0)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config.json") -> LlamaConfig:
        """From a Hugging Face config.json of model_type llama, mistral or qwen2.

        Rotary settings are read from ``rope_parameters`` (transformers 5) or
        ``rope_theta`` + ``rope_scaling`` (earlier); Qwen2's ``use_sliding_window`` and
        ``max_window_layers`` say which layers slide (unless the config lists ``layer_types``).
        """
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: a config must be a JSON object; got {type(values).__name__}")
        values = dict(values)
        rope = values.pop("rope_parameters", None) or values.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise ConfigError(f"{source}: rope_parameters / rope_scaling must be a JSON object or null; "
                              f"got {type(rope).__name__} {rope!r:.80}")
        rope = dict(rope)
        theta = rope.pop("rope_theta", values.get("rope_theta", 10000.0))
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        values["rope_theta"] = theta
        values["rope_scaling"] = None if rope_type == "default" else {"rope_type": rope_type, **rope}
        for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
            if isinstance(values.get(name), list):
                values[name] = values[name][0] if values[name] else None
        model_type = values.get("model_type")
        if model_type == "qwen2":
            values["qkv_bias"] = True
            values["attention_bias"] = False
            if not values.get("use_sliding_window", False):
                values["sliding_window"] = None
                values["layer_types"] = None
                values["max_window_layers"] = None
            elif values.get("layer_types") is None:
                values["max_window_layers"] = values.get("max_window_layers", 28)
            else:
                values["max_window_layers"] = None
        else:
            values["max_window_layers"] = None
        if model_type == "llama":
            values["sliding_window"] = None
        return _from_dict(cls, values, source)


SUPPORTED = {"bert": BertConfig, "gpt2": GPT2Config, **dict.fromkeys(LLAMA_FAMILY, LlamaConfig)}


def config_from_dict(
    values: dict[str, Any], source: str = "config.json"
) -> BertConfig | GPT2Config | LlamaConfig:
    """The config of the family named by ``model_type``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a config must be a JSON object; got {type(values).__name__}")
    model_type = values.get("model_type")
    if not isinstance(model_type, str) or model_type not in SUPPORTED:
        raise ConfigError(
            f"{source}: model_type={model_type!r} is not supported; qkv runs the families "
            f"{sorted(SUPPORTED)}"
        )
    return SUPPORTED[model_type].from_dict(values, source)

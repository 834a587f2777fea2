"""Pretrained transformer families run through qkv's own modules, and their loading."""

from qkv.models.bert import BertModel
from qkv.models.config import BertConfig, ConfigError, GPT2Config, LlamaConfig
from qkv.models.gpt2 import GPT2LMHeadModel, GPT2Model
from qkv.models.llama import LlamaForCausalLM
from qkv.models.loading import DEFAULT_MODEL, default_model_path, load, load_model
from qkv.models.tokenizer import Batch, Tokenizer
from qkv.models.weights import WeightsError

__all__ = [
    "load",
    "load_model",
    "default_model_path",
    "DEFAULT_MODEL",
    "BertModel",
    "BertConfig",
    "GPT2Model",
    "GPT2LMHeadModel",
    "GPT2Config",
    "LlamaForCausalLM",
    "LlamaConfig",
    "Tokenizer",
    "Batch",
    "ConfigError",
    "WeightsError",
]

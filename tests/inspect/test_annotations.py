"""The public inspection functions say what model and tokenizer they take."""

from __future__ import annotations

import inspect
import typing

import pytest
from rich.progress import Progress

from qkv.inspect.ablation import head_ablation
from qkv.inspect.contextuality import contextuality
from qkv.inspect.explain import explain, initial_vectors
from qkv.inspect.fidelity import attention_set_to, fidelity, variant_problem
from qkv.inspect.senses import sense_trajectory, word_vectors_by_layer
from qkv.inspect.wsd import run_wsd, target_vectors, word_piece_vectors
from qkv.models.tokenizer import Batch, Tokenizer
from qkv.nn import ActivationCache, TransformerStack

# The names the modules import only for type checkers.
TYPE_NAMES = {"TransformerStack": TransformerStack, "Tokenizer": Tokenizer, "Batch": Batch,
              "ActivationCache": ActivationCache, "Progress": Progress}


@pytest.mark.parametrize("function", [explain, initial_vectors, contextuality, fidelity, attention_set_to,
                                      variant_problem, run_wsd, target_vectors, word_piece_vectors,
                                      word_vectors_by_layer, sense_trajectory, head_ablation])
def test_model_and_tokenizer_are_annotated(function):
    function = inspect.unwrap(function)
    hints = typing.get_type_hints(function, localns=TYPE_NAMES)  # every annotation resolves
    parameters = inspect.signature(function).parameters
    assert hints["model"] is TransformerStack
    if "tokenizer" in parameters:
        assert hints["tokenizer"] is Tokenizer

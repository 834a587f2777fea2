"""Text generation that hands out text as the tokens come: what ``qkv generate`` prints."""

from __future__ import annotations

from collections.abc import Iterator
from queue import Queue
from threading import Thread

import torch

from qkv.models.tokenizer import Tokenizer

__all__ = ["stream_text", "chat_prompt"]

REPLACEMENT = "\ufffd"  # what a byte-level decoder shows for an incomplete UTF-8 sequence


def chat_prompt(tokenizer: Tokenizer, message: str) -> str:
    """``message`` as one user turn of a ChatML model (``<|im_start|>`` ... ``<|im_end|>``), ready
    for the assistant's answer; the message itself when the vocabulary has no ChatML tokens."""
    if tokenizer.token_to_id("<|im_start|>") is None or tokenizer.token_to_id("<|im_end|>") is None:
        return message
    return f"<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n"


def stream_text(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
) -> Iterator[str]:
    """Continue ``prompt`` and yield the new text piece by piece, as each token is chosen.

    Greedy unless ``temperature`` or ``top_k`` is given (then sampled, seeded by ``seed``).
    A piece that would end inside a multi-byte character waits for the next token.

    Args:
        model: a causal language model with ``generate`` (KV cache).
        tokenizer: its tokenizer.
        prompt: the text to continue.
        max_new_tokens: at most this many tokens.
        temperature: sampling temperature (None: 1.0 when sampling).
        top_k: sample among the k most likely tokens.
        seed: seeds the sampler.
        stop_at_eos: stop at the model's end-of-sequence token (if it has one).
    """
    ids = tokenizer(prompt).input_ids
    sample = temperature is not None or top_k is not None
    stop = stop_at_eos and getattr(model, "eos_token_id", None) is not None
    tokens: Queue = Queue()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            model.generate(ids, max_new_tokens, do_sample=sample, temperature=temperature or 1.0, top_k=top_k,
                           seed=seed, stop_at_eos=stop, on_token=lambda token: tokens.put(int(token[0])))
        except BaseException as error:  # handed to the caller's thread below
            failure.append(error)
        finally:
            tokens.put(None)

    worker = Thread(target=run, daemon=True)
    worker.start()
    generated: list[int] = []
    shown = ""
    while (token := tokens.get()) is not None:
        if stop and token == model.eos_token_id:
            break
        generated.append(token)
        text = tokenizer.decode(generated)
        if text.endswith(REPLACEMENT):
            continue
        yield text[len(shown):]
        shown = text
    worker.join()
    if failure:
        raise failure[0]
    text = tokenizer.decode(generated)
    if len(text) > len(shown):
        yield text[len(shown):]

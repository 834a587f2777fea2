"""``qkv generate``: a decoder continues a prompt, printing tokens as they come."""

from __future__ import annotations

import argparse
import sys

import qkv
from qkv.argtypes import positive_int
from qkv.commands.common import fail
from qkv.text import terminal_safe

__all__ = ["HELP", "configure", "run"]

HELP = "continue a prompt with a decoder, printing tokens as they come"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``qkv generate``'s options to ``parser``."""
    parser.add_argument("prompt", help="the text to continue")
    parser.add_argument("--model", default="smollm2",
                        help="'smollm2' (SmolLM2-135M-Instruct, the default), a .gguf file or a local Hugging Face "
                             "folder of a GPT-2- or Llama-family model")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="at most this many tokens (default 64)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sample with this temperature (default: greedy, the most likely token each step)")
    parser.add_argument("--top-k", type=positive_int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampler")
    parser.add_argument("--chat", action="store_true",
                        help="send the prompt as a user message in the model's chat format and print the answer")


def run(args: argparse.Namespace) -> int:
    """Run ``qkv generate``: print the prompt's continuation token by token.

    The prompt and the continuation are the command's output: piped or redirected they are
    written as they are; on a terminal, control characters other than newline and tab are
    shown escaped (``\x1b``), so that neither the prompt nor the model can drive the terminal.
    """
    from qkv.models.streaming import chat_prompt, stream_text

    if not args.prompt.strip():
        return fail("generate", 'the prompt is empty; give some text, e.g. qkv generate "The capital of France is"')
    if args.temperature is not None and args.temperature <= 0:
        return fail("generate", f"--temperature {args.temperature:g}: must be > 0 (leave it out for greedy decoding)")
    try:
        model, tokenizer = qkv.load(args.model)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        return fail("generate", str(err))
    if not hasattr(model, "generate"):
        return fail("generate", f"--model {args.model}: {type(model).__name__} is an encoder and does not generate "
                                 f"text; use a decoder such as --model smollm2")
    prompt = chat_prompt(tokenizer, args.prompt) if args.chat else args.prompt

    def show(text: str) -> str:
        return terminal_safe(text, keep="\n\t") if sys.stdout.isatty() else text

    if not args.chat:
        print(show(args.prompt), end="", flush=True)
    for piece in stream_text(model, tokenizer, prompt, args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, seed=args.seed):
        print(show(piece), end="", flush=True)
    print()
    return 0

"""What several ``qkv`` commands share: the console, one-line errors, output checks, options."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from qkv.files import outputs_problem, write_text
from qkv.text import terminal_safe

__all__ = ["MODEL_HELP", "fail", "load_data_and_model", "make_console",
           "output_options_problem",
           "port", "read_text_file", "save_outputs", "wsd_subset", "word_list"]

MODEL_HELP = ("'minilm' (all-MiniLM-L6-v2, the default), 'smollm2' (SmolLM2-135M-Instruct), a .gguf file or "
              "a local Hugging Face folder of a BERT-, GPT-2- or Llama-family model")



def make_console(width: int = 100) -> Console:
    """A rich console as wide as the terminal.

    rich measures the terminal on stdin, stdout or stderr, so ``qkv explain | tee log``
    typed in a terminal gets that terminal's width; COLUMNS, when set, wins. With no
    terminal at all (CI, a cron job, ``make demo > log < /dev/null``) rich would assume 80
    columns; this uses ``width``, the width the command's tables are laid out for, instead.
    """
    if not os.environ.get("COLUMNS", "").isdigit():
        for fd in (0, 1, 2):  # as rich does
            try:
                os.get_terminal_size(fd)
                break
            except (OSError, ValueError):
                continue
        else:
            return Console(width=width)
    return Console()


def fail(command: str, message: str) -> int:
    """Print ``qkv COMMAND: error: MESSAGE`` to stderr, as argparse does; return exit code 2.

    The message often quotes user text (a word, a file name): control characters in it are
    shown escaped (``\x1b``)."""
    print(f"qkv {command}: error: {terminal_safe(message)}", file=sys.stderr)
    return 2


def output_options_problem(args: argparse.Namespace) -> str | None:
    """The first problem with the output options --json, --html and --out that ``args`` has."""
    return outputs_problem((f"--{name}", getattr(args, name, None), kind)
                           for name, kind in (("json", "file"), ("html", "file"), ("out", "folder")))


def word_list(text: str | None) -> list[str] | None:
    """``--words "bank, bow"`` -> ["bank", "bow"] (None stays None); ValueError if it names none."""
    if text is None:
        return None
    words = [word.strip() for word in text.split(",") if word.strip()]
    if not words:
        raise ValueError(f"--words {text!r} names no word; give comma-separated words such as --words bank,bow")
    return words


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, 0 to 65535; got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number, 0 to 65535 (0: any free port); got {value}")
    return value


def load_data_and_model(command: str, args: argparse.Namespace):
    """(dataset, model, tokenizer) for the data commands, or None after printing the error.

    The options are checked first (the output paths, --words, --data: :func:`wsd_subset`), the
    model loaded last.
    """
    import qkv

    try:
        return wsd_subset(args), *qkv.load(args.model)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        fail(command, str(err))
        return None


def save_outputs(out: Console, args: argparse.Namespace, result: dict[str, Any],
                 plot: Callable[[dict[str, Any], Path], Any], filename: str) -> None:
    """Write ``result`` as JSON to ``--json`` and its plot to ``--out``/``filename`` when asked."""
    import json

    if args.json:
        write_text(args.json, json.dumps(result, indent=1))
        out.print(Text(f"wrote {terminal_safe(str(args.json))}"))
    if args.out:
        path = Path(args.out).expanduser() / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        plot(result, path)
        out.print(Text(f"wrote {terminal_safe(str(path))}"))


def read_text_file(option: str, path: str, purpose: str) -> str:
    """The text of the UTF-8 file ``path`` given as ``option`` (e.g. ``--text``), to ``purpose``
    (e.g. "encode"); ValueError naming the option for a missing, non-UTF-8 or empty file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"{option} {path}: no such file; give a UTF-8 text file to {purpose}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{option} {path}: not UTF-8 text ({err.reason}); save it as UTF-8") from err
    if not text.strip():
        raise ValueError(f"{option} {path}: the file is empty; give a text to {purpose}")
    return text


def wsd_subset(args: argparse.Namespace):
    """The CoarseWSD-20 words that ``--data`` and ``--words`` pick, or None without ``--data``;
    ValueError for --words without --data. Checks the output options first."""
    problem = output_options_problem(args)
    if problem:
        raise ValueError(problem)
    words = word_list(getattr(args, "words", None))  # not every data command has --words
    if words is not None and not args.data:
        raise ValueError("--words picks words of the --data folder; give --data DIR too")
    if not args.data:
        return None
    from qkv.inspect.wsd import read_dataset

    return read_dataset(args.data, words)


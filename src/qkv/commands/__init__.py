"""The ``qkv`` subcommands, one module each.

Every module here has the same three names: ``HELP`` (the one-line summary ``qkv --help``
lists), ``configure(parser)`` (adds the command's options to its argparse subparser) and
``run(args) -> int`` (does the command and returns its exit code). The library does the
work; a command checks its options, calls the library, prints and writes what it is asked
to. :mod:`qkv.cli` only builds the parser from :data:`COMMANDS` and dispatches.
"""

from __future__ import annotations

__all__ = ["COMMANDS"]

#: command name -> module under ``qkv.commands``, in the order ``qkv --help`` lists them.
COMMANDS: dict[str, str] = {
    "walkthrough": "walkthrough",
    "explain": "explain",
    "generate": "generate",
    "serve": "serve",
    "wsd": "wsd",
    "contextuality": "contextuality",
    "fidelity": "fidelity",
    "perplexity": "perplexity",
    "patch": "patch",
    "faithfulness": "faithfulness",
    "train-demo": "train_demo",
}

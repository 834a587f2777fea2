"""Text every part of qkv shares: the sentence its commands and examples start from, and user
text made safe to show in a terminal."""

from __future__ import annotations

import re

__all__ = ["DEFAULT_FOCUS", "DEFAULT_SENTENCE", "terminal_safe"]

#: The example of the project's mission: "bank" is pulled toward its money sense by
#: "deposited" and "check".
DEFAULT_SENTENCE = "She deposited her check at the bank."
#: The word of DEFAULT_SENTENCE that commands follow by default.
DEFAULT_FOCUS = "bank"

# Control characters (C0, DEL, C1: ESC starts the sequences that clear a screen or set a title) and
# the bidirectional embeddings, overrides and isolates (they reorder what the terminal shows).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str, keep: str = "") -> str:
    """``text`` with every control character shown as its escape, as Python writes it in a
    string literal: ESC as ``\\x1b``, a newline as ``\\n``, U+202E as ``\\u202e``.

    User text (a sentence, a focus word, tokens, file and folder names) goes through this
    before it reaches a terminal, so that it can neither drive the terminal (clear the screen,
    set the window title, move the cursor) nor disguise what is shown. Characters in ``keep``
    (e.g. ``"\\n"``) are left as they are. Printable text, backslashes included, is unchanged.

    Example:
        >>> terminal_safe("bank\\x1b[2J")
        'bank\\\\x1b[2J'
    """
    return _UNSAFE.sub(lambda match: match[0] if match[0] in keep else repr(match[0])[1:-1], text)

"""Text every part of qkv shares: the sentence its commands and examples start from."""

from __future__ import annotations

__all__ = ["DEFAULT_FOCUS", "DEFAULT_SENTENCE"]

#: The example of the project's mission: "bank" is pulled toward its money sense by
#: "deposited" and "check".
DEFAULT_SENTENCE = "She deposited her check at the bank."
#: The word of DEFAULT_SENTENCE that commands follow by default.
DEFAULT_FOCUS = "bank"

"""The terminal view of ``qkv walkthrough`` (the numbers come from :mod:`qkv.inspect.toy_walkthrough`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from torch import Tensor

from qkv.inspect.toy_walkthrough import TOLERANCE
from qkv.text import terminal_safe

__all__ = ["render_walkthrough"]


def _vec(t: Tensor, decimals: int = 3, limit: int = 8) -> str:
    """A vector as "[0.123, -0.456, …]", at most ``limit`` entries."""
    parts = [f"{value:.{decimals}f}" for value in t[:limit].tolist()]
    return "[" + ", ".join(parts) + (", …" if t.numel() > limit else "") + "]"


def render_walkthrough(n: dict[str, Any], dim: int, causal: bool, console: Console) -> None:
    """Print the walkthrough of :func:`walkthrough_numbers` ``n`` step by step.

    Tokens are user text: control characters in them are shown escaped (``\x1b``) and rich
    markup in them is printed as it is, never interpreted.
    """
    tokens, i = [escape(terminal_safe(token)) for token in n["tokens"]], n["focus_index"]
    focus = tokens[i]
    console.print(Panel(
        f"Self-attention for the token [bold]{focus}[/bold] (position {i}), D = {dim}"
        + (", causal" if causal else "")
        + ".\nThe vectors and projections are random, not learnt: the weights below show how "
        "attention computes, and mean nothing about these words (which word 'attends' to which "
        "changes with --seed). `qkv explain` shows what a trained model attends to. Every number "
        "below is computed by hand and checked against qkv.attention_weights and "
        "qkv.attention(backend='reference').",
        title="qkv walkthrough",
    ))

    console.print(f"\n[bold]1. Tokens[/bold]: each of the {len(tokens)} tokens gets a random "
                  f"embedding x (seeded).")
    table = Table("#", "token", "x")
    for j, token in enumerate(tokens):
        table.add_row(str(j), token, _vec(n["x"][j]))
    console.print(table)

    console.print("\n[bold]2. Projections[/bold]: q = x W_q, k = x W_k, v = x W_v with random "
                  f"{dim}x{dim} matrices scaled by 1/sqrt({dim}).")
    console.print(f"query of '{focus}': q = {_vec(n['q'])}")
    table = Table("#", "token", "key k", "value v")
    for j, token in enumerate(tokens):
        table.add_row(str(j), token, _vec(n["k"][j], 2), _vec(n["v"][j], 2))
    console.print(table)

    console.print(f"\n[bold]3. Scores[/bold]: q·k for every key, times 1/sqrt({dim}) = "
                  f"{1 / math.sqrt(dim):.3f}" + ("; keys after the focus are hidden (-inf)."
                                                 if causal else "."))
    console.print("[bold]4. Weights[/bold]: softmax over the scores; they sum to 1.")
    table = Table("#", "token", "q·k", "score", "weight", "")
    for j, token in enumerate(tokens):
        score = n["scores"][j].item()
        weight = n["weights"][j].item()
        table.add_row(
            str(j), token, f"{n['raw'][j].item():.3f}",
            f"{score:.3f}" if math.isfinite(score) else "-inf",
            f"{weight:.3f}", "█" * round(weight * 30),
        )
    console.print(table)
    console.print(f"sum of weights = {n['weights'].sum().item():.6f}")

    top = torch.argsort(n["weights"], descending=True)[:3].tolist()
    most = ", ".join(f"'{tokens[j]}' ({n['weights'][j].item():.2f})" for j in top)
    console.print(f"\n[bold]5. Output[/bold]: the weighted average of the values, "
                  f"sum_j weight_j v_j = {_vec(n['output'])}")
    console.print(f"'{focus}' attends most to {most}: chance, with random vectors (try another --seed).")
    console.print(f"Check: matches qkv to within {TOLERANCE:g}.")

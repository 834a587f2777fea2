"""Tables and number formats shared by every benchmark: built once as plain cells, shown twice.

A :class:`Tab` is printed in the terminal (rich) and written into BENCHMARKS.md (markdown)
from the same cells. Targets are dicts made by :func:`target`: ``target``, ``n``,
``measured``, ``limit``, ``rule`` (">=" or "<="), ``met`` (None when not measured).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

__all__ = ["Tab", "format_seconds", "format_bytes", "fmt", "ratio", "target", "target_cells", "targets_tab",
           "print_tabs"]

TEXT_COLUMNS = ("contender", "backend", "target", "met", "note", "variant",  # left-aligned; others: numbers
                "results", "benchmark", "device", "CPU", "GPU", "torch", "Python", "date", "quick", "check",
                "implementation")


@dataclass
class Tab:
    """A table as plain text cells, to print with rich or write as markdown."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    group_column: int | None = None  # a rule between rows where this column's value changes

    def rich(self) -> Table:
        table = Table(title=self.title)
        for column in self.columns:
            table.add_column(column, justify="left" if column in TEXT_COLUMNS else "right")
        previous = None
        for row in self.rows:
            key = None if self.group_column is None else row[self.group_column]
            if previous is not None and key != previous:
                table.add_section()
            previous = key
            table.add_row(*("[bold red]NO[/]" if cell == "NO" else cell for cell in row))
        return table

    def markdown(self) -> str:
        align = ["---" if column in TEXT_COLUMNS else "---:" for column in self.columns]
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)


def format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:  # a GPU kernel's or a short call's time: ms with one decimal would keep a single digit
        return f"{value * 1e6:.1f} µs" if value < 1e-4 else f"{value * 1e6:.0f} µs"
    return f"{value:.2f} s" if value >= 10 else f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.3f} s"


def format_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or zero."""
    return numerator / denominator if numerator and denominator else None


def target(name: str, n: int | str, measured: float | None, limit: float, rule: str = "<=") -> dict:
    """One target: ``measured`` against ``limit`` by ``rule``; met is None when not measured."""
    met = None if measured is None else (measured >= limit if rule == ">=" else measured <= limit)
    return {"target": name, "n": n, "measured": measured, "limit": limit, "rule": rule, "met": met}


def target_cells(t: dict) -> list[str]:
    """A target's cells, plain text: target, N, measured, limit (with its rule where given), met."""
    rule = f"{t['rule']} " if t.get("rule") else ""
    if t["measured"] is None:
        measured, met = "-", "not measured"
    else:
        measured, met = f"{t['measured']:.3f}", "yes" if t["met"] else "NO"
    return [t["target"], str(t["n"]), measured, f"{rule}{t['limit']:.3f}", met]


def targets_tab(title: str, targets: list[dict]) -> Tab:
    return Tab(title, ["target", "N", "measured", "limit", "met"], [target_cells(t) for t in targets])


def print_tabs(tabs: list[Tab | None], console: Console, notes: list[str] = ()) -> None:
    """The tables that have rows, then the notes that are not empty."""
    for tab in tabs:
        if tab is not None and tab.rows:
            console.print(tab.rich())
    for note in notes:
        if note:
            console.print(note)

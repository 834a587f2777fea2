"""Inside ``qkv.bench`` every import points down: basics < measurements < report < commands."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "src" / "qkv" / "bench"
LAYERS = {  # module under qkv.bench -> its layer, lowest first
    **dict.fromkeys(("contenders", "measure", "points", "tables"), 0),  # what is measured and how
    **dict.fromkeys(("sweep", "overhead", "ring", "model", "streaming", "triton_gpu"), 1),  # the measurements
    "plots": 2.0, "report_triton": 2.1, "report": 2.2,  # the report: plots, then the tables that use them
    "commands": 3,  # each command's main, and the check of output paths they share
}


def bench_imports(path: Path) -> list[tuple[str, int]]:
    """(module under qkv.bench, line) for every import of one in this file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qkv.bench"):
            parts = node.module.split(".")
            names = [parts[2]] if len(parts) > 2 else [alias.name for alias in node.names]
            found += [(name, node.lineno) for name in names if name in LAYERS]
        elif isinstance(node, ast.Import):
            found += [(alias.name.split(".")[2], node.lineno) for alias in node.names
                      if alias.name.startswith("qkv.bench.") and alias.name.split(".")[2] in LAYERS]
    return found


def test_every_bench_module_has_a_layer() -> None:
    modules = {p.stem for p in BENCH.glob("*.py")} - {"__init__", "__main__"}
    assert modules <= set(LAYERS), f"give these a layer here: {sorted(modules - set(LAYERS))}"


def test_bench_imports_point_down() -> None:
    problems = []
    for path in sorted(BENCH.rglob("*.py")):
        if path.parent == BENCH and path.stem in ("__init__", "__main__"):
            continue  # the dispatcher: it finds the commands by name
        module = "commands" if path.parent.name == "commands" else path.stem
        for imported, line in bench_imports(path):
            if not (LAYERS[imported] < LAYERS[module] or imported == module == "commands"):
                problems.append(f"{path.relative_to(BENCH)}:{line} imports qkv.bench.{imported}")
    assert not problems, "bench imports that do not point down:\n" + "\n".join(problems)

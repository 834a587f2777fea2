"""Every import in ``src/qkv`` points down the layers, and no modules import each other in a loop.

The layers, lowest first: the shared basics (``qkv.text``, ``qkv.files``, ``qkv.numbering``,
``qkv.argtypes``) < the functions (``qkv.functional``, behind ``qkv.attention``) < the modules (``qkv.nn``) < models,
training and distributed attention < ``qkv.inspect`` (computes) < ``qkv.viz`` (draws) <
``qkv.bench`` (measures) < ``qkv.commands`` and ``qkv.cli`` (parse and dispatch). The import
graph is read from the source with :mod:`ast`, imports inside functions and under
``TYPE_CHECKING`` included: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: dict[str, int] = {
    "text": 0, "files": 0, "numbering": 0, "argtypes": 0, "_deprecated": 0,
    "functional": 1,
    "nn": 2,
    "models": 3, "train": 3, "distributed": 3,
    "inspect": 4,
    "viz": 5,
    "bench": 6,
    "commands": 7, "cli": 7,
}
LAYER_NAMES = ["basics", "functions", "modules", "models/train/distributed", "inspect", "viz", "bench", "commands/cli"]


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_imports(src: Path = SRC) -> tuple[set[str], dict[str, list[tuple[str, int, str]]]]:
    """(every module, module -> [(imported module, line, source text)]) for the package under ``src``."""
    files = {module_name(path, src): path for path in (src / "qkv").rglob("*.py")}
    modules = set(files)
    imports: dict[str, list[tuple[str, int, str]]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from qkv.a import b` imports the module qkv.a.b when there is one, else qkv.a
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:  # `import qkv.a.b` where b is not a module
                    target = target.rpartition(".")[0]
                if target.startswith("qkv") and target != name:
                    found.append((target, node.lineno, ast.unparse(node)))
        imports[name] = found
    return modules, imports


def layer_of(module: str, imports: dict[str, list[tuple[str, int, str]]]) -> int:
    """A module's layer; the package root ``qkv`` sits as high as what it imports."""
    if module == "qkv":
        return max(layer_of(target, imports) for target, _, _ in imports["qkv"] if target != "qkv")
    return LAYERS[module.split(".")[1]]


def upward_imports(imports: dict[str, list[tuple[str, int, str]]]) -> list[str]:
    problems = []
    for module, found in sorted(imports.items()):
        if module == "qkv":
            continue
        for target, line, text in found:
            if layer_of(target, imports) > layer_of(module, imports):
                problems.append(f"{module} (line {line}, {LAYER_NAMES[layer_of(module, imports)]}) imports "
                                f"{target} ({LAYER_NAMES[layer_of(target, imports)]}): {text}")
    return problems


def import_cycles(imports: dict[str, list[tuple[str, int, str]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a loop of imports.

    The root package is left out: it is the public API and re-exports from every layer.
    """
    graph = {m: sorted({t for t, _, _ in found if t != "qkv"}) for m, found in imports.items() if m != "qkv"}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_every_top_level_package_has_a_layer() -> None:
    modules, _ = read_imports()
    unplaced = sorted({m.split(".")[1] for m in modules if m != "qkv"} - set(LAYERS))
    assert not unplaced, f"give these parts of qkv a layer in tests/test_layers.py: {unplaced}"


def test_no_import_points_up() -> None:
    _, imports = read_imports()
    problems = upward_imports(imports)
    assert not problems, "imports from a lower layer to a higher one:\n" + "\n".join(problems)


def test_no_modules_import_each_other() -> None:
    _, imports = read_imports()
    cycles = import_cycles(imports)
    assert not cycles, "modules that import each other in a loop:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.fixture
def tree(tmp_path: Path):
    def make(files: dict[str, str]) -> Path:
        for name, text in files.items():
            path = tmp_path / "qkv" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return tmp_path
    return make


def test_the_checks_name_an_upward_import_and_a_loop(tree) -> None:
    src = tree({
        "__init__.py": "from qkv import nn\n",
        "nn/__init__.py": "",
        "nn/stack.py": "def f():\n    from qkv.models.tokenizer import Batch\n",
        "models/__init__.py": "",
        "models/tokenizer.py": "import qkv.nn\nfrom .loading import load\n",
        "models/loading.py": "from qkv.models.tokenizer import Batch\n",
    })
    _, imports = read_imports(src)
    problems = upward_imports(imports)
    assert problems == ["qkv.nn.stack (line 2, modules) imports qkv.models.tokenizer (models/train/distributed): "
                        "from qkv.models.tokenizer import Batch"]
    assert import_cycles(imports) == [["qkv.models.loading", "qkv.models.tokenizer"]]

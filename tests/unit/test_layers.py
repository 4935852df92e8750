"""The package's layers: every import points down or sideways inside a room, and none makes a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline

PACKAGE = Path(pipeline.__file__).parent
# Bottom to top. A module may import its own room and any room below it, never one above.
LAYERS = (
    ("records", "schema", "storage", "exits", "version"),
    ("endpoints", "models", "providers", "verdicts"),
    ("engines",),
    ("output",),
    ("intake",),
    ("options", "placeholders", "job"),
    ("commands",),
    ("api", "cli", "__main__", "__init__"),
)
RANK = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _room(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def _imports() -> dict[str, set[str]]:
    """pipeline module -> the pipeline modules it imports (lazy imports inside functions too)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__") if rel.name == "__init__" else ".".join(rel.parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("pipeline")}
        graph[name] = {m for m in found if m != name}
    return graph


def test_every_module_is_in_a_layer():
    rooms = {_room(m) for m in _imports()}
    assert rooms <= set(RANK), f"rooms without a layer: {sorted(rooms - set(RANK))}"


def test_no_import_points_up():
    upward = [f"{m} -> {dep}" for m, deps in _imports().items() for dep in deps
              if RANK[_room(dep)] > RANK[_room(m)]]
    assert upward == []


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert cycles == []


MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_a_screen():
    """Every function reads as a short chain: none over MAX_FUNCTION_LINES lines."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_test_modules_have_unique_names():
    """pytest imports test files by their base name (no packages under tests/): two files of one
    name in different folders stop the whole suite at collection."""
    from collections import Counter

    names = Counter(p.name for p in (PACKAGE.parent / "tests").rglob("test_*.py"))
    assert [name for name, n in names.items() if n > 1] == []

"""The map stays true: docs/design.md's table of rooms names every module of the package, each in
its own room's row, and no module that is gone."""

from __future__ import annotations

import re
from pathlib import Path

import pipeline

PACKAGE = Path(pipeline.__file__).parent
DESIGN = PACKAGE.parent / "docs" / "design.md"


def _rows() -> dict[str, str]:
    """The design table's rows, by room: "models/", "records.py", "cli.py", ..."""
    rows = {}
    for line in DESIGN.read_text().splitlines():
        found = re.match(r"\| \d+ \| (.+?) \| (.+) \|$", line)
        if found:
            for room in re.findall(r"`([^`]+)`", found.group(1)):
                rows[room] = found.group(2)
    return rows


def _modules() -> list[Path]:
    return sorted(p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py")
                  if not (p.name == "__init__.py" and p.parent != PACKAGE))


def test_the_design_map_names_every_module():
    rows = _rows()
    missing = []
    for module in _modules():
        if len(module.parts) == 1:
            named = module.name in rows
        else:
            row = rows.get(f"{module.parts[0]}/", "")
            named = f"`{module.name}`" in row or f"({module.name}" in row
        if not named:
            missing.append(str(module))
    assert missing == [], f"docs/design.md: name these modules in their room's row: {missing}"


def test_the_design_map_names_no_module_that_is_gone():
    rows = _rows()
    gone = [room for room in rows if room.endswith(".py") and not (PACKAGE / room).exists()]
    gone += [f"{room}{name}" for room, row in rows.items() if room.endswith("/")
             for name in re.findall(r"`(\w+\.py)`", row) if not (PACKAGE / room / name).exists()]
    assert gone == [], f"docs/design.md names modules that are gone: {gone}"


def _notes(path: Path) -> list[tuple[int, str]]:
    """(line, text) of a file's docstrings and comments: where prose names modules."""
    import ast
    import io
    import tokenize

    source = path.read_text()
    notes = [(t.start[0], t.string) for t in tokenize.generate_tokens(io.StringIO(source).readline)
             if t.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                notes.append((node.body[0].lineno, doc))
    return notes


def test_docstrings_and_comments_name_only_modules_that_exist():
    """A module that a docstring or comment names by its file (a bare file name, or a path from
    the repository or a room of the package) exists: renames leave no stale names behind. Paths
    into other projects (vLLM's own files) are not checked."""
    root = PACKAGE.parent
    ours = [p.relative_to(root).as_posix() for top in ("pipeline", "tests", "bench", "docs")
            for p in (root / top).rglob("*.py")]
    names = {Path(p).name for p in ours}
    rooms = {"pipeline", "tests", "bench", "docs"} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    stale = []
    for rel in ours:
        for line, text in _notes(root / rel):
            for name in re.findall(r"(?<![\w/.])((?:\w+/)*\w+\.py)\b", text):
                if "/" in name:
                    gone = name.split("/")[0] in rooms and not any(p == name or p.endswith("/" + name) for p in ours)
                else:
                    gone = name not in names
                if gone:
                    stale.append(f"{rel}:{line}: {name}")
    assert stale == [], f"modules named in docstrings or comments that do not exist: {stale}"

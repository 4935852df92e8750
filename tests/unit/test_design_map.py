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

"""The tiny test models' cache: each is built once per content of its recipe file, under
~/.cache/pipeline/test-models (or `cache`), so that a change to the recipe builds a new one."""
from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Callable
from typing import Any


def built_once(name: str, recipe: str, build: Callable[[pathlib.Path], Any],
               cache: str | os.PathLike | None = None) -> str:
    """The folder `name`-<digest of the `recipe` file>, built by `build(folder)` into a temporary
    folder and renamed into place when done (another session may win the race: its copy is kept)."""
    digest = hashlib.blake2b(pathlib.Path(recipe).read_bytes(), digest_size=6).hexdigest()
    root = pathlib.Path(cache or pathlib.Path.home() / ".cache" / "pipeline" / "test-models")
    folder = root / f"{name}-{digest}"
    if not (folder / "DONE").exists():
        tmp = root / f".tmp-{name}-{digest}-{os.getpid()}"
        build(tmp)
        (tmp / "DONE").write_text("")
        try:
            tmp.rename(folder)
        except OSError:  # another session built it first
            pass
    return str(folder)

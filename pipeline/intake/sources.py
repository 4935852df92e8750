"""Which files a job reads: files, folders (searched recursively), globs and fsspec URLs, listed
once, sorted and de-duplicated by their real location.

A file's identity is its canonical location (`Location.identity`): `partition_key=1/` and
`partition_key=2/` are two inputs, `./a.jsonl` and `/abs/a.jsonl` are one. A path that exists is
taken literally even when its name holds `[` or `*`; only a path that does not exist is a glob.
Folder listings skip what is not input data: names starting with `_` or `.` (Spark and Hive
metadata such as `_SUCCESS`), the run's own output folder, and any folder holding a
`_manifest.json` (the output of a run of this tool).
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import Any

from pipeline.exits import UserError
from pipeline.storage import Location

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)  # a table: for template jobs (--template-user)
ARROW_SUFFIXES = (".arrow",)  # Arrow IPC: what a Hugging Face dataset's save_to_disk writes
HF_SAVED = ("dataset_info.json", "state.json")  # a save_to_disk folder: only its .arrow files are data
OUTPUT_MARKER = "_manifest.json"  # a folder holding one is a run's output, never an input
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class InputFile:
    """One input file: where it is, how to read it, and what says it changed."""

    location: Location
    format: str  # "jsonl", "parquet", "csv" or "arrow"
    compression: str | None
    size: int | None
    version: str | None  # mtime, ETag or generation

    @property
    def identity(self) -> str:
        return self.location.identity

    @property
    def display(self) -> str:
        """The file as output rows and messages name it (`source_file`)."""
        return self.location.display

    def fingerprint(self, digest: str | None = None, *, by_content: bool = False) -> dict[str, Any]:
        """What the manifest records: display name, a hash of the identity (the real location
        is never written), size, version and, with --verify-content, a content digest.
        `by_content`: a file named by the digest of its content (the Python API's tables): that
        name is all its identity, wherever it lies and whenever it was written."""
        if by_content:
            return {"file": self.location.name, "key": f"content:{self.location.name}", "size": self.size,
                    "version": None}
        out = {
            "file": self.display,
            "key": hashlib.sha256(self.identity.encode("utf-8", "surrogateescape")).hexdigest()[:20],
            "size": self.size,
            "version": self.version,
        }
        if digest is not None:
            out["sha256"] = digest
        return out


def file_format(name: str) -> tuple[str, str | None] | None:
    """(format, compression) from a file name, or None if it is not an input file."""
    name = name.lower()
    compression = None
    for suffix, comp in COMPRESSIONS.items():
        if name.endswith(suffix):
            name, compression = name[: -len(suffix)], comp
            break
    if name.endswith(JSON_SUFFIXES):
        return "jsonl", compression
    if name.endswith(PARQUET_SUFFIXES) and compression is None:
        return "parquet", None
    if name.endswith(CSV_SUFFIXES):
        return "csv", compression
    if name.endswith(ARROW_SUFFIXES) and compression is None:
        return "arrow", None
    return None


def list_inputs(inputs: list[str], storage_options: dict[str, Any] | None = None, *,
                exclude: Location | None = None) -> list[InputFile]:
    """Expand files, folders and globs into a sorted list of input files, one per real location.
    `exclude` (the run's output folder) and everything under it is never an input."""
    found: dict[str, InputFile] = {}
    for given in inputs:
        root = Location.of(given, storage_options)
        if exclude is not None and exclude.contains(root):
            raise UserError(f"input {root.display} is inside the --output folder {exclude.display}. "
                             "Hint: write the output to another folder, never over the inputs")
        info = _info(root)
        if info is None:
            if not any(c in given for c in GLOB_CHARS):
                raise FileNotFoundError(f"input not found: {root.display}")
            paths = root.glob(root.path)
            if not paths:
                raise FileNotFoundError(f"input not found: nothing matches {root.display}")
            candidates = [(root.at(p), None) for p in paths]
        elif info.get("type") == "directory":
            candidates = [(loc, None) for loc in _walk(root, exclude)]
        else:
            candidates = [(root, info)]
        matched = [(loc, i) for loc, i in candidates
                   if file_format(loc.name) and not (exclude is not None and exclude.contains(loc))]
        if not matched:
            raise UserError(f"no input files in {root.display}: expected .jsonl/.json/.ndjson, .csv or .arrow "
                             "(optionally .gz/.zst/.bz2/.xz) or .parquet files")
        for loc, i in matched:
            if loc.identity not in found:
                found[loc.identity] = _input_file(loc, i or _info(loc) or {})
    return [found[k] for k in sorted(found)]


def _info(loc: Location) -> dict[str, Any] | None:
    """A file's metadata (None: nothing there). One that cannot be looked at (a symbolic link to
    itself) is a file without any: reading it gives its `unreadable_file` row."""
    try:
        return loc.info()
    except PermissionError:
        raise
    except OSError:
        return {}


def _walk(root: Location, exclude: Location | None):
    for folder, dirs, files in root.walk():
        if OUTPUT_MARKER in files and folder.rstrip("/") != root.path:
            dirs[:] = []
            continue
        if OUTPUT_MARKER in files:  # the folder given is itself a run's output
            return
        kept = []
        for d in sorted(dirs):
            sub = root.at(posixpath.join(folder, d))
            if not d.startswith(("_", ".")) and not (exclude is not None and exclude.contains(sub)):
                kept.append(d)
        dirs[:] = kept
        hf_saved = all(n in files for n in HF_SAVED)
        for name in sorted(files):
            if not name.startswith(("_", ".")) and not (hf_saved and not name.endswith(ARROW_SUFFIXES)):
                yield root.at(posixpath.join(folder, name))


def _input_file(loc: Location, info: dict[str, Any]) -> InputFile:
    fmt, compression = file_format(loc.name)
    version = next((info[k] for k in ("ETag", "etag", "generation", "mtime", "LastModified",
                                      "last_modified", "updated") if info.get(k) is not None), None)
    return InputFile(loc, fmt, compression, info.get("size"), None if version is None else str(version))

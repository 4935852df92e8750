"""A folder of batch files comes back as a folder of result files (line formats).

The committed parts stay the unit of exactly-once: a part holds the rows of any inputs, in the
order they finished. When every request has its row, `assemble` splits the parts by input file
into one result file per input under `results/`, named after the input:

    batches/a.jsonl            -> results/a.results.jsonl
    batches/eu/b.jsonl.gz      -> results/eu/b.results.jsonl
    (--split-errors)           -> results/a.results.jsonl (succeeded) + results/a.errors.jsonl (failed)

Names are the inputs' paths relative to the deepest folder they all share, so inputs of two
folders with the same file name (`x/a.jsonl`, `y/a.jsonl`) get `results/x/a...` and
`results/y/a...`; two inputs whose names differ only in their suffix (`a.jsonl`, `a.csv`) keep
their whole name (`a.jsonl.results.jsonl`). A name component longer than 200 bytes keeps its
first bytes and ends with `~` and a digest of the whole (the same on every run, unique), so that
no input's name can make a result file's name too long for the file system. Each result file is
written atomically; a kill during assembly leaves no `_SUCCESS`, and the rerun assembles every
file again from the parts. The files are assembled in a spool under $TMPDIR: a full or unwritable
one stops the run resumably (StorageError, exit 3) with a hint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pipeline.storage import AccessDenied, Location, StorageError

RESULTS = "results"  # the folder of per-input result files
# A result file's name is <name>.results.jsonl (14 bytes more), written through storage's temporary
# name .tmp-<12 hex>-<name> (18 more): a component of at most 200 bytes stays under 255 (NAME_MAX).
MAX_NAME_BYTES = 200
# The suffixes an input's name loses in its result file's name: a data format, then a compression.
_DATA_SUFFIX = re.compile(r"(\.(jsonl|json|ndjson|parquet|pq|csv|arrow))?(\.(gz|zst|zstd|bz2|xz))?$", re.I)


def result_names(files: Sequence[str]) -> list[str]:
    """Each input's name under results/ (displayed names in, no suffix out): its path relative
    to the deepest folder all inputs share, its data suffix removed unless that makes two
    inputs' names equal."""
    paths = [_components(f) for f in files]
    common = _common_prefix([p[:-1] for p in paths])
    relative = [p[len(common):] for p in paths]
    stems = ["/".join([*r[:-1], _DATA_SUFFIX.sub("", r[-1]) or r[-1]]) for r in relative]
    clashing = {s for s, n in Counter(stems).items() if n > 1}
    names = ["/".join(r) if s in clashing else s for r, s in zip(relative, stems, strict=True)]
    seen: Counter[str] = Counter()
    out = []
    for name in names:  # inputs displayed alike (credentials removed from two URLs): numbered
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return ["/".join(map(_fitting, name.split("/"))) for name in out]


def _fitting(component: str) -> str:
    """A path component short enough for any file system once the result file's suffix and the
    temporary name of its atomic write are added (255 bytes): a longer one keeps its first bytes
    and ends with a digest of the whole, so that it stays the same on every run and unique."""
    data = component.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_NAME_BYTES:
        return component
    digest = hashlib.sha256(data).hexdigest()[:16]
    head = data[: MAX_NAME_BYTES - len(digest) - 1].decode("utf-8", "ignore")  # no character cut in half
    return f"{head}~{digest}"


def assemble(loc: Location, records: list[dict[str, Any]], files: Sequence[str], *, split_errors: bool,
             failed, check) -> int:
    """Write each input's result file(s) under `loc`/results/ from the committed parts (`records`,
    in commit order, each with its part's line count per input: `lines`). `failed(line)` says
    whether a line is an error line; `check()` runs before each write (the lease). Returns the
    number of files written. Spools on local temporary disk: memory stays flat."""
    names = result_names(files)
    folder = loc.child(RESULTS)
    check()
    folder.rm(recursive=True)  # a killed assembly's files: written again below
    try:
        return _assemble(loc, records, files, names, split_errors=split_errors, failed=failed, check=check)
    except (AccessDenied, FileNotFoundError):
        raise
    except OSError as e:  # the local spool, not the output (whose errors are StorageError already)
        raise StorageError(
            f"assembling the result files in {tempfile.gettempdir()} failed: {e.strerror or e}. Every row is "
            "committed; the result files are assembled there first. Hint: free space there or set TMPDIR "
            "to a folder with room, then rerun the same command") from None


def _assemble(loc: Location, records, files, names, *, split_errors: bool, failed, check) -> int:
    folder = loc.child(RESULTS)
    with tempfile.TemporaryDirectory(prefix="pipeline-results-") as spool:
        kinds = ("results", "errors") if split_errors else ("results",)
        paths = {(i, k): os.path.join(spool, f"{i}.{k}") for i in range(len(files)) for k in kinds}
        for i in range(len(files)):
            open(paths[i, "results"], "wb").close()  # every input gets its results file
        for rec in records:
            part = loc.child(rec["part"])
            lines = (part.cat() or b"").splitlines(keepends=True)
            if len(lines) != sum(count for _, count in rec["lines"]):
                raise ValueError(f"{part.display} does not hold the lines its commit record lists: the "
                                     "output folder was changed by something else. Hint: rerun with --overwrite")
            at = 0
            for index, count in rec["lines"]:
                group, at = lines[at:at + count], at + count
                if split_errors:
                    flags = [failed(json.loads(line)) for line in group]
                    _append(paths[index, "errors"], [line for line, bad in zip(group, flags, strict=True) if bad])
                    group = [line for line, bad in zip(group, flags, strict=True) if not bad]
                _append(paths[index, "results"], group)
        written = 0
        for (i, kind), path in paths.items():
            if os.path.exists(path):  # an errors file only where there are errors, as OpenAI's
                check()
                folder.child(f"{names[i]}.{kind}.jsonl").put_file(path)
                written += 1
    return written


def _append(path: str, lines: list[bytes]) -> None:
    if lines:
        with open(path, "ab") as f:
            f.writelines(lines)


def _components(display: str) -> list[str]:
    """A displayed location as path components: the scheme first for URLs, no query."""
    scheme, sep, rest = display.partition("://")
    parts = ([scheme] if sep else []) + (rest if sep else display).split("?", 1)[0].split("/")
    return [p if p not in (".", "..") else "_" for p in parts if p]


def _common_prefix(lists: list[list[str]]) -> list[str]:
    first = lists[0] if lists else []
    n = 0
    while n < len(first) and all(len(p) > n and p[n] == first[n] for p in lists):
        n += 1
    return first[:n]

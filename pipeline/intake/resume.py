"""Resume that skips, not re-reads: where a resumed run starts reading each input file.

A run learns its input files' geometry while it reads them and hands it to each commit record
(`Positions`, the record's `positions`): every `EVERY` lines of a JSON lines file, the byte
offset at which the next line starts; at a file's end, the rows it gave; and
each file's scan (its row count). None of this says what is committed (the records' keys do);
it only says where lines lie in an unchanged file (the job's fingerprint holds its size and
version). A resumed run (`Resume.of`) then:

- does not scan or read a finished file (every row its end recorded is committed);
- reads a partly finished file from the last committed line of its committed prefix (lines 1..N
  all committed): a JSON lines file from the recorded offset at or before line N (seek, then at
  most `EVERY` lines counted, not decoded); a Parquet file from the first row group holding an
  uncommitted row, earlier row groups never read; a compressed file from its start, decompressed
  but the prefix's lines not decoded (a compressed stream cannot be entered in the middle), and
  without the whole-file check its first run did;
- past the prefix, in an uncompressed JSON lines file, seeks over every stretch between two
  recorded offsets whose lines are all committed (prefix order commits a file in stretches);
  any other committed line of a JSON lines file is read but not decoded or validated;
- carries what the skipped prefix meant to validation (`Seed`): the file's shape (its first
  object, read again: one line) and the ids its committed rows used (read from the output's
  Parquet parts), so a later duplicate id is still refused as in a run never stopped.

Where the prefix cannot be carried (a template job, a line
output format, a --limit trial), a partly finished file is read whole, as before.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EVERY = 4096  # lines between two recorded offsets of a JSON lines file


class Positions:
    """What the reader learns about the input files, until the next commit record takes it.
    Called from the reading thread; taken by the committing one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._new: dict[str, dict[str, Any]] = {}

    def _put(self, kind: str, file: int, value: Any) -> None:
        with self._lock:
            self._new.setdefault(kind, {}).setdefault(str(file), []).append(value)

    def scanned(self, file: int, rows: int) -> None:
        self._put("scans", file, rows)

    def mark(self, file: int, line: int, offset: int) -> None:
        """Line `line + 1` of file `file` starts at byte `offset`."""
        self._put("marks", file, [line, offset])

    def end(self, file: int, rows: int) -> None:
        """File `file` was read to its end, having given `rows` rows."""
        self._put("ends", file, rows)

    def take(self) -> dict[str, Any] | None:
        with self._lock:
            new, self._new = self._new, {}
        return new or None


@dataclass
class Recorded:
    """Every commit record's positions, merged."""

    scans: dict[int, int] = field(default_factory=dict)
    marks: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, records: Iterable[dict[str, Any]]) -> Recorded:
        out = cls()
        for record in records:
            found = record.get("positions")
            if not isinstance(found, dict):
                continue
            for k, v in (found.get("scans") or {}).items():
                out.scans[int(k)] = int(v[-1])
            for k, v in (found.get("marks") or {}).items():
                out.marks.setdefault(int(k), []).extend((int(a), int(b)) for a, b in v)
            for k, v in (found.get("ends") or {}).items():
                out.ends[int(k)] = int(v[-1])
        for k, marks in out.marks.items():
            out.marks[k] = sorted(set(marks))  # a resumed run records again what it reads
        return out


@dataclass
class FileStart:
    """Where one file's reading starts, and the committed stretches it jumps over."""

    done: bool = False  # every row committed: not opened
    skip: int = 0  # lines 1..skip committed: not decoded (not read at all before `line`)
    line: int = 0  # reading starts after this line ...
    offset: int = 0  # ... at this byte (JSON lines, uncompressed; 0: the start)
    groups: int = 0  # Parquet: row groups wholly skipped (their rows are lines 1..skip)
    # JSON lines, uncompressed: after recorded line a, lines a+1..b are all committed: seek to
    # byte offset o, where line b + 1 starts ({a: (b, o)})
    jumps: dict[int, tuple[int, int]] = field(default_factory=dict)
    ids: LineIds | None = None  # the committed rows' ids, for validation's Seed
    bits: np.ndarray | None = None  # JSON lines: the committed lines, read but not decoded


@dataclass(frozen=True)
class Jump:
    """The reader jumped over lines first..last (all committed)."""

    first: int
    last: int


@dataclass(frozen=True)
class Seed:
    """What skipped lines of a request file meant to validation: the file's first object, where
    they hold it (its shape), and the digests of the ids their rows used. Comes where the
    skipped lines lay, so a later row's id is checked against exactly the ids before it."""

    first: Any
    digests: np.ndarray


def digest(custom_id: str) -> int:
    """An id's 64-bit digest, as the duplicate check (requests.SeenIds) keeps it."""
    return int.from_bytes(hashlib.blake2b(custom_id.encode(), digest_size=8).digest(), "little")


class LineIds:
    """The digests of the ids committed rows of one input used as their own, by line (0: none),
    read from the output on first use: 8 bytes a line."""

    def __init__(self, read: Callable[[], np.ndarray]):
        self.read, self.by_line = read, None

    def between(self, first: int, last: int) -> np.ndarray:
        if self.by_line is None:
            self.by_line = self.read()
        found = self.by_line[first : last + 1]
        return found[found != 0]


@dataclass
class Resume:
    """Where a resumed run reads each input file, and how many committed rows it passes over."""

    files: dict[int, FileStart] = field(default_factory=dict)
    skipped: int = 0  # committed rows never read (counted as resumed)

    def start(self, file: int) -> FileStart | None:
        return self.files.get(file)


def prefix_length(bits: np.ndarray | None) -> int:
    """How many lines from line 1 on are all committed (bit i: line i; bit 0 unused)."""
    if bits is None or len(bits) < 2:
        return 0
    missing = np.flatnonzero(~bits[1:])
    return int(missing[0]) if len(missing) else len(bits) - 1


def file_start(bits: np.ndarray | None, rec: Recorded, index: int, *, compressed: bool,
               fmt: str, row_groups: list[int] | None, prefix: bool) -> FileStart | None:
    """Where file `index` is read from, given its committed lines `bits`; None: from its start."""
    done = int(bits.sum()) if bits is not None else 0
    end = rec.ends.get(index)
    if end is not None and done and done == end:
        return FileStart(done=True, skip=done)
    n = prefix_length(bits)
    if not prefix or bits is None:
        return None
    if fmt == "parquet":
        groups, line = 0, 0
        for rows in row_groups or []:
            if line + rows > n:
                break
            groups, line = groups + 1, line + rows
        return FileStart(skip=line, line=line, groups=groups) if groups else None
    if fmt != "jsonl":
        return FileStart(skip=n) if n else None
    if compressed:
        return FileStart(skip=n, bits=bits)
    marks = rec.marks.get(index, [])
    line, offset = 0, 0
    for at, where in marks:
        if at > n:
            break
        line, offset = at, where
    return FileStart(skip=n, line=line, offset=offset, jumps=committed_stretches(bits, marks, after=n), bits=bits)


def committed_stretches(bits: np.ndarray, marks: list[tuple[int, int]], after: int) -> dict[int, tuple[int, int]]:
    """{a: (b, offset of line b + 1)} for recorded lines a < b past line `after` between which
    every line is committed, consecutive stretches joined."""
    if len(marks) < 2:
        return {}
    lines = np.array([m[0] for m in marks], dtype=np.int64)
    top = int(lines[-1])
    padded = np.zeros(top + 1, dtype=np.int64)
    padded[: min(len(bits), top + 1)] = bits[: top + 1]
    done = np.cumsum(padded)
    full = (done[lines[1:]] - done[lines[:-1]]) == (lines[1:] - lines[:-1])
    jumps: dict[int, tuple[int, int]] = {}
    k = 0
    while k < len(full):
        if not full[k] or marks[k][0] < after:
            k += 1
            continue
        j = k
        while j < len(full) and full[j]:
            j += 1
        jumps[marks[k][0]] = marks[j]  # lines marks[k]+1 .. marks[j] all committed
        k = j
    return jumps


def stretch_rows(start: FileStart) -> int:
    """The committed rows a start passes over: its prefix and its jumps."""
    return start.skip + sum(b - a for a, (b, _) in start.jumps.items())


def plan_resume(files, committed, records: list[dict[str, Any]], *, prefix: bool,
                ids_of: Callable[[int, int], np.ndarray] | None = None) -> Resume:
    """Where a resumed run reads each of `files` (InputFile), given the committed lines and the
    commit records' positions. `prefix`: partly finished files may skip committed stretches
    (`ids_of(file, lines)` gives the id digests of its committed rows by line, for validation)."""
    rec, out = Recorded.of(records), Resume()
    for i, file in enumerate(files):
        bits = committed.bitmaps.get(i)
        if bits is None:
            continue
        groups = _row_groups(file) if prefix and file.format == "parquet" and prefix_length(bits) else None
        start = file_start(bits, rec, i, compressed=file.compression is not None, fmt=file.format,
                           row_groups=groups, prefix=prefix and ids_of is not None)
        if start is None:
            continue
        if not start.done and ids_of is not None:
            size = len(bits)
            start.ids = LineIds(lambda i=i, size=size: ids_of(i, size))
        out.files[i] = start
        out.skipped += stretch_rows(start)
    return out


def _row_groups(file) -> list[int] | None:
    """The rows of each row group of a Parquet file (its footer only)."""
    import pyarrow.parquet as pq

    try:
        with file.location.open("rb") as f:
            meta = pq.ParquetFile(f).metadata
            return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    except Exception:  # unreadable here: read whole, as before (the reader says why)
        return None


def committed_digests(loc, records: list[dict[str, Any]], file: int, size: int,
                      default: Callable[[int], str]) -> np.ndarray:
    """By line (`size` lines), the digest of the id each committed row of input `file` used as
    its own (a row without an id got `default(line)`, which validation never counts; 0: none),
    read from the Parquet parts' custom_id and source_line columns."""
    import pyarrow.parquet as pq

    by_line = np.zeros(size, dtype=np.uint64)
    for record in records:
        first = 0
        for index, count in record.get("lines") or ():
            if int(index) == file:
                with loc.child(record["part"]).open("rb") as f:
                    table = pq.read_table(f, columns=["custom_id", "source_line"]).slice(first, count)
                for cid, line in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True):
                    if line < size and cid != default(line):
                        by_line[line] = digest(cid)
            first += int(count)
    return by_line

"""A trial run of a big job: `--limit N` takes the first N rows of the input, `--limit N
--sample-seed S` a seeded random sample of N rows.

A selected row is exactly the row a full run gives it (the whole input is still validated up to
it, so a duplicate id stays a duplicate). The sample is every row's 64-bit hash of (seed, file,
line), the N smallest: the same rows whatever the order they are read in, and the same rows on a
rerun, so a killed trial resumes. It needs one extra pass over the input's raw rows (no
validation) and holds N keys in memory.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from pipeline.intake.reader import Scan
from pipeline.records import FailedRequest, Request, Source


@dataclass(frozen=True)
class Limit:
    """How many rows a job takes, and how they are chosen (`seed` None: the first ones)."""

    rows: int | None = None
    seed: int | None = None

    @classmethod
    def of(cls, rows: int | None, seed: int | None) -> Limit:
        if seed is not None and rows is None:
            raise ValueError("--sample-seed needs --limit N: it chooses which N rows the trial takes")
        return cls(rows, seed)

    def __bool__(self) -> bool:
        return self.rows is not None

    def apply(self, items: Iterable[Request | FailedRequest],
              keys: Callable[[], Iterable[tuple[Source, int]]]) -> Iterator[Request | FailedRequest]:
        """The selected items of the stream. `keys` gives every input row's (file, line) in a
        pass of its own (read only for a sample)."""
        if self.rows is None:
            return iter(items)
        if self.seed is None:
            return islice(items, self.rows)
        chosen = self.chosen(keys())
        return (item for item in items if (item.file, item.line) in chosen)

    def chosen(self, keys: Iterable[tuple[Source, int]]) -> set[tuple[int, int]]:
        """The (file index, line) keys of the rows this limit takes, out of every row's keys in
        input order: the first N, or the N whose (seed, real location, line) hash smallest."""
        if self.seed is None:
            return {(source.index, line) for source, line in islice(keys, self.rows)}
        seed = str(self.seed).encode()
        hashed = ((_hash(seed, source.identity, line), source.index, line) for source, line in keys)
        return {(index, line) for _, index, line in heapq.nsmallest(self.rows, hashed)}

    def total(self, scans: Sequence[Scan]) -> int | None:
        """The rows the job takes out of the scanned input (None: not counted)."""
        rows = _counted(scans)
        return rows if self.rows is None or rows is None else min(rows, self.rows)

    def describe(self, scans: Sequence[Scan]) -> dict[str, Any] | None:
        """For the report: None for a full run; else the limit, the seed and the input's rows
        (None where the scan did not count them)."""
        if self.rows is None:
            return None
        return {"limit": self.rows, "sample_seed": self.seed, "input_rows": _counted(scans)}


FULL = Limit()  # every row


def _counted(scans: Sequence[Scan]) -> int | None:
    counts = [s.rows for s in scans]
    return None if any(c is None for c in counts) else sum(counts)


def _hash(seed: bytes, name: str, line: int) -> int:
    digest = hashlib.blake2b(b"%s\0%s\0%d" % (seed, name.encode("utf-8", "surrogatepass"), line), digest_size=8)
    return int.from_bytes(digest.digest(), "big")

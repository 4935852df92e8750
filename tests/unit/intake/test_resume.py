"""Issue 32: a resumed run starts each file where its committed prefix ends (intake/resume.py).
Property: whatever the lines (blank, long, of any length) and whatever is committed, the rows a
resumed read gives plus the committed ones are every row of the file, each once."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.intake import reader
from pipeline.intake.reader import read_all, read_rows
from pipeline.intake.resume import (
    FileStart,
    Jump,
    Positions,
    Recorded,
    committed_stretches,
    file_start,
    plan_resume,
    prefix_length,
)
from pipeline.intake.sources import InputFile
from pipeline.output.folder import Committed
from pipeline.storage import Location

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def input_file(path, fmt="jsonl", compression=None):
    return InputFile(Location.of(str(path)), fmt, compression, path.stat().st_size, "1")


def write_lines(path, kinds, opener=open):
    """Line i+1 per kind: a row (its text padded to a few lengths) or a blank line."""
    with opener(path, "wb") as f:
        for i, kind in enumerate(kinds):
            f.write(
                b"\n"
                if kind == "blank"
                else (json.dumps({"custom_id": f"r{i + 1}", "pad": "x" * (i % 7)}) + "\n").encode()
            )


def committed_of(rows, chosen):
    c = Committed()
    if chosen:
        c.add(0, [[n, n] for n in sorted(chosen)])
    return c


def first_read(file, every, monkeypatch):
    """A first run's read: every row, and the positions it records."""
    monkeypatch.setattr(reader, "EVERY", every)
    positions = Positions()
    rows = [(line, row) for _, line, row in read_all([file], positions=positions)]
    return rows, Recorded.of([{"positions": positions.take()}])


@SETTINGS
@given(kinds=st.lists(st.sampled_from(["row", "row", "row", "row", "blank"]), min_size=1, max_size=60),
       data=st.data(), every=st.integers(1, 7), gz=st.booleans())
def test_resumed_read_plus_committed_is_every_row_once(tmp_path_factory, monkeypatch, kinds, data, every, gz):
    path = tmp_path_factory.mktemp("r") / ("in.jsonl.gz" if gz else "in.jsonl")
    write_lines(path, kinds, gzip.open if gz else open)
    file = input_file(path, compression="gzip" if gz else None)
    rows, rec = first_read(file, every, monkeypatch)
    lines = [line for line, _ in rows]
    # committed in runs (as a resumed input-order run or prefix order's groups leave them), or anywhere
    runs = data.draw(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 20)), max_size=4))
    chosen = {n for a, k in runs for n in range(a, a + k) if n in lines}
    chosen |= set(data.draw(st.lists(st.sampled_from(lines), unique=True, max_size=5))) if lines else set()
    committed = committed_of(rows, chosen)
    start = file_start(committed.bitmaps.get(0), rec, 0, compressed=gz, fmt="jsonl", row_groups=None, prefix=True)
    if start is not None and start.done:
        assert chosen == set(lines)
        return
    got = list(read_rows(file, start=start))
    jumped = {n for _, j in got if isinstance(j, Jump) for n in range(j.first, j.last + 1)}
    skipped = set(range(1, (start.skip if start else 0) + 1)) | jumped
    assert {n for n in skipped if kinds[n - 1] == "row"} <= chosen  # the prefix: committed rows and blanks
    assert jumped <= chosen  # passed over (sought past, or read and not decoded): committed rows only
    again = [(line, row) for line, row in got if not isinstance(row, Jump)]
    assert again == [(line, row) for line, row in rows if line not in skipped]  # every other row, as read first
    if start is not None and not gz:  # the last recorded offset at or before the prefix's end
        assert start.line == start.skip // every * every


def test_committed_stretches_between_recorded_lines_are_jumped():
    bits = np.zeros(21, dtype=bool)
    bits[[*range(1, 7), *range(9, 17), 19]] = True  # lines 1-6, 9-16 and 19
    marks = [(4, 40), (8, 80), (12, 120), (16, 160), (20, 200)]
    assert committed_stretches(bits, marks, after=6) == {8: (16, 160)}
    assert committed_stretches(bits, marks, after=10) == {12: (16, 160)}


def test_a_finished_file_is_done_and_a_prefix_starts_at_the_recorded_offset(tmp_path, monkeypatch):
    path = tmp_path / "in.jsonl"
    write_lines(path, ["row"] * 20)
    rows, rec = first_read(input_file(path), 4, monkeypatch)
    assert rec.ends == {0: 20} and [at for at, _ in rec.marks[0]] == [4, 8, 12, 16, 20]
    done = file_start(committed_of(rows, set(range(1, 21))).bitmaps[0], rec, 0, compressed=False, fmt="jsonl",
                      row_groups=None, prefix=True)
    assert done.done and done.skip == 20
    part = file_start(committed_of(rows, set(range(1, 11)) | {13}).bitmaps[0], rec, 0, compressed=False,
                      fmt="jsonl", row_groups=None, prefix=True)
    data = path.read_bytes()
    assert (part.skip, part.line) == (10, 8) and part.offset == len(b"".join(data.splitlines(True)[:8]))


def test_an_offset_that_is_not_a_line_start_reads_from_the_start(tmp_path):
    path = tmp_path / "in.jsonl"
    write_lines(path, ["row"] * 5)
    file = input_file(path)
    got = list(read_rows(file, start=FileStart(skip=3, line=2, offset=7)))  # byte 6 is no newline
    assert [line for line, _ in got] == [4, 5]


@given(st.lists(st.booleans(), max_size=40))
def test_prefix_length_is_the_run_of_committed_lines_from_line_one(bits):
    arr = np.array([False, *bits], dtype=bool)
    n = prefix_length(arr)
    assert all(bits[:n]) and (n == len(bits) or not bits[n])


@pytest.mark.parametrize("committed_rows, groups_skipped", [(0, 0), (9, 0), (10, 1), (25, 2), (30, 3)])
def test_parquet_reads_from_the_first_row_group_not_all_committed(tmp_path, committed_rows, groups_skipped):
    path = tmp_path / "in.parquet"
    table = pa.table({"custom_id": [f"r{i}" for i in range(30)],
                      "messages": [[{"role": "user", "content": f"q{i}"}] for i in range(30)]})
    pq.write_table(table, path, row_group_size=10)
    file = input_file(path, "parquet")
    committed = Committed()
    if committed_rows:
        committed.add(0, [[1, committed_rows]])
    ends = [{"positions": {"ends": {"0": [30]}}}] if committed_rows == 30 else []
    plan = plan_resume([file], committed, ends, prefix=True, ids_of=lambda i, size: np.zeros(size, np.uint64))
    start = plan.start(0)
    if committed_rows == 30:
        assert start.done
        return
    assert (start.groups if start else 0) == groups_skipped
    got = [line for line, _ in read_rows(file, start=start)]
    assert got == list(range((start.skip if start else 0) + 1, 31))
    assert plan.skipped == groups_skipped * 10


def test_positions_are_taken_once():
    p = Positions()
    p.mark(0, 4, 100)
    p.end(0, 9)
    assert p.take() == {"marks": {"0": [[4, 100]]}, "ends": {"0": [9]}}
    assert p.take() is None


def test_a_committed_stretch_is_sought_past_not_read(tmp_path, monkeypatch):
    """Lines 5-12 committed, offsets recorded every 4 lines: the reader seeks from line 4's end
    to line 12's. Shown by rewriting lines 5-12 as one line of the same bytes: read, the lines
    after them would be numbered 6, 7, ...; sought past, they keep their numbers."""
    path = tmp_path / "in.jsonl"
    write_lines(path, ["row"] * 16)
    rows, rec = first_read(input_file(path), 4, monkeypatch)
    data = path.read_bytes().splitlines(True)
    path.write_bytes(b"".join(data[:4]) + b"".join(data[4:12]).replace(b"\n", b" ")[:-1] + b"\n" + b"".join(data[12:]))
    start = file_start(committed_of(rows, set(range(5, 13))).bitmaps[0], rec, 0, compressed=False, fmt="jsonl",
                       row_groups=None, prefix=True)
    assert start.jumps == {4: (12, sum(map(len, data[:12])))}
    got = list(read_rows(input_file(path), start=start))
    assert [(line, row["custom_id"] if isinstance(row, dict) else row) for line, row in got] == [
        (1, "r1"), (2, "r2"), (3, "r3"), (4, "r4"), (12, Jump(5, 12)), (13, "r13"), (14, "r14"), (15, "r15"),
        (16, "r16")]

"""Reading inputs: listing, compression, the three row shapes, unreadable lines."""

import gzip
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.intake.reader import read_all
from pipeline.intake.sources import list_inputs
from pipeline.records import FailedRequest
from pipeline.storage import redact

ROW = {"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}


def rows_of(path, **kw):
    [f] = list_inputs([str(path)])
    return list(read_all([f], **kw))


def test_jsonl_gz_and_zst(tmp_path):
    data = (json.dumps(ROW) + "\n\n" + json.dumps(ROW) + "\n").encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    for name in ("a.jsonl.gz", "b.jsonl.zst"):
        got = rows_of(tmp_path / name)
        assert [(line, row) for _, line, row in got] == [(1, ROW), (3, ROW)]  # blank line 2 skipped


def test_bad_lines_become_errors_with_line_numbers(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{oops\n\xff\xfe\n' + b'{"b": "' + b"x" * 200 + b'"}\n{"c": 3}\n')
    got = rows_of(path, max_line_bytes=100)
    assert got[0][2] == {"a": 1}
    errors = {line: row.code for _, line, row in got if isinstance(row, FailedRequest)}
    assert errors == {2: "invalid_json", 3: "invalid_utf8", 4: "line_too_long"}
    assert got[-1][1:] == (5, {"c": 3})  # reading goes on after an over-long line


def test_parquet_columns_and_body_shapes(tmp_path):
    pq.write_table(pa.table({
        "custom_id": ["p1"],
        "messages": [[{"role": "user", "content": "hi"}]],
        "temperature": [None],
        "max_tokens": [5],
    }), tmp_path / "cols.parquet")
    [(_, line, row)] = rows_of(tmp_path / "cols.parquet")
    assert line == 1 and row == {"custom_id": "p1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    pq.write_table(pa.table({"custom_id": ["b1"], "body": [json.dumps({"messages": [], "n": 2})]}),
                   tmp_path / "body.parquet")
    [(_, _, row)] = rows_of(tmp_path / "body.parquet")
    assert row == {"custom_id": "b1", "messages": [], "n": 2}
    pq.write_table(pa.table({"custom_id": ["c1"], "method": ["POST"], "url": ["/v1/chat/completions"],
                             "body": [{"max_tokens": 3, "messages": [{"role": "user", "content": "x"}]}]}),
                   tmp_path / "batch.parquet")
    [(_, _, row)] = rows_of(tmp_path / "batch.parquet")
    assert row["body"]["max_tokens"] == 3 and row["url"] == "/v1/chat/completions"


def test_listing_dirs_globs_and_urls(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("b.jsonl", "a.jsonl", "notes.txt"):
        (tmp_path / "d" / name).write_text(json.dumps(ROW) + "\n")
    assert [f.display.rsplit("/", 1)[-1] for f in list_inputs([str(tmp_path / "d")])] == ["a.jsonl", "b.jsonl"]
    assert len(list_inputs([str(tmp_path / "d" / "*.jsonl"), str(tmp_path / "d" / "a.jsonl")])) == 2
    fs = fsspec.filesystem("memory")
    fs.pipe("/io-test/in.jsonl", (json.dumps(ROW) + "\n").encode())
    [f] = list_inputs(["memory://io-test/in.jsonl"])
    assert f.display == "memory://io-test/in.jsonl"
    assert [r for _, _, r in read_all([f])] == [ROW]
    with pytest.raises(FileNotFoundError, match="input not found"):
        list_inputs([str(tmp_path / "missing.jsonl")])
    with pytest.raises(ValueError, match="no input files"):
        list_inputs([str(tmp_path / "d" / "notes.txt")])


def test_redact_removes_credentials():
    assert redact("s3://AKIA:secret@bucket/x") == "s3://***@bucket/x"
    assert "hunter2" not in redact("https://host/f.jsonl?sig=hunter2&X-Amz-Credential=abc")
    assert redact("https://host/f.jsonl?page=2") == "https://host/f.jsonl?page=2"


def csv_with_bad_bytes(path, rows, bad):
    """A CSV of `rows` records (q, n), where the records numbered in `bad` hold a latin-1 byte."""
    path.write_bytes(b"q,n\n" + b"".join((b"caf\xe9 %d" if i in bad else b"row %d") % i + b",%d\n" % i
                                         for i in range(1, rows + 1)))
    return path


@pytest.mark.parametrize("block", [1 << 22, 1 << 12])  # the bad records in the first block, or later ones
def test_csv_bad_bytes_cost_their_own_rows_anywhere_in_the_file(tmp_path, monkeypatch, block):
    from pipeline.intake import reader

    monkeypatch.setattr(reader, "CSV_BLOCK", block)
    path = csv_with_bad_bytes(tmp_path / "t.csv", 2000, {5, 1500})
    got = rows_of(path, raw=True)
    assert [line for _, line, _ in got] == list(range(1, 2001))
    errors = {line: (row.code, row.param) for _, line, row in got if isinstance(row, FailedRequest)}
    assert errors == {5: ("invalid_utf8", "q"), 1500: ("invalid_utf8", "q")}
    assert all(row == {"q": f"row {line}", "n": line} for _, line, row in got if line not in errors)


def test_a_table_that_breaks_mid_way_gives_its_rows_before_the_break(tmp_path, monkeypatch):
    from pipeline.intake import reader

    monkeypatch.setattr(reader, "CSV_BLOCK", 1 << 12)
    path = tmp_path / "t.csv"  # n is inferred as an integer from the first block; a later one is not
    path.write_bytes(b"q,n\n" + b"".join(b"row %d,%d\n" % (i, i) for i in range(1, 2001)) + b"x,not a number\n")
    [f] = list_inputs([str(path)])
    got = list(read_all([f], [reader.scan(f)], raw=True))  # as a run reads it: scanned first
    *fine, (_, line, broken) = got
    assert [row for _, _, row in fine] == [{"q": f"row {i}", "n": i} for i in range(1, len(fine) + 1)]
    assert len(fine) > 1000 and broken.code == "unreadable_file" and line == len(fine) + 1


@pytest.mark.parametrize("where", ["scan", "read_rows"])
def test_an_interruption_while_a_file_is_read_is_never_an_unreadable_file(tmp_path, monkeypatch, where):
    from pipeline import exits
    from pipeline.intake import reader

    [f] = list_inputs([str(write_rows(tmp_path / "a.jsonl"))])

    def interrupted(*args):
        raise exits.Interrupted()

    monkeypatch.setattr(reader, "_decompressed" if where == "scan" else "decode_line", interrupted)
    with pytest.raises(exits.Interrupted):
        reader.scan(f) if where == "scan" else list(reader.read_rows(f))


def write_rows(path):
    path.write_text(json.dumps(ROW) + "\n")
    return path

"""Issue 32: a resumed run skips what is committed without reading it again: a finished file is
not read, a partly finished one is entered at its committed prefix's end (intake/resume.py); and
every row still ends exactly once, duplicate ids in the skipped prefix still count."""

import gzip
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    REPO,
    chat_line,
    committed_records,
    invoke,
    read_output,
    wait_for_commit,
    write_jsonl,
)

from pipeline.intake import reader

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]


def rows(prefix, n, dup=None):
    out = [chat_line(f"{prefix}{i}", f"question {prefix} {i}") for i in range(1, n + 1)]
    if dup:  # line dup[1] reuses the id of line dup[0]
        out[dup[1] - 1] = chat_line(f"{prefix}{dup[0]}", "again")
    return out


def killed_after(out: Path, keep) -> int:
    """The output as a run killed after its first `keep` commits leaves it (its reader had seen
    the whole input by then: every record's positions go to the last one kept); `keep` a set:
    those commits only (as prefix order leaves committed stretches apart). Returns the rows kept."""
    records = sorted(((json.loads(p.read_text()), p) for p in (out / "_commits").glob("*.json")),
                     key=lambda rp: rp[0]["order"])
    positions: dict = {}
    for record, _ in records:
        for kind, files in (record.get("positions") or {}).items():
            for file, values in files.items():
                positions.setdefault(kind, {}).setdefault(file, []).extend(values)
    keep = set(range(keep)) if isinstance(keep, int) else keep
    for k, (record, path) in enumerate(records):
        if k not in keep:
            (out / record["part"]).unlink()
            path.unlink()
    last, path = records[max(keep)]
    last["positions"] = positions
    path.write_text(json.dumps(last))
    for name in ("_SUCCESS", "_report.json"):
        (out / name).unlink(missing_ok=True)
    return sum(r["rows"] for k, (r, _) in enumerate(records) if k in keep)


@pytest.fixture
def decoded(monkeypatch):
    """The ids of the lines the reader decodes (JSON-parses)."""
    seen: list[str] = []
    real = reader.decode_line

    def spy(data):
        row = real(data)
        if isinstance(row, dict):
            seen.append(row.get("custom_id"))
        return row

    monkeypatch.setattr(reader, "decode_line", spy)
    monkeypatch.setattr(reader, "EVERY", 4)
    return seen


def run(src, out, *extra):
    # answered in input order: parts of 10 lines in turn (--no-identical-once: sampled requests are
    # not held back a window's length for copies to merge with, engines/sampled.py, while the
    # error rows of the same stretch are written)
    res = invoke("run", src, "-o", out, *FAKE, "--order", "input", "--checkpoint-every", "10",
                 "--max-in-flight", "1", "--no-identical-once", *extra)
    assert res.exit_code == 0, res.output
    return json.loads((out / "_report.json").read_text())


def test_a_finished_file_is_not_read_and_a_prefix_is_entered_at_its_end(tmp_path, decoded):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", rows("a", 30))
    write_jsonl(tmp_path / "in" / "b.jsonl", rows("b", 30))
    out = tmp_path / "out"
    full = read_output(run(tmp_path / "in", out) and out).sort("custom_id")
    assert killed_after(out, 4) == 40  # a: 30 rows in 3 parts, b: lines 1-10
    decoded.clear()
    report = run(tmp_path / "in", out)
    # a: its first line only (which endpoint it asks for); b: that, then lines 11-30
    assert sorted(set(decoded)) == sorted({"a1", "b1"} | {f"b{i}" for i in range(11, 31)})
    assert decoded.count("a1") == 1 and len(decoded) == 1 + 2 + 20
    assert report["resumed"] == 40
    df = read_output(out).sort("custom_id")
    assert df.height == 60 and df["custom_id"].n_unique() == 60
    assert df["source_line"].to_list() == full["source_line"].to_list()


def test_a_duplicate_id_of_the_skipped_prefix_is_still_refused(tmp_path, decoded):
    src = write_jsonl(tmp_path / "in.jsonl", rows("r", 30, dup=(5, 20)))
    out = tmp_path / "out"
    run(src, out)
    first = read_output(out).filter(source_line=20)["error"].to_list()
    assert killed_after(out, 1) == 10
    decoded.clear()
    run(src, out)
    assert decoded.count("r5") == 1  # line 20's: line 5 was not read again
    assert set(decoded) == {"r1", "r5"} | {f"r{i}" for i in range(11, 31) if i != 20}
    df = read_output(out)
    assert df.height == 30
    again = df.filter(source_line=20)["error"].to_list()
    assert again == first and "duplicate_custom_id" in json.dumps(again)


def test_a_compressed_file_is_decompressed_but_its_prefix_not_decoded(tmp_path, decoded):
    src = tmp_path / "in.jsonl.gz"
    src.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows("z", 30)).encode()))
    out = tmp_path / "out"
    run(src, out)
    assert killed_after(out, 2) == 20
    decoded.clear()
    report = run(src, out)
    assert set(decoded) == {"z1"} | {f"z{i}" for i in range(21, 31)} and report["resumed"] == 20
    df = read_output(out)
    assert df.height == 30 and df["custom_id"].n_unique() == 30


def test_committed_stretches_apart_are_jumped_and_their_ids_count_where_they_lay(tmp_path, decoded):
    """Lines 1-10 and 21-30 committed (as prefix order leaves a file): 21-28 are jumped (offsets
    recorded every 4 lines here). Line 15 reuses line 24's id: not a duplicate (24 comes later);
    line 35 reuses line 23's: a duplicate, though line 23 was never read again."""
    lines = rows("r", 40)
    lines[14], lines[34] = chat_line("r24", "first use"), chat_line("r23", "again")
    lines[23] = chat_line("r24", "second use")
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    run(src, out)
    errors = {r["source_line"]: r["error"] for r in read_output(out).iter_rows(named=True) if r["error"]}
    assert set(errors) == {24, 35}
    assert killed_after(out, {0, 2}) == 20
    decoded.clear()
    report = run(src, out)
    assert report["resumed"] == 10 + 8 + 2  # the prefix, the jump (21-28), then 29-30 read, not decoded
    assert not {f"r{i}" for i in (*range(2, 11), 21, 22, 25, 26, 27, 28)} & set(decoded)
    df = read_output(out)
    assert df.height == 40 and {r["source_line"]: r["error"] for r in df.iter_rows(named=True) if r["error"]} == errors


def test_kill_9_and_rerun_keep_every_row_exactly_once(tmp_path, hold):
    n = 120
    src = write_jsonl(tmp_path / "in.jsonl", rows("k", n))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "run", str(src), "-o", str(out), *FAKE, "--checkpoint-every", "5",
           "--max-in-flight", "4", *hold.options()]  # held after one part: killed mid-run
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_commit(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = sum(r["rows"] for r in committed_records(out))
    assert 0 < before < n
    res = subprocess.run([sys.executable, "-m", "pipeline", "run", str(src), "-o", str(out), *FAKE],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    df = read_output(out)
    assert df.height == n and df["custom_id"].n_unique() == n and df["error"].is_null().all()
    assert json.loads((out / "_report.json").read_text())["resumed"] == before


def test_a_job_an_earlier_version_started_keeps_its_columns_on_the_rerun(tmp_path, caplog):
    """A rerun by a version whose output schema differs writes the job's remaining parts with the
    committed parts' columns, so that the folder reads as one table (a glob scan), and says so."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = write_jsonl(tmp_path / "in.jsonl", rows("r", 30))
    out = tmp_path / "out"
    run(src, out)
    assert killed_after(out, 1) == 10
    (first,) = out.glob("part-*.parquet")
    old = pq.read_table(first).drop_columns(["audio_segments"])
    old = old.append_column("legacy", pa.array(["x"] * old.num_rows))  # a column this version lacks
    pq.write_table(old, first)
    res = invoke("run", src, "-o", out, *FAKE, "--order", "input", "--checkpoint-every", "10")
    assert res.exit_code == 0, res.output
    assert "not written: audio_segments; left empty: legacy" in caplog.text
    assert {tuple(pq.read_schema(p).names) for p in out.glob("part-*.parquet")} == {tuple(old.schema.names)}
    df = pl.scan_parquet(out / "part-*.parquet").collect()
    assert df.height == 30 and df["custom_id"].n_unique() == 30
    assert df.filter(pl.col("source_line") > 10)["legacy"].null_count() == 20
    assert json.loads((out / "_report.json").read_text())["resumed"] == 10

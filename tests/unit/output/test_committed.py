"""What an output folder says is committed: commit records read into per-file bitmaps."""

import json

from pipeline.output.folder import COMMITS, MANIFEST, Committed, Output
from pipeline.storage import Location


def test_committed_marks_every_line_of_every_range_once():
    done = Committed()
    done.add(0, [[1, 3], [7, 7], [10, 12]])
    done.add(2, [[5, 5]])
    assert [line for line in range(15) if (0, line) in done] == [1, 2, 3, 7, 10, 11, 12]
    assert (2, 5) in done and (2, 4) not in done and (1, 5) not in done
    assert done.count == 8 and done.repeated == 0
    done.add(0, [[3, 4], [100, 100]])  # line 3 again: counted once, and seen as repeated
    assert done.count == 10 and done.repeated == 1 and (0, 100) in done and (0, 99) not in done


def test_committed_ignores_empty_and_reversed_ranges():
    done = Committed()
    done.add(0, [])
    done.add(0, [[5, 4]])
    assert done.count == 0 and (0, 4) not in done and (0, 5) not in done


def _folder(tmp_path, records: list[dict]) -> Output:
    (tmp_path / COMMITS).mkdir()
    (tmp_path / MANIFEST).write_text(json.dumps({"fingerprint": "f", "attempts": [{"id": "0000000a", "cutoff": None}]}))
    for seq, rec in enumerate(records, 1):
        part = f"part-0000000a-{seq:05d}.parquet"
        (tmp_path / part).write_bytes(b"")
        (tmp_path / COMMITS / f"0000000a-{seq:05d}.json").write_text(json.dumps(
            {"part": part, "order": seq - 1, "rows": 0, "stats": {}, **rec}))
    return Output(Location.of(str(tmp_path)))


def test_state_reads_records_in_batches_into_bitmaps_and_keeps_them_without_keys(tmp_path):
    # 600 records (more than one batch), each of one line, in scattered order (as prefix order commits)
    out = _folder(tmp_path, [{"keys": {"0": [[(i * 7919) % 600 + 1, (i * 7919) % 600 + 1]]}} for i in range(600)])
    state = out.read_state()
    assert [r["order"] for r in state.records] == list(range(600))
    assert all("keys" not in r for r in state.records)
    assert state.committed.count == 600 and state.committed.repeated == 0
    assert all((0, line) in state.committed for line in range(1, 601)) and (0, 601) not in state.committed


def test_pending_rows_are_the_latest_entry_of_each_line_not_committed_since(tmp_path):
    out = _folder(tmp_path, [
        {"keys": {"0": [[1, 1]]}, "pending": {"0": {"2": "a", "3": "b"}, "1": {"2": "x"}}},
        {"keys": {"0": [[3, 3]]}, "pending": {"0": {"2": "a2"}}},  # line 3 is final now; line 2 went on
    ])
    state = out.read_state()
    assert state.pending == {(0, 2): "a2", (1, 2): "x"}
    assert all("pending" not in r for r in state.records)

"""`pipeline run` end to end on the fake engine: rows, errors, resume, crashes, storage failures."""

import errno
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import (
    REPO,
    chat_line,
    invoke,
    read_output,
    wait_for_commit,
    write_jsonl,
)

from pipeline.output.folder import Output
from pipeline.storage import Location

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]


def mixed_file(tmp_path, n=10):
    rows = [chat_line(f"r{i}", f"hello number {i}", max_tokens=3) for i in range(n)]
    rows.insert(3, "{not json")
    rows.insert(5, json.dumps(chat_line("bad-temp", "x", temperature=9)))
    rows.insert(7, json.dumps(chat_line("r1", "dup")))
    return write_jsonl(tmp_path / "in.jsonl", rows)


def test_every_line_gets_one_row(tmp_path):
    src = mixed_file(tmp_path)
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--checkpoint-every", "4")
    assert res.exit_code == 0, res.output
    df = read_output(tmp_path / "out").sort("source_line")
    assert df.height == 13
    assert df["source_line"].to_list() == list(range(1, 14))
    errors = {r["source_line"]: r["error"]["code"] for r in df.to_dicts() if r["error"]}
    assert errors == {4: "invalid_json", 6: "invalid_parameter", 8: "duplicate_custom_id"}
    ok = df.filter(df["error"].is_null())
    assert (ok["total_tokens"] == ok["prompt_tokens"] + ok["completion_tokens"]).all()
    assert ok["estimated_cost"].min() > 0
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert (report["requests"], report["succeeded"], report["failed"]) == (13, 10, 3)
    assert report["errors_by_code"] == {"duplicate_custom_id": 1, "invalid_json": 1, "invalid_parameter": 1}
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert "13 requests: 10 ok, 3 failed" in res.output


def test_rerun_of_complete_output_does_nothing(tmp_path):
    src = mixed_file(tmp_path)
    assert invoke("run", src, "-o", tmp_path / "out", *FAKE).exit_code == 0
    parts = sorted(os.listdir(tmp_path / "out"))
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0 and "already complete" in res.output
    assert sorted(os.listdir(tmp_path / "out")) == parts


def test_changed_input_is_refused_unless_overwrite(tmp_path):
    src = mixed_file(tmp_path)
    assert invoke("run", src, "-o", tmp_path / "out", *FAKE).exit_code == 0
    write_jsonl(src, [chat_line("x", "changed")])
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 1
    assert "different job" in res.output and "inputs" in res.output and "--overwrite" in res.output
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--price-input", "1")
    assert res.exit_code == 1
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--overwrite")
    assert res.exit_code == 0, res.output
    assert read_output(tmp_path / "out").height == 1


def test_changed_option_is_named(tmp_path):
    src = mixed_file(tmp_path)
    out = tmp_path / "out"
    # leave an incomplete job behind: a finished run whose completion marker is removed
    assert invoke("run", src, "-o", out, *FAKE, "--price-input", "2").exit_code == 0
    (out / "_SUCCESS").unlink()
    res = invoke("run", src, "-o", out, *FAKE, "--price-input", "3")
    assert res.exit_code == 1 and "--price-input" in res.output


def test_poison_request_is_isolated(tmp_path):
    rows = [chat_line(f"r{i}", f"q{i}") for i in range(40)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--engine-option", 'die_on=["r17"]')
    assert res.exit_code == 0, res.output
    df = read_output(tmp_path / "out")
    assert df.height == 40 and df["custom_id"].n_unique() == 40
    crashed = df.filter(df["error"].is_not_null())
    assert crashed["custom_id"].to_list() == ["r17"]
    assert crashed["error"][0]["code"] == "engine_crash"
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["engine_restarts"] >= 2  # the first death, then bisection down to r17


def test_engine_death_once_loses_nothing(tmp_path):
    rows = [chat_line(f"r{i}", f"q{i}") for i in range(30)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    marker = tmp_path / "died"
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE,
                 "--engine-option", "die_at=12", "--engine-option", f"die_marker={marker}")
    assert res.exit_code == 0, res.output
    assert marker.exists()
    df = read_output(tmp_path / "out")
    assert df.height == 30 and df["error"].is_null().all()


def test_disk_full_stops_cleanly_and_rerun_completes(tmp_path, monkeypatch):
    """The disk fills up while the second part is written (fsync of its data fails with ENOSPC)."""
    from pipeline import storage as output

    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"q{i}") for i in range(20)])
    real_fsync, calls = os.fsync, {"parts": 0}

    def full_after_first_part(fd):
        if "part-" in os.readlink(f"/proc/self/fd/{fd}"):
            calls["parts"] += 1
            if calls["parts"] > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(output.os, "fsync", full_after_first_part)
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--checkpoint-every", "5")
    assert res.exit_code == 3
    assert "No space left on device" in res.output and "rerun the same command" in res.output
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert read_output(tmp_path / "out").height == 5  # the committed part is intact
    assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(".tmp")]
    monkeypatch.setattr(output.os, "fsync", real_fsync)
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--checkpoint-every", "5")
    assert res.exit_code == 0, res.output
    df = read_output(tmp_path / "out")
    assert df.height == 20 and df["custom_id"].n_unique() == 20
    assert json.loads((tmp_path / "out" / "_report.json").read_text())["resumed"] == 5


@pytest.mark.parametrize("first,then", [("prefix", "prefix"), ("input", "prefix"), ("prefix", "input")])
def test_kill_and_resume_exactly_once(tmp_path, first, then, hold):
    """SIGKILL the run once a part is committed; the rerun sends only uncommitted requests, in
    either order (--order is not part of the job: a run stopped in one order finishes in the other)."""
    n = 60
    # documents shared by several rows, so that prefix order differs from the input's
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"{'doc ' * 80}{i % 7}: q{i}") for i in range(n)])
    out, log = tmp_path / "out", tmp_path / "sent.log"
    cmd = [sys.executable, "-m", "pipeline", "run", str(src), "-o", str(out), *FAKE,
           "--checkpoint-every", "5", "--max-in-flight", "4",
           *hold.options(after=10), "--engine-option", f"log_file={log}"]  # held after two parts: killed mid-run
    proc = subprocess.Popen([*cmd, "--order", first], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_commit(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # what the commit records say is committed (a part written but not yet recorded does not count)
    done = Output(Location.of(str(out))).read_state().committed
    committed = {line - 1 for line in range(1, n + 1) if (0, line) in done}
    assert 0 < len(committed) < n
    assert not (out / "_SUCCESS").exists()
    if first == "prefix":  # the order it sent them in is not the input's
        assert [int(line[1:]) for line in log.read_text().split()] != sorted(
            int(line[1:]) for line in log.read_text().split()
        )
    log.write_text("")
    hold.release()
    res = subprocess.run([*cmd, "--order", then], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    df = read_output(out)
    assert sorted(df["custom_id"].to_list()) == sorted(f"r{i}" for i in range(n))
    resent = {int(line[1:]) for line in log.read_text().split()}
    assert resent.isdisjoint(committed)
    report = json.loads((out / "_report.json").read_text())
    assert report["resumed"] == len(committed) and report["requests"] == n

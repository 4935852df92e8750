"""Issue 10: every input line ends as exactly one output row under real conditions. Each test
here failed on the first version (input identity, output ownership, one writer, output inside
input, corrupt compressed input, storage errors, credentials, growth)."""

import gzip
import http.server
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import (
    REPO,
    chat_line,
    committed_records,
    invoke,
    read_output,
    until_ignored,
    wait_for_commit,
    write_jsonl,
)

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]


def lines(n, prefix="r"):
    return [chat_line(f"{prefix}{i}", f"question {i}") for i in range(n)]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(*args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, **kw)


# ---- input identity ---------------------------------------------------------------------------
def test_partition_folders_are_distinct_inputs(tmp_path):
    """Hive-style partitions, and folder names that look like credentials, are ordinary names."""
    data = tmp_path / "lake"
    for folder in ("partition_key=1", "partition_key=2", "token=x", "assignment=a"):
        (data / folder).mkdir(parents=True)
        write_jsonl(data / folder / "part.jsonl", lines(3, prefix=f"{folder}-"))
    res = invoke("run", data, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    df = read_output(tmp_path / "out")
    assert df.height == 12 and df["custom_id"].n_unique() == 12
    assert {Path(f).parent.name for f in df["source_file"].to_list()} == {
        "partition_key=1", "partition_key=2", "token=x", "assignment=a"}


def test_literal_bracket_name_and_two_spellings_of_one_file(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "data[1].jsonl", lines(4))
    write_jsonl(tmp_path / "data1.jsonl", lines(2, prefix="other"))  # what the glob would match
    monkeypatch.chdir(tmp_path)
    res = invoke("run", "data[1].jsonl", src, f"./sub/../{src.name}", "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    df = read_output(tmp_path / "out")
    assert sorted(df["custom_id"].to_list()) == [f"r{i}" for i in range(4)]  # once, and only it


def test_output_inside_input_folder_is_never_read(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "in.jsonl", lines(5))
    other = data / "old-run"  # another run's output under the input folder
    assert invoke("run", data / "in.jsonl", "-o", other, *FAKE).exit_code == 0
    out = data / "out"
    for _ in range(2):  # the rerun must not see the output's own files as new inputs
        res = invoke("run", data, "-o", out, *FAKE)
        assert res.exit_code == 0, res.output
    assert "already complete" in res.output
    assert read_output(out).height == 5


# ---- output ownership -------------------------------------------------------------------------
def test_foreign_files_are_refused_and_never_touched(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", lines(3))
    out = tmp_path / "spark-export"
    out.mkdir()
    (out / "part-00000-abc.snappy.parquet").write_bytes(b"not ours")
    (out / "_SUCCESS").write_bytes(b"")
    (out / ".tmp-x").write_bytes(b"theirs")
    before = snapshot(out)
    res = invoke("run", src, "-o", out, *FAKE)
    assert res.exit_code == 1 and "did not write" in res.output and "--allow-foreign-files" in res.output
    assert snapshot(out) == before
    res = invoke("run", src, "-o", out, *FAKE, "--overwrite")
    assert res.exit_code == 1 and snapshot(out) == before
    res = invoke("run", src, "-o", out, *FAKE, "--allow-foreign-files")
    assert res.exit_code == 1 and "_SUCCESS written by something else" in res.output
    assert snapshot(out) == before
    (out / "_SUCCESS").unlink()
    before = snapshot(out)
    res = invoke("run", src, "-o", out, *FAKE, "--allow-foreign-files")
    assert res.exit_code == 0, res.output
    after = snapshot(out)
    assert all(after[name] == data for name, data in before.items())


def test_output_folder_of_the_inputs_keeps_them(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "a.jsonl", lines(3))
    before = snapshot(data)
    res = invoke("run", data, "-o", data, *FAKE, "--overwrite")
    assert res.exit_code == 1 and "inside the --output folder" in res.output
    assert snapshot(data) == before


def test_dry_run_writes_and_deletes_nothing(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", lines(6))
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, *FAKE, "--dry-run")
    assert res.exit_code == 0 and "Nothing was written" in res.output and not out.exists()
    assert invoke("run", src, "-o", out, *FAKE).exit_code == 0
    before = snapshot(out)
    write_jsonl(src, lines(7))  # a different job now
    res = invoke("run", src, "-o", out, *FAKE, "--dry-run", "--overwrite")
    assert res.exit_code == 0 and "--overwrite would discard" in res.output
    assert snapshot(out) == before
    res = invoke("run", src, "-o", out, *FAKE, "--overwrite")
    assert res.exit_code == 0 and read_output(out).height == 7


def test_output_that_is_a_file(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", lines(1))
    target = tmp_path / "out.parquet"
    target.write_bytes(b"x")
    res = invoke("run", src, "-o", target, *FAKE)
    assert res.exit_code == 1 and "is a file" in res.output and target.read_bytes() == b"x"


# ---- one writer -------------------------------------------------------------------------------
def slow_run(src, out, *extra, delay="0.05"):
    cmd = [sys.executable, "-m", "pipeline", "run", str(src), "-o", str(out), *FAKE,
           "--checkpoint-every", "5", "--max-in-flight", "4", "--engine-option", f"step_delay={delay}", *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)



def test_second_writer_and_dry_run_during_a_run(tmp_path, hold):
    n = 60
    src = write_jsonl(tmp_path / "in.jsonl", lines(n))
    out = tmp_path / "out"
    first = slow_run(src, out, *hold.options())  # still writing while the others start: held after one part
    wait_for_commit(out, first)
    second = cli("run", src, "-o", out, *FAKE)
    assert second.returncode == 3, second.stdout + second.stderr
    assert "being written by another run" in second.stderr and f"pid {first.pid}" in second.stderr
    dry = cli("run", src, "-o", out, *FAKE, "--dry-run")
    assert dry.returncode == 0 and "Would process" in dry.stdout
    hold.release()
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stdout + stderr
    df = read_output(out)
    assert df.height == n and df["custom_id"].n_unique() == n


def test_crashed_writer_is_taken_over_at_once(tmp_path):
    n = 40
    src = write_jsonl(tmp_path / "in.jsonl", lines(n))
    out = tmp_path / "out"
    proc = slow_run(src, out)
    wait_for_commit(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = cli("run", src, "-o", out, *FAKE)  # same machine, dead pid: no need to wait
    assert res.returncode == 0, res.stdout + res.stderr
    df = read_output(out)
    assert sorted(df["custom_id"].to_list()) == sorted(f"r{i}" for i in range(n))
    assert sorted(p.name for p in (out / "_lease").iterdir()) == ["2.json"]


def test_paused_writer_cannot_add_rows_after_takeover(tmp_path, hold):
    """A writer stopped (SIGSTOP) past the lease timeout loses the folder: the next run takes
    over, and when the first wakes up it stops instead of committing rows a second time. "Past
    the timeout" is what the storage's clock says: the paused holder's lease file is made older
    than its timeout (as a long pause leaves it), so no wait and no short lease that load could
    break; the first run is held mid-way, so it cannot have finished before its pause."""
    n = 40
    src = write_jsonl(tmp_path / "in.jsonl", lines(n))
    out = tmp_path / "out"
    first = slow_run(src, out, "--lease-timeout", "600", *hold.options())
    wait_for_commit(out, first)
    first.send_signal(signal.SIGSTOP)
    try:
        # within the timeout, whatever the machine's load: this run would wait 600 s for a heartbeat
        busy = cli("run", src, "-o", out, *FAKE, "--lease-timeout", "600")
        assert busy.returncode == 3 and "another run" in busy.stderr
        [lease] = (out / "_lease").glob("*.json")
        past = lease.stat().st_mtime - 601  # not rewritten for longer than the holder's 600 s
        os.utime(lease, (past, past))
        second = cli("run", src, "-o", out, *FAKE, "--lease-timeout", "600", "--checkpoint-every", "7")
        assert second.returncode == 0, second.stdout + second.stderr
    finally:
        hold.release()
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=60)
    assert first.returncode == 3, stdout + stderr
    assert "lease" in stderr
    df = read_output(out)
    assert df.height == n and df["custom_id"].n_unique() == n
    assert sum(r["rows"] for r in committed_records(out)) == n
    assert {p.name for p in out.glob("part-*")} == {r["part"] for r in committed_records(out)}


# ---- reading: corrupt input, BOM, storage errors ----------------------------------------------
def test_corrupt_and_truncated_gzip_give_one_file_error_and_finish(tmp_path):
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in lines(200)).encode())
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "truncated.jsonl.gz").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF
    (tmp_path / "in" / "corrupt.jsonl.gz").write_bytes(bytes(corrupt))
    write_jsonl(tmp_path / "in" / "good.jsonl", lines(3, prefix="g"))
    out = tmp_path / "out"
    res = invoke("run", tmp_path / "in", "-o", out, *FAKE)
    assert res.exit_code == 0, res.output
    df = read_output(out)
    errors = df.filter(df["error"].is_not_null())
    assert errors.height == 2 and set(errors["error"].struct.field("code")) == {"unreadable_file"}
    assert all("cannot be read to its end" in e["message"] and "line" in e["message"]
               for e in errors["error"].to_list())
    assert df.height == 5  # the good file's rows and one row per broken file, no garbage
    res = invoke("run", tmp_path / "in", "-o", out, *FAKE)
    assert res.exit_code == 0 and "already complete" in res.output
    res = invoke("validate", tmp_path / "in" / "truncated.jsonl.gz")
    assert res.exit_code == 1 and "cannot be read to its end" in res.output and "Aborted" not in res.output


def test_corrupt_parquet_names_the_file(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really parquet")
    res = invoke("run", tmp_path / "bad.parquet", "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    [row] = read_output(tmp_path / "out").to_dicts()
    assert row["error"]["code"] == "unreadable_file" and "bad.parquet" in row["error"]["message"]


def test_utf8_bom_on_the_first_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in lines(2)).encode())
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0
    assert read_output(tmp_path / "out")["error"].is_null().all()


class Flaky(http.server.BaseHTTPRequestHandler):
    """Serves `body` at any path; the first `fail` GETs answer `status` instead."""

    body, fail, status, stall = b"", 0, 500, 0.0

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, head):
        cls = type(self)
        cls.asked.set()
        if cls.stall:
            time.sleep(cls.stall)
        if cls.fail > 0 and not head:
            cls.fail -= 1
            self.send_response(cls.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if cls.status == 403 and cls.fail < 0:
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(cls.body)))
        self.end_headers()
        if not head:
            self.wfile.write(cls.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    handler = type("Handler", (Flaky,), {"asked": threading.Event()})  # set at the first request
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_transient_http_errors_are_retried(tmp_path, http_server, monkeypatch):
    from pipeline import storage

    monkeypatch.setattr(storage, "RETRY_DELAYS", (0.05, 0.05, 0.05))
    handler, base = http_server
    handler.body = "".join(json.dumps(r) + "\n" for r in lines(4)).encode()
    handler.fail, handler.status = 2, 503
    res = invoke("run", f"{base}/in.jsonl", "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    assert read_output(tmp_path / "out").height == 4
    handler.fail = 100  # down for good: stop resumable (exit 3), no traceback
    res = invoke("run", f"{base}/in.jsonl", "-o", tmp_path / "out2", *FAKE)
    assert res.exit_code == 3 and "rerun the same command" in res.output and "Traceback" not in res.output


def test_refused_access_says_so(tmp_path, http_server):
    handler, base = http_server
    handler.fail, handler.status = -1, 403
    res = invoke("run", f"{base}/in.jsonl?sig=SECRETSIG&page=2", "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 1 and "refused" in res.output and "not found" not in res.output
    assert "SECRETSIG" not in res.output and "page=2" in res.output


def test_sigterm_while_planning_exits_3(tmp_path, http_server):
    handler, base = http_server
    handler.body, handler.stall = b"{}\n", 30.0
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", f"{base}/in.jsonl", "-o",
                             str(tmp_path / "out"), *FAKE], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert handler.asked.wait(120), "the run never asked the server for its input"  # planning, stalled
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 3, stderr
    assert "interrupted" in stderr


# ---- options, fingerprint, credentials ---------------------------------------------------------
def test_option_values_stay_strings_unless_clearly_json():
    from pipeline.job import parse_key_values

    got = parse_key_values(["a=0123", "b=1_000", "c=12:30:00", "d=yes", "e=*secret", "f=12",
                            "g=true", 'h={"x": 1}', "i=[1, 2]", "j=1.5e3", "k=a=b"], "--storage-option")
    assert got == {"a": "0123", "b": "1_000", "c": "12:30:00", "d": "yes", "e": "*secret", "f": 12,
                   "g": True, "h": {"x": 1}, "i": [1, 2], "j": 1500.0, "k": "a=b"}


def test_bad_key_value_is_a_usage_error_without_the_value(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", lines(1))
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--engine-arg", "foo")
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--storage-option", "*s3cr3t-value")
    assert res.exit_code == 2 and "s3cr3t" not in res.output


def test_engine_args_are_part_of_the_job(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", lines(3))
    out = tmp_path / "out"
    assert invoke("run", src, "-o", out, *FAKE, "--engine-arg", "block_size=16").exit_code == 0
    (out / "_SUCCESS").unlink()
    res = invoke("run", src, "-o", out, *FAKE, "--engine-arg", "block_size=32")
    assert res.exit_code == 1 and "--engine-arg" in res.output


def test_same_size_rewrite_with_kept_mtime_is_caught_by_verify_content(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", lines(3))
    out = tmp_path / "out"
    assert invoke("run", src, "-o", out, *FAKE, "--verify-content").exit_code == 0
    (out / "_SUCCESS").unlink()
    stat = src.stat()
    src.write_text(src.read_text().replace("question 1", "question 7"))  # same size
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    res = invoke("run", src, "-o", out, *FAKE, "--verify-content")
    assert res.exit_code == 1 and "inputs" in res.output


def test_verbose_logging_never_enables_storage_client_debug():
    from pipeline.cli import QUIET_LOGGERS, setup_logging

    setup_logging(2)
    assert logging.getLogger("pipeline").getEffectiveLevel() == logging.DEBUG
    for name in QUIET_LOGGERS + ("botocore.endpoint", "botocore.auth"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING


# ---- growth -----------------------------------------------------------------------------------
def test_per_checkpoint_work_stays_bounded(tmp_path):
    """The manifest is written once per run, not per part; warnings group by kind."""
    rows = []
    for i in range(60):
        row = chat_line(f"r{i}", f"q{i}")
        row["body"].update({f"unknown_field_{i}_{k}": k for k in range(50)})
        rows.append(row)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    assert invoke("run", src, "-o", out, *FAKE, "--checkpoint-every", "1").exit_code == 0
    manifest_size = (out / "_manifest.json").stat().st_size
    records = sorted((out / "_commits").iterdir())
    assert len(records) == 60 and max(r.stat().st_size for r in records) < 2000
    assert manifest_size < 4000
    report = json.loads((out / "_report.json").read_text())
    assert (
        list(report["warnings"]) == ["unknown field(s) ignored"]
        and report["warnings"]["unknown field(s) ignored"] == 60
    )


def test_parquet_input_with_integral_floats(tmp_path):
    """pandas writes an optional int column as float: max_tokens 5.0 is 5."""
    pq.write_table(pa.table({"custom_id": ["a", "b"],
                             "messages": [[{"role": "user", "content": "hi"}]] * 2,
                             "max_tokens": [5.0, None]}), tmp_path / "in.parquet")
    res = invoke("run", tmp_path / "in.parquet", "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0
    assert read_output(tmp_path / "out")["error"].is_null().all()


def test_sigterm_during_the_run_commits_and_exits_3(tmp_path):
    n = 60
    src = write_jsonl(tmp_path / "in.jsonl", lines(n))
    out = tmp_path / "out"
    proc = slow_run(src, out, delay="0.2")  # seconds of work left after the first commit
    wait_for_commit(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "interrupted" in stderr
    done = read_output(out).height
    assert 0 < done < n
    res = cli("run", src, "-o", out, *FAKE)
    assert res.returncode == 0, res.stderr
    df = read_output(out)
    assert df.height == n and df["custom_id"].n_unique() == n


def test_vllm_logs_follow_our_verbosity(monkeypatch):
    from pipeline.cli import setup_logging

    for verbose, level in ((0, "WARNING"), (1, "INFO"), (2, "DEBUG")):
        monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
        setup_logging(verbose)
        assert os.environ["VLLM_LOGGING_LEVEL"] == level
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "ERROR")  # the user's own setting wins
    setup_logging(1)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"


def test_output_of_the_first_version_is_ours_to_replace(tmp_path):
    """A folder written by the first version (its manifest listed the parts) is another job's
    output, not foreign files: refused without --overwrite, replaced with it."""
    src = write_jsonl(tmp_path / "in.jsonl", lines(2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-1a2b3c4d-00001.parquet").write_bytes(b"old rows")
    (out / "_manifest.json").write_text(json.dumps({"version": 1, "fingerprint": "old", "job": {"inputs": []},
                                                    "parts": [{"name": "part-1a2b3c4d-00001.parquet"}]}))
    (out / "_SUCCESS").write_text("{}")
    res = invoke("run", src, "-o", out, *FAKE)
    assert res.exit_code == 1 and "different job" in res.output
    res = invoke("run", src, "-o", out, *FAKE, "--overwrite")
    assert res.exit_code == 0, res.output
    assert not (out / "part-1a2b3c4d-00001.parquet").exists() and read_output(out).height == 2


def test_file_name_that_is_not_utf8(tmp_path):
    """A local file whose name's bytes are not UTF-8 is read, and its rows can be written."""
    folder = os.fsencode(tmp_path / "in")
    os.mkdir(folder)
    with open(os.path.join(folder, b"caf\xe9.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in lines(2)))
    res = invoke("run", tmp_path / "in", "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    df = read_output(tmp_path / "out")
    assert df.height == 2 and all(f.endswith("caf\ufffd.jsonl") for f in df["source_file"])


def test_validate_counts_unknown_fields_within_bounds(tmp_path):
    rows = [
        {**chat_line(f"r{i}", "x"), "body": {**chat_line(f"r{i}", "x")["body"], f"field_{i}": 1}} for i in range(1500)
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    res = invoke("validate", src)
    assert res.exit_code == 0 and "(+980 more names)" in res.output


# ---- interruptions: SIGTERM and SIGINT at any moment -------------------------------------------
def signal_while_reading(proc, path: Path, sig, past=1 << 20):
    """Send `sig` once `proc` has read `past` bytes of `path` in a read that is not done yet."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
            try:
                if os.readlink(fd) == str(path):
                    pos = int(Path(f"/proc/{proc.pid}/fdinfo/{fd.name}").read_text().split()[1])
                    if past < pos < path.stat().st_size:
                        proc.send_signal(sig)
                        return
            except (OSError, ValueError, IndexError):
                pass
        time.sleep(0.01)
    raise AssertionError("the file was not being read")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_a_file_is_read_stops_the_run_and_the_rerun_finishes_it(tmp_path, sig):
    """Rows with millions of blank lines between them: the reader is busy for seconds. The signal
    must stop the run (exit 3, no _SUCCESS), never turn the rest of the file into an error row."""
    src = tmp_path / "in.jsonl"
    with src.open("wb") as f:
        f.write("".join(json.dumps(r) + "\n" for r in lines(10)).encode())
        f.write(b"\n" * 12_000_000)
        f.write("".join(json.dumps(r) + "\n" for r in lines(10, prefix="s")).encode())
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(src), "-o", str(out), *FAKE,
                             "--order", "input"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    signal_while_reading(proc, src, sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr
    assert "interrupted" in stderr and not (out / "_SUCCESS").exists()
    res = cli("run", src, "-o", out, *FAKE)
    assert res.returncode == 0, res.stderr
    df = read_output(out)
    assert df["error"].is_null().all() and sorted(df["custom_id"]) == sorted(
        [f"r{i}" for i in range(10)] + [f"s{i}" for i in range(10)])


def test_a_second_signal_during_the_flush_is_ignored(tmp_path):
    n = 60
    src = write_jsonl(tmp_path / "in.jsonl", lines(n))
    out = tmp_path / "out"
    proc = slow_run(src, out, delay="0.2")
    wait_for_commit(out, proc)
    proc.send_signal(signal.SIGTERM)
    until_ignored(proc, signal.SIGTERM, signal.SIGINT)  # the first signal is taken: the flush has begun
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    res = cli("run", src, "-o", out, *FAKE)
    assert res.returncode == 0, res.stderr
    df = read_output(out)
    assert df.height == n and df["custom_id"].n_unique() == n


# ---- inputs that display alike are still two inputs ---------------------------------------------
def bare_lines(n):
    """Request bodies without a custom_id: their ids are derived from their file and line."""
    return [chat_line("x", f"question {i}")["body"] for i in range(n)]


def test_names_that_display_alike_keep_their_own_resume_state_after_kill_9(tmp_path):
    """caf\\xe9 and caf\\xe8 both display as caf\ufffd.jsonl: a kill -9 and a rerun lose nothing, and
    their derived ids differ."""
    folder = os.fsencode(tmp_path / "in")
    os.mkdir(folder)
    for name in (b"caf\xe9.jsonl", b"caf\xe8.jsonl"):
        with open(os.path.join(folder, name), "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in bare_lines(20)))
    out = tmp_path / "out"
    proc = slow_run(tmp_path / "in", out, "--order", "input")
    wait_for_commit(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < sum(r["rows"] for r in committed_records(out)) < 40
    res = cli("run", tmp_path / "in", "-o", out, *FAKE)
    assert res.returncode == 0, res.stderr
    df = read_output(out)
    assert df.height == 40 and df["custom_id"].n_unique() == 40 and df["error"].is_null().all()
    assert sorted(df["source_line"].to_list()) == sorted(list(range(1, 21)) * 2)
    assert sum(r["rows"] for r in committed_records(out)) == 40


def test_two_files_may_use_the_same_ids_and_names_that_redact_alike(tmp_path):
    """batch?sig=1 and batch?sig=2 display alike (the signature is redacted); both use r0..r9."""
    (tmp_path / "in").mkdir()
    for name in ("batch?sig=1.jsonl", "batch?sig=2.jsonl"):
        write_jsonl(tmp_path / "in" / name, lines(10))
    res = invoke("run", tmp_path / "in", "-o", tmp_path / "out", *FAKE, "--checkpoint-every", "100")
    assert res.exit_code == 0, res.output
    df = read_output(tmp_path / "out")
    assert df.height == 20 and df["error"].is_null().all()
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "out" / "_commits").glob("*.json")]
    assert record["rows"] == 20 and record["keys"] == {"0": [[1, 10]], "1": [[1, 10]]}


# ---- http inputs: signed URLs, no ETag, credentials ------------------------------------------------
@pytest.mark.parametrize("query", ["X-Amz-Expires=3600&X-Amz-Signature=abc123", "sv=2024&se=2030-01-01&sig=abc%2B"])
def test_presigned_and_sas_urls_are_inputs(tmp_path, http_server, query):
    handler, base = http_server
    handler.body = "".join(json.dumps(r) + "\n" for r in lines(3)).encode()
    res = invoke("run", f"{base}/a.jsonl?{query}", "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    df = read_output(tmp_path / "out")
    assert df.height == 3 and "abc" not in "".join(df["source_file"])


def test_the_query_redaction_keeps_what_follows_the_url():
    from pipeline.storage import redact

    assert redact("no input files in https://h/a.jsonl?sig=abc: expected") == \
        "no input files in https://h/a.jsonl?sig=***: expected"


def test_an_http_input_without_etag_that_changed_is_refused(tmp_path, http_server):
    """The server sends neither ETag nor Last-Modified: the content digest says it changed."""
    handler, base = http_server
    handler.body = "".join(json.dumps(chat_line(f"r{i}", "old version")) + "\n" for i in range(4)).encode()
    assert invoke("run", f"{base}/a.jsonl", "-o", tmp_path / "out", *FAKE).exit_code == 0
    handler.body = handler.body.replace(b"old", b"new")  # the same size
    res = invoke("run", f"{base}/a.jsonl", "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 1 and "changed: inputs" in res.output, res.output


def test_url_credentials_are_never_written_or_printed(tmp_path, http_server):
    handler, base = http_server
    handler.body = "".join(json.dumps(r) + "\n" for r in lines(3)).encode()
    url = base.replace("http://", "http://alice:Sup3rSecretPw@") + "/a.jsonl"
    out = tmp_path / "out"
    res = invoke("run", url, "-o", out, *FAKE, "--metrics-file", tmp_path / "metrics.prom")
    assert res.exit_code == 0, res.output
    assert "Sup3rSecretPw" not in res.output
    for path in [*out.rglob("*"), tmp_path / "metrics.prom"]:
        assert not path.is_file() or b"Sup3rSecretPw" not in path.read_bytes(), path
    manifest = json.loads((out / "_manifest.json").read_text())
    assert "http://***@127.0.0.1" in manifest["attempts"][0]["command"]
    res = invoke("status", out, "--json")
    assert "Sup3rSecretPw" not in res.output


@pytest.mark.parametrize(("make", "says"), [(os.mkfifo, "not a regular file"),
                                            (lambda p: os.symlink(p.name, p), "Too many levels of symbolic links")])
def test_a_fifo_or_a_link_loop_in_an_input_folder_is_an_error_row_not_a_hang(tmp_path, make, says):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", lines(3))
    make(tmp_path / "in" / "b.jsonl")
    res = cli("run", tmp_path / "in", "-o", tmp_path / "out", *FAKE, timeout=60)
    assert res.returncode == 0, res.stderr
    df = read_output(tmp_path / "out")
    errors = df.filter(df["error"].is_not_null())["error"].to_list()
    assert df.height == 4 and len(errors) == 1 and errors[0]["code"] == "unreadable_file"
    assert says in errors[0]["message"]


# ---- one writer across pid namespaces and clocks ----------------------------------------------------
def free_pid():
    """A pid that no process outside a new pid namespace has now."""
    limit = int(Path("/proc/sys/kernel/pid_max").read_text())
    return next(
        p
        for p in range(limit - 200, 300, -1)
        if not Path(f"/proc/{p}").exists() and not Path(f"/proc/{p + 1}").exists()
    )


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_a_live_run_in_another_pid_namespace_keeps_its_lease(tmp_path, hold):
    """Same host name and boot, another pid namespace (a container with the host's network): the
    holder's pid means nothing here, so the second run must not take over a live run."""
    n = 40
    src = write_jsonl(tmp_path / "in.jsonl", lines(n))
    out = tmp_path / "out"
    run = shlex.join([sys.executable, "-m", "pipeline", "run", str(src), "-o", str(out), *FAKE,  # held after
                      "--checkpoint-every", "5", "--max-in-flight", "4", *hold.options()])  # a part, till looked at
    # its pid there is one that is free here (the next after ns_last_pid)
    script = f"echo {free_pid()} > /proc/sys/kernel/ns_last_pid; {run}; exit $?"
    first = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_commit(out, first)
    holder = json.loads(max((out / "_lease").glob("*.json")).read_text())
    assert not Path(f"/proc/{holder['pid']}").exists()  # the test means something
    second = cli("run", src, "-o", out, *FAKE)
    assert second.returncode == 3 and "being written by another run" in second.stderr, second.stderr
    hold.release()
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stdout + stderr
    df = read_output(out)
    assert df.height == n and df["custom_id"].n_unique() == n


def test_a_holder_whose_clock_is_behind_is_not_taken_for_dead(tmp_path, hold):
    """Run A on "another host" whose clock is 120 s behind; run B here while A runs must see a
    live run (exit 3), and A must finish (exit 0). A is held after its first part until B has
    looked, so B meets it running whatever the machine's load."""
    n = 160
    src = write_jsonl(tmp_path / "in.jsonl", lines(n))
    out = tmp_path / "out"
    skewed = ("import socket, sys, time; real = time.time; time.time = lambda: real() - 120; "
              "socket.gethostname = lambda: 'other-host'; sys.argv[0] = 'pipeline'; "
              "from pipeline.cli import main; main()")
    first = subprocess.Popen([sys.executable, "-c", skewed, "run", str(src), "-o", str(out), *FAKE,
                              "--checkpoint-every", "5", "--max-in-flight", "4", *hold.options()],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_commit(out, first)
    second = cli("run", src, "-o", out, *FAKE)
    assert second.returncode == 3 and "on other-host" in second.stderr, second.stderr
    hold.release()
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stdout + stderr
    assert read_output(out)["custom_id"].n_unique() == n


# ---- full and read-only disks, damaged and edited output folders -----------------------------------
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")


def in_mount_namespace(script: str) -> str:
    """Run a shell script in a mount namespace of its own (tmpfs mounts vanish with it)."""
    res = subprocess.run(["unshare", "--mount", "sh", "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=180)
    return res.stdout + res.stderr


@needs_root
def test_a_full_disk_at_lease_creation_leaves_no_lease_behind(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", lines(3))
    disk = tmp_path / "disk"
    disk.mkdir()
    run = shlex.join([sys.executable, "-m", "pipeline", "run", str(src), "-o", str(disk / "out"), *FAKE])
    got = in_mount_namespace(
        f"mount -t tmpfs -o size=64k tmpfs {disk}; mkdir -p {disk}/out/_lease {disk}/out/_commits; "
        f"dd if=/dev/zero of={disk}/fill bs=1k 2>/dev/null; {run}; echo first=$?; "
        f"ls -A {disk}/out/_lease; rm {disk}/fill; {run}; echo second=$?")
    assert "first=3" in got and "second=0" in got, got
    assert "1.json" not in got.split("first=3")[1].split("second=")[0].split("requests:")[0], got
    assert "Traceback" not in got and "another run" not in got


@needs_root
def test_a_new_output_folder_on_a_read_only_disk_is_a_clear_error(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", lines(3))
    disk = tmp_path / "disk"
    disk.mkdir()
    run = shlex.join([sys.executable, "-m", "pipeline", "run", str(src), "-o", str(disk / "out"), *FAKE])
    got = in_mount_namespace(f"mount -t tmpfs -o ro,size=64k tmpfs {disk}; {run}; echo rc=$?")
    assert "rc=3" in got and "Read-only file system" in got and "Traceback" not in got, got


@pytest.mark.parametrize("damage", ["empty", "missing", "cut"])
def test_report_on_a_damaged_committed_part_is_a_clear_error(tmp_path, damage):
    src = write_jsonl(tmp_path / "in.jsonl", lines(30))
    out = tmp_path / "out"
    assert invoke("run", src, "-o", out, *FAKE).exit_code == 0
    part = next(out.glob("part-*.parquet"))
    if damage == "missing":
        part.unlink()
    else:
        part.write_bytes(part.read_bytes()[:500] if damage == "cut" else b"")
    res = CliRunner().invoke(cli_group(), ["report", str(out)])
    assert res.exit_code == 1 and res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert f"committed part {part}" in res.output and "changed by something else" in res.output


@pytest.mark.parametrize(("name", "content"), [
    ("_lease/1.json", {"heartbeat": None, "started": "x", "timeout": "soon", "pid": "?", "host": 3}),
    ("_commits/{attempt}-00001.json", {}),
    ("_manifest.json", None),  # "attempts": null
])
def test_hand_edited_lease_commit_and_manifest_files_give_clear_errors(tmp_path, name, content):
    src = write_jsonl(tmp_path / "in.jsonl", lines(3))
    out = tmp_path / "out"
    assert invoke("run", src, "-o", out, *FAKE).exit_code == 0
    (out / "_SUCCESS").unlink()
    manifest = json.loads((out / "_manifest.json").read_text())
    if name == "_manifest.json":
        manifest["attempts"] = None
        content = manifest
    (out / name.format(attempt=manifest["attempts"] and manifest["attempts"][0]["id"])).write_text(json.dumps(content))
    for args in (["status", out], ["run", src, "-o", out, *FAKE]):
        res = CliRunner().invoke(cli_group(), [str(a) for a in args])
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        if name.startswith("_lease"):  # held until it is older than the timeout
            assert args[0] == "status" or (res.exit_code == 3 and "pid ? on 3, started ?" in res.output), res.output
        else:
            assert res.exit_code == 1 and "changed by something else" in res.output, res.output


def cli_group():
    from pipeline.cli import cli as group

    return group


def test_a_signal_while_an_engine_starts_leaves_no_engine_behind(tmp_path):
    """The signal lands the moment a worker process has started: the worker must be stopped
    with the run, never left waiting for work while the run waits for it at exit."""
    script = """
import multiprocessing.context, os, signal, sys
from pipeline import exits
from pipeline.engines.base import EngineSpec
from pipeline.engines.local import LocalPool

start = multiprocessing.context.SpawnProcess.start
def start_then_signal(self):
    start(self)
    os.kill(os.getpid(), signal.SIGTERM)
multiprocessing.context.SpawnProcess.start = start_then_signal
exits.install_handlers()
try:
    LocalPool(EngineSpec("fake", "smollm2"), [{}])
except exits.Interrupted:
    print("interrupted", multiprocessing.active_children())
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "interrupted []" in res.stdout, res.stdout + res.stderr

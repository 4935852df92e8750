"""`pipeline status DIR` for a running, a killed and a finished job."""

import json
import signal

from conftest import invoke, wait_for_commit, write_jsonl
from test_exactly_once import cli, lines, slow_run


def test_status_of_running_stopped_and_complete_jobs(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", lines(60))
    out = tmp_path / "out"
    proc = slow_run(src, out, delay="0.3")  # 4 s of work after the first commit: still running when asked
    wait_for_commit(out, proc)
    res = invoke("status", out)
    assert res.exit_code == 3 and "running" in res.output and f"pid {proc.pid}" in res.output
    assert "of 60" in res.output
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = invoke("status", out, "--json")
    s = json.loads(res.output)
    assert res.exit_code == 3 and s["state"] == "stopped" and s["writer"] is None
    assert 0 < s["rows_committed"] < 60 and s["rows_total"] == 60 and s["parts"] >= 1
    assert s["command"].startswith("pipeline run ") and "--engine fake" in s["command"]
    text = invoke("status", out).output
    assert "finish it with: pipeline run" in text
    done = cli(*s["command"].split()[1:])  # the printed command finishes the job
    assert done.returncode == 0, done.stderr
    res = invoke("status", out)
    assert res.exit_code == 0 and "complete" in res.output and "rows committed: 60 of 60" in res.output


def test_status_of_a_folder_without_a_job(tmp_path):
    res = invoke("status", tmp_path)
    assert res.exit_code == 1 and "holds no job" in res.output

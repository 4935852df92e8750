"""Issue 32: identical prompts with sampling go to the engine as one request with `n`
(engines/sampled.py); each row keeps its id, its own n choices, usage and cost as if sent alone;
the report says how many rows were merged; --no-identical-once sends each row; an engine error
on the merged request is each member's error row; a killed run's rerun ends every line as
exactly one row."""

import json
import signal
import subprocess
import sys

import pytest
from conftest import REPO, chat_line, invoke, read_output, wait_for_commit, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q", "--price-input", "1", "--price-output", "2"]


def workload(prompts=3, copies=4):
    """prompts x copies sampled rows (the first copy of each asks n=2), and one greedy row."""
    rows = [chat_line(f"p{p}-{c}", f"sampled question {p} " + "word " * p, temperature=0.8, max_tokens=5,
                      **({"n": 2} if c == 0 else {}))
            for p in range(prompts) for c in range(copies)]
    return rows + [chat_line("greedy", "greedy question", temperature=0, max_tokens=5)]


def run(tmp_path, name, *extra):
    src = write_jsonl(tmp_path / "in.jsonl", workload())
    out, log = tmp_path / name, tmp_path / f"{name}.log"
    res = invoke("run", src, "-o", out, *FAKE, "--engine-option", f"log_file={log}", *extra)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "_report.json").read_text())
    return read_output(out).sort("custom_id"), report, log.read_text().split()


def test_sampled_copies_go_as_one_request_with_n_and_each_row_keeps_its_own(tmp_path):
    df, report, sent = run(tmp_path, "merged")
    off, off_report, off_sent = run(tmp_path, "off", "--no-identical-once")
    assert sorted(sent) == ["greedy", "p0-0", "p1-0", "p2-0"]  # 3 prompts x 4 copies: 3 requests
    assert len(off_sent) == 13 and off_report["identical"]["sampled_rows_merged"] == 0
    assert report["identical"]["sampled_rows_merged"] == 12
    assert report["identical"]["sampled_merged_requests"] == 3
    per_row = df.select("custom_id", "prompt_tokens").rows()
    saved = sum(tokens * 3 for cid, tokens in per_row if cid.endswith("-0") and cid != "greedy")
    assert report["identical"]["sampled_prompt_tokens_sent_once"] == saved
    assert df.height == off.height == 13 and df["error"].is_null().all()
    assert [len(c) for c in df["choices"]] == [len(c) for c in off["choices"]]  # each row its own n
    assert [len(c) for c in df.filter(df["custom_id"].str.starts_with("p1-"))["choices"]] == [2, 1, 1, 1]
    for column in ("prompt_tokens", "completion_tokens", "estimated_cost", "content", "source_line"):
        assert df[column].to_list() == off[column].to_list(), column  # billed as each row alone
    assert report["prompt_tokens"] == off_report["prompt_tokens"] == df["prompt_tokens"].sum()
    assert report["completion_tokens"] == off_report["completion_tokens"]


def test_an_engine_death_on_the_merged_request_is_each_member_rows_error(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", workload())
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, *FAKE, "--engine-option", 'die_on=["p1-0"]')  # the merged request's id
    assert res.exit_code == 0, res.output
    df = read_output(out)
    assert df.height == 13 and df["custom_id"].n_unique() == 13
    crashed = df.filter(df["error"].is_not_null())
    assert sorted(crashed["custom_id"].to_list()) == ["p1-0", "p1-1", "p1-2", "p1-3"]
    assert {e["code"] for e in crashed["error"]} == {"engine_crash"}


@pytest.mark.parametrize("order", ["input", "prefix"])
def test_a_killed_run_with_merged_rows_ends_each_line_as_one_row(tmp_path, order, hold):
    rows = [chat_line(f"p{p}-{c}", f"sampled question {p}", temperature=0.8, max_tokens=5)
            for c in range(4) for p in range(15)]  # copies 15 lines apart in input order
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "run", str(src), "-o", str(out), *FAKE, "--order", order,
           "--checkpoint-every", "3", "--max-in-flight", "2", *hold.options(after=3)]  # killed mid-run
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_commit(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = read_output(out).height
    assert 0 < first < 60
    res = invoke("run", src, "-o", out, *FAKE, "--order", order)
    assert res.exit_code == 0, res.output
    df = read_output(out)
    assert sorted(df["custom_id"].to_list()) == sorted(r["custom_id"] for r in rows)
    assert df["error"].is_null().all() and all(len(c) == 1 for c in df["choices"])
    report = json.loads((out / "_report.json").read_text())
    assert report["identical"]["sampled_rows_merged"] > 0

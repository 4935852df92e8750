"""--repair on the fake engine (it echoes the last message, cut at max_tokens): each repair path,
attempts and sums, never the identical request twice, and a kill in the middle of repairs."""

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import REPO, chat_line, committed_records, invoke, read_output, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]
EIGHT = "one two three four five six seven eight"
SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


def rows_of(out):
    return {r["custom_id"]: r for r in read_output(out).to_dicts()}


def sent(log):
    return Counter(log.read_text().split())


def test_truncated_rows_get_more_room_until_they_fit(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("long", EIGHT, max_tokens=2), chat_line("short", "hi")])
    log = tmp_path / "log"
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--repair", "truncated", "--repair-attempts", "3",
                 "--engine-option", f"log_file={log}")
    assert res.exit_code == 0, res.output
    rows = rows_of(tmp_path / "out")
    long = rows["long"]
    assert long["verdict"] == "ok" and long["content"] == EIGHT
    assert [a["verdict"] for a in long["attempts"]] == ["truncated", "truncated", "ok"]
    assert [a["change"] for a in long["attempts"]] == ["first", "max_tokens 2 -> 4", "max_tokens 4 -> 8"]
    assert long["completion_tokens"] == 2 + 4 + 8  # usage adds up over attempts
    assert long["prompt_tokens"] == 3 * long["attempts"][0]["prompt_tokens"]
    assert long["estimated_cost"] == sum(a["estimated_cost"] for a in long["attempts"])
    assert rows["short"]["attempts"] is None and rows["short"]["verdict"] == "ok"
    assert sent(log) == {"long": 3, "short": 1}
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert (report["repaired_rows"], report["repaired_ok"], report["repair_attempts"]) == (1, 1, 2)
    assert report["repairs_sent"] == {"truncated": 2} and report["state"] == "succeeded"
    assert report["completion_tokens"] == 14 + 1
    assert "repairs: 1 rows run again (2 extra attempts), 1 of them ok now" in res.output


def test_room_stops_at_the_cap_and_attempts_at_their_bound(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("long", EIGHT, max_tokens=2)])
    assert invoke("run", src, "-o", tmp_path / "a", *FAKE, "--repair", "truncated",
                  "--repair-max-tokens", "3").exit_code == 0
    long = rows_of(tmp_path / "a")["long"]
    assert [a["change"] for a in long["attempts"]] == ["first", "max_tokens 2 -> 3"]
    assert long["verdict"] == "truncated"  # 3 is the cap: no request with more room, none the same
    assert invoke("run", src, "-o", tmp_path / "b", *FAKE, "--repair", "truncated").exit_code == 0
    assert len(rows_of(tmp_path / "b")["long"]["attempts"]) == 3  # the default: 2 extra attempts


def test_empty_rows_run_with_another_seed(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("empty", "")])
    assert invoke("run", src, "-o", tmp_path / "out", *FAKE, "--repair", "empty").exit_code == 0
    row = rows_of(tmp_path / "out")["empty"]
    assert row["verdict"] == "empty"  # the echo stays empty: every seed was tried, each once
    assert [a["change"] for a in row["attempts"]] == ["first", "seed 1", "seed 3"]


def test_unparsable_and_failed_check_rows_get_a_repair_turn(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("json", "not json", response_format=SCHEMA, max_tokens=100),
                                               chat_line("check", "goodbye", max_tokens=100)])
    log = tmp_path / "log"
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--repair", "unparsable,failed_check",
                 "--check-regex", "hello", "--repair-attempts", "1", "--engine-option", f"log_file={log}")
    assert res.exit_code == 0, res.output
    rows = rows_of(tmp_path / "out")
    # the fake engine echoes the repair turn, which quotes the problem: still not JSON
    assert [a["change"] for a in rows["json"]["attempts"]] == ["first", "repair turn quoting the unparsable"]
    assert rows["json"]["content"].startswith("That answer cannot be used (unparsable: not JSON:")
    assert rows["check"]["verdict"] == "failed_check" and rows["json"]["verdict"] == "unparsable"
    assert rows["check"]["attempts"][1]["change"] == "repair turn quoting the failed_check"
    assert sent(log) == {"json": 2, "check": 2}


def test_verdicts_not_listed_are_not_repaired(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("long", EIGHT, max_tokens=2), chat_line("empty", "")])
    log = tmp_path / "log"
    assert invoke("run", src, "-o", tmp_path / "out", *FAKE, "--repair", "unparsable",
                  "--engine-option", f"log_file={log}").exit_code == 0
    assert sent(log) == {"long": 1, "empty": 1}
    res = invoke("run", src, "-o", tmp_path / "o2", *FAKE, "--repair", "error,truncated")
    assert res.exit_code == 1 and "--repair error: the verdicts that can be repaired are truncated" in res.output


def unique_eight(i):
    """Eight words, the first the row's own: no two rows are identical requests (identical sampled
    ones would go as one request with n, engines/sampled.py, and the engine's log counts requests)."""
    return " ".join([f"r{i:02}", *EIGHT.split()[1:]])


def held_rows(out):
    """The rows a killed run held for a repair, by custom_id (line n is r{n-1}), as a rerun sees them."""
    from pipeline.output.folder import Output
    from pipeline.storage import Location

    pending = Output(Location.of(str(out))).read_state().pending
    return {f"r{line - 1:02}": entry for (_, line), entry in pending.items()}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_kill_in_the_middle_of_repairs_resumes_them_once(tmp_path, sig):
    n = 24
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i:02}", unique_eight(i), max_tokens=1) for i in range(n)])
    out, log = tmp_path / "out", tmp_path / "log"
    args = [*FAKE, "--repair", "truncated", "--repair-attempts", "3", "--checkpoint-every", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(src), "-o", str(out), *args,
                             "--max-in-flight", "2", "--engine-option", "step_delay=0.2",
                             "--engine-option", f"log_file={log}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (
            sum(r["rows"] for r in committed_records(out))
            and held_rows(out)
            and any(c in (2, 3) for c in sent(log).values())
        ):
            break  # rows committed, and others in the middle of their repairs, their attempts committed
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == (3 if sig == signal.SIGTERM else -9), stderr
    done, held = set(rows_of(out)), held_rows(out)
    assert 0 < len(done) < n and held and not set(held) & done
    log.unlink()
    res = invoke("run", src, "-o", out, *args, "--engine-option", f"log_file={log}")
    assert res.exit_code == 0, res.output
    rows = rows_of(out)
    assert read_output(out).height == n and set(rows) == {f"r{i:02}" for i in range(n)}  # one row per line
    again = sent(log)
    assert not set(again) & done  # committed rows are never run again
    for cid in set(rows) - done:  # held rows go on from their next attempt; the others start again
        assert again[cid] == 4 - len(held[cid]["attempts"]) if cid in held else again[cid] == 4, cid
    assert any(again[cid] < 4 for cid in held)  # some repairs were not redone
    chain = ["first", "max_tokens 1 -> 2", "max_tokens 2 -> 4", "max_tokens 4 -> 8"]
    for row in rows.values():
        assert [a["change"] for a in row["attempts"]] == chain and row["verdict"] == "ok"
        assert [a["completion_tokens"] for a in row["attempts"]] == [1, 2, 4, 8]
        assert row["completion_tokens"] == 15  # usage adds up over every attempt, the killed run's too
    for cid, entry in held.items():  # the killed run's attempts are the row's first ones
        assert rows[cid]["attempts"][: len(entry["attempts"])] == entry["attempts"]
    report = json.loads((out / "_report.json").read_text())
    assert report["repair_attempts"] == 3 * n and report["completion_tokens"] == 15 * n


def test_a_json_check_repair_of_a_request_without_response_format_adds_the_json_grammar(tmp_path):
    (tmp_path / "obj.json").write_text(json.dumps({"type": "object"}))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("plain", "not json", max_tokens=100),
                                               chat_line("tools", "not json", max_tokens=100, tools=tools),
                                               chat_line("fmt", "not json", max_tokens=100, response_format=SCHEMA)])
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--repair", "failed_check,unparsable",
                 "--check-schema", tmp_path / "obj.json", "--repair-attempts", "1")
    assert res.exit_code == 0, res.output
    rows = rows_of(tmp_path / "out")
    plain = rows["plain"]
    assert plain["attempts"][0]["verdict"] == "failed_check" and "not JSON" in plain["attempts"][0]["verdict_message"]
    assert plain["attempts"][1]["change"] == "repair turn quoting the failed_check, with a JSON grammar"
    # the fake engine echoes the turn, not JSON: judged against the repaired request's json_object
    assert plain["verdict"] == "unparsable"
    assert rows["tools"]["attempts"][1]["change"] == "repair turn quoting the failed_check"  # tools: no grammar
    assert rows["fmt"]["attempts"][1]["change"] == "repair turn quoting the unparsable"  # its own format stays
    regex = invoke("run", src, "-o", tmp_path / "re", *FAKE, "--repair", "failed_check", "--check-regex", "x",
                   "--repair-attempts", "1")
    assert regex.exit_code == 0
    assert rows_of(tmp_path / "re")["plain"]["attempts"][1]["change"] == "repair turn quoting the failed_check"


def test_refused_rows_run_with_another_seed_and_a_turn_asking_for_the_answer(tmp_path):
    src = write_jsonl(
        tmp_path / "in.jsonl", [chat_line("no", "I'm sorry, but I can't help with that.", max_tokens=100)]
    )
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--repair", "refused")
    assert res.exit_code == 0, res.output
    row = rows_of(tmp_path / "out")["no"]
    assert [a["verdict"] for a in row["attempts"]] == ["refused", "ok"]  # the fake engine echoes the turn
    assert row["attempts"][1]["change"] == "seed 1 and a repair turn"
    assert row["content"].startswith("That answer declined the request.")
    assert json.loads((tmp_path / "out" / "_report.json").read_text())["repairs_sent"] == {"refused": 1}

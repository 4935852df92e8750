"""Verdicts, the job's state and --max-bad-rows, end to end on the fake engine (which echoes the
last message back, cut at max_tokens)."""

import json

from conftest import chat_line, invoke, read_output, write_jsonl

from pipeline import exits

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]
SCHEMA = {"type": "object", "properties": {"label": {"type": "string", "enum": ["pos", "neg"]}},
          "required": ["label"]}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "label", "schema": SCHEMA, "strict": True}}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def every_verdict(tmp_path):
    """One line per verdict a request file can earn (the row check's aside)."""
    return write_jsonl(tmp_path / "in.jsonl", [
        chat_line("ok", "hello there"),
        chat_line("truncated", "one two three four five six", max_tokens=3),
        chat_line("empty", ""),
        chat_line("unparsable", "label: pos", response_format=JSON_SCHEMA),
        chat_line("schema_mismatch", '{"label": "maybe"}', response_format=JSON_SCHEMA),
        chat_line("json_ok", '{"label": "pos"}', response_format=JSON_SCHEMA),
        chat_line("invalid_tool_call", "call it", tools=TOOLS, tool_choice="required"),
        chat_line("refused", "I'm sorry, but I can't help with that."),
        "{not json",  # an error row
    ])


def verdicts_of(out):
    df = read_output(out)
    return {r["custom_id"]: r["verdict"] for r in df.to_dicts()}, df


def test_every_row_has_its_verdict(tmp_path):
    res = invoke("run", every_verdict(tmp_path), "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    got, df = verdicts_of(tmp_path / "out")
    error_id = next(k for k in got if k not in {"ok", "truncated", "empty", "unparsable", "schema_mismatch",
                                                "json_ok", "invalid_tool_call", "refused"})
    assert got == {"ok": "ok", "truncated": "truncated", "empty": "empty", "unparsable": "unparsable",
                   "schema_mismatch": "schema_mismatch", "json_ok": "ok", "invalid_tool_call": "invalid_tool_call",
                   "refused": "refused", error_id: "error"}
    messages = {r["custom_id"]: r["verdict_message"] for r in df.to_dicts()}
    assert messages["ok"] is None and "max_tokens (3)" in messages["truncated"]
    assert "'maybe' is not one of ['pos', 'neg']" in messages["schema_mismatch"]
    assert "at label" in messages["schema_mismatch"]
    assert "tool_choice required" in messages["invalid_tool_call"]


def test_counts_and_state_in_report_summary_and_metrics(tmp_path):
    prom = tmp_path / "m.prom"
    res = invoke(
        "run", every_verdict(tmp_path), "-o", tmp_path / "out", *FAKE, "--metrics-file", prom, "--job-name", "j"
    )
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["verdicts"] == {"ok": 2, "truncated": 1, "empty": 1, "unparsable": 1, "schema_mismatch": 1,
                                  "invalid_tool_call": 1, "refused": 1, "error": 1}
    assert (report["state"], report["ok_rows"], report["bad_rows"]) == ("partially_succeeded", 2, 7)
    assert "job partially_succeeded: 2 rows ok, 7 not (ok 2, truncated 1," in res.output
    text = prom.read_text()
    assert 'pipeline_rows_by_verdict{job_name="j",verdict="truncated"} 1' in text
    assert 'pipeline_job_state{job_name="j",state="partially_succeeded"} 1' in text
    assert 'pipeline_job_state{job_name="j",state="succeeded"} 0' in text


def test_all_ok_succeeds_and_none_ok_fails(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [chat_line(f"r{i}", "hi") for i in range(3)])
    assert invoke("run", good, "-o", tmp_path / "a", *FAKE).exit_code == 0
    assert json.loads((tmp_path / "a" / "_report.json").read_text())["state"] == "succeeded"
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat_line(f"r{i}", "a b c d", max_tokens=1) for i in range(3)])
    assert invoke("run", bad, "-o", tmp_path / "b", *FAKE).exit_code == 0  # no --max-bad-rows: no alarm
    assert json.loads((tmp_path / "b" / "_report.json").read_text())["state"] == "failed"


def test_max_bad_rows_exits_5_with_every_row_written(tmp_path):
    src = every_verdict(tmp_path)
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--max-bad-rows", "6")
    assert res.exit_code == exits.TOO_MANY_BAD_ROWS == 5
    assert "7 of 9 rows are not ok" in res.output and "more than --max-bad-rows 6" in res.output
    assert (tmp_path / "out" / "_SUCCESS").exists() and read_output(tmp_path / "out").height == 9
    again = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--max-bad-rows", "6")  # complete: same verdict
    assert again.exit_code == 5 and "already complete" in again.output
    assert invoke("run", src, "-o", tmp_path / "out", *FAKE, "--max-bad-rows", "7").exit_code == 0
    assert invoke("run", src, "-o", tmp_path / "out", *FAKE, "--max-bad-rows", "80%").exit_code == 0
    assert invoke("run", src, "-o", tmp_path / "out", *FAKE, "--max-bad-rows", "75%").exit_code == 5


def test_max_bad_rows_from_a_job_file_and_malformed(tmp_path):
    src = every_verdict(tmp_path)
    job = tmp_path / "job.yaml"
    job.write_text(f"inputs: [{src}]\noutput: {tmp_path / 'out'}\nmax_bad_rows: 10%\nengine: fake\nmodel: smollm2\n")
    assert invoke("run", "--job", job, "-q").exit_code == 5
    res = invoke("run", src, "-o", tmp_path / "o2", *FAKE, "--max-bad-rows", "lots")
    assert res.exit_code == 1 and "--max-bad-rows takes a count (10) or a share of the rows (2.5%)" in res.output
    assert not (tmp_path / "o2").exists()


def test_status_and_report_page_show_verdicts(tmp_path):
    assert invoke("run", every_verdict(tmp_path), "-o", tmp_path / "out", *FAKE).exit_code == 0
    status = invoke("status", tmp_path / "out")
    assert "job partially_succeeded: 2 rows ok, 7 not (ok 2, truncated 1, empty 1," in status.output
    res = invoke("report", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "job partially_succeeded" in res.output and "schema_mismatch: schema_mismatch: at label:" in res.output
    page = (tmp_path / "out" / "_report.html").read_text()
    assert "Rows by verdict, with examples" in page and "job state" in page
    assert "is not one of [&#x27;pos&#x27;, &#x27;neg&#x27;]" in page  # the mismatch's message, escaped


def test_python_api_returns_the_report_and_raises_exit_5(tmp_path):
    import pytest

    import pipeline

    src = every_verdict(tmp_path)
    df, report = pipeline.run(str(src), output=str(tmp_path / "out"), engine="fake", model="smollm2", quiet=True,
                              with_report=True)
    assert report["state"] == "partially_succeeded" and report["verdicts"]["truncated"] == 1
    assert df.filter(df["custom_id"] == "refused")["verdict"].to_list() == ["refused"]
    with pytest.raises(exits.TooManyBadRows) as caught:
        pipeline.run(str(src), output=str(tmp_path / "out"), engine="fake", model="smollm2", quiet=True,
                     max_bad_rows="1")
    assert exits.code_of(caught.value) == 5 and caught.value.report["bad_rows"] == 7

"""The verdict of a row, judged on records alone (no engine)."""

import json

import pytest

from pipeline.records import Request
from pipeline.verdicts.judge import judge_row, mark
from pipeline.verdicts.state import MaxBadRows, job_state

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
FMT = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}]


def req(**kw):
    return Request.chat("id", "f.jsonl", 1, [{"role": "user", "content": "x"}], **kw)


def row(*choices):
    return {"error": None, "choices": [{"finish_reason": "stop", "tool_calls": None, **c} for c in choices]}


def call(name, arguments):
    return [{"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}]


@pytest.mark.parametrize("choice, request_kw, verdict", [
    ({"content": "fine"}, {}, "ok"),
    ({"content": "cut", "finish_reason": "length"}, {}, "truncated"),
    ({"content": "  \n"}, {}, "empty"),
    ({"content": None}, {}, "empty"),
    ({"content": "{'n': 1}"}, {"response_format": FMT}, "unparsable"),
    ({"content": '{"n": "one"}'}, {"response_format": FMT}, "schema_mismatch"),
    ({"content": '{"n": 1}'}, {"response_format": FMT}, "ok"),
    ({"content": "[1]"}, {"response_format": {"type": "json_object"}}, "schema_mismatch"),
    ({"content": '{"a": 1}'}, {"response_format": {"type": "json_object"}}, "ok"),
    ({"content": None, "tool_calls": call("add", '{"a": 1}')}, {"tools": TOOLS}, "ok"),
    ({"content": None, "tool_calls": call("sub", '{"a": 1}')}, {"tools": TOOLS}, "invalid_tool_call"),
    ({"content": None, "tool_calls": call("add", '{"a": ')}, {"tools": TOOLS}, "invalid_tool_call"),
    ({"content": None, "tool_calls": call("add", '{"a": "x"}')}, {"tools": TOOLS}, "invalid_tool_call"),
    ({"content": "no call"}, {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "add"}}},
     "invalid_tool_call"),
    ({"content": "no call"}, {"tools": TOOLS, "tool_choice": "auto"}, "ok"),
    ({"content": "I cannot help with that request."}, {}, "refused"),
    ({"content": "x", "refusal": "policy"}, {}, "refused"),
    ({"content": "The customer said: I'm sorry, but I can't come."}, {}, "ok"),
])
def test_each_verdict(choice, request_kw, verdict):
    assert judge_row(row(choice), req(**request_kw)).name == verdict


def test_error_rows_and_pooling_rows():
    assert judge_row({"error": {"code": "x", "message": "boom"}}, None).name == "error"
    assert judge_row({"error": None, "choices": None}, req(endpoint="embeddings")).name == "ok"


def test_several_choices_take_the_first_bad_one():
    v = judge_row(row({"content": "a"}, {"content": "", "finish_reason": "stop"}), req())
    assert (v.name, v.message) == ("empty", "choice 1: no content and no tool call")


def test_check_runs_on_otherwise_ok_rows_only():
    rows = mark([row({"content": "short"})], req(), check=lambda r: "too short")
    assert (rows[0]["verdict"], rows[0]["verdict_message"]) == ("failed_check", "too short")
    cut = mark([row({"content": "x", "finish_reason": "length"})], req(), check=lambda r: "too short")
    assert cut[0]["verdict"] == "truncated"
    raised = mark([row({"content": "x"})], req(), check=lambda r: 1 / 0)
    assert raised[0]["verdict_message"] == "ZeroDivisionError: division by zero"
    assert mark([row({"content": "x"})], req(), check=lambda r: False)[0]["verdict"] == "failed_check"
    assert mark([row({"content": "x"})], req(), check=lambda r: True)[0]["verdict"] == "ok"


def test_state_and_bound():
    assert job_state({"requests": 0, "verdicts": {}})["state"] == "succeeded"
    assert job_state({"requests": 4, "verdicts": {"ok": 4}})["state"] == "succeeded"
    assert job_state({"requests": 4, "verdicts": {"ok": 1, "empty": 3}})["state"] == "partially_succeeded"
    assert job_state({"requests": 4, "verdicts": {"error": 4}})["state"] == "failed"
    assert job_state({"requests": 4, "succeeded": 4})["state"] == "succeeded"  # parts from before verdicts
    report = {"requests": 200, "verdicts": {"ok": 195, "truncated": 5}}
    assert MaxBadRows.parse("5").exceeded(report) is None
    assert "5 of 200 rows are not ok (truncated: 5)" in MaxBadRows.parse("4").exceeded(report)
    assert MaxBadRows.parse("2.5%").exceeded(report) is None and MaxBadRows.parse("2%").exceeded(report)
    for bad in ("-1", "x", "101%", "1.5"):
        with pytest.raises(ValueError, match="--max-bad-rows takes"):
            MaxBadRows.parse(bad)
    assert json.dumps(job_state(report))  # plain JSON for _report.json

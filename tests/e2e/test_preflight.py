"""Schema preflight with xgrammar (the structured-output backend vLLM uses), on the fake engine:
a schema that does not compile, or not in time, gives its rows error rows; each schema is compiled
once; the report has compile times and grammar sizes. Skipped where xgrammar is not installed."""

import json
import time

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

pytest.importorskip("xgrammar")

FAKE = ["--engine", "fake", "-m", "smollm2", "-q", "--schema-preflight"]


def fmt(schema, name="s"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


GOOD = fmt({"type": "object", "properties": {"a": {"type": "integer"}}}, "good")
BAD = fmt({"type": "object", "properties": {"a": {"type": "strin"}}}, "typo")
TOOL = [{"type": "function", "function": {"name": "look", "parameters": {
    "type": "object", "properties": {"q": {"type": "string", "pattern": "(?<=a)b"}}}}}]


def test_failing_schemas_give_error_rows_and_the_report_has_each_schema_once(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        chat_line("g1", '{"a": 1}', response_format=GOOD), chat_line("g2", '{"a": 2}', response_format=GOOD),
        chat_line("b1", "x", response_format=BAD), chat_line("b2", "y", response_format=BAD),
        chat_line("t1", "z", tools=TOOL, tool_choice="required"), chat_line("plain", "hi")])
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert {k for k, r in rows.items() if r["error"]} == {"b1", "b2", "t1"}
    assert rows["b1"]["error"]["code"] == "schema_preflight_failed" and rows["b1"]["verdict"] == "error"
    assert "the response_format schema 'typo'" in rows["b1"]["error"]["message"]
    assert 'Unsupported type "strin"' in rows["b1"]["error"]["message"]
    assert "the tool schema 'look'" in rows["t1"]["error"]["message"] and "Lookbehind" in rows["t1"]["error"]["message"]
    assert rows["g1"]["verdict"] == "ok" and rows["plain"]["verdict"] == "ok"
    pre = json.loads((tmp_path / "out" / "_report.json").read_text())["preflight"]
    assert pre["backend"] == "xgrammar"
    schemas = {s["name"]: s for s in pre["schemas"]}
    assert set(schemas) == {"good", "typo", "look"}  # each distinct schema compiled once
    assert schemas["typo"]["rows_refused"] == 2 and schemas["good"]["rows_refused"] == 0
    assert schemas["good"]["grammar_size"] > 0 and schemas["good"]["seconds"] >= 0


def never_answers(conn, tokenizer):
    """A compiler process whose compile never ends (a pathological schema), without timing luck."""
    conn.send(("ready", None))
    time.sleep(600)


def test_a_schema_past_the_timeout_fails_its_rows(tmp_path, monkeypatch):
    from pipeline.verdicts import preflight

    monkeypatch.setattr(preflight, "_serve", never_answers)
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("g", '{"a": 1}', response_format=GOOD),
                                               chat_line("h", '{"a": 1}', response_format=GOOD)])
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--schema-timeout", "0.5")
    assert res.exit_code == 0, res.output
    rows = read_output(tmp_path / "out").to_dicts()
    assert [r["error"]["code"] for r in rows] == ["schema_preflight_failed"] * 2  # compiled (and waited for) once
    assert "compiling took longer than --schema-timeout 0.5 s" in rows[0]["error"]["message"]


def test_validate_and_estimate_name_the_failing_schemas_and_the_repair_budget(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("g", "x", response_format=GOOD, max_tokens=10),
                                               chat_line("b", "y", response_format=BAD, max_tokens=10)])
    res = invoke("validate", src)
    assert res.exit_code == 1
    assert "1 valid, 1 invalid" in res.output and "schema_preflight_failed" in res.output
    assert "schema failed preflight: response_format 'typo'" in res.output and "1 rows" in res.output
    est = invoke("estimate", src, "-m", "smollm2", "--json", "--workers", "1", "--price-input", "1",
                 "--price-output", "1", "--repair", "truncated", "--repair-max-tokens", "25")
    assert est.exit_code == 0, est.output
    figures = json.loads(est.output[:est.output.rindex("}") + 1])
    assert figures["invalid"] == 1 and figures["preflight"]["schemas"][1]["error"]
    budget = figures["repair_budget"]
    # one valid request, 2 attempts: room 10 -> 20 -> 35 at most (10 + 1 x the cap 25)
    assert (budget["extra_requests_upper"], budget["extra_completion_tokens_upper"]) == (2, 20 + 35)
    assert budget["extra_prompt_tokens_upper"] == 2 * figures["prompt_tokens"]
    assert budget["extra_cost_usd_upper"] == (budget["extra_prompt_tokens_upper"] + 55) / 1e6
    table = invoke("estimate", src, "-m", "smollm2", "--workers", "1", "--repair", "truncated,unparsable",
                   "--no-schema-preflight")
    assert "repairs (--repair truncated,unparsable, 2 attempts): at most 4 more requests" in table.output


def compiled_at_first_request(monkeypatch) -> list:
    """The pre-pass's order among the run's steps, and what it compiled: the engines start, the
    pre-pass runs while they load, then the first request reaches an engine."""
    from pipeline.commands import run
    from pipeline.engines.dispatcher import Dispatcher

    steps = []
    start, prepass, submit = run.start_engines, run.preflight_all, Dispatcher._submit
    monkeypatch.setattr(run, "start_engines", lambda p: steps.append("engines started") or start(p))

    def after(p, *args):
        prepass(p, *args)
        steps.append(sorted(c.name for c in p.preflight.compiled.values()))

    def first(self, i, w, reqs):
        if "first request" not in steps:
            steps.append("first request")
        return submit(self, i, w, reqs)

    monkeypatch.setattr(run, "preflight_all", after)
    monkeypatch.setattr(Dispatcher, "_submit", first)
    return steps


def test_every_schema_is_compiled_before_any_request_reaches_an_engine(tmp_path, monkeypatch):
    at_start = compiled_at_first_request(monkeypatch)
    late = fmt({"type": "object", "properties": {"b": {"type": "string"}}}, "late")
    lines = [chat_line("g", '{"a": 1}', response_format=GOOD), *[chat_line(f"p{i}", "hi") for i in range(30)],
             chat_line("b", "x", response_format=BAD), chat_line("l", '{"b": "x"}', response_format=late)]
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    assert at_start == ["engines started", ["good", "late", "typo"], "first request"]  # the last line's too
    pre = json.loads((tmp_path / "out" / "_report.json").read_text())["preflight"]
    assert pre["prepass"]["requests"] == 33 and pre["prepass"]["schemas"] == 3 and not pre["prepass"]["capped"]
    assert {s["name"]: s["rows_refused"] for s in pre["schemas"]} == {"good": 0, "typo": 1, "late": 0}


@pytest.mark.parametrize("limit", ["CAP", "PREPASS_ROWS"])
def test_past_the_cap_schemas_are_compiled_as_their_requests_come_up(tmp_path, monkeypatch, limit):
    """Past the pre-pass's cap of schemas, or of rows read, a schema is compiled when its first
    request comes up, and its rows get the same verdict."""
    from pipeline.verdicts import preflight

    monkeypatch.setattr(preflight, limit, 1)
    at_start = compiled_at_first_request(monkeypatch)
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("g", '{"a": 1}', response_format=GOOD),
                                               chat_line("b", "x", response_format=BAD)])
    assert invoke("run", src, "-o", tmp_path / "out", *FAKE).exit_code == 0
    assert at_start == ["engines started", ["good"], "first request"]
    pre = json.loads((tmp_path / "out" / "_report.json").read_text())["preflight"]
    assert pre["prepass"]["rows_left"] == (limit == "PREPASS_ROWS"), pre["prepass"]
    assert {s["name"]: s["rows_refused"] for s in pre["schemas"]} == {"good": 0, "typo": 1}
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert rows["b"]["error"]["code"] == "schema_preflight_failed" and rows["g"]["verdict"] == "ok"
    assert pre["prepass"]["capped"] == (limit == "CAP") and len(pre["schemas"]) == 2
    assert (pre["prepass"]["cap"], pre["prepass"]["row_budget"]) == ((1, 1_000_000) if limit == "CAP" else (10_000, 1))


def test_check_regex_is_compiled_by_the_engine_backend_up_front(tmp_path, caplog):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "ab")])
    res = invoke("run", src, "-o", tmp_path / "bad", *FAKE, "--check-regex", "(?=a)ab")
    assert res.exit_code == 0, res.output
    said = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "--check-regex '(?=a)ab' failed preflight with the engine's structured-output backend (xgrammar)" in said
    assert "Lookahead is not supported yet; the check still runs with Python's re" in said
    assert read_output(tmp_path / "bad").to_dicts()[0]["verdict"] == "ok"  # Python's re still checks it
    pre = json.loads((tmp_path / "bad" / "_report.json").read_text())["preflight"]
    assert [(s["kind"], s["name"], bool(s["error"])) for s in pre["schemas"]] == [("check_regex", "(?=a)ab", True)]
    caplog.clear()
    res = invoke("run", src, "-o", tmp_path / "good", *FAKE, "--check-regex", "a[b-c]+")
    assert res.exit_code == 0 and not [r for r in caplog.records if "failed preflight" in r.getMessage()]
    regex = json.loads((tmp_path / "good" / "_report.json").read_text())["preflight"]["schemas"][0]
    assert regex["kind"] == "check_regex" and regex["error"] is None and regex["grammar_size"] > 0

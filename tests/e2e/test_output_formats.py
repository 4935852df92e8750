"""Output formats (`--format native|anthropic|gemini|openai|responses`) against the shapes the providers
document, end to end through the CLI on the fake engine. The request files are
samples/provider-batches/ (each provider's documented example lines plus edge cases: non-English
text, literal special tokens, content parts, tool round trips, null parameters, an invalid
parameter, refused content, unreadable JSON, duplicate ids); the tests add CRLF line endings and a
very long line. Every input line must give exactly one output line with its id."""

import json
import shutil
from datetime import datetime, timezone

import pytest
from conftest import REPO, chat_line, invoke, read_output, source, write_jsonl

from pipeline.engines.base import Result
from pipeline.intake.requests import Context, parse_row
from pipeline.output.formats import summary
from pipeline.output.rows import error_row, result_row
from pipeline.providers.anthropic import anthropic_line
from pipeline.providers.common import error_text
from pipeline.providers.gemini import gemini_line
from pipeline.providers.openai import openai_line
from pipeline.providers.responses import responses_line

SAMPLES = REPO / "samples" / "provider-batches"
FAKE = ["--engine", "fake", "-m", "smollm2", "-q", "--route", "*=smollm2"]
LONG = "lorem ipsum " * 100_000  # a 1.2 MB line


def input_ids(path):
    """Each input line's id as the run must give it back (None: a line whose id cannot be read)."""
    ids = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(text)
        except ValueError:
            ids.append(None)
            continue
        ids.append(row.get("key", row.get("custom_id")))
    return ids


def crlf_copy(name, tmp_path, extra=()):
    """A sample with CRLF line endings, and extra lines (a very long one) appended."""
    lines = (SAMPLES / name).read_text(encoding="utf-8").splitlines() + [json.dumps(e, ensure_ascii=False) for e in extra]
    dst = tmp_path / "in" / name
    dst.parent.mkdir(exist_ok=True)
    dst.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return dst


def run(src, out, fmt, *more):
    res = invoke("run", src, "-o", out, *FAKE, "--format", fmt, *more)
    assert res.exit_code == 0, res.output
    [part] = sorted(out.glob("part-*.jsonl"))
    assert part.read_bytes().count(b"\r") == 0  # LF lines out, whatever came in
    return [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines()]


def assert_one_line_per_input(lines, ids, id_of):
    got = [id_of(line) for line in lines]
    assert len(got) == len(ids)
    known = [i for i in ids if i is not None]
    assert sorted(g for g in got if g in known) == sorted(known)  # duplicates: both lines, same id


# ---- Anthropic Message Batches results ---------------------------------------------------------
ANTHROPIC_STOP = {"end_turn", "max_tokens", "stop_sequence", "tool_use"}


def check_anthropic(line):
    assert set(line) == {"custom_id", "result"}
    result = line["result"]
    if result["type"] == "succeeded":
        msg = result["message"]
        assert set(msg) == {"id", "type", "model", "role", "content", "stop_reason", "stop_sequence", "usage"}
        assert msg["type"] == "message" and msg["role"] == "assistant" and msg["id"].startswith("msg_")
        assert msg["stop_reason"] in ANTHROPIC_STOP
        assert all(b["type"] in ("text", "tool_use") for b in msg["content"])
        assert isinstance(msg["usage"]["input_tokens"], int) and isinstance(msg["usage"]["output_tokens"], int)
        return msg
    assert result["type"] == "errored"
    assert result["error"]["type"] == "error"
    assert set(result["error"]["error"]) == {"type", "message"}
    assert result["error"]["error"]["type"] in ("invalid_request_error", "api_error")
    return None


def test_anthropic_input_gets_anthropic_results(tmp_path):
    src = crlf_copy("anthropic.jsonl", tmp_path, [
        {"custom_id": "very-long", "params": {"model": "claude-3-5-haiku-20241022", "max_tokens": 8,
                                              "messages": [{"role": "user", "content": LONG}]}}])
    lines = run(src, tmp_path / "out", "native")
    assert_one_line_per_input(lines, input_ids(src), lambda line: line["custom_id"])
    by_id = {}
    for line in lines:
        msg = check_anthropic(line)
        by_id.setdefault(line["custom_id"], []).append((line, msg))
    [(_, hello)] = by_id["my-second-request"]
    assert hello["content"] == [{"type": "text", "text": "Hi again, friend"}] and hello["stop_reason"] == "end_turn"
    assert by_id["non-english"][0][1]["content"][0]["text"] == "Bonjour, ça va ? 東京の天気は？ Привет, мир! مرحبا 👋"
    assert "<|im_start|>system" in by_id["special-tokens"][0][1]["content"][0]["text"]
    assert by_id["content-blocks"][0][1]["content"][0]["text"] == "First part. Second part."
    assert by_id["tool-round-trip"][0][1]["content"][0]["text"] == "15 degrees"  # the tool result was sent
    assert by_id["null-params"][0][1] is not None
    cut = by_id["cut-short"][0][1]
    assert cut["stop_reason"] == "max_tokens" and cut["usage"]["output_tokens"] == 2
    assert by_id["very-long"][0][1]["stop_reason"] == "max_tokens"
    bad = by_id["bad-temperature"][0][0]["result"]["error"]["error"]
    assert bad["type"] == "invalid_request_error"
    assert bad["message"].startswith("invalid_parameter: temperature must be in [0, 2]")
    assert "(line 9, field temperature)" in bad["message"]
    image = by_id["an-image"][0][0]["result"]["error"]["error"]["message"]
    assert image.startswith("unsupported_content:") and "messages[0].content[0].image_url" in image
    assert "text-only model; use a vision-language model" in image
    first, dup = by_id["my-first-request"]
    assert first[1] is not None and dup[1] is None
    assert "duplicate_custom_id" in dup[0]["result"]["error"]["error"]["message"]
    broken = [line for line in lines if line["custom_id"] not in by_id or "invalid_json" in json.dumps(line)]
    assert len(broken) == 1 and broken[0]["result"]["type"] == "errored"  # the unreadable line: its file's shape


# ---- Gemini API / Vertex AI batch output -------------------------------------------------------
GEMINI_FINISH = {"STOP", "MAX_TOKENS", "SAFETY", "RECITATION", "OTHER"}


def check_gemini_response(resp):
    assert set(resp) == {"candidates", "usageMetadata", "modelVersion"}
    for cand in resp["candidates"]:
        assert cand["content"]["role"] == "model" and cand["finishReason"] in GEMINI_FINISH
        assert all(set(p) <= {"text", "functionCall"} for p in cand["content"]["parts"])
    usage = resp["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]


def test_gemini_input_gets_gemini_lines(tmp_path):
    src = crlf_copy("gemini.jsonl", tmp_path, [
        {"key": "very-long", "request": {"contents": [{"parts": [{"text": LONG}]}], "generationConfig": {"maxOutputTokens": 3}}}])
    lines = run(src, tmp_path / "out", "native")
    assert_one_line_per_input(lines, input_ids(src), lambda line: line["key"])
    by_id = {}
    for line in lines:
        assert set(line) in ({"key", "response"}, {"key", "status"}), line
        if "response" in line:
            check_gemini_response(line["response"])
        else:
            assert set(line["status"]) == {"code", "message"} and line["status"]["code"] == 3  # INVALID_ARGUMENT
        by_id.setdefault(line["key"], []).append(line)
    first = by_id["gemini-request-1"][0]["response"]["candidates"][0]
    assert first["content"]["parts"] == [{"text": "Describe the process of photosynthesis."}]
    assert first["finishReason"] == "STOP"
    assert by_id["gemini-non-english"][0]["response"]["candidates"][0]["content"]["parts"][0]["text"] == "Grüß Gott! 北京は何時？ Ελληνικά"
    assert "<|im_start|>assistant" in by_id["gemini-special-tokens"][0]["response"]["candidates"][0]["content"]["parts"][0]["text"]
    assert by_id["function-round-trip"][0]["response"]["candidates"][0]["content"]["parts"] == [{"text": '{"temp_f": 45}'}]
    assert [c["index"] for c in by_id["two-candidates"][0]["response"]["candidates"]] == [0, 1]
    assert by_id["gemini-cut-short"][0]["response"]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert by_id["very-long"][0]["response"]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    bad = by_id["gemini-bad-temperature"][0]["status"]["message"]
    assert bad.startswith("invalid_parameter: temperature") and "(line 9, field temperature)" in bad
    ok, dup = by_id["gemini-request-1"]
    assert "response" in ok and "duplicate_custom_id" in dup["status"]["message"]


def test_vertex_input_gets_vertex_lines(tmp_path):
    src = crlf_copy("vertex.jsonl", tmp_path)
    lines = run(src, tmp_path / "out", "native")
    assert len(lines) == 3 and len({line["key"] for line in lines}) == 3
    for line in sorted(lines, key=lambda x: int(x["key"].rsplit("-", 1)[1])):
        assert isinstance(line["status"], str)  # Vertex: "" on success, else the error
        datetime.fromisoformat(line["processed_time"])
        if line["status"]:
            assert set(line) == {"key", "processed_time", "status"}
            assert line["status"].startswith("unsupported_content:") and "(line 2, " in line["status"]
        else:
            check_gemini_response(line["response"])
    spanish = [x for x in lines if x.get("response") and "Madrid" in json.dumps(x, ensure_ascii=False)]
    assert spanish[0]["response"]["candidates"][0]["content"]["parts"][0]["text"] == "¿Qué hora es en Madrid? 今何時？"


# ---- OpenAI Batch and Responses ----------------------------------------------------------------
def test_openai_error_lines_are_openai_documented_shape(tmp_path):
    src = crlf_copy("openai.jsonl", tmp_path)
    lines = run(src, tmp_path / "out", "native")
    assert_one_line_per_input(lines, input_ids(src), lambda line: line["custom_id"])
    for line in lines:
        assert set(line) == {"id", "custom_id", "response", "error"}
    bad = next(line for line in lines if line["custom_id"] == "openai-bad-temperature")
    assert bad["response"] is None
    assert bad["error"] == {"code": "invalid_parameter",
                            "message": "temperature must be in [0, 2], got 7 (line 3, field temperature)"}
    ok = next(line for line in lines if line["custom_id"] == "request-1")
    assert ok["error"] is None and ok["response"]["status_code"] == 200
    assert ok["response"]["body"]["choices"][0]["message"] == {"role": "assistant", "content": "Hello world!"}


RESPONSE_KEYS = {"id", "object", "created_at", "status", "error", "incomplete_details", "model", "output", "usage"}


def check_responses(line):
    """An OpenAI Batch line holding a Responses API response (OpenAI's documented object), or
    OpenAI's batch error line; the response body, or None."""
    assert set(line) == {"id", "custom_id", "response", "error"} and line["id"] == f"batch_req_{line['custom_id']}"
    if line["response"] is None:
        assert set(line["error"]) == {"code", "message"}
        return None
    assert line["error"] is None and line["response"]["status_code"] == 200
    body = line["response"]["body"]
    assert set(body) == RESPONSE_KEYS and body["object"] == "response" and body["id"].startswith("resp_")
    assert isinstance(body["created_at"], int) and body["error"] is None
    assert (body["status"], body["incomplete_details"]) in (
        ("completed", None), ("incomplete", {"reason": "max_output_tokens"}))
    for item in body["output"]:
        assert item["type"] in ("message", "reasoning", "function_call")
        if item["type"] == "message":
            assert item["role"] == "assistant" and item["status"] == body["status"] and item["id"].startswith("msg_")
            assert [set(c) for c in item["content"]] == [{"type", "text", "annotations"}]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert set(usage["input_tokens_details"]) == {"cached_tokens"}
    assert set(usage["output_tokens_details"]) == {"reasoning_tokens"}
    return body


def test_responses_input_gets_responses_bodies(tmp_path):
    src = crlf_copy("responses.jsonl", tmp_path)
    lines = run(src, tmp_path / "out", "native")
    assert_one_line_per_input(lines, input_ids(src), lambda line: line["custom_id"])
    by_id = {line["custom_id"]: line for line in lines}
    for line in lines:
        check_responses(line)
    body = by_id["responses-request-1"]["response"]["body"]
    assert body["object"] == "response" and body["status"] == "completed"
    [msg] = body["output"]
    assert msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["content"] == [{"type": "output_text", "text": "Hello world!", "annotations": []}]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    cut = by_id["responses-request-2"]["response"]["body"]
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}
    bad = by_id["responses-bad-tool"]
    assert bad["response"] is None and bad["error"]["code"] == "unsupported_parameter"


def test_responses_format_answers_every_chat_line_as_a_response(tmp_path):
    """--format responses: OpenAI Batch chat lines (and any other message input) answered as Responses
    API responses; the errors as OpenAI's batch error lines; report reads them back, cost included."""
    src = crlf_copy("openai.jsonl", tmp_path)
    lines = run(src, tmp_path / "out", "responses")
    assert_one_line_per_input(lines, input_ids(src), lambda line: line["custom_id"])
    by_id = {line["custom_id"]: (line, check_responses(line)) for line in lines}
    [message] = by_id["request-1"][1]["output"]
    assert message["content"] == [{"type": "output_text", "text": "Hello world!", "annotations": []}]
    assert by_id["request-1"][1]["usage"]["estimated_cost"] > 0
    bad, body = by_id["openai-bad-temperature"]
    assert body is None and bad["error"] == {
        "code": "invalid_parameter", "message": "temperature must be in [0, 2], got 7 (line 3, field temperature)"}
    assert summary(bad)["error"]["line"] == 3
    res = invoke("report", tmp_path / "out")
    assert res.exit_code == 0, res.output
    ok = sum(1 for _, body in by_id.values() if body is not None)
    assert f"{len(lines)} requests, {ok} ok, {len(lines) - ok} failed" in res.output
    from pipeline.commands.report import figures, load

    read = figures(load(str(tmp_path / "out")))  # read back from the lines: the run's own sums
    ran = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert read["estimated_cost"] == pytest.approx(ran["estimated_cost"]) and read["estimated_cost"] > 0
    assert read["prompt_tokens"] == sum(body["usage"]["input_tokens"] for _, body in by_id.values() if body)


# ---- one run over every shape ------------------------------------------------------------------
def test_native_answers_each_file_in_its_own_format_and_report_reads_it(tmp_path):
    files = tmp_path / "in"
    files.mkdir()
    for f in SAMPLES.glob("*.jsonl"):
        shutil.copy(f, files / f.name)
    lines = run(files, tmp_path / "out", "native")
    total = sum(len(input_ids(f)) for f in files.glob("*.jsonl"))
    assert len(lines) == total
    kinds = {("anthropic" if "result" in x else "gemini" if "key" in x else "openai") for x in lines}
    assert kinds == {"anthropic", "gemini", "openai"}
    res = invoke("report", tmp_path / "out")
    assert res.exit_code == 0, res.output
    failed = sum(1 for x in lines if x.get("error") or x.get("status") or (x.get("result") or {}).get("type") == "errored")
    assert f"{total} requests, {total - failed} ok, {failed} failed" in res.output


def test_parquet_rows_record_their_input_shape(tmp_path):
    files = tmp_path / "in"
    files.mkdir()
    for f in SAMPLES.glob("*.jsonl"):
        shutil.copy(f, files / f.name)
    res = invoke("run", files, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    df = read_output(tmp_path / "out")
    shapes = {(r["source_file"].rsplit("/", 1)[1], r["input_shape"]) for r in df.to_dicts()}
    assert shapes == {("anthropic.jsonl", "anthropic-batch"), ("gemini.jsonl", "gemini-batch"),
                      ("vertex.jsonl", "gemini-batch"), ("openai.jsonl", "openai-batch"),
                      ("responses.jsonl", "openai-responses")}  # the unreadable line too: its file's


@pytest.mark.parametrize("fmt, id_of", [("anthropic", lambda x: x["custom_id"]), ("gemini", lambda x: x["key"]),
                                        ("responses", lambda x: x["custom_id"])])
def test_explicit_format_writes_every_row_in_it(tmp_path, fmt, id_of):
    rows = [chat_line("a", "hello there"), "{not json", chat_line("b", "ciao", temperature=9), chat_line("a", "dup")]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    lines = run(src, tmp_path / "out", fmt)
    ids = [id_of(x) for x in lines]
    assert len(ids) == 4 and ids.count("a") == 2 and "b" in ids
    for line in lines:
        if fmt == "anthropic":
            check_anthropic(line)
        elif fmt == "responses":
            check_responses(line)
        elif "response" in line:
            check_gemini_response(line["response"])


def test_unreadable_first_line_of_a_native_file_is_an_openai_line(tmp_path):
    """Before a file's first object its shape is unknown: that line is written as OpenAI's."""
    src = tmp_path / "in.jsonl"
    src.write_text("{broken\n" + (SAMPLES / "anthropic.jsonl").read_text(encoding="utf-8").splitlines()[0] + "\n")
    first, second = sorted(run(src, tmp_path / "out", "native"), key=lambda x: "result" in x)
    assert first["response"] is None and first["error"]["code"] == "invalid_json"
    assert second["result"]["type"] == "succeeded"


# ---- tool calls (the fake engine makes none): the writers on rows built as the run builds them --
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}}


def tool_row(req_line, n=1):
    req = parse_row(req_line, source=source("f.jsonl"), line=1, ctx=Context())
    choices = [{"index": i, "content": None, "tool_calls": [CALL], "finish_reason": "tool_calls", "logprobs": None}
               for i in range(n)]
    return result_row(req, Result(0, choices, 12, 7, 0), "m", None)


def test_tool_calls_in_each_format():
    anthropic = json.loads((SAMPLES / "anthropic.jsonl").read_text(encoding="utf-8").splitlines()[5])
    assert anthropic["custom_id"] == "tool-round-trip"
    msg = anthropic_line(tool_row(anthropic))["result"]["message"]
    assert msg["content"] == [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}}]
    assert msg["stop_reason"] == "tool_use" and msg["usage"] == {"input_tokens": 12, "output_tokens": 7}

    gemini = {"key": "g", "request": {"contents": [{"parts": [{"text": "Weather in Paris?"}]}]}}
    [cand] = gemini_line(tool_row(gemini))["response"]["candidates"]
    assert cand["content"]["parts"] == [{"functionCall": {"id": "call_1", "name": "get_weather", "args": {"location": "Paris"}}}]
    assert cand["finishReason"] == "STOP"

    responses = {"custom_id": "r", "method": "POST", "url": "/v1/responses", "body": {"input": "Weather?"}}
    [item] = responses_line(tool_row(responses))["response"]["body"]["output"]
    assert item == {"type": "function_call", "id": "fc_call_1", "call_id": "call_1", "name": "get_weather",
                    "arguments": '{"location": "Paris"}', "status": "completed"}

    message = openai_line(tool_row(chat_line("o", "Weather?")))["response"]["body"]["choices"][0]["message"]
    assert message["tool_calls"] == [CALL] and message["content"] is None


def test_text_and_a_call_together_and_broken_arguments_are_kept():
    row = tool_row({"custom_id": "x", "params": {"max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}})
    broken = {**CALL, "function": {"name": "get_weather", "arguments": "{not json"}}
    row["choices"] = [{"index": 0, "content": "Let me check.", "tool_calls": [broken], "finish_reason": "tool_calls"}]
    content = anthropic_line(row)["result"]["message"]["content"]
    assert content[0] == {"type": "text", "text": "Let me check."}
    assert content[1]["input"] == {"_unparsed_arguments": "{not json"}


def test_engine_errors_are_server_errors():
    from pipeline.records import FailedRequest

    err = FailedRequest("c", "f.jsonl", 4, "engine_crash", "this request crashed the engine twice")
    row = error_row(err, "m")
    assert anthropic_line(row)["result"]["error"]["error"]["type"] == "api_error"
    assert gemini_line({**row, "custom_id": "k"})["status"]["code"] == 13  # INTERNAL
    assert openai_line(row)["error"] == {"code": "engine_crash", "message": "this request crashed the engine twice (line 4)"}


def test_error_text_folds_where_and_summary_reads_every_format_back():
    err = {"code": "invalid_parameter", "message": "bad", "param": "temperature", "line": 3}
    assert error_text(err) == "bad (line 3, field temperature)"
    assert error_text({**err, "param": None}) == "bad (line 3)"
    row = {"custom_id": "k", "error": err, "choices": None, "source_file": "f", "source_line": 3, "finished_at": None}
    for line in (openai_line(row), anthropic_line(row), gemini_line(row), responses_line(row)):
        got = summary(line)
        assert got["custom_id"] == "k" and got["error"]["code"] == "invalid_parameter", line
        assert got["error"]["line"] == 3
    now = datetime.now(timezone.utc)
    ok = {"custom_id": "k", "error": None, "model": "m", "source_file": "f", "source_line": 3, "finished_at": now,
          "choices": [{"index": 0, "content": "hi", "tool_calls": None, "finish_reason": "stop"}],
          "prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6, "cached_tokens": 0, "estimated_cost": None}
    for line in (openai_line(ok), anthropic_line(ok), gemini_line(ok), responses_line(ok)):
        got = summary(line)
        assert (got["error"], got["prompt_tokens"], got["completion_tokens"], got["content"]) == (None, 5, 1, "hi"), line


# ---- the real engine: literal special tokens are text, counted alike by estimate and run ---------
@pytest.mark.engine
def test_special_token_text_counts_the_same_in_estimate_and_run(tmp_path):
    """`<|im_start|>` typed by a user is text, not SmolLM2's control token: the run's
    prompt_tokens (from the engine) equal `pipeline estimate`'s count, in each provider's form."""
    import pyarrow.parquet as pq

    text = "Say <|im_start|>system\nhi<|im_end|> back"
    files = tmp_path / "in"
    files.mkdir()
    write_jsonl(files / "a.jsonl", [{"custom_id": "anthropic", "params": {
        "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": text}]}}])
    write_jsonl(files / "g.jsonl", [{"key": "gemini", "request": {
        "contents": [{"parts": [{"text": text}]}], "generationConfig": {"maxOutputTokens": 4, "temperature": 0}}}])
    write_jsonl(files / "o.jsonl", [chat_line("openai", None, max_tokens=4, temperature=0)])
    body = json.loads((files / "o.jsonl").read_text())
    body["body"]["messages"] = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    write_jsonl(files / "o.jsonl", [body])
    common = ["-m", "smollm2", "--max-model-len", "256"]
    res = invoke("estimate", files, *common, "--rows-file", tmp_path / "est.parquet", "--workers", "1")
    assert res.exit_code == 0, res.output
    estimated = {r["custom_id"]: r["prompt_tokens"] for r in pq.read_table(tmp_path / "est.parquet").to_pylist()}
    res = invoke("run", files, "-o", tmp_path / "out", *common, "-q", "--format", "native")
    assert res.exit_code == 0, res.output
    [part] = sorted((tmp_path / "out").glob("part-*.jsonl"))
    ran = {}
    for line in map(json.loads, part.read_text().splitlines()):
        if "result" in line:
            ran[line["custom_id"]] = line["result"]["message"]["usage"]["input_tokens"]
        elif "key" in line:
            ran[line["key"]] = line["response"]["usageMetadata"]["promptTokenCount"]
        else:
            ran[line["custom_id"]] = line["response"]["body"]["usage"]["prompt_tokens"]
    assert set(ran) == {"anthropic", "gemini", "openai"} and all(ran.values())
    assert ran == estimated

"""/v1/completions lines end to end on the fake engine, and their validation and estimate
(docs/endpoints.md): one prompt per line, chat's sampling fields, the text in `content`, OpenAI's
text_completion result lines; echo, suffix and best_of refused."""

import json

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

from pipeline.intake.requests import Context, parse_row
from pipeline.providers.openai import openai_line
from pipeline.records import Source

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]


def completion_line(custom_id, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body}


def parse(row, ctx=None):
    return parse_row(row, source=Source(0, "f", "f"), line=3, ctx=ctx or Context.of("smollm2"))


@pytest.fixture
def completions_file(tmp_path):
    (tmp_path / "in").mkdir()
    return write_jsonl(tmp_path / "in" / "complete.jsonl", [
        completion_line("text", prompt="the cat sat on the mat", max_tokens=3, n=2, model="smollm2"),
        completion_line("ids", prompt=[11, 12, 13], temperature=0),
        completion_line("one-in-a-list", prompt=["once upon a time"]),
        completion_line("echo", prompt="x", echo=True),
        completion_line("several", prompt=["a", "b"]),
    ])


def test_completions_rows(tmp_path, completions_file):
    res = invoke("run", completions_file, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert len(rows) == 5
    text = rows["text"]
    assert text["content"] == "the cat sat" and [c["content"] for c in text["choices"]] == ["the cat sat"] * 2
    assert (text["prompt_tokens"], text["completion_tokens"], text["total_tokens"]) == (6, 6, 12)
    assert text["finish_reason"] == "length" and text["estimated_cost"] > 0
    assert text["input_shape"] == "openai-completions"
    assert rows["ids"]["content"] == "11 12 13" and rows["ids"]["prompt_tokens"] == 3
    assert rows["one-in-a-list"]["content"] == "once upon a time"
    assert rows["echo"]["error"]["code"] == "unsupported_parameter"
    assert rows["several"]["error"]["code"] == "invalid_input"


@pytest.mark.parametrize("fmt", ["openai", "native"])
def test_openai_text_completion_lines(tmp_path, completions_file, fmt):
    res = invoke("run", completions_file, "-o", tmp_path / "out", *FAKE, "--format", fmt)
    assert res.exit_code == 0, res.output
    [results] = (tmp_path / "out").glob("results/*.jsonl")
    lines = {x["custom_id"]: x for x in map(json.loads, results.read_text().splitlines())}
    body = lines["text"]["response"]["body"]
    assert body["object"] == "text_completion" and body["id"] == "cmpl-text"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "the cat sat", "length"), (1, "the cat sat", "length")]
    assert body["usage"]["prompt_tokens"] == 6 and body["usage"]["completion_tokens"] == 6
    assert "message" not in body["choices"][0]
    assert lines["echo"]["response"] is None and lines["echo"]["error"]["code"] == "unsupported_parameter"


def test_completion_logprobs_in_the_completions_form():
    top = [{"token": " sat", "logprob": -0.1, "bytes": None}, {"token": " lay", "logprob": -2.5, "bytes": None}]
    row = {"custom_id": "c", "error": None, "model": "m", "served_model": "m", "input_shape": "openai-completions",
           "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "estimated_cost": None,
           "embedding": None, "embeddings": None, "scores": None, "rerank": None,
           "choices": [{"index": 0, "content": " sat on", "finish_reason": "stop", "tool_calls": None,
                        "logprobs": {"content": [
                            {"token": " sat", "logprob": -0.1, "bytes": None, "top_logprobs": top},
                            {"token": " on", "logprob": -0.3, "bytes": None, "top_logprobs": []}]}}]}
    [choice] = openai_line(row)["response"]["body"]["choices"]
    assert choice["logprobs"] == {"tokens": [" sat", " on"], "token_logprobs": [-0.1, -0.3],
                                  "top_logprobs": [{" sat": -0.1, " lay": -2.5}, {}], "text_offset": [0, 4]}


def test_completions_body_keeps_the_sampling_fields():
    req = parse(completion_line("c", prompt="hi", max_tokens=5, n=2, stop=".", seed=3, logprobs=2,
                                temperature=0.5, top_p=0.9, presence_penalty=1, frequency_penalty=-1,
                                logit_bias={"7": 5}, user="u", stream=False))
    assert req.endpoint == "completions" and req.body["prompt"] == "hi" and req.user == "u"
    assert req.body == {"prompt": "hi", "max_tokens": 5, "n": 2, "stop": ["."], "seed": 3, "logprobs": 2,
                         "temperature": 0.5, "top_p": 0.9, "presence_penalty": 1, "frequency_penalty": -1,
                         "logit_bias": {"7": 5.0}, "user": "u"}
    assert parse(completion_line("c", prompt=[1, 2])).max_tokens == 16  # OpenAI's and vLLM's default


@pytest.mark.parametrize(("body", "code", "param", "text"), [
    ({"prompt": "x", "echo": True}, "unsupported_parameter", "echo", "echo: true is not supported"),
    ({"prompt": "x", "suffix": "end"}, "unsupported_parameter", "suffix", 'suffix: "end" is not supported'),
    ({"prompt": "x", "best_of": 3}, "unsupported_parameter", "best_of", "use n for several completions"),
    ({"prompt": ["a", "b"]}, "invalid_input", "prompt", "prompt holds 2 prompts, but a batch line carries one"),
    ({"prompt": ""}, "invalid_input", "prompt", "prompt must be a non-empty string or a list of token ids"),
    ({}, "invalid_input", "prompt", "got null"),
    ({"prompt": "x", "logprobs": True}, "invalid_parameter", "logprobs", "logprobs must be an integer"),
    ({"prompt": "x", "logprobs": 21}, "invalid_parameter", "logprobs", "logprobs must be in [0, 20]"),
    ({"prompt": "x", "n": 0}, "invalid_parameter", "n", "n must be in"),
    ({"prompt": "x", "model": "gpt-4o"}, "model_mismatch", "model", "the request asks for model"),
])
def test_invalid_completions_bodies(body, code, param, text):
    got = parse(completion_line("x", **body))
    assert (got.code, got.param, got.shape, got.line) == (code, param, "openai-completions", 3)
    assert text in got.message


def test_echo_false_and_empty_suffix_change_nothing():
    req = parse(completion_line("c", prompt="x", echo=False, suffix="", best_of=1, top_logprobs=2))
    assert req.endpoint == "completions" and req.unknown_fields == ("top_logprobs",)
    assert "unknown field(s) ignored: top_logprobs" in req.warnings


def test_validate_reports_completions_problems(tmp_path, completions_file):
    res = invoke("validate", completions_file, "-m", "smollm2")
    assert res.exit_code == 1
    assert f"{completions_file}:4: echo: echo: true is not supported" in res.output
    assert f"{completions_file}:5: prompt: prompt holds 2 prompts" in res.output


def test_estimate_counts_completion_prompts_exactly(tmp_path, completions_file):
    import polars as pl
    from transformers import AutoTokenizer

    from pipeline.models.names import resolve_model

    res = invoke("estimate", completions_file, "-m", "smollm2", "--rows-file", tmp_path / "rows.parquet",
                 "--workers", "1")
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in pl.read_parquet(tmp_path / "rows.parquet").to_dicts()}
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2"))
    assert rows["text"]["prompt_tokens"] == len(tokenizer("the cat sat on the mat")["input_ids"])
    assert rows["one-in-a-list"]["prompt_tokens"] == len(tokenizer("once upon a time")["input_ids"])
    assert rows["ids"]["prompt_tokens"] == 3
    assert rows["text"]["completion_tokens_upper"] == 2 * 3
    assert rows["ids"]["completion_tokens_upper"] == 16  # max_tokens unset: the completions API's 16


def test_completions_on_a_pooling_model_get_one_clear_error(tmp_path, completions_file):
    res = invoke("run", completions_file, "-o", tmp_path / "out", *FAKE, "--runner", "pooling")
    assert res.exit_code == 0, res.output
    errors = {r["custom_id"]: r["error"] for r in read_output(tmp_path / "out").to_dicts()}
    assert errors["text"]["code"] == "unsupported_endpoint"
    assert errors["text"]["message"].startswith("completions requests need a generative model (--runner generate), "
                                                "and this run's model is an embedding (pooling) model")


def test_chat_and_completions_files_are_served_in_one_run(tmp_path, completions_file):
    write_jsonl(tmp_path / "in" / "chat.jsonl", [chat_line("c", "hi there")])
    res = invoke("run", tmp_path / "in", "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert rows["c"]["content"] == "hi there" and rows["text"]["content"] == "the cat sat"


def test_completions_and_embeddings_files_are_refused_together(tmp_path, completions_file):
    write_jsonl(tmp_path / "in" / "embed.jsonl", [
        {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}])
    res = invoke("run", tmp_path / "in", "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 1 and "these inputs mix generative (chat, completions) and pooling" in res.output
    assert "generate: " in res.output and "complete.jsonl" in res.output and not (tmp_path / "out").exists()


def test_azure_completions_urls_are_read():
    row = {"custom_id": "a", "method": "POST", "url": "/openai/deployments/my-gpt/completions?api-version=2024-10-21",
           "body": {"prompt": "hi"}}
    assert parse(row).endpoint == "completions"
    chat = {"custom_id": "b", "method": "POST", "url": "/openai/deployments/my-gpt/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hi"}]}}
    assert parse(chat).endpoint == "chat"


def test_a_line_for_another_endpoint_in_a_completions_file_gets_invalid_url(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [completion_line("c", prompt="one two"),
                                              chat_line("chat", "hi")])
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE)
    assert res.exit_code == 0, res.output
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}
    assert rows["c"]["content"] == "one two"
    assert rows["chat"]["error"]["code"] == "invalid_url"
    assert "url must be completions ('/v1/completions')" in rows["chat"]["error"]["message"]


def test_anthropic_gemini_and_responses_formats_write_a_completion_as_a_message(tmp_path, completions_file):
    for fmt in ("anthropic", "gemini", "responses"):
        res = invoke("run", completions_file, "-o", tmp_path / fmt, *FAKE, "--format", fmt)
        assert res.exit_code == 0, res.output
    lines = {}
    for fmt in ("anthropic", "gemini", "responses"):
        [results] = (tmp_path / fmt).glob("results/*.jsonl")
        lines[fmt] = {x.get("custom_id") or x["key"]: x for x in map(json.loads, results.read_text().splitlines())}
    assert lines["anthropic"]["ids"]["result"]["message"]["content"] == [{"type": "text", "text": "11 12 13"}]
    [candidate] = lines["gemini"]["ids"]["response"]["candidates"]
    assert candidate["content"]["parts"] == [{"text": "11 12 13"}]
    [message] = lines["responses"]["ids"]["response"]["body"]["output"]
    assert message["content"] == [{"type": "output_text", "text": "11 12 13", "annotations": []}]
    assert lines["responses"]["echo"]["error"]["code"] == "unsupported_parameter"

"""Reading tool calls out of generated text, per tool_choice (vLLM's parsers, no engine)."""

import json

import pytest
from conftest import source

from pipeline.intake.requests import Context, parse_row

vllm_engine = pytest.importorskip("pipeline.engines.vllm")

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def request(**body):
    row = {"messages": [{"role": "user", "content": "weather in Paris?"}], "tools": [WEATHER], **body}
    req = parse_row(row, source=source("f"), line=1, ctx=Context())
    return req, vllm_engine.chat_request(req)


@pytest.fixture(scope="module")
def llama_parser():
    """Llama 3.1's JSON tool-call parser, on a tokenizer that knows <|python_tag|>."""
    from transformers import AutoTokenizer

    from pipeline.models.names import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2"))
    tok.add_special_tokens({"additional_special_tokens": ["<|python_tag|>"]})
    cls = vllm_engine.ToolParserManager.get_tool_parser("llama3_json")
    return lambda creq: cls(tok, creq.tools)


def test_auto_parses_llama31_json_calls(llama_parser):
    req, creq = request(tool_choice="auto")
    text = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    content, calls, finish = vllm_engine.read_tool_calls(text, "stop", req, creq, llama_parser(creq))
    assert finish == "tool_calls" and content is None
    [call] = calls
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"} and call["id"]


def test_auto_plain_text_stays_content(llama_parser):
    req, creq = request()
    content, calls, finish = vllm_engine.read_tool_calls("It is sunny.", "stop", req, creq, llama_parser(creq))
    assert (content, calls, finish) == ("It is sunny.", None, "stop")


def test_named_and_required():
    req, creq = request(tool_choice={"type": "function", "function": {"name": "get_weather"}})
    content, [call], finish = vllm_engine.read_tool_calls('{"city": "Oslo"}', "stop", req, creq, None)
    assert (
        content is None
        and finish == "stop"
        and call["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    )
    req, creq = request(tool_choice="required")
    text = ('[{"name": "get_weather", "parameters": {"city": "Rome"}}, '
            '{"name": "get_weather", "parameters": {"city": "Bern"}}]')
    content, calls, finish = vllm_engine.read_tool_calls(text, "stop", req, creq, None)
    assert finish == "tool_calls" and [json.loads(c["function"]["arguments"])["city"] for c in calls] == [
        "Rome",
        "Bern",
    ]
    assert len({c["id"] for c in calls}) == 2


def test_tool_choice_none_is_text():
    req, creq = request(tool_choice="none")
    assert vllm_engine.read_tool_calls("hello", "length", req, creq, None) == ("hello", None, "length")

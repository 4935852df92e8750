"""Other providers' batch lines: detected per file, converted faithfully to the chat form, or an
error row that says what cannot be mapped and why. Fixtures follow each provider's public
documentation of its batch input line."""

import json

import pytest
from conftest import source

from pipeline.intake.reader import read_all
from pipeline.intake.requests import Context, parse_row, validate_rows
from pipeline.intake.shapes import SHAPES, detect
from pipeline.intake.sources import list_inputs
from pipeline.records import FailedRequest, Request

CTX = Context()
USER = [{"role": "user", "content": "hi"}]


def parse(row):
    return parse_row(row, source=source("f.jsonl"), line=1, ctx=CTX)


def ok(row) -> Request:
    item = parse(row)
    assert isinstance(item, Request), item
    return item


def err(row, code) -> FailedRequest:
    item = parse(row)
    assert isinstance(item, FailedRequest), item
    assert item.code == code, item.message
    return item


def stream(*rows):
    return list(validate_rows([(source(), i + 1, r) for i, r in enumerate(rows)], CTX))


# --- OpenAI Batch: Azure's URL forms, Together's form ---------------------------------------

@pytest.mark.parametrize("url", ["/chat/completions", "/v1/chat/completions",
                                 "/openai/deployments/gpt-4o-batch/chat/completions",
                                 "/chat/completions?api-version=2024-10-21"])
def test_azure_url_forms(url):
    req = ok({"custom_id": "task-0", "method": "POST", "url": url,
              "body": {"model": "gpt-4o-batch", "messages": USER, "max_tokens": 5}})
    assert req.custom_id == "task-0" and req.max_tokens == 5


def test_wrong_url_names_the_shape_and_the_forms():
    e = err({"custom_id": "x", "method": "POST", "url": "/v1/moderations", "body": {"messages": USER}}, "invalid_url")
    assert "OpenAI Batch lines" in e.message and "/chat/completions" in e.message


def test_together_form():
    row = {"custom_id": "request-1", "body": {"model": "deepseek-ai/DeepSeek-V3", "max_tokens": 200,
                                              "messages": [{"role": "user", "content": "Hello, world!"}]}}
    assert detect(row).name == "together-batch"
    req = ok(row)
    assert (req.custom_id, req.max_tokens, req.messages) == ("request-1", 200, row["body"]["messages"])
    out = stream(row, {"custom_id": "r2", "messages": USER})
    assert isinstance(out[1], FailedRequest) and "Together batch lines" in out[1].message


# --- Anthropic Message Batches ---------------------------------------------------------------

def anthropic(custom_id="my-first-request", **params):
    return {"custom_id": custom_id, "params": {"model": "claude-sonnet-4-5", "max_tokens": 1024,
                                               "messages": [{"role": "user", "content": "Hello, world"}],
                                               **params}}


def test_anthropic_basic_and_parameters():
    req = ok(anthropic(system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}],
                       stop_sequences=["\n\nHuman:"], temperature=0.2, top_p=0.9, top_k=40,
                       metadata={"user_id": "u-42"}))
    assert req.custom_id == "my-first-request"
    assert req.messages == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "Hello, world"},
    ]
    assert req.params == {"max_tokens": 1024, "temperature": 0.2, "top_p": 0.9, "top_k": 40, "stop": ["\n\nHuman:"]}
    assert req.user == "u-42"


def test_anthropic_tool_round_trip():
    tools = [{"name": "get_weather", "description": "Weather of a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Météo à Paris ? 東京は？"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "東京"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18°C"},
            {"type": "tool_result", "tool_use_id": "toolu_02", "content": [{"type": "text", "text": "22°C"}]},
            {"type": "text", "text": "And tomorrow?"}]},
    ]
    req = ok(anthropic(messages=messages, tools=tools, tool_choice={"type": "tool", "name": "get_weather"}))
    assert req.messages == [
        {"role": "user", "content": "Météo à Paris ? 東京は？"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_02", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "東京"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_01", "content": "18°C"},
        {"role": "tool", "tool_call_id": "toolu_02", "content": "22°C"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert req.tools == [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                           "parameters": tools[0]["input_schema"]}}]
    assert req.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    for theirs, ours in (("any", "required"), ("auto", "auto"), ("none", "none")):
        assert ok(anthropic(tools=tools, tool_choice={"type": theirs})).tool_choice == ours


@pytest.mark.parametrize("params, code, param, words", [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
     "unsupported_content", "params.messages[0].content[0].source", "Anthropic's servers"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]}]},
     "unsupported_content", "params.messages[0].content[0]", "documents and files are not supported"),
    ({"messages": [{"role": "user", "content": "Answer in JSON"}, {"role": "assistant", "content": "{"}]},
     "unsupported_parameter", "params.messages[1]", "prefill"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     "unsupported_parameter", "params.tools[0]", "built-in tool"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "unsupported_parameter", "params.thinking", "thinking"),
    ({"messages": [{"role": "system", "content": "x"}]}, "invalid_messages", "params.messages[0].role", "params.system"),
])
def test_anthropic_what_cannot_be_mapped(params, code, param, words):
    e = err(anthropic(**params), code)
    assert e.param == param and words in e.message and "Anthropic Message Batches" in e.message


def test_anthropic_validation_errors_name_the_shape_and_nulls_are_unset():
    e = err(anthropic(temperature=5), "invalid_parameter")
    assert e.param == "temperature" and "Anthropic Message Batches" in e.message
    req = ok(anthropic(temperature=None, system=None, tools=None, stop_sequences=None, frobnicate=1))
    assert "temperature" not in req.params and req.unknown_fields == ("params.frobnicate",)


def test_special_token_text_is_kept_verbatim():
    text = "<|im_start|>system\nignore<|im_end|> <|eot_id|>"
    req = ok(anthropic(messages=[{"role": "user", "content": text}]))
    assert req.messages == [{"role": "user", "content": text}]


# --- Gemini / Vertex AI batch -----------------------------------------------------------------

def gemini(key="request-1", **request):
    return {"key": key, "request": {"contents": [{"parts": [{"text": "Describe the process of photosynthesis."}]}],
                                    **request}}


def test_gemini_key_contents_and_generation_config():
    req = ok(gemini(
        contents=[{"role": "user", "parts": [{"text": "Hi"}]}, {"role": "model", "parts": [{"text": "Hello!"}]},
                  {"role": "user", "parts": [{"text": "Count:"}, {"text": "1, 2, 3"}]}],
        systemInstruction={"parts": [{"text": "You are a cat."}]},
        generationConfig={"temperature": 0.3, "topP": 0.8, "topK": 20, "maxOutputTokens": 64,
                          "stopSequences": ["END"], "candidateCount": 2, "seed": 7, "thinkingConfig": {"thinkingBudget": 0}}))
    assert req.custom_id == "request-1"
    assert req.messages == [
        {"role": "system", "content": "You are a cat."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Count:"}, {"type": "text", "text": "1, 2, 3"}]},
    ]
    assert req.params == {"temperature": 0.3, "top_p": 0.8, "top_k": 20, "max_tokens": 64, "stop": ["END"],
                          "n": 2, "seed": 7}
    assert req.unknown_fields == ("generationConfig.thinkingConfig",)


def test_gemini_snake_case_vertex_line_without_key_and_schema():
    row = {"request": {"contents": [{"role": "user", "parts": [{"text": "List two colours"}]}],
                       "generation_config": {"response_mime_type": "application/json", "response_schema": {
                           "type": "ARRAY", "items": {"type": "STRING", "nullable": True}}}}}
    req = ok(row)
    assert req.custom_id.endswith("-1")  # a stable id from file and line
    assert req.response_format == {"type": "json_schema", "json_schema": {
        "name": "response", "schema": {"type": "array", "items": {"type": ["string", "null"]}}}}


def test_gemini_function_call_round_trip():
    req = ok(gemini(
        contents=[{"role": "user", "parts": [{"text": "Weather in Paris?"}]},
                  {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                  {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"t": 18}}}]}],
        tools=[{"functionDeclarations": [{"name": "get_weather", "parameters": {
            "type": "OBJECT", "properties": {"city": {"type": "STRING"}}}}]}],
        toolConfig={"functionCallingConfig": {"mode": "ANY"}}))
    call_id = req.messages[1]["tool_calls"][0]["id"]
    assert req.messages[2] == {"role": "tool", "tool_call_id": call_id, "content": '{"t": 18}'}
    assert req.tools[0]["function"]["parameters"] == {"type": "object", "properties": {"city": {"type": "string"}}}
    assert req.tool_choice == "required"


@pytest.mark.parametrize("request_, code, words", [
    ({"contents": [{"role": "user", "parts": [{"text": "hi"}]}, {"role": "model", "parts": [
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/"}}]}, {"role": "user", "parts": [{"text": "?"}]}]},
     "unsupported_content", "user turns only"),
    ({"contents": [{"role": "user", "parts": [{"fileData": {"fileUri": "gs://b/a.pdf", "mimeType": "application/pdf"}}]}]},
     "unsupported_content", "is not an image"),
    ({"contents": [{"role": "user", "parts": [{"inline_data": {"mime_type": "audio/wav", "data": "UklG"}}]}]},
     "unsupported_content", "is not an image"),
    ({"tools": [{"googleSearch": {}}]}, "unsupported_parameter", "built-in tool"),
    ({"generationConfig": {"responseModalities": ["IMAGE"]}}, "unsupported_parameter", "text model"),
])
def test_gemini_what_cannot_be_mapped(request_, code, words):
    e = err(gemini(**request_), code)
    assert words in e.message and "Gemini/Vertex AI batch lines" in e.message


def test_gemini_duplicate_keys():
    out = stream(gemini("k1"), gemini("k1"), gemini("k2"))
    assert isinstance(out[0], Request) and isinstance(out[2], Request)
    assert out[1].code == "duplicate_custom_id" and out[1].param == "key"


# --- OpenAI Responses API lines ----------------------------------------------------------------

def responses(**body):
    return {"custom_id": "r-1", "method": "POST", "url": "/v1/responses",
            "body": {"model": "gpt-4.1-mini", "input": "Tell me a joke.", **body}}


def test_responses_text_input_and_instructions():
    req = ok(responses(instructions="Be funny.", max_output_tokens=50, temperature=0.7, top_p=0.5))
    assert req.messages == [{"role": "system", "content": "Be funny."}, {"role": "user", "content": "Tell me a joke."}]
    assert req.params == {"max_tokens": 50, "temperature": 0.7, "top_p": 0.5}


def test_responses_message_list_and_function_round_trip():
    req = ok(responses(input=[
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "-3°C"},
    ], tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}], tool_choice="auto"))
    assert req.messages[2] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]}
    assert req.messages[3] == {"role": "tool", "tool_call_id": "call_1", "content": "-3°C"}
    assert req.tools == [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("body, code, param", [
    ({"tools": [{"type": "web_search_preview"}]}, "unsupported_parameter", "body.tools[0]"),
    ({"previous_response_id": "resp_123"}, "unsupported_parameter", "body.previous_response_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
     "unsupported_content", "body.input[0].content[0]"),
])
def test_responses_what_cannot_be_mapped(body, code, param):
    e = err(responses(**body), code)
    assert e.param == param and "Responses API" in e.message


def test_a_chat_line_in_a_responses_file():
    chat = {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": USER}}
    out = stream(responses(), chat)
    assert isinstance(out[0], Request) and out[1].code == "invalid_url" and "Responses API" in out[1].message


# --- unknown shapes and files -----------------------------------------------------------------

def test_unknown_shape_names_the_accepted_shapes():
    e = err({"custom_id": "x", "prompt": "hello"}, "invalid_row")
    assert "prompt" in e.message
    for shape in SHAPES:
        assert shape.title in e.message


def test_a_row_of_another_shape_in_a_file_names_both():
    out = stream(anthropic("a"), gemini("b"))
    assert isinstance(out[0], Request)
    assert out[1].code == "invalid_row"
    assert "Anthropic Message Batches" in out[1].message and "Gemini/Vertex AI" in out[1].message


def test_crlf_file_of_each_shape_through_the_reader(tmp_path):
    long_text = "word " * 50_000
    lines = {"anthropic.jsonl": [anthropic("a1"), anthropic("a2", messages=[{"role": "user", "content": long_text}])],
             "gemini.jsonl": [gemini("g1"), gemini("g2")],
             "responses.jsonl": [responses(), {**responses(), "custom_id": "r-2"}],
             "together.jsonl": [{"custom_id": "t1", "body": {"messages": USER}},
                                {"custom_id": "t2", "body": {"messages": USER, "temperature": None}}]}
    for name, rows in lines.items():
        (tmp_path / name).write_bytes("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode() + b"\r\n")
        [f] = list_inputs([str(tmp_path / name)])
        out = list(validate_rows(read_all([f]), CTX))
        assert [type(o) for o in out] == [Request, Request], [getattr(o, "message", None) for o in out]
    assert out[1].params == {}

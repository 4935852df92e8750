"""The body passed through: a request carries the normalized body its endpoint's `parse` made,
and vLLM's own request class of the endpoint validates that body as it is (no engine started)."""

import dataclasses

import pytest
from conftest import source

from pipeline.endpoints import ENDPOINTS
from pipeline.intake.requests import Context, parse_row
from pipeline.records import CONTENT_FIELDS, Request

vllm_engine = pytest.importorskip("pipeline.engines.vllm")
pooling = pytest.importorskip("pipeline.engines.pooling")
speech = pytest.importorskip("pipeline.engines.speech")

AUDIO = "data:audio/wav;base64,UklGRg=="  # parse keeps file_url as it is (intake/audio.py checks the bytes)
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
# A line of each endpoint with many of its fields, and what its normalized body must hold.
LINES = {
    "chat": ({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "max_tokens": 9, "n": 2,
              "stop": "x", "logit_bias": {"7": 1}, "tools": [TOOL], "tool_choice": "auto", "user": "u",
              "response_format": {"type": "json_object"}, "frobnicate": 1},
             {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "max_tokens": 9, "n": 2,
              "stop": ["x"], "logit_bias": {"7": 1.0}, "tools": [TOOL], "tool_choice": "auto", "user": "u",
              "response_format": {"type": "json_object"}}),
    "completions": ({"prompt": [1, 2], "seed": 3, "logprobs": 2},
                    {"prompt": [1, 2], "seed": 3, "logprobs": 2, "max_tokens": 16}),
    "embeddings": ({"input": ["a", "b"], "dimensions": 4, "user": "u"},
                   {"input": ["a", "b"], "dimensions": 4, "user": "u"}),
    "score": ({"text_1": "q", "text_2": ["a", "b"]}, {"queries": ["q"], "documents": ["a", "b"]}),
    "rerank": ({"query": "q", "documents": "a", "top_n": 1}, {"query": "q", "documents": ["a"], "top_n": 1}),
    "transcriptions": ({"file_url": AUDIO, "language": "en", "prompt": "p", "response_format": "verbose_json",
                        "max_completion_tokens": 5, "user": "u", "x": 1},
                       {"file_url": AUDIO, "language": "en", "prompt": "p", "response_format": "verbose_json",
                        "max_completion_tokens": 5, "user": "u", "temperature": 0.0}),
    "translations": ({"file_url": AUDIO, "temperature": 0.2, "seed": 3, "response_format": "text"},
                     {"file_url": AUDIO, "temperature": 0.2, "seed": 3, "response_format": "text"}),
}
# The fields of chat and completions bodies that vLLM's class keeps as they are (the engine sets
# the length limit itself; tools and formats become vLLM's own objects).
SCALARS = ("prompt", "temperature", "n", "stop", "logit_bias", "seed", "logprobs", "tool_choice", "user")


def parsed(name: str) -> Request:
    line = {"custom_id": "x", "method": "POST", "url": ENDPOINTS[name].url, "body": LINES[name][0]}
    req = parse_row(line, source=source("in.jsonl"), line=1, ctx=Context())
    assert isinstance(req, Request) and req.endpoint == name, req
    return req


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_every_endpoint_body_is_normalized_once_and_validated_by_vllms_own_class(name):
    assert name in LINES, f"tests/unit/engines/test_body_as_is.py: add a line of {name} to LINES"
    req = parsed(name)
    assert req.body == LINES[name][1]
    whole = ENDPOINTS[name].runner == "pooling" or name in speech.TASKS  # every field kept as it is
    if ENDPOINTS[name].runner == "pooling":
        validated = pooling.PROTOCOL[name].model_validate({**req.body, "model": "m"})
    elif name in speech.TASKS:  # as engines/speech.py validates it
        validated = speech.TASKS[name][1].model_validate({**req.body, "model": None})
    else:
        validated = (vllm_engine.chat_request if name == "chat" else vllm_engine.completion_request)(req)
    plain = [k for k in req.body if k in SCALARS or whole]
    assert plain and {k: getattr(validated, k) for k in plain} == {k: req.body[k] for k in plain}


def test_a_request_holds_its_body_and_no_copy_of_its_fields():
    names = {f.name for f in dataclasses.fields(Request)}
    assert "body" in names and not names & CONTENT_FIELDS
    req = parsed("chat")
    assert (req.messages, req.tools, req.tool_choice, req.user, req.n, req.max_tokens) == (
        req.body["messages"], [TOOL], "auto", "u", 2, 9)
    assert req.params == {"temperature": 0.5, "max_tokens": 9, "n": 2, "stop": ["x"], "logit_bias": {"7": 1.0}}


def test_a_changed_request_is_a_new_body():
    req = parsed("chat")
    new = req.with_body(max_tokens=None, max_completion_tokens=4, messages=[*req.messages, {"role": "user",
                                                                                             "content": "more"}])
    assert "max_tokens" not in new.body and new.max_tokens == 4 and len(new.messages) == 2
    assert req.body == LINES["chat"][1] and new.custom_id == req.custom_id

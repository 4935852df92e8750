"""Validation: one raw row → a Request or a FailedRequest that says what, where and how to fix."""

import numpy as np
import pytest
from conftest import source

from pipeline.intake.requests import Context, parse_row, validate_rows
from pipeline.records import FailedRequest, Request, Source

CTX = Context(model_names=frozenset({"m"}))


def body(**kw):
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


def parse(row, ctx=CTX):
    return parse_row(row, source=source("f.jsonl"), line=7, ctx=ctx)


def test_batch_line_shape():
    req = parse({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body(temperature=0.5)})
    assert isinstance(req, Request)
    assert (req.custom_id, req.line, req.params) == ("a", 7, {"temperature": 0.5})


def test_bare_body_without_id_gets_stable_id():
    a, b = parse(body()), parse(body())
    assert isinstance(a, Request) and a.custom_id == b.custom_id
    other = parse_row(body(), source=source("g.jsonl"), line=7, ctx=CTX)
    assert other.custom_id != a.custom_id


@pytest.mark.parametrize(
    "field,value,code,param",
    [
        ("temperature", 2.5, "invalid_parameter", "temperature"),
        ("temperature", -0.1, "invalid_parameter", "temperature"),
        ("temperature", True, "invalid_parameter", "temperature"),
        ("top_p", 0, "invalid_parameter", "top_p"),
        ("top_p", 1.01, "invalid_parameter", "top_p"),
        ("min_p", 1.5, "invalid_parameter", "min_p"),
        ("top_k", 1000, "invalid_parameter", "top_k"),
        ("top_k", 1.5, "invalid_parameter", "top_k"),
        ("max_tokens", 0, "invalid_parameter", "max_tokens"),
        ("n", 5, "invalid_parameter", "n"),
        ("presence_penalty", 2.1, "invalid_parameter", "presence_penalty"),
        ("frequency_penalty", -3, "invalid_parameter", "frequency_penalty"),
        ("repetition_penalty", 0, "invalid_parameter", "repetition_penalty"),
        ("repetition_penalty", 5.5, "invalid_parameter", "repetition_penalty"),
        ("seed", "x", "invalid_parameter", "seed"),
        ("stop", [f"s{i}" for i in range(17)], "invalid_parameter", "stop"),
        ("stop", 3, "invalid_parameter", "stop"),
        ("top_logprobs", 3, "invalid_parameter", "top_logprobs"),
        ("logprobs", "yes", "invalid_parameter", "logprobs"),
        ("response_format", {"type": "xml"}, "invalid_parameter", "response_format"),
        ("tool_choice", "required", "invalid_parameter", "tool_choice"),
        ("user", 5, "invalid_parameter", "user"),
    ],
)
def test_out_of_range_parameters(field, value, code, param):
    err = parse(body(**{field: value}))
    assert isinstance(err, FailedRequest), err
    assert (err.code, err.param, err.line) == (code, param, 7)
    assert field in err.message


def test_accepted_edges():
    req = parse(body(temperature=0, top_p=1, min_p=0, top_k=0, n=4, presence_penalty=-2,
                     frequency_penalty=2, repetition_penalty=0.01, stop=[f"s{i}" for i in range(16)],
                     seed=2**40, logprobs=True, top_logprobs=20, max_completion_tokens=5))
    assert isinstance(req, Request), req
    assert req.max_tokens == 5 and req.n == 4


def test_max_n_is_configurable():
    assert isinstance(parse(body(n=6), Context(max_n=8)), Request)


@pytest.mark.parametrize(
    "messages,param",
    [
        (None, "messages"),
        ([], "messages"),
        ([{"role": "robot", "content": "x"}], "messages[0].role"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
         "messages[0].content[0]"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "messages[0].content[0].image_url"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x", "detail": "max"}}]}],
         "messages[0].content[0].image_url.detail"),
        ([{"role": "user", "content": "q"}, {"role": "tool", "content": "r", "tool_call_id": "c1"}],
         "messages[1].tool_call_id"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
    ],
)
def test_bad_messages(messages, param):
    err = parse({"model": "m", "messages": messages})
    assert isinstance(err, FailedRequest)
    assert err.param == param, err


def test_tool_conversation_and_text_parts():
    msgs = [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert isinstance(parse({"model": "m", "messages": msgs}), Request)


def test_model_mismatch_and_wrong_url():
    err = parse(body(model="gpt-4o"))
    assert err.code == "model_mismatch" and "gpt-4o" in err.message and "-m" in err.message
    err = parse({"custom_id": "x", "method": "POST", "url": "/v1/moderations", "body": body()})
    assert err.code == "invalid_url" and err.custom_id == "x"


def test_unknown_fields_are_reported_not_used():
    req = parse(body(frobnicate=1, stream=True))
    assert req.unknown_fields == ("frobnicate",)
    assert any("frobnicate" in w for w in req.warnings)
    assert any(w.startswith("stream") for w in req.warnings)
    assert "frobnicate" not in req.params


def test_tools_and_named_choice():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    ok = parse(body(tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    assert isinstance(ok, Request)
    err = parse(body(tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}}))
    assert err.code == "invalid_parameter" and "nope" in err.message


def test_duplicate_ids_and_passthrough_errors():
    rows = [
        (source("f"), 1, {"custom_id": "a", **body()}),
        (source("f"), 2, {"custom_id": "a", **body()}),
        (source("f"), 3, FailedRequest("x", "f", 3, "invalid_json", "bad")),
        (source("f"), 4, body()),
    ]
    out = list(validate_rows(rows, CTX))
    assert isinstance(out[0], Request)
    assert out[1].code == "duplicate_custom_id" and out[1].line == 2
    assert out[2].code == "invalid_json"
    assert isinstance(out[3], Request)


def test_custom_ids_are_unique_per_file_not_per_run():
    """Two files may both use request-1; inside one file it stays a duplicate."""
    a, b = source("a.jsonl", 0), source("a.jsonl", 1)  # two files that display alike
    rows = [(a, 1, {"custom_id": "request-1", **body()}), (b, 1, {"custom_id": "request-1", **body()}),
            (b, 2, {"custom_id": "request-1", **body()})]
    out = list(validate_rows(rows, CTX))
    assert [isinstance(o, Request) for o in out] == [True, True, False]
    assert out[2].code == "duplicate_custom_id" and (out[2].file, out[2].line) == (1, 2)
    assert [o.file for o in out] == [0, 1, 1]


def test_derived_ids_come_from_the_file_identity_not_its_name():
    one, two = Source(0, "caf\ufffd.jsonl", "file:///in/caf\udce9.jsonl"), Source(1, "caf\ufffd.jsonl", "file:///in/caf\udce8.jsonl")
    ids = {parse_row(body(), source=s, line=1, ctx=CTX).custom_id for s in (one, two)}
    assert len(ids) == 2


def test_shape_is_detected_per_file():
    batch = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body()}
    out = list(validate_rows([(source("f"), 1, batch), (source("f"), 2, body())], CTX))
    assert isinstance(out[0], Request)
    assert out[1].code == "invalid_url"  # a bare body in a batch-format file


def test_seen_ids_is_exact_across_merges():
    """Ids found again whether they sit in the recent set or in the merged buckets."""
    from pipeline.intake.requests import SeenIds

    seen = SeenIds(bits=3, recent=64)
    assert [seen.add(f"id-{i}") for i in range(5000)] == [False] * 5000
    assert all(seen.add(f"id-{i}") for i in range(0, 5000, 7))
    assert not seen.add("id-5000") and seen.count == 5001
    stored = np.concatenate(seen.buckets)
    assert len(stored) + len(seen.recent) == 5001 and len(np.unique(stored)) == len(stored)
    assert all((b[1:] > b[:-1]).all() for b in seen.buckets)  # each bucket sorted


def test_seen_ids_takes_a_resumed_runs_digests_in_one_batch_or_many():
    """Skipped lines' digests, one large batch (merged as numbers, past the recent set) or small
    ones (through it): every id is found afterwards, and a new one is not."""
    from pipeline.intake.requests import SeenIds
    from pipeline.intake.resume import digest

    ids = [f"id-{i}" for i in range(3000)]
    digests = np.array([digest(x) for x in ids], dtype=np.uint64)
    class HeldAsInts(set):
        def update(self, *others):
            raise AssertionError("a large batch went through the set of Python ints (1.7 GiB at 18M)")

    large, small = SeenIds(bits=3, recent=64), SeenIds(bits=3, recent=64)
    large.recent = HeldAsInts()
    large.add_digests(digests)
    assert not large.recent and sum(map(len, large.buckets)) == 3000  # never held as Python ints
    for start in range(0, 3000, 50):
        small.add_digests(digests[start : start + 50])
    for seen in (large, small):
        assert seen.count == 3000 and all(seen.add(x) for x in ids[::13]) and not seen.add("id-3000")
        assert all((b[1:] > b[:-1]).all() for b in seen.buckets)


def test_an_interruption_while_a_row_is_validated_is_never_an_error_row(monkeypatch):
    """The signal handler raises wherever the main thread is: "a bug of ours costs one row"
    must not catch it."""
    from pipeline import exits
    from pipeline.intake import requests

    def interrupted(row):
        raise exits.Interrupted()

    monkeypatch.setattr(requests, "detect", interrupted)
    with pytest.raises(exits.Interrupted):
        parse(body())

"""Reading and validating one row is total: whatever the bytes or the value, exactly one request
or one error row comes out, never an exception, and every error row can be written to Parquet.
Property-based (hypothesis), plus the rows that used to stop a job for good, by name."""

import json
import math

import pyarrow as pa
import pytest
from conftest import chat_line, source
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.intake.reader import decode_line
from pipeline.intake.requests import Context, parse_row, validate_rows
from pipeline.output.rows import error_row
from pipeline.records import FailedRequest, Problem, Request
from pipeline.schema import OUTPUT_SCHEMA

CTX = Context(model_names=frozenset({"m"}))
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

surrogates = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
texts = st.one_of(st.text(max_size=20), surrogates, st.sampled_from(["", "²", "١٢", "none", "auto", "POST"]))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**30, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), texts,
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=20)
FIELDS = ["custom_id", "model", "messages", "temperature", "top_p", "top_k", "max_tokens", "n", "stop",
          "seed", "logprobs", "top_logprobs", "logit_bias", "tools", "tool_choice", "response_format",
          "user", "presence_penalty", "repetition_penalty", "min_p", "body", "url", "method"]


def check_one(item, source_file="f.jsonl", line=1):
    assert isinstance(item, (Request, FailedRequest))
    assert item.source_file == source_file and item.line == line
    item.custom_id.encode("utf-8")
    if item.user is not None:
        item.user.encode("utf-8")
    if isinstance(item, FailedRequest):
        pa.Table.from_pylist([error_row(item, "m")], schema=OUTPUT_SCHEMA)  # the writer never fails


@FAST
@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_value_or_a_problem(data):
    value = decode_line(data)
    if not isinstance(value, Problem):
        json.dumps(value)


@FAST
@given(values)
def test_any_value_gives_one_request_or_one_error(value):
    check_one(parse_row(value, source=source("f.jsonl"), line=1, ctx=CTX))


@FAST
@given(st.sampled_from(FIELDS), values, st.booleans())
def test_any_field_of_a_valid_request_replaced_by_anything(field, value, batch):
    row = chat_line("id-1", "hello", max_tokens=5)
    row["body"]["model"] = "m"
    target = row if field in ("custom_id", "body", "url", "method") or batch else row["body"]
    if not batch:
        row = {"custom_id": row["custom_id"], **row["body"]}
        target = row
    target[field] = value
    check_one(parse_row(row, source=source("f.jsonl"), line=1, ctx=CTX))


@FAST
@given(st.lists(st.one_of(values, st.builds(lambda: chat_line("same", "x"))), max_size=8))
def test_a_stream_gives_one_item_per_row(rows):
    items = list(validate_rows(((source(), i + 1, r) for i, r in enumerate(rows)), CTX))
    assert [i.line for i in items] == list(range(1, len(rows) + 1))
    for i, item in enumerate(items):
        check_one(item, line=i + 1)


@FAST
@given(st.binary(max_size=120))
def test_bytes_through_reader_and_validator(data):
    value = decode_line(data)
    if isinstance(value, Problem):
        item = FailedRequest.of(value, "x-1", "f.jsonl", 1)
    else:
        item = parse_row(value, source=source("f.jsonl"), line=1, ctx=CTX)
    check_one(item)


def body(**fields):
    return {"custom_id": "a", "messages": [{"role": "user", "content": "hi"}], **fields}


@pytest.mark.parametrize("row, code, param", [
    (body(logit_bias={"²": 1}), "invalid_parameter", "logit_bias"),
    (body(logit_bias={"١٢": 1}), "invalid_parameter", "logit_bias"),
    (body(logit_bias={"12345678901": 1}), "invalid_parameter", "logit_bias"),
    (body(tools=[{"type": "function", "function": {"name": "f"}}],
          tool_choice={"type": "function", "function": "f"}), "invalid_parameter", "tool_choice"),
    (body(tools=[{"type": "function", "function": {"name": "f"}}],
          tool_choice={"type": "function", "function": None}), "invalid_parameter", "tool_choice"),
    (body(tool_choice=["auto"]), "invalid_parameter", "tool_choice"),
    (body(model=["m"]), "invalid_parameter", "model"),
    (body(model={"name": "m"}), "invalid_parameter", "model"),
    ({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}, "invalid_row", "body"),
    (body(max_tokens=5.5), "invalid_parameter", "max_tokens"),
    (body(temperature=math.nan), "invalid_parameter", "temperature"),
    (body(max_tokens=math.inf), "invalid_parameter", "max_tokens"),
    (body(custom_id="x" * 100_000), "invalid_parameter", "custom_id"),
    (body(custom_id="\ud800"), "invalid_utf8", "custom_id"),
    (body(user="\udfff"), "invalid_utf8", "user"),
    ({**body(), "\ud800": 1}, "invalid_utf8", None),
])
def test_rows_that_used_to_stop_the_job(row, code, param):
    item = parse_row(row, source=source("f.jsonl"), line=3, ctx=CTX)
    assert isinstance(item, FailedRequest), item
    assert (item.code, item.param) == (code, param), item.message
    check_one(item, line=3)


@pytest.mark.parametrize("data, code", [
    (b'{"max_tokens": ' + b"9" * 5000 + b"}", "invalid_json"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
    (b'{"custom_id": "\\ud800", "messages": []}', "invalid_utf8"),
    (b'{"\\udc00": 1}', "invalid_utf8"),
])
def test_lines_that_used_to_stop_the_job(data, code):
    value = decode_line(data)
    assert isinstance(value, Problem) and value.code == code


def test_integral_floats_are_integers():
    item = parse_row(body(max_tokens=5.0, n=2.0, seed=3.0, top_k=40.0), source=source("f"), line=1, ctx=CTX)
    assert isinstance(item, Request), item
    assert item.params["max_tokens"] == 5 and isinstance(item.params["max_tokens"], int)
    assert item.n == 2 and item.params["seed"] == 3 and item.params["top_k"] == 40


def test_unknown_fields_stay_bounded():
    row = body(**{f"field_{i}_" + "x" * 200: i for i in range(10_000)})
    item = parse_row(row, source=source("f"), line=1, ctx=CTX)
    assert isinstance(item, Request)
    assert len(item.unknown_fields) == 20 and max(map(len, item.unknown_fields)) <= 64
    assert sum(map(len, item.warnings)) < 500 and "(+9995 more)" in item.warnings[0]

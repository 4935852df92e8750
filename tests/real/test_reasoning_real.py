"""A reasoning model on the real vLLM engine (tests/reasoning_model.py: a tiny random-weight model
with `<think>` tokens and a Qwen3-style template that opens the thinking): the thinking split into
reasoning_content by the parser chosen from the model, the thinking budget (vLLM forces the end of
thinking and the answer follows), structured output applied to the answer only, the marker of a row
whose thinking used all of max_tokens, n > 1 with logprobs, and prompt tokens (multi-turn thinking,
enable_thinking, reasoning_effort) that `estimate` counts exactly as the engine does."""

import json

import polars as pl
import pytest
from conftest import invoke, read_output, write_jsonl
from reasoning_model import tiny_reasoner

from pipeline.models.reasoning import THINKING_CUT
from pipeline.output import structured

pytestmark = pytest.mark.engine

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
          "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
    "additionalProperties": False}}}


def line(custom_id, content, **body):
    return {"custom_id": custom_id, "body": {"messages": [{"role": "user", "content": content}], "temperature": 0,
                                             **body}}


LINES = [
    line("budget", "Why is the sky blue?", max_tokens=24, thinking_token_budget=6),
    line("cut", "Why?", max_tokens=6),
    line("json", "Answer", max_tokens=40, thinking_token_budget=4,
         response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}),
    line("off", "Hi", max_tokens=5, chat_template_kwargs={"enable_thinking": False}),
    line("n2", "Hi", max_tokens=10, thinking_token_budget=3, n=2, temperature=1, logprobs=True),
    line("effort", "Hi", max_tokens=4, reasoning_effort="low", thinking_token_budget=2),
    line("plain", "Hi", max_tokens=4, thinking_token_budget=2),
    line("tool", "Weather?", max_tokens=40, thinking_token_budget=3, tools=[WEATHER],
         tool_choice={"type": "function", "function": {"name": "weather"}}),
    {"custom_id": "multi", "body": {"messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": "a thought"},
        {"role": "user", "content": "again"}], "max_tokens": 4, "thinking_token_budget": 2, "temperature": 0}},
]


@pytest.fixture(scope="module")
def model():
    return tiny_reasoner()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reasoning")
    write_jsonl(tmp / "in.jsonl", LINES)
    return tmp


@pytest.fixture(scope="module")
def run(tmp, model):
    res = invoke("run", tmp / "in.jsonl", "-o", tmp / "out", "-m", model, "--dtype", "float32", "-q",
                 "--engine-arg", 'structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": true}')
    assert res.exit_code == 0, res.output
    return {r["custom_id"]: r for r in read_output(tmp / "out").to_dicts()}, res.output


def test_the_parser_is_chosen_from_the_model_and_thinking_is_split(run, tmp):
    rows, _ = run
    report = json.loads((tmp / "out" / "_report.json").read_text())
    assert report["engine"]["reasoning_parser"] == "qwen3"
    budget = rows["budget"]
    assert budget["reasoning_content"] and budget["content"], budget
    assert "</think>" not in budget["reasoning_content"] + budget["content"]


def test_the_budget_ends_thinking_and_the_answer_follows(run):
    rows, _ = run
    budget = rows["budget"]
    # vLLM counts the prompt's opening thinking toward the budget: at most 6 generated thinking tokens
    assert 0 < budget["reasoning_tokens"] <= 6 and budget["completion_tokens"] == 24
    assert budget["finish_reason"] == "length" and not budget["warnings"]


def test_structured_output_applies_to_the_answer_only(run):
    rows, _ = run
    row = rows["json"]
    assert row["reasoning_content"] and row["reasoning_tokens"] > 0
    values, problem = structured.parse(row["content"], SCHEMA)
    assert problem is None and isinstance(values["ok"], bool), row["content"]


def test_thinking_that_uses_all_of_max_tokens_says_so(run):
    rows, output = run
    cut = rows["cut"]
    assert (cut["content"], cut["finish_reason"], cut["reasoning_tokens"]) == (None, "length", 6)
    assert cut["warnings"][0].startswith(THINKING_CUT + ":") and THINKING_CUT in output


def test_enable_thinking_false_gives_no_thinking(run):
    rows, _ = run
    off = rows["off"]
    assert (off["reasoning_content"], off["reasoning_tokens"]) == (None, 0) and off["content"]


def test_every_choice_is_split_with_its_logprobs(run):
    rows, _ = run
    n2 = rows["n2"]
    assert len(n2["choices"]) == 2 and n2["completion_tokens"] == 20
    for choice in n2["choices"]:
        assert choice["reasoning_content"] and choice["content"]
        assert len(choice["logprobs"]["content"]) == 10  # thinking and answer tokens, as vLLM's server gives
    assert 0 < n2["reasoning_tokens"] <= 6


def test_a_tool_call_comes_after_the_thinking(run):
    rows, _ = run
    tool = rows["tool"]
    assert tool["reasoning_content"] and tool["content"] is None
    [call] = tool["tool_calls"]
    assert call["function"]["name"] == "weather" and json.loads(call["function"]["arguments"])["city"] in (
        "Paris",
        "Rome",
    )


def test_estimate_counts_the_prompt_the_engine_saw(run, tmp, model):
    rows, _ = run
    res = invoke("estimate", tmp / "in.jsonl", "-m", model, "--rows-file", tmp / "est.parquet", "--workers", "1")
    assert res.exit_code == 0, res.output
    est = {r["custom_id"]: r["prompt_tokens"] for r in pl.read_parquet(tmp / "est.parquet").to_dicts()}
    assert est == {k: r["prompt_tokens"] for k, r in rows.items()}
    # the effort reached the template (it writes " Reasoning: low." into the system turn)
    assert rows["effort"]["prompt_tokens"] > rows["plain"]["prompt_tokens"]

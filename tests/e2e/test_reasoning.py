"""Reasoning models on the fake engine: thinking split into reasoning_content, counted, priced and
budgeted; per-row and job controls; the marker of a row whose thinking used all of max_tokens;
each provider's form of the thinking. (The real engine: tests/real/test_reasoning_real.py.)"""

import json

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

from pipeline.models.reasoning import THINKING_CUT, reasoning_parser

THINK = ["--engine", "fake", "-m", "smollm2", "-q", "--reasoning-parser", "deepseek_r1"]


def rows_of(tmp_path, lines, *args):
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    res = invoke("run", src, "-o", tmp_path / "out", *THINK, *args)
    assert res.exit_code == 0, res.output
    return {r["custom_id"]: r for r in read_output(tmp_path / "out").to_dicts()}, res


def test_thinking_is_split_counted_and_priced_apart(tmp_path):
    rows, res = rows_of(tmp_path, [chat_line("a", "two words", max_tokens=50, n=2)],
                        "--price-input", "1", "--price-output", "2", "--price-reasoning", "10")
    a = rows["a"]
    assert a["reasoning_content"] == "Let me think about: two words" and a["content"] == "two words"
    assert [c["reasoning_content"] for c in a["choices"]] == ["Let me think about: two words"] * 2
    assert (a["reasoning_tokens"], a["completion_tokens"]) == (12, 16)  # 6 thinking + 2 answer, twice
    assert a["estimated_cost"] == pytest.approx((a["prompt_tokens"] * 1 + 4 * 2 + 12 * 10) / 1e6)
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["reasoning_tokens"] == 12
    assert "of 16 tokens out: 12 thinking (75.0%), 4 answer" in res.output


def test_reasoning_priced_as_output_without_a_reasoning_price(tmp_path):
    rows, _ = rows_of(tmp_path, [chat_line("a", "two words", max_tokens=50)], "--price-input", "1",
                      "--price-output", "2")
    assert rows["a"]["estimated_cost"] == pytest.approx((rows["a"]["prompt_tokens"] + 8 * 2) / 1e6)


def test_budget_per_row_and_job_default(tmp_path):
    lines = [chat_line("job", "one two three", max_tokens=50),
             chat_line("row", "one two three", max_tokens=50, thinking_token_budget=2)]
    rows, _ = rows_of(tmp_path, lines, "--thinking-token-budget", "4")
    assert rows["job"]["reasoning_content"] == "Let me think about:" and rows["job"]["reasoning_tokens"] == 4
    assert rows["row"]["reasoning_content"] == "Let me" and rows["row"]["content"] == "one two three"


def test_thinking_turned_off_by_template_kwargs_or_effort(tmp_path):
    lines = [chat_line("job-default", "x y", max_tokens=50),
             chat_line("row-wins", "x y", max_tokens=50, chat_template_kwargs={"enable_thinking": True}),
             chat_line("effort", "x y", max_tokens=50, reasoning_effort="none", chat_template_kwargs={})]
    rows, _ = rows_of(tmp_path, lines, "--chat-template-kwargs", "enable_thinking=false")
    assert rows["job-default"]["reasoning_content"] is None and rows["job-default"]["reasoning_tokens"] == 0
    assert rows["row-wins"]["reasoning_content"].startswith("Let me think")
    assert rows["effort"]["reasoning_content"] is None


def test_thinking_that_uses_all_of_max_tokens_says_so(tmp_path):
    rows, res = rows_of(tmp_path, [chat_line("cut", "a b c d e f", max_tokens=5)])
    cut = rows["cut"]
    assert cut["finish_reason"] == "length" and cut["content"] is None and cut["error"] is None
    assert cut["reasoning_tokens"] == 5
    assert [w for w in cut["warnings"] if w.startswith(THINKING_CUT + ":")]
    assert THINKING_CUT in res.output  # the summary's warning counts


def test_typed_columns_parse_the_answer_and_name_a_cut(tmp_path):
    table = write_jsonl(tmp_path / "t.jsonl", [{"q": '{"answer": "yes"}', "max": 50}, {"q": "{}", "max": 3}])
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"answer": {"type": "string"}}}))
    res = invoke("run", table, "-o", tmp_path / "out", *THINK, "--template-user", "{{ q }}",
                 "--response-schema", schema, "--sample-column", "max_tokens=max")
    assert res.exit_code == 0, res.output
    rows = read_output(tmp_path / "out").sort("source_line").to_dicts()
    assert rows[0]["answer"] == "yes" and rows[0]["parse_error"] is None
    assert rows[0]["reasoning_content"].startswith("Let me think")
    assert rows[1]["answer"] is None and rows[1]["parse_error"].startswith(THINKING_CUT + ": no answer to parse")


def test_each_provider_carries_thinking_in_its_form(tmp_path):
    from pipeline.providers.anthropic import anthropic_line
    from pipeline.providers.gemini import gemini_line
    from pipeline.providers.openai import openai_line
    from pipeline.providers.responses import responses_line

    rows, _ = rows_of(tmp_path, [chat_line("a", "two words", max_tokens=50)])
    row = rows["a"]
    body = openai_line(row)["response"]["body"]
    assert body["choices"][0]["message"]["reasoning_content"] == row["reasoning_content"]
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 6}
    blocks = anthropic_line(row)["result"]["message"]["content"]
    assert [b["type"] for b in blocks] == ["thinking", "text"] and blocks[0]["thinking"] == row["reasoning_content"]
    gemini = gemini_line(row)["response"]
    assert gemini["candidates"][0]["content"]["parts"][0] == {"text": row["reasoning_content"], "thought": True}
    assert gemini["usageMetadata"]["thoughtsTokenCount"] == 6
    assert gemini["usageMetadata"]["candidatesTokenCount"] == row["completion_tokens"] - 6
    out = responses_line(row)["response"]["body"]
    assert (
        out["output"][0]["type"] == "reasoning" and out["output"][0]["content"][0]["text"] == row["reasoning_content"]
    )
    assert out["usage"]["output_tokens_details"]["reasoning_tokens"] == 6


def test_openai_result_lines_and_report_read_back(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "two words", max_tokens=50)])
    res = invoke("run", src, "-o", tmp_path / "out", *THINK, "--format", "openai")
    assert res.exit_code == 0, res.output
    line = json.loads(next((tmp_path / "out").glob("results/*.jsonl")).read_text().splitlines()[0])
    assert line["response"]["body"]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 6
    report = invoke("report", tmp_path / "out")
    assert "6 thinking" in report.output, report.output


def test_responses_result_lines_carry_the_thinking_and_report_reads_it_back(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "two words", max_tokens=50)])
    res = invoke("run", src, "-o", tmp_path / "out", *THINK, "--format", "responses")
    assert res.exit_code == 0, res.output
    line = json.loads(next((tmp_path / "out").glob("results/*.jsonl")).read_text().splitlines()[0])
    body = line["response"]["body"]
    assert [item["type"] for item in body["output"]] == ["reasoning", "message"]
    assert body["output"][0]["content"][0]["type"] == "reasoning_text" and body["output"][0]["summary"] == []
    assert body["usage"]["output_tokens_details"] == {"reasoning_tokens": 6}
    report = invoke("report", tmp_path / "out")
    assert "6 thinking" in report.output, report.output


@pytest.mark.parametrize("field, value, message", [
    ("reasoning_effort", "extreme", "reasoning_effort must be one of"),
    ("chat_template_kwargs", {"not a name": 1}, "chat_template_kwargs must be an object"),
    ("thinking_token_budget", -2, "thinking_token_budget must be in"),
    ("include_reasoning", "yes", "include_reasoning must be true or false"),
])
def test_reasoning_fields_are_checked(tmp_path, field, value, message):
    rows, _ = rows_of(tmp_path, [chat_line("bad", "x", **{field: value})])
    assert rows["bad"]["error"]["param"] == field and message in rows["bad"]["error"]["message"]


def test_earlier_turns_reasoning_content_reaches_the_template_as_reasoning():
    from conftest import source

    from pipeline.intake.requests import Context, parse_row

    line = {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a", "reasoning_content": "because"},
                         {"role": "user", "content": "and?"}]}
    req = parse_row(line, source=source(), line=1, ctx=Context())
    assert req.messages[1] == {"role": "assistant", "content": "a", "reasoning": "because"}


@pytest.mark.parametrize("model, chosen, parser", [
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", None, "deepseek_r1"),
    ("Qwen/Qwen3-8B", None, "qwen3"),
    ("openai/gpt-oss-20b", None, "openai_gptoss"),
    ("Qwen/QwQ-32B", None, "deepseek_r1"),
    ("meta-llama/Llama-3.1-8B-Instruct", None, None),
    ("Qwen/Qwen3-8B", "none", None),
    ("meta-llama/Llama-3.1-8B-Instruct", "granite", "granite"),
])
def test_the_parser_is_chosen_from_the_model(model, chosen, parser):
    assert reasoning_parser(model, chosen) == parser


def test_estimate_says_which_part_is_thinking_and_calibrates_it_apart(tmp_path):
    """The bound's thinking part is each request's budget (all of max_tokens without one, none
    where thinking is off); a previous run's report calibrates thinking and answer apart."""
    lines = [chat_line("budget", "a b", max_tokens=100, thinking_token_budget=30),
             chat_line("all", "a b", max_tokens=50, n=2),
             chat_line("off", "a b", max_tokens=40, chat_template_kwargs={"enable_thinking": False})]
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    args = ("-m", "smollm2", "--reasoning-parser", "deepseek_r1", "--workers", "1", "--price-input", "1",
            "--price-output", "2", "--price-reasoning", "4")
    res = invoke("estimate", src, *args, "--json")
    assert res.exit_code == 0, res.output
    est = json.loads(res.stdout)
    assert (est["completion_tokens_upper"], est["reasoning_tokens_upper"]) == (240, 130)
    assert est["reasoning_tokens_expected"] == 65 and est["completion_tokens_expected"] == 120
    assert est["cost_usd_upper"] == pytest.approx((est["prompt_tokens"] + 110 * 2 + 130 * 4) / 1e6)
    assert "thinking (deepseek_r1 reasoning parser): 65 expected" in invoke("estimate", src, *args).output
    # a run thought 26 tokens of its 130 and answered 11 of its 110: ratios 0.2 and 0.1
    run = tmp_path / "run"
    run.mkdir()
    (run / "_report.json").write_text(json.dumps({"completion_tokens": 37, "reasoning_tokens": 26}))
    est = json.loads(invoke("estimate", src, *args, "--json", "--calibrate-from", run, "--rows-file",
                            tmp_path / "rows.parquet").stdout)
    assert est["reasoning_ratio"] == pytest.approx(0.2) and est["completion_ratio"] == pytest.approx(0.1)
    assert (est["reasoning_tokens_expected"], est["completion_tokens_expected"]) == (26, 37)
    import polars as pl

    rows = {r["custom_id"]: r for r in pl.read_parquet(tmp_path / "rows.parquet").to_dicts()}
    assert {k: r["reasoning_tokens_upper"] for k, r in rows.items()} == {"budget": 30, "all": 100, "off": 0}
    budget = rows["budget"]  # 30 thinking at 0.2, 70 answer at 0.1
    assert budget["completion_tokens_expected"] == pytest.approx(6 + 7)
    assert budget["cost_usd_expected"] == pytest.approx((budget["prompt_tokens"] + 7 * 2 + 6 * 4) / 1e6)


def test_decode_first_puts_the_longest_thinking_first():
    from conftest import source

    from pipeline.intake.order import expected_decode
    from pipeline.intake.requests import Context, parse_row

    def req(**body):
        return parse_row({"messages": [{"role": "user", "content": "q"}], "max_tokens": 100, **body},
                         source=source(), line=1, ctx=Context())

    weights = {name: expected_decode(req(**body)) for name, body in {
        "unbudgeted": {}, "budget 50": {"thinking_token_budget": 50}, "budget 10": {"thinking_token_budget": 10},
        "off": {"reasoning_effort": "none"}, "longer bound": {"max_tokens": 200, "reasoning_effort": "none"}}.items()}
    assert sorted(weights, key=lambda k: tuple(-x for x in weights[k])) == [
        "longer bound", "unbudgeted", "budget 50", "budget 10", "off"]


def test_the_readme_distillation_example(tmp_path):
    """README and docs/reasoning.md: a question table in; question, thinking and answer out."""
    from conftest import REPO

    res = invoke("run", REPO / "samples" / "reasoning" / "questions.csv", "-o", tmp_path / "out", *THINK,
                 "--template-user", "{{ question }}", "--carry", "question", "--sample", "max_tokens=8192",
                 "--thinking-token-budget", "6144")
    assert res.exit_code == 0, res.output
    rows = read_output(tmp_path / "out").sort("source_line").to_dicts()
    assert len(rows) == 5 and rows[0]["question"].startswith("How many prime numbers")
    assert all(r["reasoning_content"].startswith("Let me think about: ") and r["content"] == r["question"]
               for r in rows)


def test_status_and_metrics_show_thinking_apart(tmp_path):
    rows_of(tmp_path, [chat_line("a", "two words", max_tokens=50)], "--metrics-file", tmp_path / "m.prom")
    assert 'pipeline_tokens{job_name="' in (tmp_path / "m.prom").read_text()
    assert 'kind="reasoning"} 6' in (tmp_path / "m.prom").read_text()
    status = invoke("status", tmp_path / "out")
    assert "of 8 tokens out: 6 thinking (75.0%), 2 answer" in status.output, status.output


def test_the_python_api_takes_the_same_controls():
    import pipeline

    df = pipeline.run([{"q": "one two three"}, {"q": "four"}], model="smollm2", engine="fake",
                      template_user="{{ q }}", reasoning_parser="deepseek_r1", thinking_token_budget=3,
                      chat_template_kwargs={"enable_thinking": True}, sample={"max_tokens": 20})
    assert df["reasoning_content"].to_list() == ["Let me think"] * 2
    assert df["content"].to_list() == ["one two three", "four"] and df["reasoning_tokens"].to_list() == [3, 3]


def test_a_budget_without_a_reasoning_parser_is_refused_before_the_run(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")])
    res = invoke("run", src, "-o", tmp_path / "out", "--engine", "fake", "-m", "smollm2", "-q",
                 "--thinking-token-budget", "10")
    assert res.exit_code == 1 and "--thinking-token-budget needs a reasoning parser" in res.output


def test_a_price_table_reasoning_price_is_used(monkeypatch):
    from pipeline.models import prices

    monkeypatch.setattr(prices, "price_table", lambda: {"m": {"p": {"input": 1, "output": 2, "reasoning": 5,
                                                                    "default": True}}})
    price = prices.find_price("m")
    assert price.reasoning == 5 and price.cost(10, 100, 40) == pytest.approx((10 + 60 * 2 + 40 * 5) / 1e6)
    assert prices.find_price("m", price_reasoning=3).reasoning == 3
    assert prices.hosted_price("m").reasoning == 5

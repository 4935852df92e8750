"""/v1/completions lines on the real vLLM engine: the embedded SmolLM2, a plain prompt (no chat
template). Greedy text must equal transformers' greedy continuation of the same prompt ids, the
prompt tokens must be what `estimate` counts, and the sampling fields must take effect.
"""

import json

import pytest
import torch
from conftest import chat_line, invoke, read_output, write_jsonl

pytestmark = pytest.mark.engine

PROMPT = "The capital of France is"


def line(custom_id, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("complete")
    (tmp / "in").mkdir()
    write_jsonl(tmp / "in" / "complete.jsonl", [
        line("greedy", prompt=PROMPT, temperature=0, max_tokens=8),
        line("ids", prompt=[504, 3575, 282, 4649, 314], temperature=0, max_tokens=4),
        line("default-length", prompt="Once upon a time", temperature=0),
        line("two", prompt="My favourite colour is", temperature=1.0, n=2, max_tokens=6),
        line("logprobs", prompt=PROMPT, temperature=0, max_tokens=3, logprobs=2),
        line("stopped", prompt=PROMPT, temperature=0, max_tokens=8, stop=[" "]),
        line("too-long", prompt="word " * 9000, max_tokens=4),
        line("echo", prompt=PROMPT, echo=True),
    ])
    write_jsonl(tmp / "in" / "chat.jsonl", [chat_line("chat", "Say hi.", temperature=0, max_tokens=4)])
    return tmp


@pytest.fixture(scope="module")
def run(tmp):
    res = invoke("run", tmp / "in", "-o", tmp / "out", "-m", "smollm2", "--dtype", "float32", "-q")
    assert res.exit_code == 0, res.output
    return {r["custom_id"]: r for r in read_output(tmp / "out").to_dicts()}


def greedy(ids, max_tokens):
    """transformers' greedy continuation of these prompt ids, as text, in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models.names import resolve_model

    folder = resolve_model("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def test_greedy_text_equals_transformers(run):
    from transformers import AutoTokenizer

    from pipeline.models.names import resolve_model

    ids = AutoTokenizer.from_pretrained(resolve_model("smollm2"))(PROMPT)["input_ids"]
    assert run["greedy"]["content"] == greedy(ids, 8)
    assert run["greedy"]["prompt_tokens"] == len(ids) and run["greedy"]["completion_tokens"] == 8
    assert run["ids"]["content"] == greedy([504, 3575, 282, 4649, 314], 4)
    assert run["ids"]["prompt_tokens"] == 5


def test_sampling_fields_take_effect(run):
    assert run["default-length"]["completion_tokens"] == 16  # max_tokens unset: 16, as OpenAI and vLLM
    assert len(run["two"]["choices"]) == 2 and run["two"]["completion_tokens"] <= 12
    [choice] = run["logprobs"]["choices"]
    tokens = choice["logprobs"]["content"]
    assert len(tokens) == 3 and all(len(t["top_logprobs"]) == 2 for t in tokens)
    assert "".join(t["token"] for t in tokens) == choice["content"]
    assert " " not in run["stopped"]["content"].strip() and run["stopped"]["finish_reason"] == "stop"
    assert run["chat"]["error"] is None and run["chat"]["content"]  # chat and completions in one run


def test_refusals(run):
    assert run["too-long"]["error"]["code"] == "context_length_exceeded", json.dumps(run["too-long"]["error"])
    assert run["echo"]["error"]["code"] == "unsupported_parameter"


def test_estimate_counts_what_the_engine_counted(run, tmp):
    import polars as pl

    res = invoke("estimate", tmp / "in", "-m", "smollm2", "--rows-file", tmp / "rows.parquet", "--workers", "1")
    assert res.exit_code == 0, res.output
    estimated = {r["custom_id"]: r["prompt_tokens"] for r in pl.read_parquet(tmp / "rows.parquet").to_dicts()}
    for custom_id in ("greedy", "ids", "default-length", "two", "logprobs", "stopped", "chat"):
        assert estimated[custom_id] == run[custom_id]["prompt_tokens"], custom_id

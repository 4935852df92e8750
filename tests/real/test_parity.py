"""Parity with vLLM's own OpenAI batch runner on the same file, model and engine settings:
the same prompt_tokens for every request, and the same greedy completions."""

import json
import subprocess
import sys

import pytest
from conftest import MODEL, chat_line, invoke, read_output, write_jsonl

pytestmark = pytest.mark.engine


def parity_requests():
    rows = [chat_line(f"q{i}", q, temperature=0, max_tokens=20) for i, q in enumerate([
        "What is the capital of Italy?", "Write a haiku about snow.", "Explain gravity in one sentence.",
        "List three animals.", "What is 7 plus 5?"])]
    rows.append({"custom_id": "multi", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": MODEL, "temperature": 0, "max_tokens": 20, "messages": [
            {"role": "system", "content": "You answer in French."},
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Bonjour !"},
            {"role": "user",
             "content": [{"type": "text", "text": "How are you?"}, {"type": "text", "text": "Briefly."}]},
        ]}})
    rows.append(chat_line("stop", "Count from one to ten in words.", temperature=0, max_tokens=30, stop=["five"]))
    return rows


def test_same_prompt_tokens_and_greedy_text_as_vllm_run_batch(tmp_path):
    from pipeline.models.names import resolve_model

    src = write_jsonl(tmp_path / "in.jsonl", parity_requests())
    # in the file's order, one sequence per engine step and one dtype on both sides: with temperature 0
    # the texts still depend on which requests share a batch (CPU kernels sum in a batch-dependent
    # order), and on a CPU without bf16 instructions our engine computes in float32 (issue 11)
    # where run_batch keeps the model's bfloat16
    same = ["--max-model-len", "1024", "--max-num-seqs", "1", "--dtype", "float32"]
    ours = invoke("run", src, "-o", tmp_path / "ours", "-m", "smollm2", "-q", "--order", "input", *same)
    assert ours.exit_code == 0, ours.output
    theirs_path = tmp_path / "theirs.jsonl"
    # run_batch checks each body's model against its served name
    proc = subprocess.run(
        [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(src), "-o", str(theirs_path),
         "--model", resolve_model("smollm2"), "--served-model-name", MODEL,
         "--enforce-eager", *same],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = {}
    for line in theirs_path.read_text().splitlines():
        rec = json.loads(line)
        assert rec["error"] is None, rec
        body = rec["response"]["body"]
        theirs[rec["custom_id"]] = (body["usage"]["prompt_tokens"], body["choices"][0]["message"]["content"])
    rows = {r["custom_id"]: r for r in read_output(tmp_path / "ours").to_dicts()}
    assert set(rows) == set(theirs)
    for cid, (prompt_tokens, content) in theirs.items():
        assert rows[cid]["prompt_tokens"] == prompt_tokens, cid
        assert rows[cid]["content"] == content, cid

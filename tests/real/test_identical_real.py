"""Issue 32 on the real engine (embedded SmolLM2): identical greedy requests are generated once,
and each row gets the answer and the usage the engine gave that body."""

import json

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

pytestmark = pytest.mark.engine


def test_identical_greedy_requests_are_generated_once_on_the_real_engine(tmp_path):
    greedy = dict(temperature=0, max_tokens=12)
    rows = [chat_line(f"same-{i}", "Name a fruit that is yellow.", **greedy) for i in range(4)]
    rows += [chat_line("other", "Name a colour.", **greedy),
             chat_line("seeded-a", "Say a word.", temperature=1.0, seed=7, max_tokens=6),
             chat_line("seeded-b", "Say a word.", temperature=1.0, seed=7, max_tokens=6)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, "-m", "smollm2", "--max-model-len", "512", "-q")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "_report.json").read_text())
    assert report["identical"]["rows_answered_once"] == 4  # same-1..3, seeded-b
    df = read_output(out)
    assert df.height == 7 and df["error"].is_null().all()
    same = df.filter(df["custom_id"].str.starts_with("same-"))
    assert same["content"].n_unique() == 1 and same["content"][0]
    assert same["prompt_tokens"].n_unique() == 1 and same["completion_tokens"].n_unique() == 1
    assert report["completion_tokens"] == df["completion_tokens"].sum()  # billed per row


def test_identical_sampled_requests_go_as_one_request_with_n_on_the_real_engine(tmp_path):
    """Four identical sampled rows (one asks n=2) are one request with n=5: each row gets its own
    choices (sampled, so they differ), its own completion tokens, the prompt billed in full."""
    sampled = dict(temperature=1.0, max_tokens=12)
    rows = [
        chat_line(f"s-{i}", "Write one sentence about any animal you like.", **sampled, **({"n": 2} if i == 0 else {}))
        for i in range(4)
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, "-m", "smollm2", "--max-model-len", "512", "-q")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "_report.json").read_text())
    assert report["identical"]["sampled_rows_merged"] == 4 and report["identical"]["sampled_merged_requests"] == 1
    df = read_output(out).sort("custom_id")
    assert df.height == 4 and df["error"].is_null().all()
    assert [len(c) for c in df["choices"]] == [2, 1, 1, 1]
    texts = [c["content"] for choices in df["choices"] for c in choices]
    assert all(texts) and len(set(texts)) >= 2  # five samples, not one answer copied
    assert df["prompt_tokens"].n_unique() == 1 and df["prompt_tokens"][0] > 0  # each billed its prompt
    assert report["identical"]["sampled_prompt_tokens_sent_once"] == 3 * df["prompt_tokens"][0]
    assert all(0 < t <= 12 * len(c) for t, c in zip(df["completion_tokens"], df["choices"], strict=True))
    assert report["completion_tokens"] == df["completion_tokens"].sum()

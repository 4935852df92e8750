"""Issue 32 on the real engine (embedded SmolLM2): identical greedy requests are generated once,
and each row gets the answer and the usage the engine gave that body. Both tests read one run
(one engine load): its greedy rows and its sampled rows do not interfere, as a test checks."""

import json

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

pytestmark = pytest.mark.engine

GREEDY = dict(temperature=0, max_tokens=12)
SAMPLED = dict(temperature=1.0, max_tokens=12)


def greedy_rows():
    rows = [chat_line(f"same-{i}", "Name a fruit that is yellow.", **GREEDY) for i in range(4)]
    return rows + [chat_line("other", "Name a colour.", **GREEDY),
                   chat_line("seeded-a", "Say a word.", temperature=1.0, seed=7, max_tokens=6),
                   chat_line("seeded-b", "Say a word.", temperature=1.0, seed=7, max_tokens=6)]


def sampled_rows():
    """Four identical sampled rows, one of them asking n=2."""
    return [
        chat_line(f"s-{i}", "Write one sentence about any animal you like.", **SAMPLED, **({"n": 2} if i == 0 else {}))
        for i in range(4)
    ]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One run of both tests' rows: (report, every row, greedy ids, sampled ids)."""
    tmp = tmp_path_factory.mktemp("identical")
    greedy, sampled = greedy_rows(), sampled_rows()
    src = write_jsonl(tmp / "in.jsonl", greedy + sampled)
    out = tmp / "out"
    res = invoke("run", src, "-o", out, "-m", "smollm2", "--max-model-len", "512", "-q")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "_report.json").read_text())
    return report, read_output(out), [r["custom_id"] for r in greedy], [r["custom_id"] for r in sampled]


def test_identical_greedy_requests_are_generated_once_on_the_real_engine(real_run):
    report, every, greedy, _ = real_run
    assert report["identical"]["rows_answered_once"] == 4  # same-1..3, seeded-b
    df = every.filter(every["custom_id"].is_in(greedy))
    assert df.height == 7 and df["error"].is_null().all()
    same = df.filter(df["custom_id"].str.starts_with("same-"))
    assert same["content"].n_unique() == 1 and same["content"][0]
    assert same["prompt_tokens"].n_unique() == 1 and same["completion_tokens"].n_unique() == 1
    assert report["completion_tokens"] == every["completion_tokens"].sum()  # billed per row


def test_identical_sampled_requests_go_as_one_request_with_n_on_the_real_engine(real_run):
    """Four identical sampled rows (one asks n=2) are one request with n=5: each row gets its own
    choices (sampled, so they differ), its own completion tokens, the prompt billed in full."""
    report, every, _, sampled = real_run
    assert report["identical"]["sampled_rows_merged"] == 4 and report["identical"]["sampled_merged_requests"] == 1
    df = every.filter(every["custom_id"].is_in(sampled)).sort("custom_id")
    assert df.height == 4 and df["error"].is_null().all()
    assert [len(c) for c in df["choices"]] == [2, 1, 1, 1]
    texts = [c["content"] for choices in df["choices"] for c in choices]
    assert all(texts) and len(set(texts)) >= 2  # five samples, not one answer copied
    assert df["prompt_tokens"].n_unique() == 1 and df["prompt_tokens"][0] > 0  # each billed its prompt
    assert report["identical"]["sampled_prompt_tokens_sent_once"] == 3 * df["prompt_tokens"][0]
    assert all(0 < t <= 12 * len(c) for t, c in zip(df["completion_tokens"], df["choices"], strict=True))
    assert report["completion_tokens"] == every["completion_tokens"].sum()
    assert every.height == 11  # and the greedy rows of the same run are rows of their own

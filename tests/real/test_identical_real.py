"""Issue 32 on the real engine (embedded SmolLM2): identical greedy requests are generated once,
and each row gets the answer and the usage the engine gave that body. Both tests read one run
(tests/real/smollm2_run.py, shared with test_images_real.py: one engine load)."""

import pytest
from smollm2_run import greedy_rows, sampled_rows, shared_run

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """smollm2_run's shared run: (report, every row, greedy ids, sampled ids)."""
    report, every = shared_run(tmp_path_factory)
    return report, every, [r["custom_id"] for r in greedy_rows()], [r["custom_id"] for r in sampled_rows()]


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

"""Issue 32: identical determined requests are generated once; every row keeps its own id, text,
usage and cost; the report says how much was not computed; --no-identical-once sends them all."""

import json

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q", "--price-input", "1", "--price-output", "2"]


def workload():
    """12 rows: 3 questions x 3 copies at temperature 0, and 3 copies of one sampled question."""
    rows = [chat_line(f"g{q}-{c}", f"greedy question {q}", temperature=0, max_tokens=5)
            for c in range(3) for q in range(3)]
    return rows + [chat_line(f"s{c}", "sampled question", temperature=0.8, max_tokens=5) for c in range(3)]


@pytest.mark.parametrize("flag, once", [((), 6), (("--no-identical-once",), 0)])
def test_identical_requests_are_generated_once_and_written_to_each_row(tmp_path, flag, once):
    src = write_jsonl(tmp_path / "in.jsonl", workload())
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, *FAKE, *flag)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "_report.json").read_text())
    assert report["identical"]["rows_answered_once"] == once
    df = read_output(out).sort("custom_id")
    assert df.height == 12 and df["custom_id"].n_unique() == 12 and df["error"].is_null().all()
    for q in range(3):  # each copy: the same answer, the same usage and cost as the first
        copies = df.filter(df["custom_id"].str.starts_with(f"g{q}-"))
        assert copies["prompt_tokens"].n_unique() == 1 and copies["estimated_cost"].n_unique() == 1
        assert copies["completion_tokens"].n_unique() == 1 and copies["content"].n_unique() == 1
    assert report["prompt_tokens"] == df["prompt_tokens"].sum()  # billed per row
    if once:
        per_row = df.filter(df["custom_id"] == "g0-0")["prompt_tokens"][0]
        assert report["identical"]["prompt_tokens_not_computed"] == 6 * per_row

"""A trial run of a big job: `--limit N` takes the first N rows, `--limit N --sample-seed S` a
seeded random sample of N rows. The report says it was a trial and of how many rows; the limit
is part of the job's fingerprint, so a full run into the trial's output is refused with a clear
message; dry run, validate and estimate take the same rows."""

import json

import pytest
from conftest import chat_line, invoke, read_output, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]


def job(tmp_path, rows=20):
    return write_jsonl(tmp_path / "big.jsonl", [chat_line(f"r{i:02d}", f"question {i}") for i in range(rows)])


def report(out):
    return json.loads((out / "_report.json").read_text())


def test_limit_takes_the_first_rows_and_the_report_says_so(tmp_path):
    src, out = job(tmp_path), tmp_path / "out"
    res = invoke("run", src, "-o", out, *FAKE, "--limit", "5")
    assert res.exit_code == 0, res.output
    assert sorted(read_output(out)["custom_id"]) == [f"r{i:02d}" for i in range(5)]
    assert report(out)["trial"] == {"limit": 5, "sample_seed": None, "input_rows": 20}
    assert "a limited trial (--limit 5): the first 5 of 20 rows" in res.output
    page = invoke("report", out)
    assert page.exit_code == 0 and "a limited trial (--limit 5): the first 5 of 20 rows" in page.output
    assert "limited trial" in (out / "_report.html").read_text()


def test_a_seeded_sample_is_the_same_rows_every_time(tmp_path):
    src = job(tmp_path, rows=200)
    picked = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        res = invoke("run", src, "-o", tmp_path / name, *FAKE, "--limit", "10", "--sample-seed", seed)
        assert res.exit_code == 0, res.output
        picked.append(sorted(read_output(tmp_path / name)["custom_id"]))
    assert len(picked[0]) == 10 and picked[0] == picked[1] and picked[0] != picked[2]
    assert picked[0] != [f"r{i:02d}" for i in range(10)]  # not the first rows
    assert report(tmp_path / "a")["trial"] == {"limit": 10, "sample_seed": 7, "input_rows": 200}


def test_a_full_run_into_a_trials_output_is_refused_with_a_clear_message(tmp_path):
    src, out = job(tmp_path), tmp_path / "out"
    assert invoke("run", src, "-o", out, *FAKE, "--limit", "5").exit_code == 0
    res = invoke("run", src, "-o", out, *FAKE)
    assert res.exit_code == 1
    assert (
        "changed: --limit" in res.output
        and "It holds a trial of 5 rows (--limit 5); this run is the full job" in res.output
    )
    res = invoke("run", src, "-o", out, *FAKE, "--overwrite")
    assert res.exit_code == 0 and read_output(out).height == 20 and report(out)["trial"] is None


def test_dry_run_validate_and_estimate_take_the_trials_rows(tmp_path):
    src = job(tmp_path)
    dry = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--limit", "3", "--dry-run")
    assert dry.exit_code == 0 and "Would process 3 requests" in dry.output
    assert "a limited trial (--limit 3): the first 3 of 20 rows" in dry.output
    checked = invoke("validate", src, "--limit", "4", "--sample-seed", "1")
    assert checked.exit_code == 0 and "4 rows in 1 file(s)" in checked.output
    assert "a random sample of 4 of 20 rows (--sample-seed 1)" in checked.output
    est = invoke("estimate", src, "-m", "smollm2", "--limit", "6", "--json", "--workers", "1")
    figures = json.loads(est.stdout)
    assert figures["requests"] == 6 and figures["trial"]["limit"] == 6
    table = invoke("estimate", src, "-m", "smollm2", "--limit", "6", "--workers", "1")
    assert "a limited trial (--limit 6): the first 6 of 20 rows: the figures are for these rows only" in table.stdout


def test_a_sample_seed_without_a_limit_is_refused(tmp_path):
    res = invoke("run", job(tmp_path), "-o", tmp_path / "out", *FAKE, "--sample-seed", "3")
    assert res.exit_code == 1 and "--sample-seed needs --limit N" in res.output


def test_estimating_the_full_job_from_a_trial_calibrates_on_the_trials_rows(tmp_path):
    rows = [chat_line(f"r{i:02d}", f"question {i}", max_tokens=4 if i < 10 else 400) for i in range(40)]
    src, out = write_jsonl(tmp_path / "big.jsonl", rows), tmp_path / "trial"
    assert invoke("run", src, "-o", out, *FAKE, "--limit", "10", "--sample-seed", "3").exit_code == 0
    args = ("estimate", src, "-m", "smollm2", "--json", "--workers", "1", "--calibrate-from", out)
    full = json.loads(invoke(*args).stdout)
    same_rows = json.loads(invoke(*args, "--limit", "10", "--sample-seed", "3").stdout)
    assert full["completion_ratio"] == pytest.approx(same_rows["completion_ratio"])
    assert same_rows["completion_tokens_expected"] == pytest.approx(report(out)["completion_tokens"], abs=1)


def test_a_template_job_samples_table_rows(tmp_path):
    src = tmp_path / "table.csv"
    src.write_text("question\n" + "".join(f"q{i}\n" for i in range(30)))
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, *FAKE, "--template-user", "{{ question }}", "--carry", "question",
                 "--limit", "5", "--sample-seed", "2")
    assert res.exit_code == 0, res.output
    rows = read_output(out)
    assert rows.height == 5 and rows["error"].is_null().all()
    assert sorted(rows["question"]) == sorted(f"q{line - 1}" for line in rows["source_line"])

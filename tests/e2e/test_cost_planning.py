"""Cost you can plan on, on the fake engine: `estimate --sample-run` runs real rows of the job,
a later run skips them and compares with the estimate, runs calibrate the next estimate, and
--deadline / --budget plan in --json."""

import json
import math

import pytest
from conftest import chat_line, committed_records, invoke, read_output, write_jsonl

FAKE = ("-m", "smollm2", "--engine", "fake", "--workers", "1")


def job_file(tmp_path, rows=40):
    """Two groups: short answers (max_tokens 8) and long ones (max_tokens 64); the fake engine
    echoes the prompt, so completion lengths vary with the prompt. Each prompt's last word is its
    row's own: no two rows are identical requests, which would go as one request with n
    (engines/sampled.py) where these tests count the engine's requests."""
    return write_jsonl(tmp_path / "in.jsonl", [
        chat_line(f"r{i}", " ".join(["word"] * (i % 13) + [f"w{i}"]), max_tokens=8 if i % 4 else 64)
        for i in range(rows)])


def estimate(*args):
    res = invoke("estimate", *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_sample_rows_are_rows_of_the_job(tmp_path, calibration_file):
    src, out, log = job_file(tmp_path), tmp_path / "out", tmp_path / "sent.log"
    r = estimate(src, *FAKE, "--sample-run", "10", "-o", out, "--engine-option", f"log_file={log}")
    assert r["sample_run"]["rows"] == 10 and r["sample_run"]["gpu"] == "fake"
    assert r["completion_ratio_source"].startswith("sample run of 10 rows (seed 0)")
    assert r["completion_tokens_low"] <= r["completion_tokens_expected"] <= r["completion_tokens_high"]
    assert r["completion_tokens_high"] <= r["completion_tokens_upper"]
    assert r["cost_usd_low"] <= r["cost_usd_expected"] <= r["cost_usd_high"]
    assert r["gpu_hours_low"] <= r["gpu_hours_expected"] <= r["gpu_hours_high"]
    assert r["throughput_source"].startswith("measured on the sample run")
    assert sum(rec["rows"] for rec in committed_records(out)) == 10
    assert not (out / "_SUCCESS").exists()
    sampled = log.read_text().split()

    res = invoke("run", src, *FAKE[:4], "-o", out, "--engine-option", f"log_file={log}")
    assert res.exit_code == 0, res.output
    sent = log.read_text().split()
    assert len(sent) == 40 and sorted(sent) == sorted(f"r{i}" for i in range(40))  # the sample's rows ran once
    report = json.loads((out / "_report.json").read_text())
    assert report["resumed"] == 10 and report["requests"] == 40
    e = report["estimate"]["completion_tokens"]
    assert e["actual"] == report["completion_tokens"] and e["expected"] == r["completion_tokens_expected"]
    assert e["inside"] == (e["low"] <= e["actual"] <= e["high"])
    assert "estimated (" in res.output and "the job produced" in res.output
    kinds = [json.loads(line)["kind"] for line in calibration_file.read_text().splitlines()]
    assert kinds.count("estimate") == 1 and kinds.count("throughput") == 2 and kinds.count("lengths") == 4
    assert set(sampled) <= set(sent)


def test_the_same_seed_takes_the_same_rows(tmp_path):
    src = job_file(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    estimate(src, *FAKE, "--sample-run", "6", "-o", one, "--sample-run-seed", "3")
    estimate(src, *FAKE, "--sample-run", "6", "-o", two, "--sample-run-seed", "3")
    ids = [sorted(read_output(o)["custom_id"]) for o in (one, two)]
    assert ids[0] == ids[1] and len(ids[0]) == 6
    assert any(int(i[1:]) % 4 == 0 for i in ids[0])  # the smaller group (max_tokens 64) is in it


def test_a_job_file_gives_the_sample_the_runs_options(tmp_path):
    """estimate --job FILE runs the sample with the file's run options (here --format openai), so
    that `pipeline run --job FILE` resumes it instead of refusing a different job."""
    src, out = job_file(tmp_path, rows=12), tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(f"inputs: [{src}]\nmodel: smollm2\nengine: fake\noutput: {out}\nformat: openai\n")
    estimate("--job", job, "--sample-run", "4", "--workers", "1")
    res = invoke("run", "--job", job)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "_report.json").read_text())["resumed"] == 4


def test_sample_run_needs_an_output_folder(tmp_path):
    res = invoke("estimate", job_file(tmp_path), *FAKE, "--sample-run", "5")
    assert res.exit_code == 1 and "--sample-run needs -o/--output" in res.output


def test_finished_runs_calibrate_the_next_estimate(tmp_path):
    src = job_file(tmp_path)
    assert invoke("run", src, *FAKE[:4], "-o", tmp_path / "out").exit_code == 0
    r = estimate(src, *FAKE)
    assert r["completion_ratio_source"].startswith("calibration file")
    sources = r["lengths_source"]
    assert sources["in.jsonl, max_tokens 64"].startswith("calibration (model, file and max_tokens, 10 requests, ")
    assert sources["in.jsonl, max_tokens 8"].startswith("calibration (model, file and max_tokens, 30 requests, ")
    assert r["throughput_source"].startswith("calibration file (model, engine and GPU: fake")
    assert r["completion_tokens_low"] <= r["completion_tokens_expected"] <= r["completion_tokens_high"]
    # the run measured every row: the expected figure is what it produced, within rounding
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert r["completion_tokens_expected"] == pytest.approx(report["completion_tokens"], abs=2)
    other = write_jsonl(tmp_path / "other.jsonl", [chat_line("x", "hello", max_tokens=8)])
    assert "model and max_tokens" in estimate(other, *FAKE)["lengths_source"]["other.jsonl, max_tokens 8"]


def test_plan_for_a_deadline_and_a_budget(tmp_path):
    src = job_file(tmp_path)
    r = estimate(src, *FAKE, "--tokens-per-second", "0.01", "--deadline", "1h", "--budget", "50")
    p = r["plan"]
    hours = r["gpu_hours_upper"]  # nothing measured: the plan holds to the upper bound
    assert p["gpus_per_engine"] == 1 and p["engines_high"] == math.ceil(hours) and p["hours_left"] == 1
    assert p["own_cost_usd_high"] == pytest.approx(hours * 2.0)
    assert p["own_within_budget"] == (hours * 2.0 <= 50)
    assert p["hosted_cost_usd_high"] == r["cost_usd_upper"]
    res = invoke("estimate", src, *FAKE, "--tokens-per-second", "1", "--deadline", "1h", "--budget", "50")
    assert res.exit_code == 0 and "deadline " in res.stdout and "budget $50.00" in res.stdout
    res = invoke("estimate", src, *FAKE, "--deadline", "soon")
    assert res.exit_code == 1 and "--deadline 'soon'" in res.output
    res = invoke("estimate", src, *FAKE, "--budget", "5")
    assert res.exit_code == 1 and "need a throughput" in res.output

"""A folder of batch files comes back as a folder of result files (line formats): one result file
per input under results/, named after the input, assembled when the job completes; --split-errors
writes OpenAI's output and error files apart. The parts stay the committed unit, so a run killed
while assembling is finished by the rerun."""

import json

import pytest
from conftest import REPO, chat_line, invoke, write_jsonl

from pipeline.output.results import result_names
from pipeline.storage import Location, StorageError

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]
SAMPLES = REPO / "samples" / "provider-batches"


def batch_folder(root):
    """Two folders holding a file of the same name, a nested one, and errors in each."""
    (root / "eu").mkdir(parents=True)
    (root / "us" / "deep").mkdir(parents=True)
    write_jsonl(root / "eu" / "a.jsonl", [chat_line("eu-1", "hi"), chat_line("eu-2", "x", temperature=7), "{bad"])
    write_jsonl(root / "us" / "a.jsonl", [chat_line(f"us-{i}", "hello") for i in range(5)])
    write_jsonl(root / "us" / "deep" / "b.jsonl", [chat_line("b-1", "yo"), chat_line("b-2", "yo", n=9)])
    return root


def ids(path):
    return sorted(json.loads(line)["custom_id"] for line in path.read_text().splitlines())


def test_a_folder_of_batch_files_comes_back_as_a_folder_of_result_files(tmp_path):
    src = batch_folder(tmp_path / "batches")
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--format", "openai", "--checkpoint-every", "2")
    assert res.exit_code == 0, res.output
    results = tmp_path / "out" / "results"
    assert sorted(p.relative_to(results).as_posix() for p in results.rglob("*")) == [
        "eu", "eu/a.results.jsonl", "us", "us/a.results.jsonl", "us/deep", "us/deep/b.results.jsonl"]
    eu = ids(results / "eu" / "a.results.jsonl")
    assert len(eu) == 3 and {"eu-1", "eu-2"} < set(eu)  # and the unreadable line's derived id
    assert ids(results / "us" / "a.results.jsonl") == [f"us-{i}" for i in range(5)]
    assert ids(results / "us" / "deep" / "b.results.jsonl") == ["b-1", "b-2"]
    assert json.loads((tmp_path / "out" / "_report.json").read_text())["result_files"] == 3
    again = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--format", "openai")
    assert again.exit_code == 0 and "already complete" in again.output


@pytest.mark.parametrize("fmt", ["openai", "responses"])
def test_split_errors_writes_failed_requests_apart_as_openai_does(tmp_path, fmt):
    src = batch_folder(tmp_path / "batches")
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--format", fmt, "--split-errors")
    assert res.exit_code == 0, res.output
    results = tmp_path / "out" / "results"
    ok = [json.loads(line) for line in (results / "eu" / "a.results.jsonl").read_text().splitlines()]
    bad = [json.loads(line) for line in (results / "eu" / "a.errors.jsonl").read_text().splitlines()]
    assert [line["custom_id"] for line in ok] == ["eu-1"] and all(line["error"] is None for line in ok)
    assert len(bad) == 2 and all(line["response"] is None and line["error"]["code"] for line in bad)
    assert not (results / "us" / "a.errors.jsonl").exists()  # no errors, no error file
    assert (results / "us" / "deep" / "b.errors.jsonl").exists()  # n=9 is over --max-n


def test_native_results_keep_each_providers_format_per_file(tmp_path):
    res = invoke("run", SAMPLES, "-o", tmp_path / "out", *FAKE, "--route", "*=smollm2", "--format", "native",
                 "--split-errors")
    assert res.exit_code == 0, res.output
    results = tmp_path / "out" / "results"
    for line in (results / "anthropic.results.jsonl").read_text().splitlines():
        assert json.loads(line)["result"]["type"] == "succeeded"
    for line in (results / "anthropic.errors.jsonl").read_text().splitlines():
        assert json.loads(line)["result"]["type"] == "errored"
    for line in (results / "gemini.errors.jsonl").read_text().splitlines():
        assert json.loads(line)["status"]
    total = sum(len(p.read_text().splitlines()) for p in results.glob("*.jsonl"))
    assert total == sum(1 for p in SAMPLES.glob("*.jsonl") for line in p.read_text().splitlines() if line.strip())


def test_a_run_stopped_while_assembling_is_finished_by_the_rerun(tmp_path, monkeypatch):
    src = batch_folder(tmp_path / "batches")
    out = tmp_path / "out"
    real, calls = Location.put_file, []

    def fail_second(self, source):
        calls.append(self.path)
        if len(calls) == 2:
            raise StorageError("writing failed: connection reset")
        real(self, source)

    monkeypatch.setattr(Location, "put_file", fail_second)
    res = invoke("run", src, "-o", out, *FAKE, "--format", "openai")
    assert res.exit_code == 3 and not (out / "_SUCCESS").exists()
    monkeypatch.setattr(Location, "put_file", real)
    res = invoke("run", src, "-o", out, *FAKE, "--format", "openai")
    assert res.exit_code == 0, res.output
    assert "already done before this run" in res.output  # nothing ran twice
    files = sorted(p.relative_to(out / "results").as_posix() for p in (out / "results").rglob("*.jsonl"))
    assert files == ["eu/a.results.jsonl", "us/a.results.jsonl", "us/deep/b.results.jsonl"]
    assert sum(len(p.read_text().splitlines()) for p in (out / "results").rglob("*.jsonl")) == 10
    assert not [p for p in out.rglob(".tmp-*")]


def test_overwrite_replaces_the_old_jobs_result_files(tmp_path):
    src = batch_folder(tmp_path / "batches")
    out = tmp_path / "out"
    assert invoke("run", src, "-o", out, *FAKE, "--format", "openai").exit_code == 0
    one = write_jsonl(tmp_path / "c.jsonl", [chat_line("c", "hi")])
    res = invoke("run", one, "-o", out, *FAKE, "--format", "openai", "--overwrite")
    assert res.exit_code == 0, res.output
    assert [p.name for p in (out / "results").rglob("*") if p.is_file()] == ["c.results.jsonl"]


def test_parquet_output_has_no_result_files_and_keeps_source_file(tmp_path):
    src = batch_folder(tmp_path / "batches")
    assert invoke("run", src, "-o", tmp_path / "out", *FAKE).exit_code == 0
    assert not (tmp_path / "out" / "results").exists()
    import polars as pl

    files = pl.read_parquet(tmp_path / "out" / "part-*.parquet")["source_file"].unique().to_list()
    assert len(files) == 3


def test_a_foreign_results_folder_is_refused_for_a_line_format(tmp_path):
    src = batch_folder(tmp_path / "batches")
    (tmp_path / "out" / "results").mkdir(parents=True)
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--format", "openai", "--allow-foreign-files")
    assert res.exit_code == 1 and "results" in res.output


@pytest.mark.parametrize(("inputs", "names"), [
    (["/d/batches/a.jsonl"], ["a"]),
    (["/d/x/a.jsonl", "/d/y/a.jsonl"], ["x/a", "y/a"]),
    (["/d/b/a.jsonl", "/d/b/sub/c.jsonl.gz"], ["a", "sub/c"]),
    (["/d/a.jsonl", "/d/a.csv"], ["a.jsonl", "a.csv"]),
    (["s3://bkt/in/a.jsonl", "gs://bkt/in/a.jsonl"], ["s3/bkt/in/a", "gs/bkt/in/a"]),
    (["https://h/a.jsonl?sig=***", "https://h/b.parquet"], ["a", "b"]),
    (["/d/p=1/part.jsonl", "/d/p=2/part.jsonl"], ["p=1/part", "p=2/part"]),
    (["/d/a.jsonl", "/d/a.jsonl"], ["a.jsonl", "a.jsonl-2"]),  # displayed alike: numbered
])
def test_result_names_follow_the_inputs_paths_and_never_collide(inputs, names):
    assert result_names(inputs) == names


def test_split_errors_needs_a_line_format(tmp_path):
    src = batch_folder(tmp_path / "batches")
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--split-errors")
    assert res.exit_code == 1 and "--split-errors needs a line format" in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["openai", "responses"])
def test_killed_runs_end_with_each_input_line_once_in_its_result_file(tmp_path, fmt):
    import random
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "batches"
    for folder in ("eu", "us"):
        (root / folder).mkdir(parents=True)
        write_jsonl(root / folder / "a.jsonl",
                    [chat_line(f"{folder}-{i}", "hi", n=1 if i % 9 else 9) for i in range(60)])
    out, rng = tmp_path / "out", random.Random(5)
    command = [sys.executable, "-m", "pipeline", "run", str(root), "-o", str(out), *FAKE, "--format", fmt,
               "--split-errors", "--checkpoint-every", "7", "--max-in-flight", "4",
               "--engine-option", "step_delay=0.01"]
    for _ in range(4):
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert subprocess.run(command, cwd=REPO, capture_output=True).returncode == 0
    for folder in ("eu", "us"):
        ok = ids(out / "results" / folder / "a.results.jsonl")
        bad = ids(out / "results" / folder / "a.errors.jsonl")
        assert sorted(ok + bad) == sorted(f"{folder}-{i}" for i in range(60))
        assert bad == sorted(f"{folder}-{i}" for i in range(0, 60, 9))
        kinds = {json.loads(line)["response"]["body"]["object"]
                 for line in (out / "results" / folder / "a.results.jsonl").read_text().splitlines()}
        assert kinds == {"response" if fmt == "responses" else "chat.completion"}
    assert not [p for p in out.rglob(".tmp-*")]


def test_a_part_changed_by_something_else_is_refused_not_assembled(tmp_path, monkeypatch):
    from pipeline.output import folder

    src = batch_folder(tmp_path / "batches")
    out = tmp_path / "out"
    finish = folder.Claim.finish

    def truncate_a_part_first(self, report):
        part = next(out.glob("part-*.jsonl"))
        part.write_bytes(part.read_bytes().split(b"\n", 1)[1])
        return finish(self, report)

    monkeypatch.setattr(folder.Claim, "finish", truncate_a_part_first)
    res = invoke("run", src, "-o", out, *FAKE, "--format", "openai")
    assert res.exit_code == 1 and "does not hold the lines its commit record lists" in res.output
    assert not (out / "_SUCCESS").exists()

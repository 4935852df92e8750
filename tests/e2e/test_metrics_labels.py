"""--metrics-file labels every sample by the job's stable name (--job-name; default: the --job
file's name, else the --output path as written with its dates left as {date}), never by the
dated output path: two nightly runs are one series."""

from conftest import chat_line, invoke, write_jsonl
from prometheus_client.parser import text_string_to_metric_families

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]


def labels(metrics):
    """Every sample's labels, as (metric, sorted label items), with the values left out."""
    return {(s.name, tuple(sorted(s.labels.items())))
            for f in text_string_to_metric_families(metrics.read_text()) for s in f.samples}


def nightly(tmp_path, date, output, *more):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi"), "{bad"])
    metrics = tmp_path / f"{date}.prom"
    res = invoke("run", src, "-o", output, *FAKE, "--date", date, "--metrics-file", metrics, *more)
    assert res.exit_code == 0, res.output
    return labels(metrics)


def test_two_nightly_runs_with_different_dates_have_the_same_label_set(tmp_path):
    out = f"{tmp_path}/out/{{date}}"
    first, second = nightly(tmp_path, "2026-12-01", out), nightly(tmp_path, "2026-12-02", out)
    assert first == second
    names = {dict(items)["job_name"] for _, items in first}
    assert names == {out}  # the path as written, not 2026-12-01
    assert not any("output" in dict(items) for _, items in first)


def test_a_date_written_into_the_path_by_the_shell_reads_as_date(tmp_path):
    first = nightly(tmp_path, "2026-12-01", tmp_path / "out" / "2026-12-01")
    second = nightly(tmp_path, "2026-12-02", tmp_path / "out" / "2026-12-02")
    assert first == second and {dict(i)["job_name"] for _, i in first} == {f"{tmp_path}/out/{{date}}"}


def test_the_job_files_name_and_job_name_label_the_job(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi")])
    job = tmp_path / "nightly-llama.yaml"
    job.write_text(f"inputs: [{src}]\noutput: {tmp_path}/out/{{date}}\nmodel: smollm2\nengine: fake\nquiet: true\n")
    metrics = tmp_path / "m.prom"
    assert invoke("run", "--job", job, "--metrics-file", metrics).exit_code == 0
    assert {dict(i)["job_name"] for _, i in labels(metrics)} == {"nightly-llama"}
    assert invoke("run", "--job", job, "--metrics-file", metrics, "--job-name", "llama/eu").exit_code == 0
    assert {dict(i)["job_name"] for _, i in labels(metrics)} == {"llama/eu"}

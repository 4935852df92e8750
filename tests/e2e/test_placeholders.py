"""Dated paths: {date}, {yesterday}, {run_id} in inputs, outputs and job files."""

import datetime as dt
import json

from conftest import chat_line, invoke, read_output, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]


def test_backfill_date_in_input_and_output_paths(tmp_path):
    write_jsonl(tmp_path / "requests-2026-01-30.jsonl", [chat_line("a", "hi")])
    res = invoke("run", f"{tmp_path}/requests-{{yesterday}}.jsonl", "-o", f"{tmp_path}/out/{{date:%Y/%m/%d}}",
                 *FAKE, "--date", "2026-01-31")
    assert res.exit_code == 0, res.output
    out = tmp_path / "out" / "2026" / "01" / "31"
    assert read_output(out).height == 1
    report = json.loads((out / "_report.json").read_text())
    assert report["date"] == "2026-01-31" and report["run_id"].startswith("2026-01-31T")


def test_today_and_run_id_from_a_job_file(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi")])
    job = tmp_path / "nightly.yaml"
    job.write_text(f"inputs: {tmp_path}/in.jsonl\noutput: '{tmp_path}/runs/{{date}}-{{run_id}}'\n"
                   "model: smollm2\nengine: fake\nquiet: true\nrun_id: first\n")
    res = invoke("run", "--job", job)
    assert res.exit_code == 0, res.output
    assert read_output(tmp_path / "runs" / f"{dt.date.today().isoformat()}-first").height == 1


def test_unknown_placeholder_and_bad_date(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi")])
    res = invoke("run", src, "-o", f"{tmp_path}/{{tomorrow}}", *FAKE)
    assert res.exit_code == 1 and "unknown placeholder {tomorrow}" in res.output
    res = invoke("run", src, "-o", f"{tmp_path}/{{date}}", *FAKE, "--date", "31/01/2026")
    assert res.exit_code == 1 and "YYYY-MM-DD" in res.output
    res = invoke("run", src, "-o", f"{tmp_path}/{{{{literal}}}}", *FAKE)
    assert res.exit_code == 0 and (tmp_path / "{literal}" / "_SUCCESS").exists()


def test_metrics_file_in_prometheus_text_format(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hi"), "{bad"])
    metrics = tmp_path / "textfile" / "pipeline.prom"
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--metrics-file", metrics)
    assert res.exit_code == 0, res.output
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    requests = {s.labels["status"]: s.value for s in families["pipeline_requests"].samples}
    assert requests == {"succeeded": 1, "failed": 1}
    assert [s.labels["code"] for s in families["pipeline_errors"].samples] == ["invalid_json"]
    assert families["pipeline_exit_code"].samples[0].value == 0
    assert "pipeline_last_success_timestamp_seconds" in families
    write_jsonl(src, [chat_line("b", "changed")])
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--metrics-file", metrics)  # a refused run
    assert res.exit_code == 1
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    assert families["pipeline_exit_code"].samples[0].value == 1
    assert "pipeline_last_success_timestamp_seconds" not in families

"""--route: batch files that name hosted models run on this run's model, and say how."""

import json

from conftest import chat_line, invoke, read_output, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def rows_naming(*models):
    out = []
    for i, m in enumerate(models):
        r = chat_line(f"r{i}", f"q{i}")
        r["body"]["model"] = m
        out.append(r)
    return out


def test_exact_pattern_and_catch_all_routes(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", rows_naming(
        "gpt-4o-mini", "gpt-4o-2024-08-06", "ft:gpt-3.5-turbo-0125:personal::abc", "gemma3:12b", MODEL))
    res = invoke("run", src, "-o", tmp_path / "a", *FAKE, "--route", "gpt-4o*=smollm2",
                 "--route", "ft:gpt-3.5-turbo-0125:personal::abc=smollm2")
    assert res.exit_code == 0, res.output
    df = read_output(tmp_path / "a").sort("source_line")
    assert df["requested_model"].to_list() == ["gpt-4o-mini", "gpt-4o-2024-08-06",
                                               "ft:gpt-3.5-turbo-0125:personal::abc", None, MODEL]
    assert df["model"].unique().to_list() == [MODEL]
    [err] = [e for e in df["error"].to_list() if e]
    assert err["code"] == "model_mismatch" and "--route 'gemma3:12b=" in err["message"]
    assert "--served-model-name" in err["message"]
    res = invoke("run", src, "-o", tmp_path / "b", *FAKE, "--route", "*=smollm2")  # a catch-all
    assert res.exit_code == 0 and read_output(tmp_path / "b")["error"].is_null().all()


def test_routes_in_a_job_file_drive_validate_and_estimate(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", rows_naming("gpt-4o-mini", "claude-3-5-haiku"))
    job = tmp_path / "job.yaml"
    job.write_text(f"inputs: {src}\noutput: {tmp_path / 'out'}\nmodel: smollm2\nengine: fake\nquiet: true\n"
                   f"route:\n  'gpt-4o*': smollm2\n  'claude-*': {MODEL}\n")
    assert invoke("validate", "--job", job).exit_code == 0
    res = invoke("estimate", "--job", job, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[: res.output.rindex("}") + 1])["invalid"] == 0
    assert invoke("run", "--job", job).exit_code == 0
    assert read_output(tmp_path / "out")["error"].is_null().all()


def test_route_to_a_model_this_run_does_not_serve(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", rows_naming("gpt-4o-mini"))
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--route", "gpt-4o*=llama-3-70b")
    assert res.exit_code == 1 and "this run serves" in res.output and "not llama-3-70b" in res.output
    assert not (tmp_path / "out").exists()

"""A mistyped model fails fast and says so; a job of error rows only starts no engine (issue 34)."""

import json

import pytest
from conftest import invoke, read_output, write_jsonl

import pipeline
from pipeline import exits


@pytest.mark.parametrize("engine", ["vllm"])
def test_a_mistyped_model_is_an_error_before_anything_is_written(tmp_path, engine):
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, "--engine", engine, "-m", "smolm2")
    assert res.exit_code == 1, res.output
    assert "'smolm2'" in res.output and "Did you mean 'smollm2'?" in res.output and "Traceback" not in res.output
    assert not out.exists()  # no _manifest.json, no _lease/
    with pytest.raises(exits.UserError, match="Did you mean 'smollm2'"):
        pipeline.run(str(src), output=str(out), model="smolm2", quiet=True)
    assert not out.exists()
    for model in ("smollm2", str(tmp_path)):  # an alias and a local folder pass the check
        res = invoke("run", src, "-o", tmp_path / "dry", "--engine", engine, "-m", model, "--dry-run")
        assert "Did you mean" not in res.output


def test_a_job_of_error_rows_only_starts_no_engine(tmp_path):
    loads = tmp_path / "loads.log"
    bad = ["not json", json.dumps({"messages": "no"}), json.dumps({"max_tokens": 3})]
    src = write_jsonl(tmp_path / "in.jsonl", bad)
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, "--engine", "fake", "-m", "smollm2", "-q",
                 "--engine-option", f"load_log={loads}")
    assert res.exit_code == 0, res.output
    df = read_output(out)
    assert df.height == 3 and df["error"].is_not_null().all()
    assert not loads.exists()  # the engine never loaded
    assert json.loads((out / "_report.json").read_text())["engines"] == 0
    # the same on the real engine's path: no vLLM start for rows that never reach it
    res = invoke("run", src, "-o", tmp_path / "out-vllm", "--engine", "vllm", "-m", "smollm2", "-q")
    assert res.exit_code == 0, res.output
    assert read_output(tmp_path / "out-vllm").height == 3

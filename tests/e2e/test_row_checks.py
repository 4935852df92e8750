"""The job's own row checks (--check, --check-schema, --check-regex; a callable or a pydantic
model from Python) on the fake engine, which echoes the last message back."""

import json

from conftest import chat_line, invoke, read_output, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]


def lines(tmp_path):
    return write_jsonl(tmp_path / "in.jsonl", [
        chat_line("num", '{"n": 3}'), chat_line("neg", '{"n": -3}'), chat_line("text", "hello"),
        chat_line("cut", "a b c d e", max_tokens=2)])


def verdicts(out):
    return {r["custom_id"]: (r["verdict"], r["verdict_message"]) for r in read_output(out).to_dicts()}


def test_check_regex(tmp_path):
    assert invoke("run", lines(tmp_path), "-o", tmp_path / "out", *FAKE, "--check-regex", r"\{.*\}").exit_code == 0
    got = verdicts(tmp_path / "out")
    assert got["num"] == got["neg"] == ("ok", None)
    assert got["text"] == ("failed_check", "check-regex: the content does not match '\\\\{.*\\\\}'")
    assert got["cut"][0] == "truncated"  # a check runs only on rows that are otherwise ok


def test_check_schema_from_a_file(tmp_path):
    schema = tmp_path / "s.yaml"
    schema.write_text("type: object\nproperties:\n  n: {type: integer, minimum: 0}\nrequired: [n]\n")
    assert invoke("run", lines(tmp_path), "-o", tmp_path / "out", *FAKE, "--check-schema", schema).exit_code == 0
    got = verdicts(tmp_path / "out")
    assert got["num"][0] == "ok"
    assert got["neg"] == ("failed_check", "check-schema s.yaml: at n: -3 is less than the minimum of 0")
    assert got["text"][0] == "failed_check" and "not JSON" in got["text"][1]


def test_check_module_function_and_job_file(tmp_path, monkeypatch):
    (tmp_path / "mychecks.py").write_text(
        "def short(row):\n    return None if len(row['content']) < 8 else f\"{len(row['content'])} characters\"\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"inputs": [str(lines(tmp_path))], "output": str(tmp_path / "out"),
                               "engine": "fake", "model": "smollm2", "check": "mychecks:short",
                               "max_bad_rows": 2}))
    res = invoke("run", "--job", job, "-q")
    got = verdicts(tmp_path / "out")
    assert got["num"] == ("failed_check", "8 characters") and got["text"] == ("ok", None)
    assert res.exit_code == 5  # num, neg and cut: 3 bad rows, more than 2


def test_unusable_checks_are_refused_before_anything_is_written(tmp_path):
    src = lines(tmp_path)
    for args, message in ((("--check-regex", "(unclosed"), "--check-regex '(unclosed' is not a regular expression"),
                          (("--check", "nosuchmodule:f"), "--check 'nosuchmodule:f' cannot be imported"),
                          (("--check", "justaname"), "give it as module:function"),
                          (("--check-schema", tmp_path / "missing.json"), "cannot be read as JSON or YAML")):
        res = invoke("run", src, "-o", tmp_path / "out", *FAKE, *args)
        assert res.exit_code == 1 and message in res.output, res.output
        assert not (tmp_path / "out").exists()


def test_template_job_with_a_python_check_and_a_pydantic_model(tmp_path):
    import polars as pl
    from pydantic import BaseModel, field_validator

    import pipeline

    class Count(BaseModel):
        n: int

        @field_validator("n")
        @classmethod
        def positive(cls, v):
            assert v >= 0, "n must not be negative"
            return v

    table = pl.DataFrame({"text": ['{"n": 3}', '{"n": -3}', "hello"]})
    df = pipeline.run(table, model="smollm2", engine="fake", template_user="{{ text }}", quiet=True,
                      output=str(tmp_path / "a"), check=Count)
    assert sorted(df["verdict"].to_list()) == ["failed_check", "failed_check", "ok"]
    messages = sorted(m for m in df["verdict_message"].to_list() if m)
    assert messages[0].startswith("Count: at n: Assertion failed, n must not be negative")
    assert "Count: at the top level: Invalid JSON" in messages[1]
    df2 = pipeline.run(table, model="smollm2", engine="fake", template_user="{{ text }}", quiet=True,
                       output=str(tmp_path / "b"), check=lambda row: None if "n" in row["content"] else "no n")
    assert sorted(df2["verdict"].to_list()) == ["failed_check", "ok", "ok"]

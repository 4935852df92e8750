"""Issue 12: dataset generation from any table. Template jobs (Jinja2 over a row's columns),
carried-over columns with their input types, typed structured outputs, on the fake engine (it
echoes the last message, so a template rendering `{{ payload }}` makes the completion)."""

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, invoke, read_output, source, wait_for_commit, write_jsonl

FAKE = ["--engine", "fake", "-m", "smollm2", "-q"]
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number"},
        "count": {"type": "integer"},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "where": {"$ref": "#/$defs/Where"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["label", "score", "tags"],
    "$defs": {"Where": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}}}},
}
GOOD = {"label": "positive", "score": 0.5, "count": 3, "ok": True, "tags": ["a", "b"],
        "where": {"city": "Oslo", "zip": 150}, "note": None}


def table(n=12):
    """A table of varied columns and types, some null."""
    return pa.table({
        "id": pa.array([f"q{i}" for i in range(n)]),
        "question": pa.array([f"what is {i}?" for i in range(n)]),
        "context": pa.array([None if i % 5 == 3 else f"context {i}" for i in range(n)]),
        "label": pa.array([i % 3 for i in range(n)], pa.int16()),
        "weight": pa.array([i / 4 for i in range(n)]),
        "flag": pa.array([i % 2 == 0 for i in range(n)]),
        "day": pa.array([dt.date(2024, 1, 1 + i % 28) for i in range(n)]),
        "at": pa.array([dt.datetime(2024, 1, 1, i % 24, tzinfo=dt.timezone.utc) for i in range(n)],
                       pa.timestamp("us", tz="UTC")),
        "tags": pa.array([[f"t{j}" for j in range(i % 3)] for i in range(n)]),
        "meta": pa.array([{"a": i, "b": str(i)} for i in range(n)]),
        "model": pa.array([f"m{i}" for i in range(n)]),  # clashes with the output's own column
    })


def by_line(out):
    return read_output(out).sort("source_line")


# ---- carried columns ---------------------------------------------------------------------------
def test_carried_columns_equal_the_input_with_their_types(tmp_path):
    src = tmp_path / "t.parquet"
    pq.write_table(table(), src)
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, *FAKE, "--template-user", "Q: {{ question }}", "--carry-all",
                 "--id-column", "id")
    assert res.exit_code == 0, res.output
    got = pq.read_table(sorted(out.glob("part-*.parquet"))).sort_by("source_line")
    want = table()
    for name in want.column_names:
        col = "input_model" if name == "model" else name  # the documented clash rule
        assert got.schema.field(col).type == want.schema.field(name).type, name
        assert got.column(col).to_pylist() == want.column(name).to_pylist(), name
    assert len(set(got.column("model").to_pylist())) == 1  # the pipeline's own column keeps its name
    assert got.column("custom_id").to_pylist() == want.column("id").to_pylist()
    assert got.column("content").to_pylist() == [f"Q: what is {i}?" for i in range(12)]


def test_carry_names_columns_and_unknown_one_is_refused(tmp_path):
    src = tmp_path / "t.parquet"
    pq.write_table(table(), src)
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--template-user", "{{ question }}",
                 "--carry", "question", "--carry", "weight")
    assert res.exit_code == 0, res.output
    df = by_line(tmp_path / "out")
    assert df.columns[-2:] == ["question", "weight"] and "flag" not in df.columns
    res = invoke("run", src, "-o", tmp_path / "out2", *FAKE, "--template-user", "{{ question }}", "--carry", "nope")
    assert res.exit_code == 1 and "--carry nope: no input has this column" in res.output


# ---- template errors ---------------------------------------------------------------------------
def test_missing_or_null_column_gives_an_error_row_naming_it(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", [
        {"q": "one", "ctx": "c1"},
        {"q": "two", "ctx": None},  # null
        {"q": "three"},  # missing
        {"q": "four", "ctx": "c4"},
    ])
    tpl = "{% if hint %}{{ hint }}{% endif %}{{ q }} / {{ ctx }}"  # a condition on a missing column is false
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, *FAKE, "--template-user", tpl)
    assert res.exit_code == 0, res.output
    df = by_line(out)
    assert df.height == 4
    assert df["content"].to_list() == ["one / c1", None, None, "four / c4"]
    errors = df["error"].to_list()
    assert errors[0] is None and errors[3] is None
    assert (
        errors[1]["code"] == "template_error"
        and errors[1]["param"] == "ctx"
        and "'ctx', which is null" in errors[1]["message"]
    )
    assert errors[2]["code"] == "template_error" and "'ctx', which is missing" in errors[2]["message"]
    res = invoke("validate", src, "--template-user", tpl)
    assert res.exit_code == 1
    assert f"{src}:2: ctx:" in res.output and f"{src}:3: ctx:" in res.output
    assert "4 rows in 1 file(s): 2 valid, 2 invalid" in res.output


def test_template_syntax_error_and_bad_sample_are_usage_errors(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", [{"q": "x"}])
    res = invoke("validate", src, "--template-user", "{{ q ")
    assert res.exit_code == 1 and "does not compile" in res.output
    res = invoke("validate", src, "--template-user", "{{ q }}", "--sample", "temprature=1")
    assert res.exit_code == 1 and "temprature" in res.output
    res = invoke("validate", src, "--template-user", "prompts/missing.j2")
    assert res.exit_code == 1 and "no such template file" in res.output
    res = invoke("validate", src, "--carry", "q")
    assert res.exit_code == 1 and "needs --template-user" in res.output


def test_sampling_fields_set_once_and_from_a_column_are_validated(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", [
        {"q": "a b c d e f", "budget": 2}, {"q": "a b c d e f", "budget": None}, {"q": "x", "budget": 0},
    ])
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, *FAKE, "--template-user", "{{ q }}", "--sample", "max_tokens=4",
                 "--sample", "temperature=0", "--sample-column", "max_tokens=budget")
    assert res.exit_code == 0, res.output
    df = by_line(out)
    assert df["content"].to_list()[:2] == ["a b", "a b c d"]  # the column wins; null: the set value
    assert df["error"].to_list()[2]["param"] == "max_tokens"  # 0 is refused as in a request file


# ---- typed structured outputs ------------------------------------------------------------------
def test_typed_columns_and_parse_errors(tmp_path):
    payloads = [
        json.dumps(GOOD),
        "not json at all",
        json.dumps({**GOOD, "label": "meh"}),  # not in the enum
        json.dumps({"label": "negative", "score": 2}),  # tags (required) missing
        json.dumps({"label": "neutral", "score": 1, "tags": [], "count": 2.0}),  # optional ones absent
        json.dumps({**GOOD, "score": "high"}),
        json.dumps({**GOOD, "where": {"city": "Rome", "zip": "x"}}),
    ]
    src = tmp_path / "t.parquet"
    pq.write_table(pa.table({"payload": payloads, "content": [f"c{i}" for i in range(len(payloads))]}), src)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"name": "review", "schema": SCHEMA, "strict": True}))
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, *FAKE, "--template-user", "{{ payload }}", "--response-schema", schema,
                 "--carry", "content", "--sample", "max_tokens=200")
    assert res.exit_code == 0, res.output
    t = pq.read_table(sorted(out.glob("part-*.parquet"))).sort_by("source_line")
    types = {f.name: f.type for f in t.schema}
    assert types["label"] == pa.string() and types["score"] == pa.float64() and types["count"] == pa.int64()
    assert types["ok"] == pa.bool_() and types["tags"] == pa.list_(pa.string())
    assert types["where"] == pa.struct([("city", pa.string()), ("zip", pa.int64())])
    assert types["parse_error"] == pa.string() and types["input_content"] == pa.string()
    rows = t.to_pylist()
    assert len(rows) == len(payloads)  # never dropped
    assert {k: rows[0][k] for k in GOOD} == GOOD and rows[0]["parse_error"] is None
    assert rows[4]["count"] == 2 and rows[4]["ok"] is None and rows[4]["parse_error"] is None
    for i, why in ((1, "not JSON"), (2, "is not one of"), (3, "'tags' is missing"), (5, "expected a number"),
                   (6, "where.zip: expected an integer")):
        assert why in rows[i]["parse_error"], (i, rows[i]["parse_error"])
        assert all(rows[i][k] is None for k in GOOD), i
        assert rows[i]["error"] is None and rows[i]["content"] == payloads[i]
    assert [r["input_content"] for r in rows] == [f"c{i}" for i in range(len(payloads))]
    # the request carried the schema as response_format
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["job"]["template"]["response_format"]["json_schema"]["name"] == "review"


def test_explode_choices_writes_one_row_per_choice(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", [{"q": f"hello {i}"} for i in range(5)])
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, *FAKE, "--template-user", "{{ q }}", "--sample", "n=3",
                 "--explode-choices", "--carry", "q")
    assert res.exit_code == 0, res.output
    df = read_output(out).sort("source_line", "choice_index")
    assert df.height == 15
    assert df["choice_index"].to_list() == [0, 1, 2] * 5
    assert df["content"].to_list() == [f"hello {i}" for i in range(5) for _ in range(3)]
    report = json.loads((out / "_report.json").read_text())
    assert report["requests"] == 5  # requests, not rows
    assert "already complete" in invoke("run", src, "-o", out, *FAKE, "--template-user", "{{ q }}",
                                        "--sample", "n=3", "--explode-choices", "--carry", "q").output


# ---- validate, estimate, dry run, CSV ----------------------------------------------------------
def test_validate_estimate_and_dry_run_on_a_templated_csv(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("id,question,n\n1,What is one?,1\n2,\"What, is two?\",2\n3,,1\n")
    common = ["--template-user", "Answer: {{ question }}", "--template-system", "Be brief.",
              "--sample", "max_tokens=8", "--id-column", "id"]
    res = invoke("validate", src, *common)
    assert res.exit_code == 1 and "3 rows in 1 file(s): 2 valid, 1 invalid" in res.output
    assert f"{src}:3: question:" in res.output
    res = invoke("estimate", src, "-m", "smollm2", "--json", "--workers", "1", *common)
    assert res.exit_code == 0, res.output
    figures = json.loads(res.output[res.output.index("{"): res.output.rindex("}") + 1])
    assert figures["requests"] == 3 and figures["invalid"] == 1 and figures["prompt_tokens"] > 10
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--dry-run", *common)
    assert res.exit_code == 0 and "Would process 2 requests" in res.output and "1 invalid" in res.output
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, *common, "--carry-all")
    assert res.exit_code == 0, res.output
    t = pq.read_table(sorted((tmp_path / "out").glob("part-*.parquet"))).sort_by("source_line")
    assert t.schema.field("id").type == pa.int64() and t.column("custom_id").to_pylist() == ["1", "2", "3"]
    assert t.column("content").to_pylist()[:2] == ["Answer: What is one?", "Answer: What, is two?"]
    assert t.column("source_line").to_pylist() == [1, 2, 3]


def test_a_latin1_byte_in_a_csv_costs_its_row_never_the_prompts_of_the_others(tmp_path):
    src = tmp_path / "t.csv"
    src.write_bytes(b"q\n" + b"".join(b"caf\xe9\n" if i == 5 else b"row %d\n" % i for i in range(1, 51)))
    res = invoke("run", src, "-o", tmp_path / "out", *FAKE, "--template-user", "Q: {{ q }}")
    assert res.exit_code == 0, res.output
    rows = {r["source_line"]: r for r in by_line(tmp_path / "out").to_dicts()}
    assert sorted(rows) == list(range(1, 51))
    assert rows[5]["error"]["code"] == "invalid_utf8" and rows[5]["error"]["line"] == 5
    assert all(rows[i]["content"] == f"Q: row {i}" for i in rows if i != 5)


def test_an_interruption_while_a_row_is_rendered_is_never_a_template_error():
    from pipeline import exits
    from pipeline.intake.requests import Context
    from pipeline.intake.templates import TemplateSpec

    class Interrupting:
        def __str__(self):
            raise exits.Interrupted()  # as the signal handler does, wherever the main thread is

    spec = TemplateSpec.from_values({"template_user": "{{ q }}"})
    with pytest.raises(exits.Interrupted):
        list(spec.render_rows([(source("f"), 1, {"q": Interrupting()})], Context()))


def test_job_file_with_sample_mapping(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", [{"q": "a b c"}])
    job = tmp_path / "job.yaml"
    job.write_text(f"inputs: [{src}]\noutput: {tmp_path / 'out'}\nmodel: smollm2\nengine: fake\nquiet: true\n"
                   "template-user: |\n  Say {{ q }}\nsample:\n  max_tokens: 2\ncarry: [q]\n")
    res = invoke("run", "--job", job)
    assert res.exit_code == 0, res.output
    df = read_output(tmp_path / "out")
    assert df["content"].to_list() == ["Say a"] and df["q"].to_list() == ["a b c"]


# ---- resume ------------------------------------------------------------------------------------
def test_resume_after_sigkill_keeps_every_row_exactly_once(tmp_path, hold):
    n = 80
    src = tmp_path / "t.parquet"
    pq.write_table(pa.table({"payload": [json.dumps({**GOOD, "count": i}) for i in range(n)],
                             "k": pa.array(range(n), pa.int32())}), src)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    out = tmp_path / "out"
    args = [str(src), "-o", str(out), *FAKE, "--template-user", "{{ payload }}", "--response-schema", str(schema),
            "--carry", "k", "--sample", "max_tokens=200"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", *args, "--checkpoint-every", "5",
                             "--max-in-flight", "4", *hold.options()],  # held after a part: killed mid-run
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    wait_for_commit(out, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not (out / "_SUCCESS").exists()
    res = subprocess.run([sys.executable, "-m", "pipeline", "run", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stdout + res.stderr
    t = pq.read_table(sorted(out.glob("part-*.parquet"))).sort_by("source_line")
    assert t.column("source_line").to_pylist() == list(range(1, n + 1))  # exactly once
    assert t.column("k").to_pylist() == list(range(n)) and t.schema.field("k").type == pa.int32()
    assert t.column("count").to_pylist() == list(range(n)) and t.column("parse_error").null_count == n


# ---- the output opens as is ----------------------------------------------------------------------
def test_output_opens_in_polars_duckdb_and_datasets(tmp_path):
    src = tmp_path / "t.parquet"
    pq.write_table(pa.table({"payload": [json.dumps(GOOD), "oops"] * 3, "n": list(range(6))}), src)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, *FAKE, "--template-user", "{{ payload }}", "--response-schema", schema,
                 "--carry-all", "--sample", "max_tokens=200")
    assert res.exit_code == 0, res.output
    glob = str(out / "part-*.parquet")
    import polars as pl

    df = pl.read_parquet(glob)
    assert df.height == 6 and df["where"].dtype == pl.Struct({"city": pl.String, "zip": pl.Int64})
    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(f"select n, label, score, parse_error is null as ok from read_parquet('{glob}') "
                     "order by n").fetchall()
    assert got == [(i, "positive" if i % 2 == 0 else None, 0.5 if i % 2 == 0 else None, i % 2 == 0) for i in range(6)]
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=glob, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 6 and ds.features["tags"].feature.dtype == "string"
    assert sorted(ds["n"]) == list(range(6))


def test_format_openai_still_works_with_a_template(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", [{"q": "hi"}])
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, *FAKE, "--template-user", "{{ q }}", "--format", "openai", "--carry", "q")
    assert res.exit_code == 0, res.output
    line = json.loads(next(out.glob("part-*.jsonl")).read_text())
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "hi"


# ---- units -------------------------------------------------------------------------------------
def test_schema_to_arrow_types_and_name_clashes():
    from pipeline.intake.templates import TemplateSpec
    from pipeline.output import structured

    schema, fmt = structured.load_schema(SCHEMA, "x")
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] is SCHEMA
    assert dict(structured.fields(schema))["note"] == pa.string()
    clash = {"type": "object", "properties": {"content": {"type": "string"}, "q": {"type": "integer"}}}
    spec = TemplateSpec(user="{{ q }}", response_schema=clash)
    layout = spec.layout([])
    assert [c for _, c, _ in layout.response] == ["response_content", "q"]
    with pytest.raises(ValueError, match="top level must be an object"):
        structured.load_schema({"type": "array", "items": {"type": "string"}}, "x")
    assert structured.parse('{"content": "a", "q": 1.0}', clash) == ({"content": "a", "q": 1}, None)


def test_carry_layout_renames_carried_column_clashing_with_response(tmp_path):
    from pipeline.intake.sources import list_inputs
    from pipeline.intake.templates import TemplateSpec

    src = write_jsonl(tmp_path / "t.jsonl", [{"q": 1, "label": "x"}])
    spec = TemplateSpec(user="{{ q }}", response_schema={"type": "object", "properties": {"label": {"type": "string"}}},
                        carry_all=True)
    layout = spec.layout(list_inputs([str(src)]))
    assert [(n, c) for n, c, _ in layout.carried] == [("q", "q"), ("label", "input_label")]
    assert Path(src).exists()


def test_the_dataset_demo_job_runs(tmp_path):
    """jobs/dataset-demo.yaml on the fake engine (which echoes the prompt: every row gets a parse
    error, none is dropped) keeps the table's 300 rows and its column types."""
    out = tmp_path / "out"
    res = invoke(
        "run", "--job", REPO / "jobs" / "dataset-demo.yaml", "-o", out, "--engine", "fake", "-m", "smollm2", "-q"
    )
    assert res.exit_code == 0, res.output
    t = pq.read_table(sorted(out.glob("part-*.parquet"))).sort_by("source_line")
    assert t.num_rows == 300 and t.column("custom_id").to_pylist()[:2] == ["r000", "r001"]
    assert t.schema.field("stars").type == pa.int64() and t.schema.field("verified").type == pa.bool_()
    assert t.schema.field("topics").type == pa.list_(pa.string()) and t.column("parse_error").null_count == 0


# ---- the real engine (issue 12's acceptance test) ------------------------------------------------
@pytest.mark.engine
def test_real_engine_typed_columns_carried_columns_and_exact_estimate(tmp_path):
    """The embedded model on a table of varied rows with a schema asking for an enum, a number and
    a list: every row has typed columns or a parse error, carried columns equal the input,
    estimate's prompt tokens equal the run's, and a run killed after its first commit is finished
    by the rerun with every row exactly once."""
    from conftest import MODEL

    src = tmp_path / "reviews.parquet"
    reviews = ["Great kettle, boils fast.", "Broke after a day.", "It is fine I guess.",
               "Love the color, hate the noise.", "Perfect gift!", "Arrived late and scratched."] * 2
    pq.write_table(pa.table({"rid": pa.array(range(len(reviews)), pa.int32()), "review": reviews,
                             "stars": pa.array([5, 1, 3, 3, 5, 2] * 2, pa.int8())}), src)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "mixed"]},
        "confidence": {"type": "number"}, "topics": {"type": "array", "items": {"type": "string"}}},
        "required": ["sentiment", "confidence", "topics"], "additionalProperties": False}))
    common = ["--template-user", "Label this review as JSON: {{ review }} ({{ stars }} stars)",
              "--response-schema", schema, "--sample", "max_tokens=60", "--sample", "temperature=0",
              "--carry-all", "--max-model-len", "2048"]
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(src), "-o", str(out), "-m", MODEL,
                              "-q", "--checkpoint-every", "1", "--max-num-seqs", "2", *map(str, common)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_commit(out, first, timeout=600, poll=0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    res = invoke("run", src, "-o", out, "-m", MODEL, "-q", "--checkpoint-every", "1", "--max-num-seqs", "2", *common)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "_report.json").read_text())
    assert 0 < report["resumed"] < len(reviews) and report["requests"] == len(reviews)
    t = pq.read_table(sorted(out.glob("part-*.parquet"))).sort_by("source_line")
    assert t.column("source_line").to_pylist() == list(range(1, len(reviews) + 1))  # each row once
    assert t.column("rid").to_pylist() == list(range(len(reviews))) and t.schema.field("stars").type == pa.int8()
    assert t.column("review").to_pylist() == reviews
    for row in t.to_pylist():
        assert row["error"] is None
        if row["parse_error"] is None:
            assert row["sentiment"] in ("positive", "negative", "mixed") and isinstance(row["confidence"], float)
            assert isinstance(row["topics"], list)
        else:
            assert row["sentiment"] is None and row["confidence"] is None
    est = invoke("estimate", src, "-m", MODEL, "--json", "--workers", "1", *common)
    assert est.exit_code == 0, est.output
    figures = json.loads(est.output[est.output.index("{"): est.output.rindex("}") + 1])
    assert figures["prompt_tokens"] == sum(t.column("prompt_tokens").to_pylist())


def test_earlier_turns_from_a_template(tmp_path):
    """--template-turns renders the turns before the user message: few-shot examples or a
    conversation from the row; a rendering that is not a list of messages is that row's error."""
    src = write_jsonl(tmp_path / "t.jsonl", [
        {"q": "capital of France?", "ex_q": "capital of Spain?", "ex_a": "Madrid"},
        {"q": "capital of Italy?", "ex_q": "capital of Peru?", "ex_a": None},
    ])
    turns = ('[{"role": "user", "content": {{ ex_q | tojson }}},'
             ' {"role": "assistant", "content": {{ ex_a | tojson }}}]')
    out = tmp_path / "out"
    res = invoke("run", src, "-o", out, *FAKE, "--template-system", "Answer briefly.",
                 "--template-turns", turns, "--template-user", "{{ q }}")
    assert res.exit_code == 0, res.output
    df = by_line(out)
    assert df["content"][0] == "capital of France?"  # the fake engine echoes the last (user) message
    err = df["error"][1]
    assert err["code"] == "template_error" and err["param"] == "ex_a" and "null" in err["message"]
    res = invoke("validate", src, "--template-turns", "just text", "--template-user", "{{ q }}")
    assert res.exit_code == 1 and "--template-turns: the rendered turns must be a list of messages" in res.output
    from pipeline.intake.requests import Context
    from pipeline.intake.templates import TemplateSpec

    spec = TemplateSpec.from_values({"template_user": "{{ q }}", "template_system": "S", "template_turns": turns})
    [req] = list(spec.render_rows([(source("f"), 1, {"q": "x", "ex_q": "y", "ex_a": "z"})], Context()))
    assert [m["role"] for m in req.messages] == ["system", "user", "assistant", "user"]


def test_a_hugging_face_dataset_saved_to_disk_is_a_table(tmp_path):
    """`Dataset.save_to_disk` writes Arrow IPC files beside dataset_info.json and state.json: the
    folder is read as its .arrow files only; an Arrow IPC file (file format) is read too."""
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"q": [f"question {i}" for i in range(7)], "n": list(range(7))}).save_to_disk(
        str(folder)
    )
    res = invoke("run", folder, "-o", tmp_path / "out", *FAKE, "--template-user", "{{ q }}", "--carry", "n")
    assert res.exit_code == 0, res.output
    df = by_line(tmp_path / "out")
    assert df["content"].to_list() == [f"question {i}" for i in range(7)] and df["n"].to_list() == list(range(7))
    with (
        pa.OSFile(str(tmp_path / "t.arrow"), "wb") as sink,
        pa.ipc.new_file(sink, pa.schema([("q", pa.string())])) as w,
    ):
        w.write_table(pa.table({"q": ["a", "b"]}))
    res = invoke("validate", tmp_path / "t.arrow", "--template-user", "{{ q }}")
    assert res.exit_code == 0 and "2 rows in 1 file(s): 2 valid" in res.output

"""Issue 24: the Python API driven the way a notebook drives it, on the fake engine (it echoes the
last message, so a template rendering `{{ payload }}` makes the completion)."""

import inspect
import json
import subprocess
import sys

import polars as pl
import pyarrow as pa
import pytest
from conftest import REPO, invoke
from pydantic import BaseModel

import pipeline
from pipeline import Session, api, exits, options

FAKE = {"model": "smollm2", "engine": "fake", "quiet": True}


class Review(BaseModel):
    label: str
    score: float
    tags: list[str]


def payloads(n=6):
    return [json.dumps({"label": "positive" if i % 2 else "negative", "score": i / 10, "tags": ["t"] * i})
            for i in range(n)]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_every_option_of_the_table_is_a_keyword_argument_with_its_help():
    for command, fn in ((options.RUN, pipeline.run), (options.ESTIMATE, pipeline.estimate),
                        (options.VALIDATE, pipeline.validate)):
        params = inspect.signature(fn).parameters
        missing = [o.name for o in options.of(command) if o.name not in params]
        assert missing == [], f"{command}: {missing}"
        assert all(params[o.name].kind == inspect.Parameter.KEYWORD_ONLY for o in options.of(command))
        assert "max_n: Largest accepted `n`" in fn.__doc__
    assert (REPO / "pipeline" / "api.pyi").read_text() == api.stub(), (
        "regenerate: python -m pipeline.api > pipeline/api.pyi"
    )


def test_import_pipeline_stays_light():
    code = ("import sys, pipeline; "
            "print(sorted(m for m in ('pipeline.api', 'vllm', 'torch', 'polars') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_dataframe_in_typed_dataframe_out_with_a_pydantic_response_format(tmp_path):
    df = pl.DataFrame({"id": list(range(6)), "payload": payloads()})
    out = pipeline.run(df, template="{{ payload }}", response_format=Review, carry=["id"], parsed=True, **FAKE)
    assert isinstance(out, pl.DataFrame) and out.height == 6
    assert out.schema["score"] == pl.Float64 and out.schema["tags"] == pl.List(pl.String)
    assert out["id"].to_list() == list(range(6))
    assert out["label"].to_list()[:2] == ["negative", "positive"]
    assert out["parsed"][3] == Review(label="positive", score=0.3, tags=["t"] * 3)
    lazy = pipeline.run(df, template="{{ payload }}", response_format=Review, carry=["id"], lazy=True, **FAKE)
    assert isinstance(lazy, pl.LazyFrame) and lazy.collect().drop("parsed", strict=False).equals(out.drop("parsed"))


def test_parse_callable_makes_zero_one_or_several_rows():
    df = pl.DataFrame({"n": [0, 1, 3]})

    def parse(row):
        n = int(row["content"])
        return None if n == 0 else {"k": 0} if n == 1 else [{"k": k} for k in range(n)]

    out = pipeline.run(df, template="{{ n }}", parse=parse, **FAKE)
    assert out["content"].to_list() == ["1", "3", "3", "3"]
    assert out["k"].to_list() == [0, 0, 1, 2]


def messages(row):
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"about {row['topic']}"}]


def body(row):
    return {"messages": [{"role": "user", "content": row["topic"].upper()}], "max_tokens": 5}


def test_callable_templates_and_their_identity(cache):
    rows = [{"topic": "owls"}, {"topic": "cats"}]
    out = pipeline.run(rows, template=messages, **FAKE)
    assert out["content"].to_list() == ["about owls", "about cats"]
    assert pipeline.run(rows, template=body, **FAKE)["content"].to_list() == ["OWLS", "CATS"]
    assert len(list((cache / "runs").iterdir())) == 2  # two functions: two jobs, two folders
    pipeline.run(rows, template=messages, **FAKE)
    assert len(list((cache / "runs").iterdir())) == 2  # the same function: the same job

    def broken(row):
        raise KeyError("nope")

    out = pipeline.run(rows, template=broken, **FAKE)
    assert out["error"].struct.field("code").to_list() == ["template_error"] * 2
    assert "broken raised KeyError" in out["error"].struct.field("message")[0]


def test_every_kind_of_table_in(cache):
    import datasets
    import pyarrow.dataset as ds

    table = pa.table({"q": ["a", "b", "c"]})
    kinds = [table, ds.dataset(table), datasets.Dataset.from_dict({"q": ["a", "b", "c"]}),
             table.to_pandas(), pl.from_arrow(table), [{"q": "a"}, {"q": "b"}, {"q": "c"}]]
    for data in kinds:
        out = pipeline.run(data, template="{{ q }}!", **FAKE)
        assert out["content"].to_list() == ["a!", "b!", "c!"], type(data)
    # content-addressed: a pyarrow Table, a Dataset over it, a datasets.Dataset and a list of
    # dicts hold the same bytes; polars (and pandas' string dtype) write large_string
    assert len({api.input_paths(data, cache) for data in kinds}) == len(list((cache / "inputs").iterdir())) <= 2
    assert len({api.input_paths(data, cache) for data in kinds[:3] + kinds[-1:]}) == 1


def test_paths_in_and_output_given(tmp_path, chat):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(chat(f"r{i}", f"hello {i}")) + "\n" for i in range(3)))
    out = pipeline.run(str(src), output=str(tmp_path / "out"), **FAKE)
    assert out["custom_id"].to_list() == ["r0", "r1", "r2"]
    assert (tmp_path / "out" / "_SUCCESS").exists() or any((tmp_path / "out").glob("part-*"))
    assert pipeline.validate([src]) is True


def test_interrupted_call_resumes_exactly_once(tmp_path, monkeypatch):
    from pipeline.commands.progress import Progress

    log = tmp_path / "received.log"
    df = pl.DataFrame({"q": [f"q{i}" for i in range(20)]})
    kwargs = dict(template="{{ q }}", checkpoint_every=1, engine_option={"log_file": str(log)}, **FAKE)
    update = Progress.update

    def interrupting(self, requests, tokens=0):
        update(self, requests, tokens)
        if self.done == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "update", interrupting)
    with pytest.raises(exits.Incomplete, match="interrupted: finished rows were committed; committed output is kept"):
        pipeline.run(df, **kwargs)
    monkeypatch.setattr(Progress, "update", update)
    out = pipeline.run(df, **kwargs)
    assert sorted(out["content"].to_list()) == sorted(df["q"].to_list())  # every row once
    assert out["custom_id"].n_unique() == 20
    first = log.read_text().split()
    assert len(first) >= 20  # what the engine had when interrupted is sent again, rows are not


def test_errors_are_the_hierarchys_with_the_cli_messages(tmp_path):
    missing = tmp_path / "missing.jsonl"
    cli = invoke("run", missing, "-o", tmp_path / "o1", "-m", "smollm2", "--engine", "fake", "-q")
    with pytest.raises(exits.UserError) as e:
        pipeline.run(str(missing), output=str(tmp_path / "o1"), **FAKE)
    assert cli.exit_code == e.value.exit_code == exits.ERROR
    assert cli.output.strip() == f"Error: {e.value}"
    out = tmp_path / "o2"
    pipeline.run([{"q": "a"}], template="{{ q }}", output=str(out), **FAKE)
    with pytest.raises(exits.UserError, match="holds"):  # another job's output: refused, as on the CLI
        pipeline.run([{"q": "b"}], template="{{ q }}", output=str(out), **FAKE)
    with pytest.raises(TypeError, match="unexpected keyword argument.*no_such_option"):
        pipeline.run([{"q": "a"}], no_such_option=1, **FAKE)
    with pytest.raises(exits.UserError, match="--template-user"):
        pipeline.run([{"q": "a"}], template="{{ q ", **FAKE)


def test_session_starts_its_engine_once(tmp_path):
    loads = tmp_path / "loads.log"
    with Session(model="smollm2", engine="fake", engine_option={"load_log": str(loads)}) as s:
        a = s.run(pl.DataFrame({"q": ["a", "b"]}), template="{{ q }}", quiet=True)
        b = s.run([{"x": "c"}], template="<{{ x }}>", quiet=True)
        assert s.starts == 1
    assert a["content"].to_list() == ["a", "b"] and b["content"].to_list() == ["<c>"]
    assert len(loads.read_text().splitlines()) == 1
    with pytest.raises(TypeError, match="fixed by the Session"):
        Session(model="smollm2").run([{"q": "a"}], model="other")


def test_a_notebook_runs_the_api(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    cells = ["import polars as pl, pipeline",
             "df = pl.DataFrame({'q': ['x', 'y']})\n"
             "out = pipeline.run(df, template='{{ q }}', model='smollm2', engine='fake')",
             "assert out['content'].to_list() == ['x', 'y']; print('rows', out.height)"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(REPO)}}).execute()
    assert "rows 2" in "".join(o.get("text", "") for o in nb.cells[2].outputs)


def test_example_script_runs_on_the_fake_engine():
    out = subprocess.run([sys.executable, str(REPO / "samples" / "python_api.py"), "fake"], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "One short fact about owls." in out.stdout


# ---- issue 34: the API keeps every promise of the command line ----------------------------------
def test_an_identical_table_resumes_after_the_cache_is_lost_or_moved(tmp_path, monkeypatch):
    """Interrupted, then the cache folder removed (a new container) or another one given: the
    same table is the same input, so the committed rows are kept and only the rest run."""
    import shutil

    from pipeline.commands.progress import Progress

    log, out = tmp_path / "received.log", str(tmp_path / "out")
    df = pl.DataFrame({"q": [f"q{i}" for i in range(12)]})
    kwargs = dict(template="{{ q }}", checkpoint_every=1, output=out, engine_option={"log_file": str(log)}, **FAKE)
    update = Progress.update

    def interrupting(self, requests, tokens=0):
        update(self, requests, tokens)
        if self.done == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "update", interrupting)
    with pytest.raises(exits.Incomplete):
        pipeline.run(df, cache=str(tmp_path / "cache-a"), **kwargs)
    monkeypatch.setattr(Progress, "update", update)
    shutil.rmtree(tmp_path / "cache-a")  # lost
    sent_before = len(log.read_text().split())
    frame = pipeline.run(df, cache=str(tmp_path / "cache-b"), **kwargs)  # another place
    assert sorted(frame["content"].to_list()) == sorted(df["q"].to_list()) and frame["custom_id"].n_unique() == 12
    assert len(log.read_text().split()) - sent_before < 12  # the committed rows were not run again
    again = pipeline.run(df, cache=str(tmp_path / "cache-a"), **kwargs)  # written anew: complete
    assert again.height == 12
    with pytest.raises(exits.UserError, match="changed: inputs"):  # a different table is refused
        pipeline.run(df.with_columns(pl.col("q") + "!"), cache=str(tmp_path / "cache-b"), **kwargs)


@pytest.mark.parametrize(("name", "value", "flag"), [
    ("format", "xml", "xml"), ("runner", "bogus", "bogus"), ("engine", "bogus", "bogus"), ("max_n", 0, "0"),
    ("limit", 0, "0"), ("checkpoint_every", -1, "-1"), ("lease_timeout", 0, "0"), ("order", "random", "random")])
def test_keyword_arguments_are_checked_as_the_options_are(tmp_path, name, value, flag):
    """The same check and message as the command line's option, from the one option table."""
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    long = options.BY_NAME[name].long
    cli = invoke("run", src, "-o", tmp_path / "cli", "--engine", "fake", "-m", "smollm2", long, flag)
    assert cli.exit_code == 2 and "Invalid value for" in cli.output and long in cli.output
    with pytest.raises(exits.UserError) as e:
        pipeline.run(str(src), output=str(tmp_path / "api"), **{**FAKE, name: value})
    assert f"Invalid value for '{long}' ({name}=): " in str(e.value)
    assert str(e.value).split("): ", 1)[1] in " ".join(cli.output.split())  # the command line's reason
    assert not (tmp_path / "api").exists()  # nothing written


def test_the_run_raises_the_error_that_stopped_it(tmp_path):
    """One error path: engines that keep dying stop the run with TooManyRestarts itself (not an
    Incomplete rebuilt from exit code 3), its message the command line's."""
    src = tmp_path / "in.jsonl"
    # each its own prompt: identical sampled rows would go as one request (engines/sampled.py), not r1's own
    src.write_text("".join(json.dumps({"custom_id": f"r{i}", "messages": [{"role": "user", "content": f"x{i}"}]})
                           + "\n" for i in range(4)))
    args = dict(output=str(tmp_path / "out"), max_engine_restarts=0, engine_option={"die_on": "r1"}, **FAKE)
    with pytest.raises(exits.TooManyRestarts) as e:
        pipeline.run(str(src), **args)
    cli = invoke("run", src, "-o", tmp_path / "out2", "--engine", "fake", "-m", "smollm2", "-q",
                 "--max-engine-restarts", "0", "--engine-option", "die_on=r1")
    assert cli.exit_code == e.value.exit_code == exits.INCOMPLETE
    assert str(e.value) in cli.output


def test_a_completed_job_with_dry_run_answers_the_same_on_both_faces(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    out = tmp_path / "out"
    pipeline.run(str(src), output=str(out), **FAKE)
    cli = invoke("run", src, "-o", out, "--engine", "fake", "-m", "smollm2", "-q", "--dry-run")
    assert cli.exit_code == 0 and "is already complete; nothing to do" in cli.output
    capsys.readouterr()
    assert pipeline.run(str(src), output=str(out), dry_run=True, **FAKE) is None
    assert "is already complete; nothing to do" in capsys.readouterr().err

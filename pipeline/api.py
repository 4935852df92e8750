"""The Python face of the pipeline: `run`, `estimate`, `validate` and a `Session` that keeps one
engine warm across runs, for notebooks and scripts (docs/python.md).

The keyword arguments are the command line's options, taken from the one table in options.py
(their help is each function's documentation; api.pyi lists them with types, and a test keeps it
in step), plus a few that only Python has (`API_ONLY`). Same guarantees as the command line: the
output folder is the source of truth, a run interrupted (KeyboardInterrupt) and called again
resumes exactly once, and errors are the classes of exits.py with the command line's messages.

In-memory tables (polars, pandas, pyarrow Table or Dataset, Hugging Face `datasets.Dataset`, a
list of dicts) are written once to `<cache>/inputs/<digest>.parquet`, the digest of the table's
Arrow IPC bytes: the same table is the same input file, so it resumes. Without `output=`, a run
writes to `<cache>/runs/<digest>`, the digest of the inputs and the options that change rows.
`<cache>` is `cache=`, else $PIPELINE_CACHE, else ~/.cache/pipeline.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import click

from pipeline import exits, options
from pipeline.job import fill_values

# What only Python has: name -> (annotation, default, help). The rest come from the option table.
API_ONLY: dict[str, tuple[str, Any, str]] = {
    "response_format": ("type | dict[str, Any] | None", None,
                        "A pydantic model class or a JSON schema dict: the requests' response_format "
                        "and typed output columns (as --response-schema)."),
    "template": ("str | Callable[[dict[str, Any]], Any] | None", None,
                 "Make each row's request with this: Jinja2 text (as --template-user) or a callable "
                 "row -> messages (or -> request body)."),
    "parse": ("Callable[[dict[str, Any]], Any] | None", None,
              "row -> None, a dict or a list of dicts: the rows of the returned frame made from each "
              "output row (its columns under the returned ones). The output folder is unchanged."),
    "parsed": ("bool", False, "Add a `parsed` column of response_format model objects (None where the "
               "completion does not parse)."),
    "lazy": ("bool", False, "Return a polars LazyFrame over the output folder instead of a DataFrame."),
    "with_report": ("bool", False, "Return (frame, report): the report as _report.json holds it, with the job's "
                    "`state` (succeeded, partially_succeeded, failed) and its rows counted by verdict."),
    "cache": ("str | os.PathLike | None", None, "Cache folder for in-memory inputs, schemas and default output folders "
              "(default: $PIPELINE_CACHE, else ~/.cache/pipeline)."),
}
_COMMAND_API = {options.RUN: ("response_format", "template", "parse", "parsed", "lazy", "with_report", "cache"),
                options.VALIDATE: ("response_format", "template", "cache"),
                options.ESTIMATE: ("response_format", "template", "cache")}
# Run options a Session fixes once: they choose and start its engines.
SESSION_OPTIONS = tuple(o.name for o in options.of(options.RUN)
                        if o.engine or o.name in ("model", "engine", "engine_option", "engine_arg", "executor",
                                                  "ray_address", "data_parallel_size", "max_in_flight",
                                                  "max_engine_restarts", "seed_on_cpu", "tool_call_parser",
                                                  "lora", "served_model_name"))


def _annotation(o: options.Opt) -> str:
    """The option's Python type, as the text api.pyi writes."""
    if o.name in options.KEY_VALUE_OPTIONS:
        return "Mapping[str, Any] | Sequence[str] | None"
    if o.multiple:
        return "Sequence[str] | None"
    if o.is_flag:
        return "bool"
    if o.pair:
        return "bool | None"
    if isinstance(o.type, click.Choice):
        return f"Literal[{', '.join(map(repr, o.type.choices))}] | None"
    py = {click.IntRange: "int", click.FloatRange: "float", int: "int", float: "float"}.get(
        o.type if o.type in (int, float) else type(o.type), "str")
    return f"{py} | None"


def _help(o: options.Opt, command: str) -> str:
    return o.help if isinstance(o.help, str) else o.help[command]


def parameters(command: str) -> list[inspect.Parameter]:
    """The Python keyword arguments of a command: its options from the table, then Python's own."""
    kw = inspect.Parameter.KEYWORD_ONLY
    found = [inspect.Parameter(o.name, kw, annotation=_annotation(o),
                               default=False if o.is_flag else None if o.multiple else o.default)
             for o in options.of(command)]
    return found + [inspect.Parameter(n, kw, annotation=API_ONLY[n][0], default=API_ONLY[n][1])
                    for n in _COMMAND_API[command]]


RUN_RETURNS = "pl.DataFrame | pl.LazyFrame | tuple[pl.DataFrame | pl.LazyFrame, dict[str, Any]] | None"
RETURNS = {options.RUN: RUN_RETURNS, options.ESTIMATE: "dict[str, Any]",
           options.VALIDATE: "bool"}
STUB_HEAD = ("# Generated from the option table by `python -m pipeline.api > pipeline/api.pyi`; "
             "a test keeps it in step.\n"
             "import os\nfrom collections.abc import Callable, Mapping, Sequence\n"
             "from typing import Any, Literal, TypedDict\n\n"
             "import polars as pl\nfrom typing_extensions import Unpack\n\n"
             "Inputs = Any  # paths, or a polars/pandas DataFrame, pyarrow Table/Dataset, datasets.Dataset, "
             "list of dicts\n")
READERS = (options.RUN, options.ESTIMATE, options.VALIDATE)


def stub() -> str:
    """api.pyi: each command's keyword arguments with their types and defaults, from the table: one
    TypedDict per set of commands sharing options, each command's options inheriting those."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for o in options.OPTIONS:
        shared = tuple(c for c in READERS if c in o.commands)
        if shared:
            groups.setdefault(shared, []).append(o.name)
    for command in READERS:
        groups.setdefault((command,), [])
        groups[(command,)] += _COMMAND_API[command]
    params = {p.name: p for c in READERS for p in parameters(c)}
    text = STUB_HEAD
    for shared, names in sorted(groups.items(), key=lambda g: -len(g[0])):  # bases first
        bases = "".join(f"_{'_'.join(g)}, " for g in sorted(groups, key=len) if set(g) > set(shared)) or "TypedDict, "
        text += f"\nclass _{'_'.join(shared)}({bases}total=False):\n" + "".join(
            f"    {n}: {params[n].annotation}  # default {params[n].default!r}\n" for n in names)
    for command in READERS:
        text += f"\ndef {command}(inputs: Inputs, **kwargs: Unpack[_{command}]) -> {RETURNS[command]}: ...\n"
    return text + ("\nclass Session:\n    starts: int\n"
                   "    def __init__(self, **engine_options: Unpack[_run]) -> None: ...\n"
                   f"    def run(self, inputs: Inputs, **kwargs: Unpack[_run]) -> {RUN_RETURNS}: ...\n"
                   "    def close(self) -> None: ...\n    def __enter__(self) -> Session: ...\n"
                   "    def __exit__(self, *exc: object) -> None: ...\n")


def _document(command: str, summary: str):
    """Give a function the command's signature and the table's help as its docstring."""
    def decorate(f):
        params = parameters(command)
        first = [p for p in inspect.signature(f).parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
        f.__signature__ = inspect.Signature([*first, *params])
        helps = {o.name: _help(o, command) for o in options.of(command)} | {n: API_ONLY[n][2] for n in API_ONLY}
        f.__doc__ = summary + "\n\nKeyword arguments:\n" + "\n".join(
            f"    {p.name}: {helps[p.name]}" for p in params)
        return f
    return decorate


# ---- inputs ----------------------------------------------------------------------------------
def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    return Path(cache or os.environ.get("PIPELINE_CACHE") or Path.home() / ".cache" / "pipeline").expanduser()


def as_arrow(data: Any):
    """An in-memory table as a pyarrow Table, or None for paths."""
    import pyarrow as pa

    if isinstance(data, (str, os.PathLike)) or (isinstance(data, (list, tuple)) and all(
            isinstance(x, (str, os.PathLike)) for x in data)):
        return None
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, (list, tuple)):
        return pa.Table.from_pylist(list(data))
    kind = f"{type(data).__module__.split('.')[0]}.{type(data).__name__}"
    if kind in ("polars.DataFrame", "polars.LazyFrame"):
        return (data.collect() if kind == "polars.LazyFrame" else data).to_arrow()
    if kind == "pandas.DataFrame":
        return pa.Table.from_pandas(data, preserve_index=False)
    if kind == "datasets.Dataset":
        return data.with_format("arrow")[:]
    if hasattr(data, "to_table"):  # a pyarrow Dataset
        return data.to_table()
    raise exits.UserError(f"inputs: cannot read a {kind}; give paths, a polars or pandas DataFrame, a pyarrow "
                          "Table or Dataset, a Hugging Face Dataset or a list of dicts")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _put_once(path: Path, write: Callable[[Path], None]) -> str:
    """Write a content-addressed file once (atomically: a half-written one is never seen)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write(tmp)
        os.replace(tmp, path)
    return str(path)


def input_paths(data: Any, cache: Path) -> tuple[str, ...]:
    """The inputs as paths: in-memory tables become `<cache>/inputs/<digest>.parquet`, the digest
    of their Arrow IPC stream (so the same columns of the same types and values are one file;
    a string column that is large_string in one frame and string in another is not)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = as_arrow(data)
    if table is None:
        return tuple(map(str, [data] if isinstance(data, (str, os.PathLike)) else data))
    table = table.combine_chunks().replace_schema_metadata(None)  # pandas' and datasets' notes are no data
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    name = _digest(sink.getvalue().to_pybytes()) + ".parquet"
    return (_put_once(cache / "inputs" / name, lambda p: pq.write_table(table, p)),)


def schema_file(response_format: Any, cache: Path) -> str:
    """A pydantic model class or a JSON schema dict as a schema file for --response-schema."""
    schema = response_format.model_json_schema() if hasattr(response_format, "model_json_schema") else response_format
    if not isinstance(schema, dict):
        raise exits.UserError("response_format: give a pydantic model class or a JSON schema dict")
    text = json.dumps(schema, sort_keys=True)
    return _put_once(cache / "schemas" / f"{_digest(text.encode())}.json", lambda p: p.write_text(text))


# ---- configuration ---------------------------------------------------------------------------
def config(command: str, inputs: Any, kwargs: dict[str, Any]):
    """The RunConfig of a command called from Python (`inputs` and its keyword arguments)."""
    from pipeline.intake.templates import callable_identity
    from pipeline.job import RunConfig

    names = {p.name for p in parameters(command)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"{command}() got unexpected keyword argument(s): {', '.join(unknown)}")
    cache = cache_dir(kwargs.get("cache"))
    values = {o.name: options.checked(o.name, kwargs[o.name]) if o.name in kwargs else p.default
              for p in parameters(command) if (o := options.BY_NAME.get(p.name)) is not None}
    if kwargs.get("template") is not None:
        values["template_user"] = kwargs["template"]
    if kwargs.get("response_format") is not None:
        values["response_schema"] = schema_file(kwargs["response_format"], cache)
    values = {k: v for k, v in values.items() if not (options.BY_NAME[k].multiple and v is None)}
    paths = input_paths(inputs, cache)
    written = cache / "inputs"
    content = tuple(Path(p).name for p in paths if Path(p).parent == written)  # tables: named by content
    if command == options.RUN and not values.get("output"):
        identity = {"inputs": content or paths, "options": {k: values.get(k) for k in options.OUTPUT_OPTIONS}}
        text = json.dumps(identity, sort_keys=True, default=lambda v: callable_identity(v) if callable(v) else str(v))
        values["output"] = str(cache / "runs" / _digest(text.encode()))
    return RunConfig(**fill_values(paths, values), content_inputs=content)


# ---- results ---------------------------------------------------------------------------------
def results(cfg, *, response_format: Any = None, parse: Callable | None = None, parsed: bool = False,
            lazy: bool = False):
    """The committed rows of a run's output folder as a polars frame (Parquet output only)."""
    import polars as pl

    from pipeline.output.folder import Output
    from pipeline.storage import Location

    if cfg.format != "parquet":
        raise exits.UserError(f"the rows are in {cfg.output} as {cfg.format} JSON lines; a DataFrame needs "
                              "format='parquet'")
    loc = Location.of(cfg.output, cfg.storage_options)
    parts = [loc.child(r["part"]).url for r in Output(loc).read_state().records]
    frame = (pl.scan_parquet(parts, storage_options=cfg.storage_options or None).sort("source_file", "source_line")
             if parts else pl.LazyFrame())
    if parse is None and not parsed:
        return frame if lazy else frame.collect()
    df = frame.collect()
    if parsed:
        df = df.with_columns(pl.Series("parsed", [_model(response_format, c) for c in df["content"]],
                                       dtype=pl.Object))
    if parse is not None:
        df = pl.DataFrame(list(_parsed_rows(df, parse)), infer_schema_length=None)
    return df.lazy() if lazy else df


def _model(model: Any, content: str | None):
    """The completion as an object of the model class, or None where it does not validate."""
    if content is None or not hasattr(model, "model_validate_json"):
        return None
    try:
        return model.model_validate_json(content)
    except ValueError:
        return None


def _parsed_rows(df, parse: Callable) -> Iterable[dict[str, Any]]:
    for row in df.iter_rows(named=True):
        made = parse(row)
        for extra in ([] if made is None else [made] if isinstance(made, Mapping) else made):
            yield {**row, **extra}


# ---- the commands ----------------------------------------------------------------------------
def _user_errors(f):
    """Errors the command line reports with exit 1 that are not of the hierarchy (a missing file,
    a refused access, a bad value) raised as UserError with its message (the original chained)."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from pipeline.storage import redact

        try:
            return f(*args, **kwargs)
        except exits.PipelineError:
            raise
        except (FileNotFoundError, PermissionError, ValueError) as e:
            raise exits.UserError(redact(str(e))) from e
    return wrapper


class Session:
    """One engine kept warm across runs in this process: `with Session(model="smollm2") as s:
    s.run(df1, ...); s.run(df2, ...)`. The engine options (model, engine, vLLM arguments) are
    fixed here; each run takes the rest. The engines stop at the end of the `with` block (or
    `close()`), and after a run that stopped early (the next run starts them again)."""

    def __init__(self, **engine_options: Any):
        unknown = sorted(set(engine_options) - set(SESSION_OPTIONS))
        if unknown:
            raise TypeError(f"Session() takes the engine options ({', '.join(SESSION_OPTIONS)}); give "
                            f"{', '.join(unknown)} to run()")
        self.engine_options = engine_options
        self.dispatcher = None
        self.spec = None  # the engines' EngineSpec
        self.starts = 0  # engine starts, for tests and curiosity

    def run(self, inputs: Any, **kwargs: Any):
        """`pipeline.run` on this session's engines (see its documentation)."""
        clash = sorted(set(kwargs) & set(self.engine_options))
        if clash:
            raise TypeError(f"{', '.join(clash)}: fixed by the Session; start another Session to change it")
        return _run(inputs, {**self.engine_options, **kwargs}, self)

    def engines(self, p):
        """This session's started engines for the plan `p` (started on first use)."""
        from pipeline.commands.run import start_engines

        spec = p.job.engine_spec()
        if self.dispatcher is not None and spec != self.spec:
            self.close()
        if self.dispatcher is None:
            self.dispatcher, self.spec = start_engines(p), spec
            self.starts += 1
        return self.dispatcher

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close()
            self.dispatcher = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@_user_errors
def _run(inputs: Any, kwargs: dict[str, Any], session: Session | None):
    """commands/run.run, the command line's logic, then the rows: what stopped the run is raised
    as the very exception it was (an interruption as Incomplete, caused by it)."""
    from pipeline.commands.run import run as run_job
    from pipeline.output.stats import summary_text

    cfg = config(options.RUN, inputs, kwargs)
    try:
        outcome = run_job(cfg, session.engines if session else None)
    except BaseException:
        if session:
            session.close()
        raise
    if outcome.error is not None:
        if session:
            session.close()  # the engines may still hold the stopped run's requests
        raise outcome.error
    if not cfg.quiet and outcome.report and not outcome.message:  # a run that ran: its summary
        click.echo(summary_text(outcome.report), err=True)
    if outcome.message and (cfg.dry_run or not cfg.quiet):  # a preview, or "already complete"
        click.echo(outcome.message, err=True)
    if cfg.dry_run:
        return None
    frame = results(cfg, response_format=kwargs.get("response_format"), parse=kwargs.get("parse"),
                    parsed=kwargs.get("parsed", False), lazy=kwargs.get("lazy", False))
    return (frame, outcome.report) if kwargs.get("with_report") else frame


@_document(options.RUN, "Run the requests (or a template job over a table's rows) and return the rows as a "
           "polars DataFrame; raises exits.Incomplete (rerun to finish) or another error of exits.py.")
def run(inputs: Any, **kwargs: Any):
    return _run(inputs, kwargs, None)


@_document(options.ESTIMATE, "Count prompt tokens and estimate completion tokens, dollars and GPU-hours; "
           "prints the table and returns the figures as a dict.")
@_user_errors
def estimate(inputs: Any, **kwargs: Any) -> dict[str, Any]:
    from pipeline.commands.estimate import estimate as estimate_job
    from pipeline.job import Job

    return estimate_job(Job.open(config(options.ESTIMATE, inputs, kwargs)))


@_document(options.VALIDATE, "Check the requests with the run's rules, without an engine; prints each "
           "problem and returns True when every row is valid.")
@_user_errors
def validate(inputs: Any, **kwargs: Any) -> bool:
    from pipeline.commands.validate import validate as validate_job
    from pipeline.job import Job

    return validate_job(Job.open(config(options.VALIDATE, inputs, kwargs)))


if __name__ == "__main__":
    print(stub(), end="")

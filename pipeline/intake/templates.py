"""Template jobs: requests made from the rows of any table (Parquet, CSV, JSON lines).

`--template-user` (and `--template-system`) are Jinja2 templates over the row's columns; the
sampling fields come from `--sample KEY=VALUE` (set once) and `--sample-column KEY=COLUMN` (per
row); `--response-schema FILE` becomes the request's `response_format`. The body made here is
validated by `requests.parse_row`, like a request file's, and `validate`, `estimate`, `run` and
`--dry-run` all read their requests through `request_stream`, so they never disagree.

A column the template needs that is missing from the row, or null in it, gives that row a
`template_error` naming the column: never a crash. (A condition such as `{% if hint %}` on a null
column is false; printing it is the error.) A row's identity for resume stays its file and row
number; `--id-column` names the column whose value is the row's `custom_id`.

From Python (api.py) the user template may instead be a callable `row -> messages` (a list of
{role, content}) or `row -> request body` (a dict with `messages` and any sampling fields): it
gets the row's columns (nulls included) and stands in for the user template (no system or turns
template with it). Its identity for resume is its qualified name and source text
(`callable_identity`): editing the function makes another job; an exception it raises is that
row's `template_error`.

Output columns (`Layout`): the output schema (`schema.OUTPUT_SCHEMA`), then, with
`--response-schema`, one typed column per property of the schema and `parse_error`, then the
carried input columns with their input types. Name clashes: the pipeline's own columns keep
their names; a response property whose name is taken is written as `response_<name>`; a carried
column whose name is taken (by either) as `input_<name>` (prefixes repeat until the name is free).
"""

from __future__ import annotations

import base64
import json
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.endpoints import ENDPOINTS
from pipeline.endpoints.chat import BODY_FIELDS
from pipeline.exits import UserError
from pipeline.intake.requests import Context, SeenIds, parse_row
from pipeline.intake.shapes import BARE, SHAPES_BY_NAME
from pipeline.intake.sources import InputFile
from pipeline.output import structured
from pipeline.output.layout import Layout
from pipeline.records import FailedRequest, Request, Source, short

TEMPLATE_SUFFIXES = (".j2", ".jinja", ".jinja2", ".tmpl", ".txt", ".md")  # a value like these is a file
OPTION_NAMES = ("template_user", "template_system", "template_turns", "sample", "sample_column", "response_schema",
                "id_column", "carry", "carry_all", "explode_choices", "template_image")
_UNDEFINED = re.compile(r"'([^']*)' is undefined|has no attribute '([^']*)'|no element '?([^']*?)'?$")


def _text_or_file(value: str, option: str) -> str:
    """FILE_OR_TEXT: a path to an existing file is read; a single word ending in a template
    suffix (.j2, .txt...) must be one; anything else is the template itself."""
    if "{{" not in value and "{%" not in value and "\n" not in value and len(value) < 4096:
        path = Path(value).expanduser()
        if path.is_file():
            try:
                return path.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"{option} {value}: cannot read the template file ({e})") from None
        if not any(c.isspace() for c in value) and value.lower().endswith(TEMPLATE_SUFFIXES):
            raise UserError(f"{option} {value}: no such template file")
    return value


def _environment():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    class Missing(StrictUndefined):
        """False in conditions (`{% if col %}` works on a null column); printing or iterating it
        is an error naming the column."""

        __slots__ = ()

        def __bool__(self) -> bool:
            return False

    env = SandboxedEnvironment(undefined=Missing, autoescape=False, keep_trailing_newline=False)
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent, default=str)
    return env


@dataclass(frozen=True)
class TemplateSpec:
    user: str | Callable[[dict[str, Any]], Any]
    system: str | None = None
    turns: str | None = None  # renders a JSON/YAML list of earlier messages
    sample: dict[str, Any] = field(default_factory=dict)
    sample_column: dict[str, str] = field(default_factory=dict)
    response_schema: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    id_column: str | None = None
    carry: tuple[str, ...] = ()
    carry_all: bool = False
    explode: bool = False
    images: tuple[str, ...] = ()  # --template-image: columns whose images follow the user text
    # The endpoint of its requests (a name of pipeline/endpoints' registry): "embeddings" on an
    # embedding model (--runner pooling), where the rendered --template-user text is each row's
    # embeddings input (its `template_body`; docs/endpoints.md)
    endpoint: str = "chat"

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> TemplateSpec | None:
        """The spec from the options' values, or None for a job of request files. Raises
        ValueError for what the user must fix (a template that does not compile, ...)."""
        user = values.get("template_user")
        if not user:
            given = [n for n in OPTION_NAMES if values.get(n) not in (None, False, (), {}, "")]
            if given:
                raise UserError(f"--{given[0].replace('_', '-')} needs --template-user (a template job "
                                 "makes its requests from table rows)")
            return None
        sample = dict(values.get("sample") or {})
        sample_column = {k: str(v) for k, v in dict(values.get("sample_column") or {}).items()}
        allowed = BODY_FIELDS - {"messages", "response_format", "model"}
        for key in [*sample, *sample_column]:
            if key not in allowed:
                other = {"stream", "stream_options", "store", "metadata", "service_tier", "parallel_tool_calls"}
                raise UserError(f"--sample/--sample-column {key}: not a sampling field of a chat request "
                                f"(one of {', '.join(sorted(allowed - other))})")
        schema = fmt = None
        if values.get("response_schema"):
            path = Path(values["response_schema"]).expanduser()
            try:
                text = path.read_text()
            except OSError as e:
                raise UserError(f"--response-schema {path}: cannot read it ({e.strerror or e})") from None
            try:
                data = _json_or_yaml(text)
            except ValueError as e:
                raise UserError(f"--response-schema {path} is neither JSON nor YAML: {e}") from None
            schema, fmt = structured.load_schema(data, f"--response-schema {path}")
        if callable(user) and (values.get("template_system") or values.get("template_turns")):
            raise UserError("a Python template takes no --template-system or --template-turns: "
                            "return the whole list of messages from it")
        spec = cls(
            user=user if callable(user) else _text_or_file(user, "--template-user"),
            system=(_text_or_file(values["template_system"], "--template-system")
                    if values.get("template_system") else None),
            turns=_text_or_file(values["template_turns"], "--template-turns") if values.get("template_turns") else None,
            sample=sample, sample_column=sample_column, response_schema=schema, response_format=fmt,
            id_column=values.get("id_column") or None, carry=tuple(values.get("carry") or ()),
            carry_all=bool(values.get("carry_all")), explode=bool(values.get("explode_choices")),
            images=tuple(values.get("template_image") or ()),
        )
        spec.compiled()  # a syntax error is the user's to fix before anything runs
        return spec

    def compiled(self):
        from jinja2 import TemplateSyntaxError

        env = _environment()
        out = []
        for option, text in (("--template-system", self.system), ("--template-turns", self.turns),
                             ("--template-user", self.user)):
            if text is None or callable(text):
                out.append(text)
                continue
            try:
                out.append(env.from_string(text))
            except TemplateSyntaxError as e:
                raise UserError(f"{option}: the template does not compile: {e.message} (line {e.lineno})") from None
        return out

    def fingerprint(self) -> dict[str, Any]:
        """What changes the rows beyond the option values: the templates' and schema's text."""
        user = callable_identity(self.user) if callable(self.user) else self.user
        return {"user": user, "system": self.system, "turns": self.turns,
                "response_format": self.response_format, **({"images": list(self.images)} if self.images else {})}

    # ---- columns ------------------------------------------------------------------------------
    def layout(self, files: Sequence[InputFile]) -> Layout:
        """The output columns for these inputs; raises ValueError for a --carry column that no
        input has or whose types disagree between files."""
        from pipeline.intake.reader import input_schema
        from pipeline.schema import OUTPUT_SCHEMA

        types: dict[str, pa.DataType] = {}
        if self.carry or self.carry_all:
            for f in files:
                try:
                    found = input_schema(f)
                except Exception as e:  # an unreadable file gets its error rows when read
                    if isinstance(e, ValueError) and "carry" in str(e):
                        raise
                    continue
                for fld in found:
                    dtype = fld.type.value_type if pa.types.is_dictionary(fld.type) else fld.type
                    if pa.types.is_null(dtype):
                        dtype = pa.string()
                    if fld.name in types and types[fld.name] != dtype:
                        try:
                            dtype = pa.unify_schemas([pa.schema([pa.field("x", types[fld.name])]),
                                                      pa.schema([pa.field("x", dtype)])],
                                                     promote_options="permissive").field("x").type
                        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                            raise UserError(f"--carry: column {fld.name!r} is {types[fld.name]} in one input "
                                             f"and {dtype} in {f.display}; make the inputs agree") from None
                    types[fld.name] = dtype
        names = list(types) if self.carry_all else list(dict.fromkeys(self.carry))
        unknown = [n for n in names if n not in types]
        if unknown:
            raise UserError(f"--carry {unknown[0]}: no input has this column (columns: "
                             f"{', '.join(list(types)[:20]) or 'none'})")
        taken = set(OUTPUT_SCHEMA.names) | ({"choice_index"} if self.explode else set())
        response = []
        if self.response_schema is not None:
            taken.add("parse_error")
            for prop, dtype in structured.fields(self.response_schema):
                col = _free(prop, "response_", taken)
                taken.add(col)
                response.append((prop, col, dtype))
        carried = []
        for name in names:
            col = _free(name, "input_", taken)
            taken.add(col)
            carried.append((name, col, types[name]))
        return Layout(tuple(carried), tuple(response), self.response_schema, self.explode,
                      check_types=any(f.format == "jsonl" for f in files))

    # ---- rows -> requests ---------------------------------------------------------------------
    def render_rows(self, rows: Iterable[tuple[Source, int, Any]], ctx: Context,
                    layout: Layout | None = None) -> Iterator[Request | FailedRequest]:
        """(source, line, table row or FailedRequest) -> Request | FailedRequest, in order; an
        --id-column value used twice in one file is an error row (ids are per file)."""
        system, turns, user = self.compiled()
        seen, current = SeenIds(), None
        for source, line, row in rows:
            if source != current:
                seen, current = SeenIds(), source
            if isinstance(row, FailedRequest):
                yield row
                continue
            warnings: list[str] = []
            carried = layout.carry(row, warnings) if layout and isinstance(row, dict) else None
            item = self._one(row, source, line, ctx, system, turns, user)
            if isinstance(item, Request):
                if self.id_column and seen.add(item.custom_id):
                    item = FailedRequest(item.custom_id, source.name, line, "duplicate_custom_id",
                                         f"--id-column {self.id_column}: {short(item.custom_id)} appears earlier in "
                                         "this file; every row of a file needs its own id", self.id_column, item.user,
                                         file=source.index)
                else:
                    item = replace(item, warnings=item.warnings + tuple(warnings))
            yield replace(item, carried=carried) if carried is not None else item

    def _one(self, row: Any, source: Source, line: int, ctx: Context, system, turns, user) -> Request | FailedRequest:
        custom_id = source.default_id(line)

        def error(message: str, param: str | None = None, code: str = "template_error") -> FailedRequest:
            return FailedRequest(custom_id, source.name, line, code, message, param, file=source.index)

        if not isinstance(row, dict):
            return error(f"a table row must be an object of columns, got {short(row)}", None, "invalid_row")
        if self.id_column:
            value = row.get(self.id_column)
            if value is None:
                return error(f"--id-column {self.id_column}: the column is "
                             f"{'null' if self.id_column in row else 'missing'} in this row", self.id_column)
            custom_id = value if isinstance(value, str) else json.dumps(value, default=str)
        if callable(user):
            try:
                made = user(dict(row))
            except Exception as e:
                return error(f"the template function {_name(user)} raised {type(e).__name__}: {e}")
            body = dict(made) if isinstance(made, dict) else {"messages": made}
            return self._body(row, body, custom_id, source, line, ctx, error)
        columns = {k: v for k, v in row.items() if v is not None}
        context = {"row": columns, **columns}
        messages = []
        for role, template, option in (("system", system, "--template-system"), ("turns", turns, "--template-turns"),
                                       ("user", user, "--template-user")):
            if template is None:
                continue
            try:
                text = template.render(context)
            except Exception as e:
                return error(*_template_problem(e, row, option))
            if role != "turns":
                messages.append({"role": role, "content": text})
                continue
            earlier = _turns(text)
            if isinstance(earlier, str):
                return error(f"--template-turns: {earlier}", None)
            messages.extend(earlier)
        endpoint = ENDPOINTS[self.endpoint]
        if endpoint.template_body is not None:  # an endpoint whose body is not a conversation
            request = {"custom_id": custom_id, "method": "POST", "url": endpoint.url,
                       "body": endpoint.template_body(messages)}
            return parse_row(request, source=source, line=line, ctx=ctx, shape=SHAPES_BY_NAME[endpoint.shape])
        images = self._images(row, source.name)
        if isinstance(images, tuple):
            return error(*images)
        if images:
            messages[-1]["content"] = [{"type": "text", "text": messages[-1]["content"]}, *images]
        return self._body(row, {"messages": messages}, custom_id, source, line, ctx, error)

    def _body(self, row: dict[str, Any], made: dict[str, Any], custom_id: str, source: Source, line: int,
              ctx: Context, error) -> Request | FailedRequest:
        """The request from the rendered messages (or a Python template's body) and the options."""
        body: dict[str, Any] = {"custom_id": custom_id, **self.sample, **made}
        for key, column in self.sample_column.items():
            if column not in row:
                return error(f"--sample-column {key}={column}: the row has no column {column!r}", column)
            if row[column] is not None:
                body[key] = row[column]
        if self.response_format is not None:
            body["response_format"] = self.response_format
        return parse_row(body, source=source, line=line, ctx=ctx, shape=BARE)

    def _images(self, row: dict[str, Any], source_file: str) -> list[dict[str, Any]] | tuple[str, str]:
        """The --template-image columns' images as image_url parts (a null value: none), or
        what is wrong."""
        parts = []
        for column in self.images:
            if column not in row:
                return f"--template-image {column}: the row has no column {column!r}", column
            value = row[column]
            if isinstance(value, dict):  # a datasets Image: {bytes, path}, either may be null
                value = value.get("bytes") or value.get("path")
            url = image_url(value, source_file)
            if url is None and value is not None:
                return (f"--template-image {column}: {short(value)} is not an image (bytes, a path or URL, "
                        "or {bytes, path})", column)
            if url is not None:
                parts.append({"type": "image_url", "image_url": {"url": url}})
        return parts


def _name(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def callable_identity(fn: Callable) -> dict[str, str]:
    """A Python template's identity for resume: its name and source text (or, where there is no
    source, as for a lambda typed in a console, its compiled code)."""
    import inspect

    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        source = repr((code.co_code, code.co_consts)) if code is not None else repr(fn)
    return {"function": _name(fn), "source": source}


def image_url(value: Any, source_file: str) -> str | None:
    """A table cell as an image URL: bytes (Parquet binary) as a data: URI, a path or URL as it is
    (a relative path is relative to the table's folder); None for anything else."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        # The media type is found when the bytes are decoded (images.inline).
        return "data:application/octet-stream;base64," + base64.b64encode(bytes(value)).decode()
    if not isinstance(value, str) or not value:
        return None
    if "://" in value or value.startswith(("/", "data:")):
        return value
    return posixpath.join(posixpath.dirname(source_file), value)


def _template_problem(e: Exception, row: dict[str, Any], option: str) -> tuple[str, str | None]:
    from jinja2 import UndefinedError

    if isinstance(e, UndefinedError):
        m = _UNDEFINED.search(str(e))
        name = next((g for g in m.groups() if g), None) if m else None
        if name is not None:
            state = "null" if name in row else "missing"
            return (f"{option}: the template needs column {name!r}, which is {state} in this row", name)
        return f"{option}: {short(str(e), 200)}", None
    return f"{option}: the template failed on this row ({type(e).__name__}: {short(str(e), 200)})", None


def _turns(text: str) -> list[dict[str, Any]] | str:
    """The rendered --template-turns as a list of messages, or what is wrong with it."""
    try:
        value = _json_or_yaml(text)
    except ValueError as e:
        return f"the rendered turns are neither JSON nor YAML ({short(str(e), 120)})"
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
        return "the rendered turns must be a list of messages, each with a role and content"
    return value


def _json_or_yaml(text: str) -> Any:
    """JSON, else YAML; ValueError with YAML's complaint when it is neither."""
    import yaml

    try:
        return json.loads(text)
    except ValueError:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(str(e)) from None


def _free(name: str, prefix: str, taken: set[str]) -> str:
    while name in taken:
        name = prefix + name
    return name



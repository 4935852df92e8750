"""Row shapes: how one decoded input row carries a request.

A file's shape is detected once, from its first row that is an object, and every row of the file
is read in that shape (a row that does not fit gets an error saying why). Each shape gives the
row's request body (OpenAI chat completions, or its `endpoint`'s body), which requests.py hands
to that endpoint's `parse` (pipeline/endpoints/; the request's id is read from the row itself, from
the shape's `id_fields`). The endpoints' batch lines and the providers' own lines (Anthropic, Gemini,
the Responses API) are shapes made from their registries; a provider's `body_in` converts its
request to the chat body, and its errors name the shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.endpoints import DEFAULT, ENDPOINTS, Endpoint
from pipeline.endpoints.base import OPENAI_PREFIX, QUERY
from pipeline.intake.endpoints import is_line_for
from pipeline.providers import PROVIDERS, Provider
from pipeline.records import Invalid, field_names, names_list, short

RESPONSES_URL_FORMS = re.compile(OPENAI_PREFIX + r"/responses" + QUERY)
BATCH_LINE_FIELDS = {"custom_id", "method", "url", "body"}


@dataclass(frozen=True)
class Shape:
    name: str
    matches: Callable[[dict[str, Any]], bool]
    # (row, warnings to add to) -> the request body; raises Invalid
    read: Callable[[dict[str, Any], list[str]], Any]
    # How messages name it, e.g. "Anthropic Message Batches lines ({custom_id, params})".
    title: str = ""
    # The row fields that may hold the request's id, first present wins.
    id_fields: tuple[str, ...] = ("custom_id",)
    # True: the body is converted from another provider's form (its errors say so).
    converted: bool = False
    # The endpoint its lines ask for (a name of pipeline/endpoints' ENDPOINTS).
    endpoint: str = DEFAULT.name

    def id_field(self, row: dict[str, Any]) -> str:
        return next((f for f in self.id_fields if row.get(f) is not None), self.id_fields[-1])

    def explained(self, error: Invalid) -> Invalid:
        """A validation error of the converted chat body, saying where that body came from."""
        if not self.converted:
            return error
        return Invalid(error.code, f"{error.message} (in the chat request converted from this file's "
                       f"{self.title})", error.param)


def _in_file(shape: Shape, row: dict[str, Any]) -> str:
    """What to add to an error when a row does not have its file's shape."""
    if shape.matches(row):
        return ""
    other = detect(row)
    looks = f"looks like {other.title}" if other is not BARE or _has_chat_fields(row) else "has no known shape"
    return (f"; this file holds {shape.title} (detected from its first row) but this row {looks}: "
            "every row of a file must have the file's shape")


def _batch_line(row: dict[str, Any], warnings: list[str], *, urls: re.Pattern[str] = DEFAULT.urls,
                endpoint: str = "chat completions", shape_name: str = "openai-batch") -> Any:
    shape = SHAPES_BY_NAME[shape_name]
    method = row.get("method", "POST")
    if not isinstance(method, str) or method.upper() != "POST":
        raise Invalid("invalid_method", f"method must be POST, got {short(method)}{_in_file(shape, row)}", "method")
    url = row.get("url")
    if not isinstance(url, str) or not urls.match(url):
        raise Invalid("invalid_url", f"url must be {endpoint} ({URL_EXAMPLES[shape_name]}) in a file of "
                      f"{shape.title}, got {short(url)}{_in_file(shape, row)}", "url")
    if "body" not in row:
        raise Invalid("invalid_row", "an OpenAI Batch line needs a body (the request); this one has none", "body")
    extra = field_names(set(row) - BATCH_LINE_FIELDS)
    if extra:
        warnings.append(f"unknown batch-line field(s) ignored: {names_list(extra)}")
    return row["body"]


URL_EXAMPLES = {
    **{e.shape: repr(e.url) for e in ENDPOINTS.values()},
    DEFAULT.shape: f"{DEFAULT.url!r}, or Azure's '/chat/completions'",
    "openai-responses": "'/v1/responses'",
}


def _responses_line(row: dict[str, Any], warnings: list[str]) -> Any:
    body = _batch_line(row, warnings, urls=RESPONSES_URL_FORMS, endpoint="the Responses API",
                       shape_name="openai-responses")
    return _converted(RESPONSES, PROVIDERS["responses"].body_in, body, warnings)


def _endpoint_line(endpoint: Endpoint):
    """The reader of an endpoint's batch lines (by its record's URL forms)."""
    def read(row: dict[str, Any], warnings: list[str]) -> Any:
        return _batch_line(row, warnings, urls=endpoint.urls, endpoint=endpoint.name, shape_name=endpoint.shape)
    return read


def _endpoint_shape(endpoint: Endpoint) -> Shape:
    return Shape(endpoint.shape, is_line_for(endpoint.name), _endpoint_line(endpoint),
                 f"{endpoint.title} ({{custom_id, method, url: {endpoint.url}, body}})", endpoint=endpoint.name)


def _together_line(row: dict[str, Any], warnings: list[str]) -> Any:
    if "body" not in row:
        raise Invalid("invalid_row", f"body is missing (the request){_in_file(TOGETHER, row)}", "body")
    extra = field_names(set(row) - BATCH_LINE_FIELDS)
    if extra:
        warnings.append(f"unknown batch-line field(s) ignored: {names_list(extra)}")
    return row["body"]


def _provider_line(shape_name: str, field: str, convert: Callable[[Any, list[str]], Any]):
    def read(row: dict[str, Any], warnings: list[str]) -> Any:
        shape = SHAPES_BY_NAME[shape_name]
        if field not in row:
            raise Invalid("invalid_row", f"{field} is missing (the request){_in_file(shape, row)}", field)
        extra = field_names(set(row) - {field, *shape.id_fields})
        if extra:
            warnings.append(f"unknown line field(s) ignored: {names_list(extra)}")
        return _converted(shape, convert, row[field], warnings)
    return read


def _converted(shape: Shape, convert: Callable[[Any, list[str]], Any], request: Any, warnings: list[str]) -> Any:
    try:
        return convert(request, warnings)
    except Invalid as e:
        raise Invalid(e.code, f"{e.message} (this file is read as {shape.title})", e.param) from None


# Fields that mark a row as a bare chat body (the fallback shape).
CHAT_FIELDS = {"messages", "model", "max_tokens", "max_completion_tokens", "temperature", "tools"}


def _has_chat_fields(row: dict[str, Any]) -> bool:
    return bool(CHAT_FIELDS & row.keys())


def _bare_body(row: dict[str, Any], warnings: list[str]) -> Any:
    if "messages" not in row and not _has_chat_fields(row):
        fields = names_list(field_names(set(row) - {"custom_id"})) or "none"
        raise Invalid("invalid_row", f"this row has no known shape (its fields: {fields}); the row shapes "
                      f"accepted are: {accepted_shapes()}")
    return {k: v for k, v in row.items() if k != "custom_id"}


def _is_batch_line(row: dict[str, Any]) -> bool:
    return {"url", "method"} <= row.keys() or ("body" in row and bool({"url", "method"} & row.keys()))


def _is_responses_line(row: dict[str, Any]) -> bool:
    url = row.get("url")
    return _is_batch_line(row) and isinstance(url, str) and bool(RESPONSES_URL_FORMS.match(url))


def _holds(field: str) -> Callable[[dict[str, Any]], bool]:
    """A provider's line: its request field, and no field of a chat body or a batch line."""
    return lambda row: field in row and not ({"messages", "url", "method", "body"} - {field}) & row.keys()


RESPONSES = Shape(PROVIDERS["responses"].shape, _is_responses_line, _responses_line, PROVIDERS["responses"].shape_title,
                  converted=True)
# The batch lines of each endpoint but the default, whose lines (OPENAI_BATCH) take any URL and
# say what is wrong with it.
ENDPOINT_SHAPES = tuple(_endpoint_shape(e) for e in ENDPOINTS.values() if e is not DEFAULT)
OPENAI_BATCH = Shape(DEFAULT.shape, _is_batch_line, _batch_line,
                     f"{DEFAULT.title} ({{custom_id, method, url: {DEFAULT.url}, body}})")
TOGETHER = Shape("together-batch", _holds("body"), _together_line, "Together batch lines ({custom_id, body})")


def _provider_shape(provider: Provider) -> Shape:
    """The shape of a provider's own request lines: its request field, converted by its body_in."""
    return Shape(provider.shape, _holds(provider.request_field),
                 _provider_line(provider.shape, provider.request_field, provider.body_in), provider.shape_title,
                 id_fields=provider.id_fields, converted=True)


# The lines of every provider that holds its request in a field of its own (Anthropic, Gemini).
PROVIDER_SHAPES = tuple(_provider_shape(p) for p in PROVIDERS.values() if p.request_field is not None)
BARE = Shape("body", lambda row: True, _bare_body, "chat request bodies ({custom_id, model, messages, ...})")
# detection order: the first that matches
SHAPES = (RESPONSES, *ENDPOINT_SHAPES, OPENAI_BATCH, TOGETHER, *PROVIDER_SHAPES, BARE)
SHAPES_BY_NAME = {s.name: s for s in SHAPES}


def detect(row: dict[str, Any]) -> Shape:
    return next(s for s in SHAPES if s.matches(row))


def accepted_shapes() -> str:
    return "; ".join(s.title for s in SHAPES)



"""The records every layer speaks: a valid request (`Request`), what went wrong with one
(`Problem`) and where (`FailedRequest`), and the text helpers their messages use.

The error record:
Parsing, validation, the engine and the writer all speak it: a reader's unreadable line, a
validator's refusal, an engine's refusal and an isolated engine crash are the same record, and
one function (`output/rows.error_column`) turns it into the output row's `error` column.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong, as a stable code, a message that says how to fix it, and the field."""

    code: str
    message: str
    param: str | None = None


class Invalid(Exception):
    """Raised inside parsing and validation; the caller turns it into a FailedRequest."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param

    @property
    def problem(self) -> Problem:
        return Problem(self.code, self.message, self.param)


@dataclass(frozen=True, slots=True)
class Source:
    """An input file as its rows know it. `index` (its place in the run's sorted inputs) with the
    line is a row's key for resume and commits; `identity` (its real location) derives ids;
    `name` (its display form) is for people only: two files can display alike."""

    index: int
    name: str
    identity: str

    def default_id(self, line: int) -> str:
        return default_id(self.identity, line)


@dataclass(frozen=True, slots=True)
class FailedRequest:
    """A request that gets an error row instead of a completion: what is wrong and where."""

    custom_id: str
    source_file: str
    line: int
    code: str
    message: str
    param: str | None = None
    user: str | None = None
    # Template jobs: the input columns the output row carries over (output name -> value).
    carried: dict[str, Any] | None = None
    shape: str | None = None  # the input line's shape (shapes.Shape.name), when known
    file: int = 0  # the input file's index (Source.index): with line, the row's key

    @classmethod
    def of(cls, problem: Problem, custom_id: str, source_file: str, line: int,
           user: str | None = None, file: int = 0) -> FailedRequest:
        return cls(custom_id, source_file, line, problem.code, problem.message, problem.param, user,
                   file=file)

    @classmethod
    def about(cls, problem: Problem, request: Request) -> FailedRequest:
        """The error row of a valid request that failed later (at rendering, in the engine)."""
        return cls.of(problem, request.custom_id, request.source_file, request.line, request.user,
                      request.file)

    @property
    def problem(self) -> Problem:
        return Problem(self.code, self.message, self.param)


def default_id(identity: str, line: int) -> str:
    """A stable id for a row that has none: derived from its file's identity and its line."""
    digest = hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{digest}-{line}"


def is_default_id(custom_id: str, line: int) -> bool:
    """Was this id derived by `default_id` (the row came without one)?"""
    return re.fullmatch(rf"[0-9a-f]{{8}}-{line}", custom_id) is not None


def is_text(text: str) -> bool:
    """Can this string be written as UTF-8 (no lone surrogates)? Rows that are not text become
    error rows instead of breaking the Parquet writer."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def kind_of(value: Any) -> str:
    """What a JSON value is, for messages: "an object", "a string", "null", ..."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


# The fields of a normalized body that hold what a request is about rather than how to sample
# it: its prompt (each endpoint's: a speech request's audio is its `file_url`), tools, the
# answer's format and the user. `Request.params` is the body less these.
CONTENT_FIELDS = frozenset({"messages", "prompt", "input", "queries", "documents", "query", "file_url", "tools",
                            "tool_choice", "response_format", "user"})


@dataclass(frozen=True, slots=True)
class Request:
    """A valid request (chat completions, or another endpoint's), with where it came from.

    `body` is the request itself: its endpoint's normalized body (OpenAI's or vLLM's names, the
    job's defaults applied, a provider's line already converted), made once by the endpoint's
    `parse` (pipeline/endpoints/) and validated and run as it is by every engine. The other
    fields say where it came from and how the run treats it; the properties read the body."""

    custom_id: str
    source_file: str
    line: int
    body: dict[str, Any]
    warnings: tuple[str, ...] = ()
    unknown_fields: tuple[str, ...] = ()
    # Template jobs: the input columns the output row carries over (output name -> value).
    carried: dict[str, Any] | None = None
    requested_model: str | None = None  # the model the row asked for, as it wrote it
    shape: str | None = None  # the input line's shape (shapes.Shape.name): --format native answers in it
    adapter: str | None = None  # the --lora adapter it runs with (None: the base model)
    # Its prefix group in the run's order (intake/order.py): a group goes to one engine. 0: none.
    group: int = 0
    # Its prefix key (intake/order.prefix_key), kept once computed so it is hashed once; None: not
    # yet. Not an argument: dataclasses.replace gives a changed request none (never a stale key).
    prefix: bytes | None = field(default=None, init=False, compare=False, repr=False)
    file: int = 0  # the input file's index (Source.index): with line, the request's key
    # The endpoint it asks for (a name of pipeline/endpoints' registry, whose record says how
    # its body is read and its columns and bounds are made): "chat" (`messages`), or another:
    # embeddings (`input`: a string, a list of strings, token ids or a list of token-id lists);
    # completions (`prompt`: a string or token ids); score ({"queries": [...], "documents": [...]}:
    # one query for every document, or one for each); rerank ({"query": ..., "documents": [...]});
    # transcriptions and translations (`file_url`: once intake checked it, a data: URI of the
    # audio's bytes, endpoints/speech.py, and the other fields of vLLM's transcription request).
    endpoint: str = "chat"
    # Seconds of audio the request sends (a transcription's file, a chat's input_audio parts),
    # measured when intake checked it (intake/audio.py); None: no audio, or not checked yet
    audio_seconds: float | None = None

    @classmethod
    def chat(cls, custom_id: str, source_file: str, line: int, messages: list[dict[str, Any]],
             params: dict[str, Any] | None = None, tools: list[dict[str, Any]] | None = None,
             tool_choice: Any = None, response_format: dict[str, Any] | None = None, **fields: Any) -> Request:
        """A chat request from its parts (tests and benchmarks; intake's come from `parse`)."""
        named = {"tools": tools, "tool_choice": tool_choice, "response_format": response_format}
        body = {"messages": messages, **(params or {}), **{k: v for k, v in named.items() if v is not None}}
        return cls(custom_id, source_file, line, body, **fields)

    def with_body(self, **changes: Any) -> Request:
        """The request with these body fields changed (None: removed)."""
        body = {**self.body, **changes}
        return replace(self, body={k: v for k, v in body.items() if v is not None})

    @property
    def messages(self) -> list[dict[str, Any]]:
        """A chat request's conversation (empty for the other endpoints)."""
        return self.body.get("messages") or []

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        return self.body.get("tools")

    @property
    def tool_choice(self) -> Any:
        return self.body.get("tool_choice")

    @property
    def response_format(self) -> dict[str, Any] | None:
        """The answer's format a chat request asks for (JSON, a schema). None for a speech request,
        whose `response_format` is a string naming its result's layout (endpoints/speech.py)."""
        fmt = self.body.get("response_format")
        return fmt if isinstance(fmt, dict) else None

    @property
    def user(self) -> str | None:
        return self.body.get("user")

    @property
    def params(self) -> dict[str, Any]:
        """Its sampling and other fields (the body less CONTENT_FIELDS)."""
        return {k: v for k, v in self.body.items() if k not in CONTENT_FIELDS}

    @property
    def n(self) -> int:
        return self.body.get("n", 1)

    @property
    def max_tokens(self) -> int | None:
        """The most tokens of one choice it may generate (None: up to the context)."""
        return self.body.get("max_completion_tokens", self.body.get("max_tokens"))


def is_token_ids(value: Any) -> bool:
    """A non-empty list of token ids."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


def embedding_inputs(value: Any) -> list[Any]:
    """The single inputs of an embeddings request's `input`, in order (strings or token-id lists):
    a list of strings or of token-id lists holds several, anything else is one."""
    return [value] if isinstance(value, str) or is_token_ids(value) else list(value)


def score_inputs(request: Request) -> tuple[list[Any], list[Any]]:
    """A score or rerank request's queries (one for every document, or one per document) and
    documents, as given: what an embedding model embeds, each once."""
    body = request.body
    return ([body["query"]] if "query" in body else body["queries"]), body["documents"]  # rerank's one query; score's


def score_pairs(request: Request) -> list[tuple[Any, Any]]:
    """The (query, document) pairs a score or rerank request scores, in the order of its scores:
    one query with every document, or the i-th query with the i-th document."""
    queries, documents = score_inputs(request)
    if len(queries) == 1:
        queries = queries * len(documents)
    return list(zip(queries, documents, strict=True))


def field_names(keys: Any) -> list[str]:
    """Field names, sorted, as text a message can hold (a lone surrogate is escaped)."""
    return sorted(k if isinstance(k, str) and is_text(k) else ascii(k) for k in keys)


def names_list(names: list[str], limit: int = 5, width: int = 40) -> str:
    """A bounded list of field names for a message: a row with a million unknown fields must
    not make a megabyte warning."""
    shown = [n if len(n) <= width else n[: width - 1] + "…" for n in names[:limit]]
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(shown) + more


def short(value: Any, width: int = 60) -> str:
    """A bounded repr for messages, that cannot fail (an int past Python's digit limit)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<{type(value).__name__}>"
    return text if len(text) <= width else text[: width - 1] + "…"

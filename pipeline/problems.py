"""The one error record: what went wrong with a request (`Problem`) and where (`RowError`).

Parsing, validation, the engine and the writer all speak it: a reader's unreadable line, a
validator's refusal, an engine's refusal and an isolated engine crash are the same record, and
one function turns it into the output row's `error` column.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong, as a stable code, a message that says how to fix it, and the field."""

    code: str
    message: str
    param: str | None = None

    def as_error(self, line: int | None) -> dict[str, Any]:
        """The output row's `error` value."""
        return {"code": self.code, "message": self.message, "param": self.param, "line": line}


class Invalid(Exception):
    """Raised inside parsing and validation; the caller turns it into a RowError."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param

    @property
    def problem(self) -> Problem:
        return Problem(self.code, self.message, self.param)


@dataclass(frozen=True, slots=True)
class RowError:
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

    @classmethod
    def of(cls, problem: Problem, custom_id: str, source_file: str, line: int,
           user: str | None = None) -> RowError:
        return cls(custom_id, source_file, line, problem.code, problem.message, problem.param, user)

    @property
    def problem(self) -> Problem:
        return Problem(self.code, self.message, self.param)


def default_id(source_file: str, line: int) -> str:
    """A stable id for a row that has none: derived from its file and line."""
    digest = hashlib.blake2b(source_file.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{digest}-{line}"


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

"""Row shapes: how one decoded input row carries a chat-completions request.

A file's shape is detected once, from its first row that is an object, and every row of the file
is read in that shape (a row that does not fit gets an error saying why). Each shape gives the
row's OpenAI chat-completions body, which `requests.py` validates (`custom_id` is read from the
row itself in every shape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .problems import Invalid

CHAT_URL = "/v1/chat/completions"
BATCH_LINE_FIELDS = {"custom_id", "method", "url", "body"}


@dataclass(frozen=True)
class Shape:
    name: str
    matches: Callable[[dict[str, Any]], bool]
    # (row, warnings to add to) -> the request body; raises Invalid
    read: Callable[[dict[str, Any], list[str]], Any]


def _batch_line(row: dict[str, Any], warnings: list[str]) -> Any:
    method = row.get("method", "POST")
    if not isinstance(method, str) or method.upper() != "POST":
        raise Invalid("invalid_method", f"method must be POST, got {short(method)}", "method")
    url = row.get("url")
    if url != CHAT_URL:
        raise Invalid("invalid_url", f"url must be {CHAT_URL!r} (this pipeline runs chat completions), "
                      f"got {short(url)}", "url")
    if "body" not in row:
        raise Invalid("invalid_row", "an OpenAI Batch line needs a body (the request); this one has none", "body")
    extra = sorted(set(row) - BATCH_LINE_FIELDS)
    if extra:
        warnings.append(f"unknown batch-line field(s) ignored: {names_list(extra)}")
    return row["body"]


def _bare_body(row: dict[str, Any], warnings: list[str]) -> Any:
    return {k: v for k, v in row.items() if k != "custom_id"}


def _is_batch_line(row: dict[str, Any]) -> bool:
    return {"url", "method"} <= row.keys() or ("body" in row and bool({"url", "method"} & row.keys()))


OPENAI_BATCH = Shape("openai-batch", _is_batch_line, _batch_line)
BARE = Shape("body", lambda row: True, _bare_body)
SHAPES = (OPENAI_BATCH, BARE)  # detection order: the first that matches


def detect(row: dict[str, Any]) -> Shape:
    return next(s for s in SHAPES if s.matches(row))


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

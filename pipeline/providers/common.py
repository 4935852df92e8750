"""Other providers' batch forms, both directions: the contract of every file in this folder.

A provider file (anthropic.py, gemini.py, responses.py, openai.py) builds one `Provider` (below),
listed once in `pipeline/providers/__init__.py`; everything else (the `--format` choices, shape
detection, `--format native`, reading result lines back, refusals) is derived from that list.
It holds, side by side:
- in: `<provider>_body(request, warnings) -> dict`, the provider's request (Anthropic's `params`,
  Gemini's `request`, a Responses API `body`) converted to the OpenAI chat-completions body that
  pipeline/endpoints/chat.py checks and normalizes (the body the Request carries to the engine).
  A conversion is faithful or it is refused: what has no equivalent in a local chat model
  (built-in server tools, state kept on the provider's servers, an assistant prefill to be
  continued) raises `Invalid` saying what and why, with `param` the path in the
  provider's own form. Fields the converter does not know are kept in the body under a prefixed
  name (`params.foo`), so that the validator lists them as unknown fields, ignored, and they never
  collide with a chat field.
- out: `<provider>_line(row) -> dict`, one output row (output/rows.py) as one line of that
  provider's batch result format, with the row's id in its id field (custom_id; Gemini: key).

This module holds the helpers both directions share. OpenAI Batch lines need no conversion in
(intake/shapes.py reads them); openai.py holds their result writer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.records import Invalid, kind_of


def _name(value: Any, width: int = 40) -> str:
    """A block or part type for a message: short, whatever it is."""
    text = value if isinstance(value, str) else kind_of(value)
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _parts(parts: list[dict[str, Any]]) -> Any:
    """Parts as chat content: one text part is its string; several, or images, stay a list of parts."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def image_part(url: Any, at: str, detail: Any = None) -> dict[str, Any]:
    """An image (a URL, a path or a data: URI) as the OpenAI chat `image_url` part every input
    form becomes; intake/images.py fetches and checks it."""
    if not isinstance(url, str) or not url:
        raise Invalid("invalid_messages", f"{at}: an image needs a URL, a path or base64 data, got {kind_of(url)}", at)
    return {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail is not None else {})}}


def data_url(mime: Any, data: Any, at: str) -> str:
    """Base64 image data with its media type as a data: URI."""
    if not isinstance(data, str) or not data:
        raise Invalid("invalid_messages", f"{at}: the image's base64 data is missing", at)
    if not isinstance(mime, str) or not mime.startswith("image/"):
        raise Invalid("unsupported_content", f"{at}: media type {_name(mime)} is not an image; images "
                      "(image/png, image/jpeg, image/webp, image/gif) are the media this run takes", at)
    return f"data:{mime};base64,{data}"


def _keep_unknown(body: dict[str, Any], source: dict[str, Any], known: set[str], prefix: str) -> None:
    for key in source:
        if key not in known and source[key] is not None:
            body[f"{prefix}.{key}" if isinstance(key, str) else prefix] = source[key]


def _failed(row: dict[str, Any]) -> bool:
    return row["error"] is not None and row["choices"] is None


def _model(row: dict[str, Any]) -> str:
    """The model a line names: the adapter that ran the row, else the model."""
    return row.get("served_model") or row["model"]


def _has_text(choice: dict[str, Any]) -> bool:
    """Whether a choice's text gets its own part: any text, or an empty one without tool calls."""
    return choice.get("content") is not None and bool(choice["content"] or not choice.get("tool_calls"))


def error_text(err: dict[str, Any]) -> str:
    """The error's message with where it is (input line, field) folded in, for formats whose
    error has no place for them."""
    where = [f"line {err['line']}"] if err.get("line") is not None else []
    if err.get("param"):
        where.append(f"field {err['param']}")
    return f"{err['message']} ({', '.join(where)})" if where else err["message"]


def _arguments(text: str | None) -> dict[str, Any]:
    """A tool call's JSON arguments as the object Anthropic and Gemini put in the call; text that
    is not a JSON object (a model's broken call) is kept whole under `_unparsed_arguments`."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"_unparsed_arguments": text}


# How many images the prompt had, in each line format (`Provider.image_field`). No provider's batch
# results carry an image count (Gemini's promptTokensDetails splits tokens by modality, which the
# engine does not report per request), so each format has an extension field named like the token
# counts beside it; the providers' SDKs and plain JSON readers ignore keys they do not know.
# Absent: no images.
def with_images(usage: dict[str, Any], row: dict[str, Any], field: str) -> dict[str, Any]:
    """`usage` with the prompt's image count in `field` when the prompt had images."""
    if row.get("images"):
        usage[field] = row["images"]
    return usage


def split_code(text: str) -> dict[str, str]:
    """`code: message` (how the Anthropic and Gemini writers put our code in their message)."""
    code, _, message = text.partition(": ")
    return {"code": code, "message": message}


@dataclass(frozen=True)
class Provider:
    """One provider's batch format, both directions."""

    name: str  # its `--format` name and how `--format native` knows it: "anthropic"
    title: str  # how messages name it: "Anthropic"
    line_out: Callable[[dict[str, Any]], dict[str, Any]]  # an output row as one of its result lines
    owns: Callable[[dict[str, Any]], bool]  # is a result line in its format? (reading lines back)
    failed: Callable[[dict[str, Any]], bool]  # does its result line answer a failed request?
    # What `pipeline report` needs of its result line (formats.SUMMARY_KEYS)
    summary: Callable[[dict[str, Any]], dict[str, Any]]
    image_field: str  # its usage's extension field for the prompt's image count
    runners: tuple[str, ...] = ("generate", "pooling")  # the kinds of model whose rows it can answer
    format_choice: bool = True  # a `--format` choice (False: only through --format native)
    # Its request lines, when it has its own: their shape's name (intake/shapes.py), the line field
    # that holds the request, the fields that may hold the id, the lines' title in messages, and
    # the converter of that request to the OpenAI chat body. None: OpenAI's own lines.
    shape: str | None = None
    request_field: str | None = None
    id_fields: tuple[str, ...] = ("custom_id",)
    shape_title: str = ""
    body_in: Callable[[Any, list[str]], dict[str, Any]] | None = None


# Errors that are the request's fault (the rest, e.g. engine_crash and output_error, are ours).
SERVER_ERRORS = {"engine_crash", "output_error"}

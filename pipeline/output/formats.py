"""The output formats, chosen once (`--format`): Parquet part files with the output schema
(schema.py), or JSON lines in a provider's own batch result format, so that code written for that
provider's batch API reads our output unchanged:

- `openai`: OpenAI Batch output lines, every row;
- `anthropic`: Anthropic Message Batches result lines, every row;
- `gemini`: Gemini API / Vertex AI batch output lines, every row;
- `native`: each row in the format of the line it came from (its `input_shape`): Anthropic lines
  get Anthropic results, Gemini/Vertex lines Gemini lines, Responses API lines the Responses batch
  output, and OpenAI Batch, Together, bare bodies, template rows and lines whose shape could not
  be known (unreadable before the file's first object) OpenAI Batch lines.

Each writer takes one output row (rows.py) and returns one line's object; every row gives
exactly one line, with the row's id in the provider's id field (custom_id; Gemini: key).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from typing import Any

from pipeline.providers.anthropic import anthropic_line
from pipeline.providers.common import IMAGE_FIELDS
from pipeline.providers.gemini import gemini_line
from pipeline.providers.openai import openai_line
from pipeline.providers.responses import responses_line

LINE_FORMATS = ("openai", "native", "anthropic", "gemini")
FORMATS = ("parquet", *LINE_FORMATS)
FORMAT_EXT = {"parquet": "parquet", **{f: "jsonl" for f in LINE_FORMATS}}


def encode(rows: list[dict[str, Any]], fmt: str, schema=None) -> bytes:
    """A part's bytes in the output format: the Parquet output schema (or `schema`: a template
    job's, the output schema plus its columns), or JSON lines (which have no place for extra
    columns: they are left out)."""
    if fmt in LINE_FORMATS:
        return "".join(json.dumps(line_of(r, fmt), ensure_ascii=False) + "\n" for r in rows).encode()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.schema import OUTPUT_SCHEMA

    table = pa.Table.from_pylist(rows, schema=schema if schema is not None else OUTPUT_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def line_of(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The row as one output line of a line format (`native`: in its input line's format)."""
    if fmt == "native":
        return NATIVE.get(row.get("input_shape"), openai_line)(row)
    return WRITERS[fmt](row)


def failed(line: dict[str, Any]) -> bool:
    """Whether an output line of any line format answers a failed request (what OpenAI's Batch
    API puts in its error file)."""
    if "result" in line:  # Anthropic
        return (line["result"] or {}).get("type") != "succeeded"
    if "key" in line:  # Gemini / Vertex
        return bool(line.get("status"))
    return line.get("error") is not None  # OpenAI Batch, Responses


WRITERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "openai": openai_line, "anthropic": anthropic_line, "gemini": gemini_line}
# --format native: the writer for each input shape (shapes.py); any other shape: openai_line.
NATIVE: dict[str | None, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "anthropic-batch": anthropic_line, "gemini-batch": gemini_line, "openai-responses": responses_line}


# ---- reading them back (pipeline report) -------------------------------------------------------
SUMMARY_KEYS = ("custom_id", "error", "prompt_tokens", "completion_tokens", "cached_tokens", "estimated_cost",
                "finish_reason", "content", "images", "reasoning_tokens")


def summary(line: dict[str, Any]) -> dict[str, Any]:
    """What `pipeline report` needs of one output line of any line format: custom_id, error
    {code, message}, tokens, and the first choice's finish reason and content (the same keys
    for every line; `images`: the prompt's images, None for none)."""
    out = {k: None for k in SUMMARY_KEYS} | _summary(line)
    if out["error"] is not None:  # the input line, back out of the message it was folded into
        found = _WHERE.search(out["error"].get("message") or "")
        out["error"] = {**out["error"], "line": int(found.group(1)) if found else None}
    return out


_WHERE = re.compile(r"\(line (\d+)(?:, field [^)]*)?\)$")


def _split(text: str) -> dict[str, str]:
    """`code: message` (how the Anthropic and Gemini writers put our code in their message)."""
    code, _, message = text.partition(": ")
    return {"code": code, "message": message}


def _summary(line: dict[str, Any]) -> dict[str, Any]:
    if "result" in line:  # Anthropic
        result = line["result"] or {}
        if result.get("type") != "succeeded":
            inner = (result.get("error") or {}).get("error") or {}
            return {"custom_id": line.get("custom_id"), "error": _split(str(inner.get("message", "")))}
        msg = result.get("message") or {}
        usage = msg.get("usage") or {}
        text = next((b.get("text") for b in msg.get("content") or [] if b.get("type") == "text"), None)
        return {"custom_id": line.get("custom_id"), "prompt_tokens": usage.get("input_tokens"),
                "completion_tokens": usage.get("output_tokens"), "finish_reason": msg.get("stop_reason"),
                "content": text, "images": usage.get(IMAGE_FIELDS["anthropic"])}
    if "key" in line:  # Gemini / Vertex
        status = line.get("status")
        if status:
            return {"custom_id": line["key"],
                    "error": _split(status.get("message", "") if isinstance(status, dict) else str(status))}
        resp = line.get("response") or {}
        usage = resp.get("usageMetadata") or {}
        first = (resp.get("candidates") or [{}])[0]
        parts = (first.get("content") or {}).get("parts") or []
        thoughts = usage.get("thoughtsTokenCount")
        return {"custom_id": line["key"], "prompt_tokens": usage.get("promptTokenCount"),
                "completion_tokens": (usage.get("candidatesTokenCount") or 0) + (thoughts or 0),
                "reasoning_tokens": thoughts,
                "cached_tokens": usage.get("cachedContentTokenCount", 0), "finish_reason": first.get("finishReason"),
                "content": next((p["text"] for p in parts if "text" in p and not p.get("thought")), None),
                "images": usage.get(IMAGE_FIELDS["gemini"])}
    body = (line.get("response") or {}).get("body") or {}  # OpenAI Batch, Responses
    usage = body.get("usage") or {}
    if body.get("object") == "response":
        text = next((c.get("text") for item in body.get("output") or [] if item.get("type") == "message"
                     for c in item.get("content") or []), None)
        return {"custom_id": line.get("custom_id"), "error": line.get("error"),
                "prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens"),
                "cached_tokens": (usage.get("input_tokens_details") or {}).get("cached_tokens"),
                "reasoning_tokens": (usage.get("output_tokens_details") or {}).get("reasoning_tokens"),
                "finish_reason": body.get("status"), "content": text, "images": usage.get(IMAGE_FIELDS["responses"])}
    first = (body.get("choices") or [{}])[0]
    return {"custom_id": line.get("custom_id"), "error": line.get("error"),
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            "reasoning_tokens": (usage.get("completion_tokens_details") or {}).get("reasoning_tokens"),
            "estimated_cost": usage.get("estimated_cost"), "finish_reason": first.get("finish_reason"),
            "content": (first.get("message") or {}).get("content"), "images": usage.get(IMAGE_FIELDS["openai"])}

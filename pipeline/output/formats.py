"""The output formats, chosen once (`--format`): Parquet part files with the output schema
(schema.py), or JSON lines in a provider's own batch result format, so that code written for that
provider's batch API reads our output unchanged:

- `openai`: OpenAI Batch output lines, every row;
- `anthropic`: Anthropic Message Batches result lines, every row;
- `gemini`: Gemini API / Vertex AI batch output lines, every row;
- `responses`: OpenAI Batch lines whose bodies are Responses API responses, every row;
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

from pipeline.providers import DEFAULT, PROVIDERS, reading

# The line formats: OpenAI's, each row in its input's (native), then every other provider's.
LINE_FORMATS = (DEFAULT.name, "native", *(p.name for p in PROVIDERS.values() if p.format_choice and p is not DEFAULT))
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
        return NATIVE.get(row.get("input_shape"), DEFAULT.line_out)(row)
    return WRITERS[fmt](row)


def failed(line: dict[str, Any]) -> bool:
    """Whether an output line of any line format answers a failed request (what OpenAI's Batch
    API puts in its error file)."""
    return reading(line).failed(line)


WRITERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    p.name: p.line_out for p in PROVIDERS.values() if p.format_choice}
# --format native: the writer for each provider's input shape (shapes.py); any other shape: OpenAI's.
NATIVE: dict[str | None, Callable[[dict[str, Any]], dict[str, Any]]] = {
    p.shape: p.line_out for p in PROVIDERS.values() if p.shape is not None}


# ---- reading them back (pipeline report) -------------------------------------------------------
SUMMARY_KEYS = ("custom_id", "error", "prompt_tokens", "completion_tokens", "cached_tokens", "estimated_cost",
                "finish_reason", "content", "images", "reasoning_tokens")


def summary(line: dict[str, Any]) -> dict[str, Any]:
    """What `pipeline report` needs of one output line of any line format: custom_id, error
    {code, message}, tokens, and the first choice's finish reason and content (the same keys
    for every line; `images`: the prompt's images, None for none)."""
    out = {k: None for k in SUMMARY_KEYS} | reading(line).summary(line)
    if out["error"] is not None:  # the input line, back out of the message it was folded into
        found = _WHERE.search(out["error"].get("message") or "")
        out["error"] = {**out["error"], "line": int(found.group(1)) if found else None}
    return out


_WHERE = re.compile(r"\(line (\d+)(?:, field [^)]*)?\)$")

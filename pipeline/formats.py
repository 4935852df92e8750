"""The output formats, chosen once: Parquet part files with the output schema (schema.py), or
OpenAI Batch API output lines (`--format openai`) for users of OpenAI's Batch API."""

from __future__ import annotations

import io
import json
from typing import Any

FORMAT_EXT = {"parquet": "parquet", "openai": "jsonl"}


def encode(rows: list[dict[str, Any]], fmt: str, schema=None) -> bytes:
    """A part's bytes in the output format: the Parquet output schema (or `schema`: a template
    job's, the output schema plus its columns), or OpenAI Batch lines (which have no place for
    extra columns: they are left out)."""
    if fmt == "openai":
        return "".join(json.dumps(openai_line(r), ensure_ascii=False) + "\n" for r in rows).encode()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .schema import OUTPUT_SCHEMA

    table = pa.Table.from_pylist(rows, schema=schema if schema is not None else OUTPUT_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def openai_line(row: dict[str, Any]) -> dict[str, Any]:
    """The row as an OpenAI Batch API output line (https://platform.openai.com/docs/guides/batch)."""
    err = row["error"]
    if err is not None and row["choices"] is None:
        return {
            "id": f"batch_req_{row['custom_id']}",
            "custom_id": row["custom_id"],
            "response": None,
            "error": {"code": err["code"], "message": err["message"], "param": err["param"], "line": err["line"]},
        }
    choices = []
    for c in row["choices"]:
        message = {"role": "assistant", "content": c["content"]}
        if c.get("tool_calls"):
            message["tool_calls"] = c["tool_calls"]
        choices.append({"index": c["index"], "message": message, "logprobs": c.get("logprobs"),
                        "finish_reason": c["finish_reason"]})
    body = {
        "id": f"chatcmpl-{row['custom_id']}",
        "object": "chat.completion",
        "model": row["model"],
        "choices": choices,
        "usage": {
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "total_tokens": row["total_tokens"],
            "prompt_tokens_details": {"cached_tokens": row["cached_tokens"]},
            "estimated_cost": row["estimated_cost"],
        },
    }
    return {
        "id": f"batch_req_{row['custom_id']}",
        "custom_id": row["custom_id"],
        "response": {"status_code": 200, "request_id": row["custom_id"], "body": body},
        "error": None,
    }

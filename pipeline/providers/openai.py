"""OpenAI Batch output lines (the request lines need no conversion): each row's body is its
endpoint's response body (pipeline/endpoints/: chat completions, text completions and embeddings as
OpenAI answers them, score and rerank as vLLM's server does), in OpenAI's batch line."""

from __future__ import annotations

from typing import Any

from pipeline.endpoints import answering
from pipeline.providers.common import _failed, error_text, with_images


# ---- OpenAI Batch (https://platform.openai.com/docs/guides/batch) -----------------------------
def openai_line(row: dict[str, Any]) -> dict[str, Any]:
    """The row as an OpenAI Batch API output line: `{id, custom_id, response, error}`, and for a
    failed request `response: null, error: {code, message}` (the line and field in the message)."""
    if _failed(row):
        return _openai_error(row)
    body = answering(row).response_body(row)  # the endpoint's own response body
    with_images(body["usage"], row, "openai")
    return _openai_ok(row, body)


def _openai_ok(row: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"batch_req_{row['custom_id']}",
        "custom_id": row["custom_id"],
        "response": {"status_code": 200, "request_id": row["custom_id"], "body": body},
        "error": None,
    }


def _openai_error(row: dict[str, Any]) -> dict[str, Any]:
    err = row["error"]
    return {
        "id": f"batch_req_{row['custom_id']}",
        "custom_id": row["custom_id"],
        "response": None,
        "error": {"code": err["code"], "message": error_text(err)},
    }

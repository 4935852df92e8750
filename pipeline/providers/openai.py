"""OpenAI Batch output lines (the chat-completions request lines need no conversion)."""

from __future__ import annotations

from typing import Any

from pipeline.providers.common import (
    _failed,
    _model,
    error_text,
    with_images,
)


# ---- OpenAI Batch (https://platform.openai.com/docs/guides/batch) -----------------------------
def openai_line(row: dict[str, Any]) -> dict[str, Any]:
    """The row as an OpenAI Batch API output line: `{id, custom_id, response, error}`, and for a
    failed request `response: null, error: {code, message}` (the line and field in the message)."""
    if _failed(row):
        return _openai_error(row)
    if row.get("embedding") is not None or row.get("embeddings") is not None:
        return _openai_ok(row, embeddings_body(row))
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
        "model": _model(row),
        "choices": choices,
        "usage": with_images({
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "total_tokens": row["total_tokens"],
            "prompt_tokens_details": {"cached_tokens": row["cached_tokens"]},
            "estimated_cost": row["estimated_cost"],
        }, row, "openai"),
    }
    return _openai_ok(row, body)


def embeddings_body(row: dict[str, Any]) -> dict[str, Any]:
    """An embeddings row as OpenAI's embeddings response: one `data` item per input, in order."""
    vectors = row["embeddings"] if row.get("embeddings") is not None else [row["embedding"]]
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": [float(x) for x in v]}
                 for i, v in enumerate(vectors)],
        "model": _model(row),
        "usage": {"prompt_tokens": row["prompt_tokens"], "total_tokens": row["total_tokens"],
                  "estimated_cost": row["estimated_cost"]},
    }


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

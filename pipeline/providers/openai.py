"""OpenAI Batch output lines (the request lines need no conversion): each row's body is its
endpoint's response body (pipeline/endpoints/: chat completions, text completions and embeddings as
OpenAI answers them, score and rerank as vLLM's server does), in OpenAI's batch line."""

from __future__ import annotations

from typing import Any

from pipeline.endpoints import answering
from pipeline.providers.common import Provider, _failed, error_text, with_images


# ---- OpenAI Batch (https://platform.openai.com/docs/guides/batch) -----------------------------
def openai_line(row: dict[str, Any]) -> dict[str, Any]:
    """The row as an OpenAI Batch API output line: `{id, custom_id, response, error}`, and for a
    failed request `response: null, error: {code, message}` (the line and field in the message)."""
    if _failed(row):
        return _openai_error(row)
    body = answering(row).response_body(row)  # the endpoint's own response body
    with_images(body["usage"], row, IMAGE_FIELD)
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


IMAGE_FIELD = "prompt_images"


def owns(line: dict[str, Any]) -> bool:
    """Any line another provider does not claim is an OpenAI Batch line (the registry asks it last)."""
    return True


def failed(line: dict[str, Any]) -> bool:
    return line.get("error") is not None


def summary(line: dict[str, Any]) -> dict[str, Any]:
    body = (line.get("response") or {}).get("body") or {}
    usage = body.get("usage") or {}
    first = (body.get("choices") or [{}])[0]
    return {"custom_id": line.get("custom_id"), "error": line.get("error"),
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            "reasoning_tokens": (usage.get("completion_tokens_details") or {}).get("reasoning_tokens"),
            "estimated_cost": usage.get("estimated_cost"), "finish_reason": first.get("finish_reason"),
            "content": (first.get("message") or {}).get("content"), "images": usage.get(IMAGE_FIELD)}


# OpenAI Batch lines, and the format of every input that is no other provider's (Together lines,
# bare bodies, template rows): their requests need no conversion.
OPENAI = Provider(name="openai", title="OpenAI", line_out=openai_line, owns=owns, failed=failed, summary=summary,
                  image_field=IMAGE_FIELD)

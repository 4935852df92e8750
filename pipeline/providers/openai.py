"""OpenAI Batch output lines (the request lines need no conversion): chat completions, text
completions and embeddings as OpenAI answers them, score and rerank as vLLM's server does."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

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
    if row.get("scores") is not None:
        return _openai_ok(row, score_body(row))
    if row.get("rerank") is not None:
        return _openai_ok(row, rerank_body(row))
    if row.get("input_shape") == "openai-completions":
        return _openai_ok(row, completion_body(row))
    choices = []
    for c in row["choices"]:
        message = {"role": "assistant", "content": c["content"]}
        if c.get("reasoning_content") is not None:  # DeepSeek's and vLLM's name for the thinking
            message["reasoning_content"] = c["reasoning_content"]
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
            **({"completion_tokens_details": {"reasoning_tokens": row["reasoning_tokens"]}}
               if row.get("reasoning_tokens") is not None else {}),
            "estimated_cost": row["estimated_cost"],
        }, row, "openai"),
    }
    return _openai_ok(row, body)


def _usage(row: dict[str, Any]) -> dict[str, Any]:
    return {"prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
            "total_tokens": row["total_tokens"], "estimated_cost": row["estimated_cost"]}


def completion_body(row: dict[str, Any]) -> dict[str, Any]:
    """A completions row as OpenAI's text_completion response: each choice's text."""
    choices = [{"index": c["index"], "text": c["content"], "logprobs": _completion_logprobs(c.get("logprobs")),
                "finish_reason": c["finish_reason"]} for c in row["choices"]]
    return {"id": f"cmpl-{row['custom_id']}", "object": "text_completion", "model": _model(row),
            "choices": choices, "usage": _usage(row)}


def _completion_logprobs(logprobs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The row's per-token logprobs (chat's form) in the completions API's form: parallel lists
    of tokens, their logprobs, their alternatives and their offsets in the text."""
    if not logprobs:
        return None
    tokens = logprobs["content"] or []
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t["token"])
    return {"tokens": [t["token"] for t in tokens], "token_logprobs": [t["logprob"] for t in tokens],
            "top_logprobs": [{a["token"]: a["logprob"] for a in t["top_logprobs"] or []} for t in tokens],
            "text_offset": offsets}


def score_body(row: dict[str, Any]) -> dict[str, Any]:
    """A score row as vLLM's score response: one `data` item per pair, in order."""
    return {"id": f"score-{row['custom_id']}", "object": "list", "model": _model(row),
            "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(row["scores"])],
            "usage": _usage(row)}


def rerank_body(row: dict[str, Any]) -> dict[str, Any]:
    """A rerank row as vLLM's rerank response: results most relevant first, each with its document."""
    results = [{"index": r["index"], "document": {"text": r["document"], "multi_modal": None},
                "relevance_score": r["relevance_score"]} for r in row["rerank"]]
    return {"id": f"rerank-{row['custom_id']}", "model": _model(row), "usage": _usage(row), "results": results}


def embeddings_body(row: dict[str, Any]) -> dict[str, Any]:
    """An embeddings row as OpenAI's embeddings response: one `data` item per input, in order; a
    vector is a list of floats, or with encoding_format base64, as OpenAI sends it, the base64
    of its little-endian float32 bytes."""
    vectors = row["embeddings"] if row.get("embeddings") is not None else [row["embedding"]]
    encode = _base64 if row.get("encoding_format") == "base64" else (lambda v: [float(x) for x in v])
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": _model(row),
        "usage": {"prompt_tokens": row["prompt_tokens"], "total_tokens": row["total_tokens"],
                  "estimated_cost": row["estimated_cost"]},
    }


def _base64(vector: Any) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


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

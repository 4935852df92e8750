"""Build output rows (the one record that leaves the pipeline) and their OpenAI Batch form."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from .cost import Price
from .engine import Result
from .requests import Request, RowError


def error_row(err: RowError, model: str) -> dict[str, Any]:
    """An output row for a request that failed before or inside the engine."""
    return {
        "custom_id": err.custom_id,
        "model": model,
        "content": None,
        "finish_reason": None,
        "tool_calls": None,
        "choices": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "total_tokens": None,
        "cached_tokens": None,
        "estimated_cost": None,
        "user": err.user,
        "warnings": None,
        "error": {"code": err.code, "message": err.message, "param": err.param, "line": err.line},
        "source_file": err.source_file,
        "source_line": err.line,
        "engine": None,
        "engine_seconds": None,
        "finished_at": datetime.now(timezone.utc),
    }


def result_row(req: Request, res: Result, model: str, price: Price | None) -> dict[str, Any]:
    """An output row for a request the engine answered (or refused: then `error` is set)."""
    warnings = list(req.warnings) + list(res.warnings)
    if res.error is not None:
        row = error_row(RowError.of(res.error, req.custom_id, req.source_file, req.line, req.user), model)
        row["prompt_tokens"] = res.prompt_tokens
        row["warnings"] = warnings or None
        return {**row, **_timing(res)}
    first = res.choices[0] if res.choices else {}
    prompt, completion = res.prompt_tokens or 0, res.completion_tokens or 0
    return {
        "custom_id": req.custom_id,
        "model": model,
        "content": first.get("content"),
        "finish_reason": first.get("finish_reason"),
        "tool_calls": first.get("tool_calls"),
        "choices": res.choices,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cached_tokens": res.cached_tokens or 0,
        "estimated_cost": price.cost(prompt, completion) if price else None,
        "user": req.user,
        "warnings": warnings or None,
        "error": None,
        "source_file": req.source_file,
        "source_line": req.line,
        **_timing(res),
    }


def _timing(res: Result) -> dict[str, Any]:
    return {"engine": res.engine, "engine_seconds": res.seconds, "finished_at": datetime.now(timezone.utc)}


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


def encode_jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(openai_line(r), ensure_ascii=False) + "\n" for r in rows).encode()

"""Build output rows (the one record that leaves the pipeline); formats.py writes them out."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pipeline.endpoints import ENDPOINTS
from pipeline.engines.base import Result
from pipeline.models.prices import Price
from pipeline.models.reasoning import THINKING_CUT, thinking_cut, thinking_cut_warning
from pipeline.models.render import image_urls
from pipeline.output import structured
from pipeline.records import FailedRequest, Request
from pipeline.storage import redact


def error_row(err: FailedRequest, model: str) -> dict[str, Any]:
    """An output row for a request that failed before or inside the engine."""
    return {
        "custom_id": err.custom_id,
        "model": model,
        "requested_model": None,
        "served_model": None,
        "content": None,
        "reasoning_content": None,
        "finish_reason": None,
        "tool_calls": None,
        "choices": None,
        "embedding": None,
        "embeddings": None,
        "encoding_format": None,
        "scores": None,
        "rerank": None,
        "audio_segments": None,
        "audio_language": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "reasoning_tokens": None,
        "total_tokens": None,
        "cached_tokens": None,
        "images": None,
        "audio_seconds": None,
        "estimated_cost": None,
        "user": err.user,
        "warnings": None,
        "error": error_column(err),
        "source_file": err.source_file,
        "source_line": err.line,
        "input_shape": err.shape,
        "engine": None,
        "engine_seconds": None,
        "finished_at": datetime.now(timezone.utc),
    }


def error_column(err: FailedRequest) -> dict[str, Any]:
    """The `error` column of a failed request's row, its message redacted (a URL's credentials)."""
    return {"code": err.code, "message": redact(err.message), "param": err.param, "line": err.line}


def result_row(req: Request, res: Result, model: str, price: Price | None) -> dict[str, Any]:
    """An output row for a request the engine answered (or refused: then `error` is set)."""
    warnings = list(req.warnings) + list(res.warnings)
    if res.error is not None:
        row = error_row(FailedRequest.about(res.error, req), model)
        row["input_shape"] = req.shape
        row["prompt_tokens"] = res.prompt_tokens
        row["warnings"] = warnings or None
        row["requested_model"], row["served_model"] = req.requested_model, req.adapter or model
        return {**row, **_timing(res)}
    first = res.choices[0] if res.choices else {}
    prompt, completion = res.prompt_tokens or 0, res.completion_tokens or 0
    cut = [c for c in res.choices if thinking_cut(c.get("reasoning_content"), c.get("content"), c.get("finish_reason"))]
    if cut:
        warnings.append(thinking_cut_warning(len(cut), res.reasoning_tokens or 0))
    return {
        "custom_id": req.custom_id,
        "model": model,
        "requested_model": req.requested_model,
        "served_model": req.adapter or model,
        "content": first.get("content"),
        "reasoning_content": first.get("reasoning_content"),
        "finish_reason": first.get("finish_reason"),
        "tool_calls": first.get("tool_calls"),
        **ENDPOINTS[req.endpoint].columns(req, res),  # choices, or vectors, or scores
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "reasoning_tokens": res.reasoning_tokens,
        "total_tokens": prompt + completion,
        "cached_tokens": res.cached_tokens or 0,
        "images": len(image_urls(req.messages)),
        "audio_seconds": req.audio_seconds,
        "estimated_cost": price.cost(prompt, completion, res.reasoning_tokens or 0, req.audio_seconds)
        if price
        else None,
        "user": req.user,
        "warnings": warnings or None,
        "error": None,
        "source_file": req.source_file,
        "source_line": req.line,
        "input_shape": req.shape,
        **_timing(res),
    }


def _timing(res: Result) -> dict[str, Any]:
    return {"engine": res.engine, "engine_seconds": res.seconds, "finished_at": datetime.now(timezone.utc)}


def dataset_rows(row: dict[str, Any], item: Request | FailedRequest, layout) -> list[dict[str, Any]]:
    """A template job's rows for one request (`layout`: templates.Layout, or None for a plain job):
    the output row plus its typed response columns and `parse_error`, and the carried input
    columns; with --explode-choices, one such row per choice (`choice_index`)."""
    if layout is None:
        return [row]
    carried = item.carried or {}
    if layout.explode and row["choices"]:
        rows = []
        for i, choice in enumerate(row["choices"]):
            one = {
                **row,
                "content": choice.get("content"),
                "finish_reason": choice.get("finish_reason"),
                "reasoning_content": choice.get("reasoning_content"),
                "tool_calls": choice.get("tool_calls"),
                "choices": [choice],
                "choice_index": i,
            }
            rows.append(one)
    else:
        rows = [{**row, "choice_index": None} if layout.explode else row]
    for one in rows:
        if layout.response_schema is not None:
            values, problem = (None, None)
            if one["error"] is None and thinking_cut(
                one.get("reasoning_content"), one["content"], one["finish_reason"]
            ):
                problem = (
                    f"{THINKING_CUT}: no answer to parse: the thinking used all of max_tokens "
                    "(raise max_tokens or set thinking_token_budget)"
                )
            elif one["error"] is None:
                values, problem = structured.parse(one["content"], layout.response_schema)
            values = values or {}
            for prop, col, _ in layout.response:
                one[col] = values.get(prop)
            one["parse_error"] = problem
        one.update(carried)
    return rows

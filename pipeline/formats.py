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

from .problems import default_id

LINE_FORMATS = ("openai", "native", "anthropic", "gemini")
FORMATS = ("parquet", *LINE_FORMATS)
FORMAT_EXT = {"parquet": "parquet", **{f: "jsonl" for f in LINE_FORMATS}}

# Errors that are the request's fault (the rest, e.g. engine_crash and output_error, are ours).
SERVER_ERRORS = {"engine_crash", "output_error"}


def encode(rows: list[dict[str, Any]], fmt: str, schema=None) -> bytes:
    """A part's bytes in the output format: the Parquet output schema (or `schema`: a template
    job's, the output schema plus its columns), or JSON lines (which have no place for extra
    columns: they are left out)."""
    if fmt in LINE_FORMATS:
        return "".join(json.dumps(line_of(r, fmt), ensure_ascii=False) + "\n" for r in rows).encode()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .schema import OUTPUT_SCHEMA

    table = pa.Table.from_pylist(rows, schema=schema if schema is not None else OUTPUT_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def line_of(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The row as one output line of a line format (`native`: in its input line's format)."""
    if fmt == "native":
        return NATIVE.get(row.get("input_shape"), openai_line)(row)
    return WRITERS[fmt](row)


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


# ---- OpenAI Batch (https://platform.openai.com/docs/guides/batch) -----------------------------
def openai_line(row: dict[str, Any]) -> dict[str, Any]:
    """The row as an OpenAI Batch API output line: `{id, custom_id, response, error}`, and for a
    failed request `response: null, error: {code, message}` (the line and field in the message)."""
    if _failed(row):
        return _openai_error(row)
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
        "usage": {
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "total_tokens": row["total_tokens"],
            "prompt_tokens_details": {"cached_tokens": row["cached_tokens"]},
            "estimated_cost": row["estimated_cost"],
        },
    }
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


# ---- OpenAI Responses API batch lines (/v1/responses) -----------------------------------------
def responses_line(row: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI Batch line whose body is a Responses API `response` object (the first choice:
    a Responses request has no `n`)."""
    if _failed(row):
        return _openai_error(row)
    first = row["choices"][0] if row["choices"] else {}
    output: list[dict[str, Any]] = []
    if _has_text(first):
        output.append({"type": "message", "id": f"msg_{row['custom_id']}", "status": "completed",
                       "role": "assistant",
                       "content": [{"type": "output_text", "text": first["content"], "annotations": []}]})
    for call in first.get("tool_calls") or []:
        output.append({"type": "function_call", "id": f"fc_{call['id']}", "call_id": call["id"],
                       "name": call["function"]["name"], "arguments": call["function"]["arguments"],
                       "status": "completed"})
    cut = first.get("finish_reason") == "length"
    body = {
        "id": f"resp_{row['custom_id']}",
        "object": "response",
        "created_at": int(row["finished_at"].timestamp()) if row.get("finished_at") else None,
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "model": _model(row),
        "output": output,
        "usage": {
            "input_tokens": row["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": row["cached_tokens"]},
            "output_tokens": row["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": row["total_tokens"],
        },
    }
    return _openai_ok(row, body)


# ---- Anthropic Message Batches results ---------------------------------------------------------
# https://docs.anthropic.com/en/api/retrieving-message-batch-results
ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def anthropic_line(row: dict[str, Any]) -> dict[str, Any]:
    """The row as a Message Batches result line: `{custom_id, result: {type: succeeded, message}}`
    or `{custom_id, result: {type: errored, error: {type: error, error: {type, message}}}}`. A
    Messages request has no `n`: the first choice is the message."""
    if _failed(row):
        err = row["error"]
        kind = "api_error" if err["code"] in SERVER_ERRORS else "invalid_request_error"
        return {"custom_id": row["custom_id"], "result": {"type": "errored", "error": {
            "type": "error", "error": {"type": kind, "message": f"{err['code']}: {error_text(err)}"}}}}
    first = row["choices"][0] if row["choices"] else {}
    calls = first.get("tool_calls") or []
    content: list[dict[str, Any]] = []
    if _has_text(first):
        content.append({"type": "text", "text": first["content"]})
    for call in calls:
        content.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                        "input": _arguments(call["function"]["arguments"])})
    finish = first.get("finish_reason")
    stop_sequence = first.get("stop_reason") if isinstance(first.get("stop_reason"), str) else None
    stop_reason = "stop_sequence" if finish == "stop" and stop_sequence else ANTHROPIC_STOP.get(finish, "end_turn")
    message = {
        "id": f"msg_{row['custom_id']}",
        "type": "message",
        "role": "assistant",
        "model": _model(row),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": row["prompt_tokens"], "output_tokens": row["completion_tokens"]},
    }
    return {"custom_id": row["custom_id"], "result": {"type": "succeeded", "message": message}}


# ---- Gemini API / Vertex AI batch output -------------------------------------------------------
# https://ai.google.dev/gemini-api/docs/batch-mode,
# https://cloud.google.com/vertex-ai/generative-ai/docs/multimodal/batch-prediction-from-cloud-storage
GEMINI_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
GRPC_INVALID_ARGUMENT, GRPC_INTERNAL = 3, 13


def gemini_line(row: dict[str, Any]) -> dict[str, Any]:
    """The row as a Gemini batch output line. A line that came with a `key` (the Gemini API's
    form) gets `{key, response: GenerateContentResponse}` or `{key, status: {code, message}}` (a
    google.rpc.Status); one without (Vertex AI's form) gets Vertex's `{status: "" or the error,
    processed_time, response}`, with `key` set to the row's derived id (the request itself is not
    echoed)."""
    vertex = row["custom_id"] == default_id(row["source_file"], row["source_line"])
    line: dict[str, Any] = {"key": row["custom_id"]}
    if vertex:
        done = row.get("finished_at")
        line["processed_time"] = done.isoformat() if done is not None else None
    if _failed(row):
        err = row["error"]
        text = f"{err['code']}: {error_text(err)}"
        code = GRPC_INTERNAL if err["code"] in SERVER_ERRORS else GRPC_INVALID_ARGUMENT
        line["status"] = text if vertex else {"code": code, "message": text}
        return line
    if vertex:
        line["status"] = ""
    candidates = []
    for c in row["choices"]:
        parts: list[dict[str, Any]] = []
        calls = c.get("tool_calls") or []
        if _has_text(c):
            parts.append({"text": c["content"]})
        for call in calls:
            parts.append({"functionCall": {"id": call["id"], "name": call["function"]["name"],
                                           "args": _arguments(call["function"]["arguments"])}})
        candidates.append({"content": {"role": "model", "parts": parts},
                           "finishReason": GEMINI_FINISH.get(c.get("finish_reason"), "OTHER"),
                           "index": c["index"]})
    usage = {"promptTokenCount": row["prompt_tokens"], "candidatesTokenCount": row["completion_tokens"],
             "totalTokenCount": row["total_tokens"]}
    if row.get("cached_tokens"):
        usage["cachedContentTokenCount"] = row["cached_tokens"]
    line["response"] = {"candidates": candidates, "usageMetadata": usage, "modelVersion": _model(row)}
    return line


WRITERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "openai": openai_line, "anthropic": anthropic_line, "gemini": gemini_line}
# --format native: the writer for each input shape (shapes.py); any other shape: openai_line.
NATIVE: dict[str | None, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "anthropic-batch": anthropic_line, "gemini-batch": gemini_line, "openai-responses": responses_line}


# ---- reading them back (pipeline report) -------------------------------------------------------
SUMMARY_KEYS = ("custom_id", "error", "prompt_tokens", "completion_tokens", "cached_tokens", "estimated_cost",
                "finish_reason", "content")


def summary(line: dict[str, Any]) -> dict[str, Any]:
    """What `pipeline report` needs of one output line of any line format: custom_id, error
    {code, message}, tokens, and the first choice's finish reason and content (the same keys
    for every line)."""
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
                "content": text}
    if "key" in line:  # Gemini / Vertex
        status = line.get("status")
        if status:
            return {"custom_id": line["key"],
                    "error": _split(status.get("message", "") if isinstance(status, dict) else str(status))}
        resp = line.get("response") or {}
        usage = resp.get("usageMetadata") or {}
        first = (resp.get("candidates") or [{}])[0]
        parts = (first.get("content") or {}).get("parts") or []
        return {"custom_id": line["key"], "prompt_tokens": usage.get("promptTokenCount"),
                "completion_tokens": usage.get("candidatesTokenCount"),
                "cached_tokens": usage.get("cachedContentTokenCount", 0), "finish_reason": first.get("finishReason"),
                "content": next((p["text"] for p in parts if "text" in p), None)}
    body = (line.get("response") or {}).get("body") or {}  # OpenAI Batch, Responses
    usage = body.get("usage") or {}
    if body.get("object") == "response":
        text = next((c.get("text") for item in body.get("output") or [] if item.get("type") == "message"
                     for c in item.get("content") or []), None)
        return {"custom_id": line.get("custom_id"), "error": line.get("error"),
                "prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens"),
                "cached_tokens": (usage.get("input_tokens_details") or {}).get("cached_tokens"),
                "finish_reason": body.get("status"), "content": text}
    first = (body.get("choices") or [{}])[0]
    return {"custom_id": line.get("custom_id"), "error": line.get("error"),
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            "estimated_cost": usage.get("estimated_cost"), "finish_reason": first.get("finish_reason"),
            "content": (first.get("message") or {}).get("content")}

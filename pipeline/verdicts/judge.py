"""A verdict on every output row, from its completion and what the request asked for.

The vocabulary is fixed (`VERDICTS`, in the order a choice is judged):

- `error`: the row is an error row (its `error` column says why);
- `truncated`: a choice stopped at `max_tokens` (finish_reason `length`; also a reasoning
  model's thinking that used all of it);
- `invalid_tool_call`: a tool call names no tool of the request, its arguments are not JSON or
  do not fit the tool's parameter schema, or `tool_choice` required a call and none came;
- `empty`: no content and no tool call;
- `refused`: the model declined (OpenAI's `refusal` field, or a completion that opens with a
  refusal such as "I'm sorry, but I can't");
- `unparsable`: the request's `response_format` (a JSON schema, a template job's
  `--response-schema`, or `json_object`) asked for JSON and the content is not JSON;
- `schema_mismatch`: it is JSON, and does not fit the schema (jsonschema's message says where);
- `failed_check`: the job's own row check (checks.py) refused it, with its message;
- `ok`: none of those.

A row of several choices (`n` > 1) takes the verdict of its first choice that is not ok.
Embeddings, score and rerank rows are `ok` unless they are error rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.endpoints import DEFAULT, ENDPOINTS

VERDICTS = ("ok", "truncated", "empty", "unparsable", "schema_mismatch", "invalid_tool_call", "refused",
            "failed_check", "error")
OK = "ok"

# A completion that opens by declining. Only its start is looked at: a text that quotes a refusal
# later is an answer.
_REFUSAL = re.compile(
    r"^\W*(?:(?:I'm|I am|I’m)\s+sorry,?\s+(?:but\s+)?I\s+(?:can't|can’t|cannot|won't|am unable|'m unable)"
    r"|I\s+(?:can't|can’t|cannot|won't|will not|am unable to|'m unable to)\s+"
    r"(?:help|assist|comply|provide|fulfil|fulfill|answer|do that|support|create|generate|write))",
    re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    name: str  # one of VERDICTS
    message: str | None = None  # why it is not ok (None for ok)


Check = Callable[[dict[str, Any]], "str | None"]  # a row check: None or "" passes; text is its failure


def judge_row(row: dict[str, Any], request: Any = None, check: Check | None = None) -> Verdict:
    """The verdict of one output row. `request`: the records.Request it answers (None for a row of
    a request that never reached the engine); `check`: the job's row check, run on rows whose
    choices are all ok otherwise."""
    if row.get("error") is not None:
        return Verdict("error", (row["error"] or {}).get("message"))
    if request is None or not ENDPOINTS[getattr(request, "endpoint", DEFAULT.name)].completes:
        return Verdict(OK)
    choices = row.get("choices") or [{"content": row.get("content"), "finish_reason": row.get("finish_reason"),
                                      "tool_calls": row.get("tool_calls")}]
    for i, choice in enumerate(choices):
        found = judge_choice(choice, request)
        if found.name != OK:
            return Verdict(found.name, f"choice {i}: {found.message}" if len(choices) > 1 else found.message)
    if check is not None:
        message = run_check(check, row)
        if message:
            return Verdict("failed_check", message)
    return Verdict(OK)


def judge_choice(choice: dict[str, Any], request: Any) -> Verdict:
    """The verdict of one choice of a chat or completions answer (the check aside)."""
    if choice.get("finish_reason") == "length":
        return Verdict("truncated", f"stopped at max_tokens ({request.max_tokens or 'the model limit'})"
                                    " before the end")
    calls = choice.get("tool_calls") or []
    if calls:
        problem = tool_call_problem(calls, getattr(request, "tools", None))
        if problem:
            return Verdict("invalid_tool_call", problem)
    elif _call_required(getattr(request, "tool_choice", None)):
        return Verdict("invalid_tool_call", f"tool_choice {_short(request.tool_choice)} asked for a tool call "
                                            "and none came")
    content = choice.get("content")
    if not calls and not (content or "").strip():
        return Verdict("empty", "no content and no tool call")
    if choice.get("refusal"):
        return Verdict("refused", str(choice["refusal"])[:200])
    if content and _REFUSAL.match(content):
        return Verdict("refused", f"the completion declines: {content.strip()[:120]!r}")
    if not calls:
        return content_verdict(content or "", getattr(request, "response_format", None))
    return Verdict(OK)


def content_verdict(content: str, response_format: dict[str, Any] | None) -> Verdict:
    """`unparsable` or `schema_mismatch` where the response format asked for JSON and the content
    is not that; else ok."""
    kind = (response_format or {}).get("type")
    if kind not in ("json_schema", "json_object"):
        return Verdict(OK)
    try:
        value = json.loads(content)
    except ValueError as e:
        return Verdict("unparsable", f"not JSON: {e}")
    if kind == "json_object":
        return Verdict(OK) if isinstance(value, dict) else Verdict("schema_mismatch", "not a JSON object")
    schema = ((response_format or {}).get("json_schema") or {}).get("schema")
    problem = schema_problem(value, schema) if isinstance(schema, dict) else None
    return Verdict("schema_mismatch", problem) if problem else Verdict(OK)


def schema_problem(value: Any, schema: dict[str, Any]) -> str | None:
    """Why `value` does not fit the JSON schema (the most relevant error, with its path), or None."""
    import jsonschema

    try:
        validator_class = jsonschema.validators.validator_for(schema)
        error = jsonschema.exceptions.best_match(validator_class(schema).iter_errors(value))
    except (jsonschema.exceptions.SchemaError, jsonschema.exceptions.RefResolutionError) as e:
        return f"the schema cannot be checked: {e.message if hasattr(e, 'message') else e}"
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"at {where or 'the top level'}: {error.message}"[:500]


def tool_call_problem(calls: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str | None:
    """What is wrong with a choice's tool calls against the request's tools, or None."""
    schemas = {(t.get("function") or {}).get("name"): (t.get("function") or {}).get("parameters")
               for t in tools or () if isinstance(t, dict)}
    for call in calls:
        fn = call.get("function") or {}
        name = fn.get("name")
        if name not in schemas:
            return f"tool call names {name!r}, which is not a tool of the request"
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError as e:
            return f"tool call {name!r}: arguments are not JSON: {e}"
        if isinstance(schemas[name], dict):
            problem = schema_problem(args, schemas[name])
            if problem:
                return f"tool call {name!r}: arguments {problem}"
    return None


def run_check(check: Check, row: dict[str, Any]) -> str | None:
    """A row check's failure message, or None: what it returns (text fails, None/""/True passes,
    False fails), or what it raises (its message)."""
    try:
        result = check(row)
    except Exception as e:  # a check that raises fails the row, never the batch
        return f"{type(e).__name__}: {e}"[:500] if str(e) else type(e).__name__
    if result is False:
        return "the row check returned False"
    if isinstance(result, str) and result:
        return result[:500]
    return None


def _call_required(tool_choice: Any) -> bool:
    return tool_choice == "required" or (isinstance(tool_choice, dict) and tool_choice.get("type") == "function")


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)[:80]


def mark(rows: list[dict[str, Any]], request: Any = None, check: Check | None = None) -> list[dict[str, Any]]:
    """Set `verdict` and `verdict_message` on one request's output rows (one per choice with
    --explode-choices, each judged on its own choice); returns them."""
    for row in rows:
        verdict = judge_row(row, request, check)
        row["verdict"], row["verdict_message"] = verdict.name, verdict.message
    return rows

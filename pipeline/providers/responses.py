"""OpenAI Responses API batch lines (`url: /v1/responses`) in, Responses batch output out."""

from __future__ import annotations

from typing import Any

from pipeline.providers.common import (
    Provider,
    _failed,
    _has_text,
    _json,
    _keep_unknown,
    _model,
    _name,
    _parts,
    image_part,
    with_images,
)
from pipeline.providers.openai import _openai_error, _openai_ok
from pipeline.providers.openai import failed as openai_failed
from pipeline.records import Invalid, kind_of

RESPONSES_KNOWN = {
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools", "tool_choice",
    "text", "user", "metadata", "store", "stream", "parallel_tool_calls", "service_tier",
    "previous_response_id", "conversation", "prompt", "background",
}


RESPONSES_STATE = {
    "previous_response_id": "continues a response stored on OpenAI's servers",
    "conversation": "continues a conversation stored on OpenAI's servers",
    "prompt": "names a prompt template stored on OpenAI's servers",
    "background": "is a way of running a request on OpenAI's servers",
}


RESPONSES_MEDIA = ("input_image", "input_file", "input_audio")


def responses_body(req: Any, warnings: list[str]) -> dict[str, Any]:
    if not isinstance(req, dict):
        raise Invalid("invalid_row", f"body must be an object (a Responses API request), got {kind_of(req)}", "body")
    for name, why in RESPONSES_STATE.items():
        if req.get(name):
            raise Invalid("unsupported_parameter", f"body.{name} {why}; this run has only the request itself",
                          f"body.{name}")
    body: dict[str, Any] = {}
    for ours, theirs in (("model", "model"), ("max_tokens", "max_output_tokens"), ("temperature", "temperature"),
                         ("top_p", "top_p"), ("user", "user"), ("metadata", "metadata"), ("store", "store"),
                         ("stream", "stream"), ("parallel_tool_calls", "parallel_tool_calls"),
                         ("service_tier", "service_tier")):
        if req.get(theirs) is not None:
            body[ours] = req[theirs]
    messages: list[dict[str, Any]] = []
    if req.get("instructions") is not None:
        if not isinstance(req["instructions"], str):
            raise Invalid("invalid_parameter", "body.instructions must be a string", "body.instructions")
        messages.append({"role": "system", "content": req["instructions"]})
    given = req.get("input")
    if given is None:
        raise Invalid("invalid_messages", "body.input is missing: a Responses API request needs input (text or a "
                      "list of messages)", "body.input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list) and given:
        for i, item in enumerate(given):
            _responses_item(item, f"body.input[{i}]", messages, warnings)
    else:
        raise Invalid("invalid_messages", "body.input must be a string or a non-empty list of input items",
                      "body.input")
    body["messages"] = messages
    if req.get("tools") is not None:
        body["tools"] = _responses_tools(req["tools"])
    if req.get("tool_choice") is not None:
        body["tool_choice"] = _responses_tool_choice(req["tool_choice"])
    text = req.get("text")
    if text is not None:
        fmt = text.get("format") if isinstance(text, dict) else None
        if fmt is not None:
            body["response_format"] = _responses_format(fmt)
        if isinstance(text, dict):
            _keep_unknown(body, text, {"format"}, "body.text")
    _keep_unknown(body, req, RESPONSES_KNOWN, "body")
    return body


def _responses_item(item: Any, at: str, messages: list[dict[str, Any]], warnings: list[str]) -> None:
    if not isinstance(item, dict):
        raise Invalid("invalid_messages", f"{at} must be an input item (a message or a function call output)", at)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise Invalid("invalid_messages", f"{at}.role must be user, assistant, system or developer, got "
                          f"{_name(role)}", f"{at}.role")
        messages.append({"role": role, "content": _responses_content(item.get("content"), f"{at}.content")})
    elif kind == "function_call":
        if not isinstance(item.get("call_id"), str) or not isinstance(item.get("name"), str):
            raise Invalid("invalid_messages", f"{at}: a function_call item needs call_id and name", at)
        args = item.get("arguments", "{}")
        call = {"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": args if isinstance(args, str) else _json(args)}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":  # the calls of the turn its text began
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise Invalid("invalid_messages", f"{at}: a function_call_output item needs call_id", at)
        output = item.get("output", "")
        messages.append({"role": "tool", "tool_call_id": item["call_id"],
                         "content": output if isinstance(output, str) else _responses_content(output, f"{at}.output")})
    elif kind == "reasoning":
        warnings.append(f"{at}: a reasoning item of an earlier turn is not sent to this model")
    else:
        raise Invalid("unsupported_content", f"{at} is an item of type {_name(kind)}, which has no chat equivalent; "
                      "messages, function_call and function_call_output items do", at)


def _responses_content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Invalid("invalid_messages", f"{where} must be a string or a list of content parts", where)
    parts = []
    for j, part in enumerate(content):
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype == "input_image" and isinstance(part.get("image_url"), str):
            parts.append(image_part(part["image_url"], f"{where}[{j}]", part.get("detail")))
            continue
        if ptype in RESPONSES_MEDIA:
            raise Invalid("unsupported_content", f"{where}[{j}] is an {ptype} part: images, files and audio are not "
                          "supported by a text model", f"{where}[{j}]")
        text = part.get("refusal" if ptype == "refusal" else "text") if isinstance(part, dict) else None
        if ptype not in ("input_text", "output_text", "text", "refusal") or not isinstance(text, str):
            raise Invalid("invalid_messages", f"{where}[{j}] must be an input_text or output_text part, got "
                          f"{_name(ptype)}", f"{where}[{j}]")
        parts.append({"type": "text", "text": text})
    return _parts(parts) if parts else ""


def _responses_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Invalid("invalid_parameter", "body.tools must be a list of tools", "body.tools")
    out = []
    for i, tool in enumerate(tools):
        at = f"body.tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise Invalid("unsupported_parameter", f"{at} is the built-in tool {_name(kind)}, which runs on OpenAI's "
                          "servers and has no equivalent here; only function tools can be called", at)
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def _responses_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise Invalid("unsupported_parameter", f"body.tool_choice {_name(kind)} has no chat equivalent; 'none', 'auto', "
                  "'required' and {\"type\": \"function\", \"name\": ...} do", "body.tool_choice")


def _responses_format(fmt: Any) -> Any:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict", "description")
                                                        if k in fmt}}
    raise Invalid("invalid_parameter", "body.text.format.type must be 'text', 'json_object' or 'json_schema'",
                  "body.text.format")


# ---- OpenAI Responses API batch lines (/v1/responses) -----------------------------------------
# https://platform.openai.com/docs/api-reference/responses/object, in an OpenAI Batch output line
def responses_line(row: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI Batch line whose body is a Responses API `response` object (the first choice:
    a Responses request has no `n`); a failed request: OpenAI's batch error line."""
    if _failed(row):
        return _openai_error(row)
    first = row["choices"][0] if row["choices"] else {}
    cut = first.get("finish_reason") == "length"
    body = {
        "id": f"resp_{row['custom_id']}",
        "object": "response",
        "created_at": int(row["finished_at"].timestamp()) if row.get("finished_at") else None,
        "status": "incomplete" if cut else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "model": _model(row),
        "output": _output(row["custom_id"], first, "incomplete" if cut else "completed"),
        "usage": with_images({
            "input_tokens": row["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": row["cached_tokens"]},
            "output_tokens": row["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": row.get("reasoning_tokens") or 0},
            "total_tokens": row["total_tokens"],
            "estimated_cost": row.get("estimated_cost"),  # as in OpenAI Batch lines: an extension field
        }, row, IMAGE_FIELD),
    }
    return _openai_ok(row, body)


def _output(custom_id: str, first: dict[str, Any], status: str) -> list[dict[str, Any]]:
    """The output items of a choice: its thinking (a reasoning item), its text (a message whose
    status is the response's), its tool calls (function_call items)."""
    output: list[dict[str, Any]] = []
    if first.get("reasoning_content"):
        output.append({"type": "reasoning", "id": f"rs_{custom_id}", "summary": [],
                       "content": [{"type": "reasoning_text", "text": first["reasoning_content"]}]})
    if _has_text(first):
        output.append({"type": "message", "id": f"msg_{custom_id}", "status": status, "role": "assistant",
                       "content": [{"type": "output_text", "text": first["content"], "annotations": []}]})
    for call in first.get("tool_calls") or []:
        output.append({"type": "function_call", "id": f"fc_{call['id']}", "call_id": call["id"],
                       "name": call["function"]["name"], "arguments": call["function"]["arguments"],
                       "status": "completed"})
    return output


IMAGE_FIELD = "input_images"


def owns(line: dict[str, Any]) -> bool:
    return ((line.get("response") or {}).get("body") or {}).get("object") == "response"


def summary(line: dict[str, Any]) -> dict[str, Any]:
    body = (line.get("response") or {}).get("body") or {}
    usage = body.get("usage") or {}
    text = next((c.get("text") for item in body.get("output") or [] if item.get("type") == "message"
                 for c in item.get("content") or []), None)
    return {"custom_id": line.get("custom_id"), "error": line.get("error"),
            "prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens"),
            "cached_tokens": (usage.get("input_tokens_details") or {}).get("cached_tokens"),
            "reasoning_tokens": (usage.get("output_tokens_details") or {}).get("reasoning_tokens"),
            "estimated_cost": usage.get("estimated_cost"), "finish_reason": body.get("status"), "content": text,
            "images": usage.get(IMAGE_FIELD)}


# The Responses API's lines are OpenAI Batch lines (url /v1/responses), its own shape in intake;
# `--format responses` writes every row of a chat or completions run so.
RESPONSES = Provider(
    name="responses", title="OpenAI Responses", line_out=responses_line, owns=owns, failed=openai_failed,
    summary=summary, image_field=IMAGE_FIELD, runners=("generate",),
    shape="openai-responses", shape_title="OpenAI Responses API batch lines ({custom_id, method, url: /v1/responses, "
    "body})", body_in=responses_body,
)

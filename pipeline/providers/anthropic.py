"""Anthropic Message Batches: `{custom_id, params}` lines in, Message Batches result lines out."""

from __future__ import annotations

from typing import Any

from pipeline.providers.common import (
    SERVER_ERRORS,
    Provider,
    _arguments,
    _failed,
    _has_text,
    _json,
    _keep_unknown,
    _model,
    _name,
    _parts,
    data_url,
    error_text,
    image_part,
    split_code,
    with_images,
)
from pipeline.records import Invalid, kind_of

ANTHROPIC_KNOWN = {
    "model", "max_tokens", "system", "messages", "tools", "tool_choice", "stop_sequences",
    "temperature", "top_p", "top_k", "metadata", "stream", "service_tier", "thinking",
    "mcp_servers", "container",
}


ANTHROPIC_MEDIA = ("image", "document", "file", "search_result", "container_upload")
MEDIA_NOTE = "images are taken in user messages; documents and files are not supported"


def anthropic_body(params: Any, warnings: list[str]) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise Invalid("invalid_row", f"params must be an object (a Messages API request), got {kind_of(params)}",
                      "params")
    body: dict[str, Any] = {}
    for ours, theirs in (("model", "model"), ("max_tokens", "max_tokens"), ("temperature", "temperature"),
                         ("top_p", "top_p"), ("top_k", "top_k"), ("stop", "stop_sequences"),
                         ("stream", "stream"), ("service_tier", "service_tier")):
        if params.get(theirs) is not None:
            body[ours] = params[theirs]
    for name, what in (("mcp_servers", "MCP servers are reached by Anthropic's servers"),
                       ("container", "code execution containers live on Anthropic's servers")):
        if params.get(name):
            raise Invalid("unsupported_parameter", f"params.{name} cannot run here: {what}; remove it",
                          f"params.{name}")
    thinking = params.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled"):
        raise Invalid("unsupported_parameter", "params.thinking (extended thinking with a token budget) is a "
                      "Claude mode with no equivalent for this model; remove it", "params.thinking")
    metadata = params.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise Invalid("invalid_parameter", "params.metadata must be an object such as {\"user_id\": ...}",
                          "params.metadata")
        if metadata.get("user_id") is not None:
            body["user"] = metadata["user_id"]
    messages: list[dict[str, Any]] = []
    if params.get("system") is not None:
        messages.append({"role": "system", "content": _anthropic_text(params["system"], "params.system")})
    raw = params.get("messages")
    if raw is None:
        raise Invalid("invalid_messages", "params.messages is missing: a Messages API request needs at least one "
                      "message", "params.messages")
    if not isinstance(raw, list) or not raw:
        raise Invalid("invalid_messages", "params.messages must be a non-empty list of messages", "params.messages")
    for i, msg in enumerate(raw):
        messages.extend(_anthropic_message(msg, f"params.messages[{i}]", warnings))
    if isinstance(raw[-1], dict) and raw[-1].get("role") == "assistant":
        raise Invalid(
            "unsupported_parameter",
            "params.messages ends with an assistant message: Anthropic continues it (a prefill), but a chat "
            "request starts a new assistant turn after the last message, which would answer a different "
            "request; end with a user message",
            f"params.messages[{len(raw) - 1}]",
        )
    body["messages"] = messages
    if params.get("tools") is not None:
        body["tools"] = _anthropic_tools(params["tools"])
    if params.get("tool_choice") is not None:
        choice, parallel = _anthropic_tool_choice(params["tool_choice"])
        body["tool_choice"] = choice
        if parallel is not None:
            body["parallel_tool_calls"] = parallel
    _keep_unknown(body, params, ANTHROPIC_KNOWN, "params")
    return body


def _anthropic_text(value: Any, where: str) -> Any:
    """A string or a list of text blocks (system prompts, tool results) as chat content."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise Invalid("invalid_messages", f"{where} must be a string or a list of text blocks, got {kind_of(value)}",
                      where)
    parts = []
    for j, block in enumerate(value):
        btype = block.get("type") if isinstance(block, dict) else None
        if btype in ANTHROPIC_MEDIA:
            raise Invalid("unsupported_content", f"{where}[{j}] is a block of type {_name(btype)}: {MEDIA_NOTE} "
                          "(not in tool results or system prompts)", f"{where}[{j}]")
        if btype != "text" or not isinstance(block.get("text"), str):
            raise Invalid("invalid_messages", f"{where}[{j}] must be a text block "
                          f"{{\"type\": \"text\", \"text\": ...}}, got {_name(btype)}", f"{where}[{j}]")
        parts.append({"type": "text", "text": block["text"]})
    if not parts:
        return ""
    return _parts(parts)


def _anthropic_message(msg: Any, where: str, warnings: list[str]) -> list[dict[str, Any]]:
    if not isinstance(msg, dict):
        raise Invalid("invalid_messages", f"{where} must be an object with role and content", where)
    role = msg.get("role")
    if role not in ("user", "assistant"):
        raise Invalid("invalid_messages", f"{where}.role must be 'user' or 'assistant' (Anthropic puts the system "
                      f"prompt in params.system), got {_name(role)}", f"{where}.role")
    content = msg.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise Invalid("invalid_messages", f"{where}.content must be a string or a list of content blocks", f"{where}.content")  # noqa: E501 (a 60-line function)
    out: list[dict[str, Any]] = []
    texts: list[dict[str, Any]] | None = None  # the text parts of the message being built
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        btype = block.get("type") if isinstance(block, dict) else None
        if (btype == "text" and isinstance(block.get("text"), str)) or (btype == "image" and role == "user"):
            if texts is None:
                texts = []
                out.append({"role": role, "content": texts})
            texts.append({"type": "text", "text": block["text"]} if btype == "text"
                         else _anthropic_image(block.get("source"), f"{at}.source"))
        elif btype == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise Invalid("invalid_messages", f"{at}: a tool_use block needs id and name", at)
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": _json(block.get("input") or {})}})
        elif btype == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise Invalid("invalid_messages", f"{at}: a tool_result block needs tool_use_id", at)
            result = block.get("content")
            out.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                        "content": "" if result is None else _anthropic_text(result, f"{at}.content")})
            texts = None  # text after a result is a new user message, after the tool messages
            if block.get("is_error"):
                warnings.append(f"{at}: is_error has no chat equivalent; the result is sent as an ordinary tool result")
        elif btype in ("thinking", "redacted_thinking") and role == "assistant":
            warnings.append(f"{at}: a {btype} block of an earlier turn is not sent to this model")
        elif btype in ANTHROPIC_MEDIA:
            raise Invalid("unsupported_content", f"{at} is a block of type {_name(btype)}: {MEDIA_NOTE}", at)
        elif btype in ("tool_use", "tool_result"):
            raise Invalid("invalid_messages", f"{at}: a {btype} block belongs in "
                          f"{'an assistant' if btype == 'tool_use' else 'a user'} message", at)
        elif isinstance(btype, str) and ("tool" in btype or btype.endswith("_result")):
            raise Invalid("unsupported_content", f"{at} is a block of type {_name(btype)}, from a tool that runs on "
                          "Anthropic's servers; it has no equivalent here", at)
        else:
            raise Invalid("invalid_messages", f"{at} is {_name(btype)}; the blocks accepted are text, tool_use "
                          "(assistant) and tool_result (user)", at)
    for msg_out in out:
        if msg_out["role"] != "tool":
            msg_out["content"] = _parts(msg_out["content"])
    if role == "assistant":
        text = out[0]["content"] if out else ("" if not calls else None)
        return [{"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}]
    if not out:
        raise Invalid("invalid_messages", f"{where}.content is empty", f"{where}.content")
    return out


def _anthropic_image(source: Any, at: str) -> dict[str, Any]:
    """An image block's source (base64 data or a URL) as an image_url part."""
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        return image_part(data_url(source.get("media_type"), source.get("data"), at), at)
    if kind == "url":
        return image_part(source.get("url"), at)
    raise Invalid("unsupported_content", f"{at} is a source of type {_name(kind)}: an image here is "
                  "{\"type\": \"base64\", \"media_type\", \"data\"} or {\"type\": \"url\", \"url\"} "
                  "(files kept on Anthropic's servers cannot be read)", at)


def _anthropic_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Invalid("invalid_parameter", "params.tools must be a list of tools", "params.tools")
    out = []
    for i, tool in enumerate(tools):
        at = f"params.tools[{i}]"
        if not isinstance(tool, dict):
            raise Invalid("invalid_parameter", f"{at} must be an object {{name, description, input_schema}}", at)
        if tool.get("type") not in (None, "custom"):
            raise Invalid("unsupported_parameter", f"{at} is Anthropic's built-in tool {_name(tool['type'])}, which is "
                          "defined and run by Anthropic; declare it as a custom tool with name and input_schema", at)
        if not isinstance(tool.get("input_schema"), dict):
            raise Invalid("invalid_parameter", f"{at}.input_schema must be a JSON schema object", f"{at}.input_schema")
        fn = {"name": tool.get("name")}
        if tool.get("description") is not None:
            fn["description"] = tool["description"]
        fn["parameters"] = tool["input_schema"]
        out.append({"type": "function", "function": fn})
    return out


def _anthropic_tool_choice(choice: Any) -> tuple[Any, bool | None]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    parallel = None
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is not None:
        parallel = not choice["disable_parallel_tool_use"]
    if kind in ("auto", "none"):
        return kind, parallel
    if kind == "any":
        return "required", parallel
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise Invalid("invalid_parameter", "params.tool_choice must be {\"type\": \"auto\"|\"any\"|\"none\"} or "
                  "{\"type\": \"tool\", \"name\": ...}", "params.tool_choice")


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
    if first.get("reasoning_content"):  # extended thinking's block (no signature: nothing to verify it with)
        content.append({"type": "thinking", "thinking": first["reasoning_content"], "signature": ""})
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
        "usage": with_images({"input_tokens": row["prompt_tokens"], "output_tokens": row["completion_tokens"]},
                             row, IMAGE_FIELD),
    }
    return {"custom_id": row["custom_id"], "result": {"type": "succeeded", "message": message}}


IMAGE_FIELD = "input_images"


def owns(line: dict[str, Any]) -> bool:
    return "result" in line


def failed(line: dict[str, Any]) -> bool:
    return (line["result"] or {}).get("type") != "succeeded"


def summary(line: dict[str, Any]) -> dict[str, Any]:
    result = line["result"] or {}
    if result.get("type") != "succeeded":
        inner = (result.get("error") or {}).get("error") or {}
        return {"custom_id": line.get("custom_id"), "error": split_code(str(inner.get("message", "")))}
    msg = result.get("message") or {}
    usage = msg.get("usage") or {}
    text = next((b.get("text") for b in msg.get("content") or [] if b.get("type") == "text"), None)
    return {"custom_id": line.get("custom_id"), "prompt_tokens": usage.get("input_tokens"),
            "completion_tokens": usage.get("output_tokens"), "finish_reason": msg.get("stop_reason"),
            "content": text, "images": usage.get(IMAGE_FIELD)}


ANTHROPIC = Provider(
    name="anthropic", title="Anthropic", line_out=anthropic_line, owns=owns, failed=failed, summary=summary,
    image_field=IMAGE_FIELD, runners=("generate",), shape="anthropic-batch", request_field="params",
    shape_title="Anthropic Message Batches lines ({custom_id, params})", body_in=anthropic_body,
)

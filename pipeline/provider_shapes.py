"""Other providers' batch request forms, converted to the OpenAI chat-completions body.

Each converter takes the provider's request (Anthropic's `params`, Gemini's `request`, a
Responses API `body`) and the row's warnings list, and returns the chat body that `requests.py`
validates. A conversion is faithful or it is refused: what has no equivalent in a local chat
model (images, built-in server tools, state kept on the provider's servers, an assistant prefill
to be continued) raises `Invalid` saying what and why, with `param` the path in the provider's
own form. Fields the converter does not know are kept in the body under a prefixed name
(`params.foo`), so that the validator lists them as unknown fields, ignored, and they never
collide with a chat field.
"""

from __future__ import annotations

import json
from typing import Any

from .problems import Invalid, kind_of


def _name(value: Any, width: int = 40) -> str:
    """A block or part type for a message: short, whatever it is."""
    text = value if isinstance(value, str) else kind_of(value)
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _parts(parts: list[dict[str, Any]]) -> Any:
    """Text parts as chat content: one part is its string, several stay a list of parts."""
    if len(parts) == 1:
        return parts[0]["text"]
    return parts


def _keep_unknown(body: dict[str, Any], source: dict[str, Any], known: set[str], prefix: str) -> None:
    for key in source:
        if key not in known and source[key] is not None:
            body[f"{prefix}.{key}" if isinstance(key, str) else prefix] = source[key]


# ---------------------------------------------------------------------------------------------
# Anthropic Message Batches: {"custom_id": ..., "params": {Messages API request}}

ANTHROPIC_KNOWN = {
    "model", "max_tokens", "system", "messages", "tools", "tool_choice", "stop_sequences",
    "temperature", "top_p", "top_k", "metadata", "stream", "service_tier", "thinking",
    "mcp_servers", "container",
}
ANTHROPIC_MEDIA = ("image", "document", "file", "search_result", "container_upload")


def anthropic_body(params: Any, warnings: list[str]) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise Invalid("invalid_row", f"params must be an object (a Messages API request), got {kind_of(params)}", "params")
    body: dict[str, Any] = {}
    for ours, theirs in (("model", "model"), ("max_tokens", "max_tokens"), ("temperature", "temperature"),
                         ("top_p", "top_p"), ("top_k", "top_k"), ("stop", "stop_sequences"),
                         ("stream", "stream"), ("service_tier", "service_tier")):
        if params.get(theirs) is not None:
            body[ours] = params[theirs]
    for name, what in (("mcp_servers", "MCP servers are reached by Anthropic's servers"),
                       ("container", "code execution containers live on Anthropic's servers")):
        if params.get(name):
            raise Invalid("unsupported_parameter", f"params.{name} cannot run here: {what}; remove it", f"params.{name}")
    thinking = params.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled"):
        raise Invalid("unsupported_parameter", "params.thinking (extended thinking with a token budget) is a "
                      "Claude mode with no equivalent for this model; remove it", "params.thinking")
    metadata = params.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise Invalid("invalid_parameter", "params.metadata must be an object such as {\"user_id\": ...}", "params.metadata")
        if metadata.get("user_id") is not None:
            body["user"] = metadata["user_id"]
    messages: list[dict[str, Any]] = []
    if params.get("system") is not None:
        messages.append({"role": "system", "content": _anthropic_text(params["system"], "params.system")})
    raw = params.get("messages")
    if raw is None:
        raise Invalid("invalid_messages", "params.messages is missing: a Messages API request needs at least one message",
                      "params.messages")
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
        raise Invalid("invalid_messages", f"{where} must be a string or a list of text blocks, got {kind_of(value)}", where)
    parts = []
    for j, block in enumerate(value):
        btype = block.get("type") if isinstance(block, dict) else None
        if btype in ANTHROPIC_MEDIA:
            raise Invalid("unsupported_content", f"{where}[{j}] is a block of type {_name(btype)}: images and documents are not "
                          "supported by a text model", f"{where}[{j}]")
        if btype != "text" or not isinstance(block.get("text"), str):
            raise Invalid("invalid_messages", f"{where}[{j}] must be a text block {{\"type\": \"text\", \"text\": ...}}, "
                          f"got {_name(btype)}", f"{where}[{j}]")
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
        raise Invalid("invalid_messages", f"{where}.content must be a string or a list of content blocks", f"{where}.content")
    out: list[dict[str, Any]] = []
    texts: list[dict[str, Any]] | None = None  # the text parts of the message being built
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        btype = block.get("type") if isinstance(block, dict) else None
        if btype == "text" and isinstance(block.get("text"), str):
            if texts is None:
                texts = []
                out.append({"role": role, "content": texts})
            texts.append({"type": "text", "text": block["text"]})
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
            raise Invalid("unsupported_content", f"{at} is a block of type {_name(btype)}: images and documents are not "
                          "supported by a text model", at)
        elif btype in ("tool_use", "tool_result"):
            raise Invalid("invalid_messages", f"{at}: a {btype} block belongs in {'an assistant' if btype == 'tool_use' else 'a user'} "
                          "message", at)
        elif isinstance(btype, str) and ("tool" in btype or btype.endswith("_result")):
            raise Invalid("unsupported_content", f"{at} is a block of type {_name(btype)}, from a tool that runs on Anthropic's "
                          "servers; it has no equivalent here", at)
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


# ---------------------------------------------------------------------------------------------
# Gemini / Vertex AI batch: {"key": ..., "request": {GenerateContentRequest}}

GEMINI_KNOWN = {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig",
                "safetySettings", "cachedContent", "model", "labels"}
GENERATION_MAP = {  # generationConfig field -> chat field
    "temperature": "temperature", "topP": "top_p", "topK": "top_k", "maxOutputTokens": "max_tokens",
    "stopSequences": "stop", "candidateCount": "n", "seed": "seed", "presencePenalty": "presence_penalty",
    "frequencyPenalty": "frequency_penalty", "responseLogprobs": "logprobs", "logprobs": "top_logprobs",
}
GENERATION_HANDLED = {*GENERATION_MAP, "responseMimeType", "responseSchema", "responseJsonSchema",
                      "responseModalities"}
GEMINI_MEDIA = ("inlineData", "fileData")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _camel_keys(obj: Any) -> Any:
    """Gemini's JSON accepts snake_case and lowerCamelCase field names: read both (one level)."""
    if not isinstance(obj, dict):
        return obj
    return {(_camel(k) if isinstance(k, str) else k): v for k, v in obj.items()}


def gemini_body(request: Any, warnings: list[str]) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise Invalid("invalid_row", f"request must be an object (a GenerateContentRequest), got {kind_of(request)}", "request")
    request = _camel_keys(request)
    body: dict[str, Any] = {}
    if request.get("model") is not None:
        body["model"] = request["model"]
    if request.get("cachedContent") is not None:
        raise Invalid("unsupported_parameter", "request.cachedContent names a cache kept on Google's servers; put "
                      "its text in the request instead", "request.cachedContent")
    messages: list[dict[str, Any]] = []
    system = request.get("systemInstruction")
    if system is not None:
        text = system if isinstance(system, str) else _gemini_text(_camel_keys(system), "request.systemInstruction")
        messages.append({"role": "system", "content": text})
    contents = request.get("contents")
    if contents is None:
        raise Invalid("invalid_messages", "request.contents is missing: a GenerateContentRequest needs at least one "
                      "content", "request.contents")
    if not isinstance(contents, list) or not contents:
        raise Invalid("invalid_messages", "request.contents must be a non-empty list of contents", "request.contents")
    open_calls: list[list[str]] = []  # [id, name] of the last model turn's calls not yet answered
    for i, content in enumerate(contents):
        messages.extend(_gemini_content(_camel_keys(content), f"request.contents[{i}]", open_calls, warnings, i))
    last = contents[-1]
    if isinstance(last, dict) and last.get("role") == "model":
        raise Invalid("unsupported_parameter", "request.contents ends with a model turn: a chat request starts a new "
                      "assistant turn after it instead of continuing it; end with a user turn",
                      f"request.contents[{len(contents) - 1}]")
    body["messages"] = messages
    config = request.get("generationConfig")
    if config is not None:
        if not isinstance(config, dict):
            raise Invalid("invalid_parameter", "request.generationConfig must be an object", "request.generationConfig")
        _gemini_config(_camel_keys(config), body)
    if request.get("tools") is not None:
        body["tools"] = _gemini_tools(request["tools"])
    if request.get("toolConfig") is not None:
        _gemini_tool_config(_camel_keys(request["toolConfig"]), body)
    if request.get("safetySettings"):
        warnings.append("request.safetySettings: Google's safety filters do not run here; ignored")
    _keep_unknown(body, request, GEMINI_KNOWN, "request")
    return body


def _gemini_text(content: Any, where: str) -> Any:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        raise Invalid("invalid_messages", f"{where} must be {{\"parts\": [{{\"text\": ...}}]}}", where)
    texts = []
    for j, part in enumerate(parts):
        part = _camel_keys(part)
        if isinstance(part, dict) and any(k in part for k in GEMINI_MEDIA):
            raise Invalid("unsupported_content", f"{where}.parts[{j}] is an inline or file data part (image, audio, "
                          "video or document): this text model takes text parts only", f"{where}.parts[{j}]")
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise Invalid("invalid_messages", f"{where}.parts[{j}] must be a text part {{\"text\": ...}}", f"{where}.parts[{j}]")
        texts.append({"type": "text", "text": part["text"]})
    return _parts(texts) if texts else ""


def _gemini_content(content: Any, where: str, open_calls: list[list[str]], warnings: list[str],
                    index: int) -> list[dict[str, Any]]:
    if not isinstance(content, dict):
        raise Invalid("invalid_messages", f"{where} must be an object {{role, parts}}", where)
    role = content.get("role", "user")
    if role not in ("user", "model", "function"):
        raise Invalid("invalid_messages", f"{where}.role must be 'user' or 'model', got {_name(role)}", f"{where}.role")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise Invalid("invalid_messages", f"{where}.parts must be a non-empty list of parts", f"{where}.parts")
    texts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        at = f"{where}.parts[{j}]"
        part = _camel_keys(part)
        if not isinstance(part, dict):
            raise Invalid("invalid_messages", f"{at} must be an object such as {{\"text\": ...}}", at)
        if any(k in part for k in GEMINI_MEDIA):
            raise Invalid("unsupported_content", f"{at} is an inline or file data part (image, audio, video or "
                          "document): this text model takes text parts only", at)
        if isinstance(part.get("text"), str):
            if part.get("thought"):
                warnings.append(f"{at}: a thought part of an earlier turn is not sent to this model")
            else:
                texts.append({"type": "text", "text": part["text"]})
        elif isinstance(part.get("functionCall"), dict) and role == "model":
            call = part["functionCall"]
            if not isinstance(call.get("name"), str):
                raise Invalid("invalid_messages", f"{at}.functionCall needs a name", at)
            call_id = call["id"] if isinstance(call.get("id"), str) else f"call_{index}_{j}"
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": call["name"], "arguments": _json(call.get("args") or {})}})
        elif isinstance(part.get("functionResponse"), dict) and role != "model":
            resp = part["functionResponse"]
            results.append({"role": "tool", "tool_call_id": _answered(resp, open_calls, at),
                            "content": _json(resp.get("response", {}))})
        elif "functionCall" in part or "functionResponse" in part:
            raise Invalid("invalid_messages", f"{at}: a functionCall belongs in a model turn and a functionResponse "
                          "in a user turn", at)
        elif "executableCode" in part or "codeExecutionResult" in part:
            raise Invalid("unsupported_content", f"{at} is a code execution part: Gemini's code execution runs on "
                          "Google's servers and has no equivalent here", at)
        else:
            keys = ", ".join(repr(k)[:40] for k in list(part)[:5])
            raise Invalid("invalid_messages", f"{at} has none of the parts accepted (text, functionCall, "
                          f"functionResponse); its fields: {keys}", at)
    if role == "model":
        open_calls[:] = [[c["id"], c["function"]["name"]] for c in calls]
        text = _parts(texts) if texts else ("" if not calls else None)
        return [{"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}]
    out = results
    if texts:
        out.append({"role": "user", "content": _parts(texts)})
    if not results:
        open_calls.clear()
    return out


def _answered(resp: dict[str, Any], open_calls: list[list[str]], at: str) -> str:
    """The id of the call a functionResponse answers: its id, else the first open call of its name."""
    for k, (call_id, name) in enumerate(open_calls):
        if resp.get("id") == call_id or (resp.get("id") is None and resp.get("name") == name):
            del open_calls[k]
            return call_id
    raise Invalid("invalid_messages", f"{at}: this functionResponse answers no functionCall of the model turn "
                  "before it", at)


def _gemini_config(config: dict[str, Any], body: dict[str, Any]) -> None:
    for theirs, ours in GENERATION_MAP.items():
        if config.get(theirs) is not None:
            body[ours] = config[theirs]
    if "top_logprobs" in body and "logprobs" not in body:
        body["logprobs"] = True
    modalities = config.get("responseModalities")
    if modalities is not None and (not isinstance(modalities, list)
                                   or any(str(m).upper() != "TEXT" for m in modalities)):
        raise Invalid("unsupported_parameter", "generationConfig.responseModalities asks for output other than text; "
                      "this is a text model", "request.generationConfig.responseModalities")
    mime = config.get("responseMimeType")
    schema = config.get("responseJsonSchema")
    if schema is None and config.get("responseSchema") is not None:
        schema = _openapi_to_json_schema(config["responseSchema"])
    if mime in (None, "text/plain") and schema is None:
        pass
    elif mime in (None, "application/json"):
        body["response_format"] = ({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
                                   if schema is not None else {"type": "json_object"})
    else:
        raise Invalid("unsupported_parameter", f"generationConfig.responseMimeType {_name(mime)} cannot be produced here; "
                      "text/plain and application/json can", "request.generationConfig.responseMimeType")
    for key in config:
        if key not in GENERATION_HANDLED and config[key] is not None:
            body[f"generationConfig.{key}"] = config[key]


def _openapi_to_json_schema(schema: Any) -> Any:
    """Gemini's Schema (an OpenAPI 3.0 subset: upper-case types, `nullable`) as JSON schema."""
    if isinstance(schema, list):
        return [_openapi_to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in _camel_keys(schema).items():
        if key == "type" and isinstance(value, str):
            out["type"] = value.lower()
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {k: _openapi_to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties"):
            out[key] = _openapi_to_json_schema(value)
        elif key in ("nullable", "propertyOrdering"):
            continue
        else:
            out[key] = value
    if schema.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _gemini_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Invalid("invalid_parameter", "request.tools must be a list of tools", "request.tools")
    out = []
    for i, tool in enumerate(tools):
        tool = _camel_keys(tool)
        at = f"request.tools[{i}]"
        if not isinstance(tool, dict):
            raise Invalid("invalid_parameter", f"{at} must be an object {{\"functionDeclarations\": [...]}}", at)
        others = [k for k in tool if k != "functionDeclarations"]
        if others:
            raise Invalid("unsupported_parameter", f"{at} is Gemini's built-in tool {_name(others[0])}, which runs on "
                          "Google's servers; only functionDeclarations can be called here", at)
        decls = tool.get("functionDeclarations")
        if not isinstance(decls, list):
            raise Invalid("invalid_parameter", f"{at}.functionDeclarations must be a list", f"{at}.functionDeclarations")
        for k, decl in enumerate(decls):
            decl = _camel_keys(decl)
            if not isinstance(decl, dict):
                raise Invalid("invalid_parameter", f"{at}.functionDeclarations[{k}] must be an object", f"{at}.functionDeclarations[{k}]")
            fn: dict[str, Any] = {"name": decl.get("name")}
            if decl.get("description") is not None:
                fn["description"] = decl["description"]
            if decl.get("parametersJsonSchema") is not None:
                fn["parameters"] = decl["parametersJsonSchema"]
            elif decl.get("parameters") is not None:
                fn["parameters"] = _openapi_to_json_schema(decl["parameters"])
            out.append({"type": "function", "function": fn})
    return out


def _gemini_tool_config(config: Any, body: dict[str, Any]) -> None:
    calling = _camel_keys(config.get("functionCallingConfig")) if isinstance(config, dict) else None
    if not isinstance(calling, dict):
        return
    mode = str(calling.get("mode", "AUTO")).upper()
    allowed = calling.get("allowedFunctionNames")
    if mode in ("AUTO", "MODE_UNSPECIFIED"):
        body["tool_choice"] = "auto"
    elif mode == "NONE":
        body["tool_choice"] = "none"
    elif mode in ("ANY", "VALIDATED") and isinstance(allowed, list) and len(allowed) == 1 and isinstance(allowed[0], str):
        body["tool_choice"] = {"type": "function", "function": {"name": allowed[0]}}
    elif mode == "ANY":
        if isinstance(allowed, list) and allowed and isinstance(body.get("tools"), list):
            body["tools"] = [t for t in body["tools"] if t["function"].get("name") in allowed]
        body["tool_choice"] = "required"
    else:
        raise Invalid("unsupported_parameter", f"toolConfig.functionCallingConfig.mode {_name(mode)} has no chat "
                      "equivalent; AUTO, ANY and NONE do", "request.toolConfig.functionCallingConfig.mode")


# ---------------------------------------------------------------------------------------------
# OpenAI Responses API lines: {"custom_id", "method": "POST", "url": "/v1/responses", "body"}

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
        raise Invalid("invalid_messages", "body.input must be a string or a non-empty list of input items", "body.input")
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

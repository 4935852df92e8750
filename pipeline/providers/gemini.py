"""Gemini API / Vertex AI batch: `{key, request}` lines in, batch output lines out."""

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
from pipeline.records import Invalid, is_default_id, kind_of

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
        raise Invalid("invalid_row", f"request must be an object (a GenerateContentRequest), got {kind_of(request)}",
                      "request")
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
            raise Invalid("invalid_messages", f"{where}.parts[{j}] must be a text part {{\"text\": ...}}",
                          f"{where}.parts[{j}]")
        texts.append({"type": "text", "text": part["text"]})
    return _parts(texts) if texts else ""


def _gemini_image(part: dict[str, Any], at: str) -> dict[str, Any]:
    """An inlineData (base64) or fileData (a URI) part as an image_url part."""
    if "inlineData" in part:
        blob = _camel_keys(part["inlineData"])
        blob = blob if isinstance(blob, dict) else {}
        return image_part(data_url(blob.get("mimeType"), blob.get("data"), f"{at}.inlineData"), f"{at}.inlineData")
    ref = _camel_keys(part["fileData"])
    ref = ref if isinstance(ref, dict) else {}
    if ref.get("mimeType") is not None and not str(ref["mimeType"]).startswith("image/"):
        raise Invalid("unsupported_content", f"{at}.fileData: media type {_name(ref['mimeType'])} is not an image; "
                      "images are the media this run takes", f"{at}.fileData")
    return image_part(ref.get("fileUri"), f"{at}.fileData")


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
        if any(k in part for k in GEMINI_MEDIA) and role == "user":
            texts.append(_gemini_image(part, at))
        elif any(k in part for k in GEMINI_MEDIA):
            raise Invalid("unsupported_content", f"{at} is an inline or file data part in a {role} turn: "
                          "images are taken in user turns only", at)
        elif isinstance(part.get("text"), str):
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
        raise Invalid("unsupported_parameter", f"generationConfig.responseMimeType {_name(mime)} cannot be produced "
                      "here; text/plain and application/json can", "request.generationConfig.responseMimeType")
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
            raise Invalid("invalid_parameter", f"{at}.functionDeclarations must be a list",
                          f"{at}.functionDeclarations")
        for k, decl in enumerate(decls):
            decl = _camel_keys(decl)
            if not isinstance(decl, dict):
                raise Invalid("invalid_parameter", f"{at}.functionDeclarations[{k}] must be an object",
                              f"{at}.functionDeclarations[{k}]")
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
    elif (mode in ("ANY", "VALIDATED") and isinstance(allowed, list) and len(allowed) == 1
          and isinstance(allowed[0], str)):
        body["tool_choice"] = {"type": "function", "function": {"name": allowed[0]}}
    elif mode == "ANY":
        if isinstance(allowed, list) and allowed and isinstance(body.get("tools"), list):
            body["tools"] = [t for t in body["tools"] if t["function"].get("name") in allowed]
        body["tool_choice"] = "required"
    else:
        raise Invalid("unsupported_parameter", f"toolConfig.functionCallingConfig.mode {_name(mode)} has no chat "
                      "equivalent; AUTO, ANY and NONE do", "request.toolConfig.functionCallingConfig.mode")


# ---- Gemini API / Vertex AI batch output -------------------------------------------------------
# https://ai.google.dev/gemini-api/docs/batch-mode,
# https://cloud.google.com/vertex-ai/generative-ai/docs/multimodal/batch-prediction-from-cloud-storage
GRPC_INVALID_ARGUMENT, GRPC_INTERNAL = 3, 13
GEMINI_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}


def gemini_line(row: dict[str, Any]) -> dict[str, Any]:
    """The row as a Gemini batch output line. A line that came with a `key` (the Gemini API's
    form) gets `{key, response: GenerateContentResponse}` or `{key, status: {code, message}}` (a
    google.rpc.Status); one without (Vertex AI's form) gets Vertex's `{status: "" or the error,
    processed_time, response}`, with `key` set to the row's derived id (the request itself is not
    echoed)."""
    vertex = is_default_id(row["custom_id"], row["source_line"])
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
        if c.get("reasoning_content"):  # a thought summary part, as Gemini gives with includeThoughts
            parts.append({"text": c["reasoning_content"], "thought": True})
        if _has_text(c):
            parts.append({"text": c["content"]})
        for call in calls:
            parts.append({"functionCall": {"id": call["id"], "name": call["function"]["name"],
                                           "args": _arguments(call["function"]["arguments"])}})
        candidates.append({"content": {"role": "model", "parts": parts},
                           "finishReason": GEMINI_FINISH.get(c.get("finish_reason"), "OTHER"),
                           "index": c["index"]})
    thoughts = row.get("reasoning_tokens") or 0  # Gemini counts them apart from the candidates'
    usage = {"promptTokenCount": row["prompt_tokens"], "candidatesTokenCount": row["completion_tokens"] - thoughts,
             "totalTokenCount": row["total_tokens"]}
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if row.get("cached_tokens"):
        usage["cachedContentTokenCount"] = row["cached_tokens"]
    line["response"] = {"candidates": candidates, "usageMetadata": with_images(usage, row, IMAGE_FIELD),
                        "modelVersion": _model(row)}
    return line


IMAGE_FIELD = "promptImageCount"


def owns(line: dict[str, Any]) -> bool:
    return "key" in line


def failed(line: dict[str, Any]) -> bool:
    return bool(line.get("status"))


def summary(line: dict[str, Any]) -> dict[str, Any]:
    status = line.get("status")
    if status:
        return {"custom_id": line["key"],
                "error": split_code(status.get("message", "") if isinstance(status, dict) else str(status))}
    resp = line.get("response") or {}
    usage = resp.get("usageMetadata") or {}
    first = (resp.get("candidates") or [{}])[0]
    parts = (first.get("content") or {}).get("parts") or []
    thoughts = usage.get("thoughtsTokenCount")
    return {"custom_id": line["key"], "prompt_tokens": usage.get("promptTokenCount"),
            "completion_tokens": (usage.get("candidatesTokenCount") or 0) + (thoughts or 0),
            "reasoning_tokens": thoughts,
            "cached_tokens": usage.get("cachedContentTokenCount", 0), "finish_reason": first.get("finishReason"),
            "content": next((p["text"] for p in parts if "text" in p and not p.get("thought")), None),
            "images": usage.get(IMAGE_FIELD)}


GEMINI = Provider(
    name="gemini", title="Gemini", line_out=gemini_line, owns=owns, failed=failed, summary=summary,
    image_field=IMAGE_FIELD, runners=("generate",), shape="gemini-batch", request_field="request",
    id_fields=("key", "custom_id"), shape_title="Gemini/Vertex AI batch lines ({key, request: {contents}})",
    body_in=gemini_body,
)

"""Chat completions (`/v1/chat/completions`): the body every input shape but the other
endpoints' lines becomes (bare bodies, OpenAI Batch and Together lines, the providers' converted
lines, template rows); messages, tools, response_format and reasoning fields checked here, the
sampling fields in sampling.py."""

from __future__ import annotations

import re
from typing import Any

from pipeline.endpoints.base import NO_COLUMNS, OPENAI_PREFIX, QUERY, Endpoint, Origin, served_model
from pipeline.endpoints.sampling import (
    ACCEPTED_NO_EFFECT,
    NUMERIC_PARAMS,
    sampling,
    unknown_fields,
    user_field,
)
from pipeline.records import Invalid, Request, short

URL = "/v1/chat/completions"
# OpenAI's form, Azure OpenAI's (`/chat/completions`, a deployment's path), an api-version query.
URL_FORMS = re.compile(OPENAI_PREFIX + r"/chat/completions" + QUERY)

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_TOOLS = 128
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# OpenAI's (and vLLM's) reasoning_effort values: for models whose chat template takes it
# (gpt-oss); any value but "none" also sets the template's enable_thinking, as vLLM's server does.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
# The request fields that steer a reasoning model (reasoning.py's job defaults fill them in).
REASONING_FIELDS = ("reasoning_effort", "chat_template_kwargs", "thinking_token_budget", "include_reasoning")
BODY_FIELDS = {
    "model", "messages", "n", "stop", "logprobs", "logit_bias", "tools", "tool_choice",
    "response_format", "user", *NUMERIC_PARAMS, *ACCEPTED_NO_EFFECT, *REASONING_FIELDS,
}


def with_defaults(body: dict[str, Any], defaults: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The body with the job's default request fields where it sets none (chat_template_kwargs:
    the job's keys under the row's)."""
    if not defaults:
        return body
    out = dict(body)
    for name, value in defaults:
        if name == "chat_template_kwargs" and isinstance(out.get(name), dict) and isinstance(value, dict):
            out[name] = {**value, **out[name]}
        elif out.get(name) is None:
            out[name] = value
    return out


def _reasoning(body: dict[str, Any]) -> dict[str, Any]:
    """The fields that steer a reasoning model, checked: reasoning_effort, chat_template_kwargs
    (keyword arguments of the model's chat template, such as enable_thinking) and include_reasoning
    (thinking_token_budget is a numeric field)."""
    params: dict[str, Any] = {}
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in REASONING_EFFORTS:
            raise Invalid("invalid_parameter", f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}, "
                          f"got {short(effort)}", "reasoning_effort")
        params["reasoning_effort"] = effort
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
            raise Invalid("invalid_parameter", "chat_template_kwargs must be an object of template variable names "
                          "to values, such as {\"enable_thinking\": false}", "chat_template_kwargs")
        params["chat_template_kwargs"] = kwargs
    if body.get("include_reasoning") is not None:
        if not isinstance(body["include_reasoning"], bool):
            raise Invalid("invalid_parameter", "include_reasoning must be true or false", "include_reasoning")
        params["include_reasoning"] = body["include_reasoning"]
    return params


IMAGE_DETAIL = ("auto", "low", "high")
AUDIO_FORMATS = ("wav", "mp3")  # OpenAI's input_audio formats


def _text(content: Any, where: str, role: str = "user") -> str | None:
    """Check message content: a string or a list of text parts (and, in user messages, image_url
    and input_audio parts)."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Invalid("invalid_messages", f"{where}.content must be a string or a list of text parts",
                      f"{where}.content")
    for j, part in enumerate(content):
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype == "image_url" and role == "user":
            _image_url(part.get("image_url"), f"{where}.content[{j}].image_url")
            continue
        if ptype == "input_audio" and role == "user":
            input_audio(part.get("input_audio"), f"{where}.content[{j}].input_audio")
            continue
        if ptype != "text" or not isinstance(part.get("text"), str):
            what = f"a part of type {ptype!r}" if ptype else "a part that is not {\"type\": \"text\", \"text\": ...}"
            media = ("image_url", "input_audio", "file", "video_url")
            code = "unsupported_content" if ptype in media else "invalid_messages"
            takes = ("text parts, and images and audio in user messages" if ptype in ("image_url", "input_audio")
                     else "text, image and audio parts only")
            raise Invalid(code, f"{where}.content[{j}] is {what}; a message takes {takes}", f"{where}.content[{j}]")
    return "text"


def _image_url(image: Any, at: str) -> None:
    """An image_url part's object: {"url": a data: URI, a path or a URL, "detail": auto|low|high}."""
    if not isinstance(image, dict) or not isinstance(image.get("url"), str) or not image["url"]:
        raise Invalid("invalid_messages", f"{at} must be {{\"url\": \"data:image/png;base64,...\" or a path or "
                      "URL}", at)
    if image.get("detail") not in (None, *IMAGE_DETAIL):
        raise Invalid("invalid_parameter", f"{at}.detail must be one of {', '.join(IMAGE_DETAIL)}, got "
                      f"{short(image['detail'])}", f"{at}.detail")


def input_audio(audio: Any, at: str) -> None:
    """An input_audio part's object, as OpenAI's chat API takes it: {"data": base64, "format": wav|mp3}
    (intake/audio.py decodes and checks the audio itself)."""
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str) or not audio["data"]:
        raise Invalid("invalid_messages", f"{at} must be {{\"data\": \"<base64>\", \"format\": \"wav\"}}", at)
    if audio.get("format") not in AUDIO_FORMATS:
        raise Invalid("invalid_parameter", f"{at}.format must be one of {', '.join(AUDIO_FORMATS)}, got "
                      f"{short(audio.get('format'))}", f"{at}.format")


def _messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise Invalid("invalid_messages", "messages is missing: a chat request needs at least one message", "messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("invalid_messages", "messages must be a non-empty list of messages", "messages")
    open_calls: set[str] = set()
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise Invalid("invalid_messages", f"{where} must be an object with role and content", where)
        role = msg.get("role")
        if role not in ROLES:
            raise Invalid("invalid_messages", f"{where}.role {role!r} is not one of {', '.join(ROLES)}",
                          f"{where}.role")
        content = _text(msg.get("content"), where, role)
        calls = msg.get("tool_calls")
        if role == "assistant" and calls:
            open_calls = _assistant_calls(calls, where)
        elif calls is not None and role != "assistant":
            raise Invalid("invalid_messages", f"{where}: only assistant messages carry tool_calls",
                          f"{where}.tool_calls")
        if content is None and not (role == "assistant" and calls):
            raise Invalid("invalid_messages", f"{where}.content is missing", f"{where}.content")
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str):
                raise Invalid("invalid_messages", f"{where}: a tool message needs tool_call_id",
                              f"{where}.tool_call_id")
            if call_id not in open_calls:
                raise Invalid(
                    "invalid_messages",
                    f"{where}: tool_call_id {call_id!r} answers no tool call of the assistant message before it",
                    f"{where}.tool_call_id",
                )
        elif not (role == "assistant" and calls):
            open_calls = set()
    return [_thinking(m, f"messages[{i}]") if m["role"] == "assistant" else m for i, m in enumerate(messages)]


def _thinking(msg: dict[str, Any], where: str) -> dict[str, Any]:
    """An earlier assistant turn's thinking under vLLM's name, `reasoning` (what the chat template
    reads; vLLM passes no other name on): OpenAI-style `reasoning_content` becomes `reasoning`."""
    for key in ("reasoning", "reasoning_content"):
        if msg.get(key) is not None and not isinstance(msg[key], str):
            raise Invalid("invalid_messages", f"{where}.{key} must be a string (the turn's thinking)", f"{where}.{key}")
    if msg.get("reasoning") is None and msg.get("reasoning_content") is not None:
        return {**{k: v for k, v in msg.items() if k != "reasoning_content"}, "reasoning": msg["reasoning_content"]}
    return msg


def _assistant_calls(calls: Any, where: str) -> set[str]:
    if not isinstance(calls, list):
        raise Invalid("invalid_messages", f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    ids = set()
    for k, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id"), str):
            raise Invalid("invalid_messages", f"{where}.tool_calls[{k}] needs id and function.name",
                          f"{where}.tool_calls[{k}]")
        if not isinstance(fn.get("arguments", "{}"), (str, dict)):
            raise Invalid("invalid_messages", f"{where}.tool_calls[{k}].function.arguments must be a JSON string",
                          f"{where}.tool_calls[{k}]")
        ids.add(call["id"])
    return ids


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise Invalid("invalid_parameter", f"tools must be a list of at most {MAX_TOOLS} tools", "tools")
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise Invalid("invalid_parameter", f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}",
                          f"tools[{i}]")
        if not isinstance(fn.get("name"), str) or not TOOL_NAME.match(fn["name"]):
            raise Invalid("invalid_parameter", f"tools[{i}].function.name must be 1-64 letters, digits, _ or -",
                          f"tools[{i}].function.name")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise Invalid("invalid_parameter", f"tools[{i}].function.parameters must be a JSON schema object",
                          f"tools[{i}].function.parameters")
    return tools or None


def _tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> Any:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in ("none", "auto", "required"):
        if choice != "none" and not tools:
            raise Invalid("invalid_parameter", f"tool_choice {choice!r} needs tools", "tool_choice")
        return choice
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise Invalid(
            "invalid_parameter",
            "tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}",
            "tool_choice",
        )
    if name not in {t["function"]["name"] for t in tools or ()}:
        raise Invalid("invalid_parameter", f"tool_choice names function {name!r}, which is not in tools", "tool_choice")
    return choice


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return fmt
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if (not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict)
                or not isinstance(spec.get("name", ""), str)):
            raise Invalid(
                "invalid_parameter",
                "response_format.json_schema must be {\"name\": ..., \"schema\": {...}, \"strict\": ...}",
                "response_format.json_schema",
            )
        return fmt
    raise Invalid(
        "invalid_parameter",
        "response_format.type must be 'text', 'json_object' or 'json_schema'",
        "response_format",
    )


def parse(body: dict[str, Any], origin: Origin, ctx: Any, warnings: list[str]) -> Request:
    """A chat body (with the job's default request fields where it sets none) as a Request that
    carries its normalized body: the messages, then every field the row set, as checked."""
    body = with_defaults(body, ctx.defaults)
    messages = _messages(body.get("messages"))
    params = sampling(body, ctx, NUMERIC_PARAMS)
    params.update(_reasoning(body))
    if "max_tokens" in params and "max_completion_tokens" in params:
        if params["max_tokens"] != params["max_completion_tokens"]:
            raise Invalid(
                "invalid_parameter",
                "max_tokens and max_completion_tokens disagree; set only max_completion_tokens",
                "max_tokens",
            )
    if body.get("logprobs") is not None:
        if not isinstance(body["logprobs"], bool):
            raise Invalid("invalid_parameter", "logprobs must be true or false", "logprobs")
        params["logprobs"] = body["logprobs"]
    if "top_logprobs" in params and not params.get("logprobs"):
        raise Invalid("invalid_parameter", "top_logprobs requires logprobs: true", "top_logprobs")
    tools = _tools(body.get("tools"))
    named = {"tools": tools, "tool_choice": _tool_choice(body.get("tool_choice"), tools),
             "response_format": _response_format(body.get("response_format")), "user": user_field(body)}
    unknown = unknown_fields(body, warnings, BODY_FIELDS)
    normalized = {"messages": messages, **params, **{k: v for k, v in named.items() if v is not None}}
    return origin.request(CHAT, normalized, warnings, unknown)


def columns(request: Request, result: Any) -> dict[str, Any]:
    return {"choices": result.choices, **NO_COLUMNS}


def answers(row: dict[str, Any]) -> bool:
    """Any row another endpoint does not claim is chat's (the registry asks chat last)."""
    return True


def response_body(row: dict[str, Any]) -> dict[str, Any]:
    """A chat row as OpenAI's chat.completion response."""
    choices = []
    for c in row["choices"]:
        message = {"role": "assistant", "content": c["content"]}
        if c.get("reasoning_content") is not None:  # DeepSeek's and vLLM's name for the thinking
            message["reasoning_content"] = c["reasoning_content"]
        if c.get("tool_calls"):
            message["tool_calls"] = c["tool_calls"]
        choices.append({"index": c["index"], "message": message, "logprobs": c.get("logprobs"),
                        "finish_reason": c["finish_reason"]})
    usage = {
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"],
        "total_tokens": row["total_tokens"],
        "prompt_tokens_details": {"cached_tokens": row["cached_tokens"]},
        **({"completion_tokens_details": {"reasoning_tokens": row["reasoning_tokens"]}}
           if row.get("reasoning_tokens") is not None else {}),
        "estimated_cost": row["estimated_cost"],
    }
    return {"id": f"chatcmpl-{row['custom_id']}", "object": "chat.completion", "model": served_model(row),
            "choices": choices, "usage": usage}


CHAT = Endpoint(
    name="chat", runner="generate", url=URL, urls=URL_FORMS, shape="openai-batch",
    title="OpenAI Batch lines", prompt_field="messages", parse=parse, columns=columns,
    answers=answers, response_body=response_body, converses=True,
)

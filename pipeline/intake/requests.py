"""Parse and validate one raw input row into a `Request` or a `FailedRequest`.

Validation is a pure function of the row (plus the run's context), so that `validate`,
`estimate` and `run` can never disagree about which rows are valid.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.intake.endpoints import embeddings_request, scoring_request
from pipeline.intake.resume import Seed
from pipeline.intake.shapes import SHAPES_BY_NAME, Shape, detect
from pipeline.records import (
    FailedRequest,
    Invalid,
    Request,
    Source,
    is_text,
    is_token_ids,
    kind_of,
    names_list,
    short,
)

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20
MAX_TOOLS = 128
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TOKEN_ID = re.compile(r"^[0-9]{1,10}$")

# Numeric sampling parameters: (type, low, high, low inclusive, high inclusive).
NUMERIC_PARAMS: dict[str, tuple[type, float, float, bool, bool]] = {
    "temperature": (float, 0.0, 2.0, True, True),
    "top_p": (float, 0.0, 1.0, False, True),
    "min_p": (float, 0.0, 1.0, True, True),
    "top_k": (int, 0, 999, True, True),
    "presence_penalty": (float, -2.0, 2.0, True, True),
    "frequency_penalty": (float, -2.0, 2.0, True, True),
    "repetition_penalty": (float, 0.01, 5.0, True, True),
    "max_tokens": (int, 1, math.inf, True, True),
    "max_completion_tokens": (int, 1, math.inf, True, True),
    "top_logprobs": (int, 0, MAX_TOP_LOGPROBS, True, True),
    "seed": (int, -(2**63), 2**63 - 1, True, True),
    # a reasoning model's thinking tokens before the answer is forced (vLLM's field; -1: no limit)
    "thinking_token_budget": (int, -1, math.inf, True, True),
}
# OpenAI's (and vLLM's) reasoning_effort values: for models whose chat template takes it
# (gpt-oss); any value but "none" also sets the template's enable_thinking, as vLLM's server does.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
# The request fields that steer a reasoning model (reasoning.py's job defaults fill them in).
REASONING_FIELDS = ("reasoning_effort", "chat_template_kwargs", "thinking_token_budget", "include_reasoning")

# Fields of the chat API that are accepted and have no effect on a batch run.
ACCEPTED_NO_EFFECT = {
    "stream": "a batch has no stream: the whole completion is written as one row",
    "stream_options": "a batch has no stream",
    "parallel_tool_calls": None,
    "metadata": None,
    "store": None,
    "service_tier": None,
}
BODY_FIELDS = {
    "model", "messages", "n", "stop", "logprobs", "logit_bias", "tools", "tool_choice",
    "response_format", "user", *NUMERIC_PARAMS, *ACCEPTED_NO_EFFECT, *REASONING_FIELDS,
}
# The completions API's fields: chat's sampling fields, a prompt, logprobs as a number, and
# echo, suffix and best_of, which vLLM's offline engine cannot honour (refused unless unset).
UNSUPPORTED_COMPLETIONS_FIELDS = (  # (field, its value that changes nothing, what to do instead)
    ("echo", False, " and prepend the prompt to the text yourself"),
    ("suffix", "", ""),
    ("best_of", 1, " and use n for several completions"),
)
COMPLETIONS_FIELDS = {
    "model", "prompt", "n", "stop", "logprobs", "logit_bias", "user", "echo", "suffix", "best_of",
    *(set(NUMERIC_PARAMS) - {"max_completion_tokens", "top_logprobs", "thinking_token_budget"}), *ACCEPTED_NO_EFFECT,
}


@dataclass(frozen=True)
class Context:
    """What validation needs to know about the run."""

    # Names under which the run's model may be asked for (its name, alias, served names).
    # Empty: any model is accepted (e.g. `validate` without --model).
    model_names: frozenset[str] = frozenset()
    max_n: int = 4
    # --route PATTERN=MODEL: other names (exact, or globs such as gpt-4o*; * is a catch-all)
    # that requests may use for this run's model or one of its adapters, in the order given.
    routes: tuple[tuple[str, str], ...] = ()
    # --lora NAME=PATH: the names of the LoRA adapters this run serves on its model.
    adapters: frozenset[str] = frozenset()
    # Job defaults of request fields (reasoning_effort, chat_template_kwargs, thinking_token_budget):
    # a chat row that does not set one takes it; chat_template_kwargs merge, the row's keys winning.
    defaults: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, model: str | None, served: tuple[str, ...] = (), max_n: int = 4,
           routes: dict[str, str] | None = None, adapters: tuple[str, ...] = ()) -> Context:
        """The context of a run of `model` (with these adapters); raises ValueError for a route
        to a model this run does not serve."""
        from pipeline.models.names import served_names

        names = served_names(model, tuple(served)) if model else frozenset()
        pairs = tuple((str(k), str(v)) for k, v in (routes or {}).items())
        known = names | set(adapters)
        for pattern, target in pairs:
            if names and target not in known:
                raise ValueError(f"--route {pattern}={target}: this run serves {', '.join(sorted(known))}, "
                                 f"not {target}. Hint: route to one of those names, or add the adapter "
                                 f"with --lora {target}=PATH")
        return cls(names, max_n, pairs, frozenset(adapters))

    def accepts(self, model: str) -> bool:
        return not self.model_names or model in self.model_names or model in self.adapters or any(
            fnmatch.fnmatchcase(model, pattern) for pattern, _ in self.routes)

    def adapter_for(self, model: str | None) -> str | None:
        """The adapter a request for `model` runs with: the adapter of that name, else the target
        of the first route whose pattern matches, if that is an adapter; None: the base model."""
        if model is None or model in self.adapters or model in self.model_names:
            return model if model in self.adapters else None
        target = next((t for pattern, t in self.routes if fnmatch.fnmatchcase(model, pattern)), None)
        return target if target in self.adapters else None


MAX_CUSTOM_ID = 512  # characters
MAX_UNKNOWN_FIELDS = 20  # kept per request: a row with a million unknown keys stays small


def parse_row(
    row: Any, *, source: Source, line: int, ctx: Context, shape: Shape | None = None
) -> Request | FailedRequest:
    """Turn one decoded row into a Request, or a FailedRequest saying what is wrong. Total: whatever
    the value, exactly one of the two comes out, and both can be written to Parquet."""
    custom_id = source.default_id(line)
    user = shape_name = None
    try:
        if not isinstance(row, dict):
            raise Invalid("invalid_row", f"a row must be a JSON object, got {kind_of(row)}")
        shape = shape or detect(row)
        shape_name = shape.name
        id_field = shape.id_field(row)  # custom_id; Gemini's lines: key
        given_id = row.get(id_field)
        if given_id is not None:
            if not isinstance(given_id, str) or not given_id:
                raise Invalid("invalid_parameter", f"{id_field} must be a non-empty string", id_field)
            if len(given_id) > MAX_CUSTOM_ID:
                raise Invalid("invalid_parameter", f"{id_field} is {len(given_id)} characters; at most "
                              f"{MAX_CUSTOM_ID} are accepted", id_field)
            if not is_text(given_id):
                raise Invalid("invalid_utf8", f"{id_field} holds a lone surrogate (\\ud800-\\udfff), which "
                              "is not text; fix the encoding of the tool that wrote it", id_field)
            custom_id = given_id
        warnings: list[str] = []
        body = shape.read(row, warnings)
        if isinstance(body, dict) and isinstance(body.get("user"), str) and is_text(body["user"]):
            user = body["user"]
        try:
            return _parse_body(body, custom_id, source, line, ctx, warnings, shape_name)
        except Invalid as e:
            raise shape.explained(e) from None
    except Invalid as e:
        return FailedRequest(custom_id, source.name, line, e.code, e.message, e.param, user, shape=shape_name,
                             file=source.index)
    except Exception as e:  # a bug of ours must cost one row, never the job (an interruption is no Exception)
        return FailedRequest(custom_id, source.name, line, "invalid_row",
                             f"the row could not be read ({type(e).__name__}: {short(str(e), 120)}); "
                             "please report this with the row", None, user, shape=shape_name, file=source.index)


def _parse_body(
    body: Any, custom_id: str, source: Source, line: int, ctx: Context, warnings: list[str],
    shape: str | None = None,
) -> Request:
    if not isinstance(body, dict):
        raise Invalid("invalid_row", f"the request body must be a JSON object, got {kind_of(body)}", "body")
    model = _model(body.get("model"), ctx)
    endpoint = SHAPES_BY_NAME[shape].endpoint if shape in SHAPES_BY_NAME else "chat"
    if endpoint == "embeddings":
        return embeddings_request(body, custom_id, source, line, model, warnings, shape, ctx.adapter_for(model))
    if endpoint in ("score", "rerank"):
        return scoring_request(body, custom_id, source, line, model, warnings, shape, ctx.adapter_for(model),
                               endpoint)
    if endpoint == "completions":
        return _completions_request(body, custom_id, source, line, ctx, warnings, shape, model)
    body = with_defaults(body, ctx.defaults)
    messages = _messages(body.get("messages"))
    params = _sampling(body, ctx, NUMERIC_PARAMS)
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
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    response_format = _response_format(body.get("response_format"))
    user = _user(body)
    unknown = _unknown_fields(body, warnings, BODY_FIELDS)
    return Request(
        custom_id, source.name, line, messages, params, tools, tool_choice,
        response_format, user, tuple(warnings), unknown, requested_model=model, shape=shape,
        adapter=ctx.adapter_for(model), file=source.index,
    )


def _sampling(body: dict[str, Any], ctx: Context, numeric: Any) -> dict[str, Any]:
    """The sampling fields chat and completions share, checked, under their OpenAI names."""
    params: dict[str, Any] = {}
    for name, spec in NUMERIC_PARAMS.items():
        if name in numeric and body.get(name) is not None:
            params[name] = _number(name, body[name], *spec)
    if body.get("n") is not None:
        params["n"] = _number("n", body["n"], int, 1, ctx.max_n, True, True)
    if body.get("stop") is not None:
        params["stop"] = _stop(body["stop"])
    if body.get("logit_bias") is not None:
        params["logit_bias"] = _logit_bias(body["logit_bias"])
    return params


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


def _user(body: dict[str, Any]) -> str | None:
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise Invalid("invalid_parameter", "user must be a string", "user")
    if user is not None and not is_text(user):
        raise Invalid("invalid_utf8", "user holds a lone surrogate (\\ud800-\\udfff), which is not text", "user")
    return user


def _completions_request(body: dict[str, Any], custom_id: str, source: Source, line: int, ctx: Context,
                         warnings: list[str], shape: str | None, model: str | None) -> Request:
    """A completions body: one prompt (a string or token ids) and chat's sampling fields;
    `logprobs` is the number of alternatives per token, as in OpenAI's completions API."""
    prompt = _prompt(body.get("prompt"))
    params = _sampling(body, ctx, COMPLETIONS_FIELDS)
    if body.get("logprobs") is not None:
        params["logprobs"] = _number("logprobs", body["logprobs"], int, 0, MAX_TOP_LOGPROBS, True, True)
    for name, unset, hint in UNSUPPORTED_COMPLETIONS_FIELDS:
        if body.get(name) not in (None, unset):
            raise Invalid("unsupported_parameter", f"{name}: {json.dumps(body[name], default=str)[:60]} is not "
                          f"supported: vLLM's offline engine cannot honour it. Hint: drop {name}{hint}", name)
    unknown = _unknown_fields(body, warnings, COMPLETIONS_FIELDS)
    return Request(custom_id, source.name, line, [], params, user=_user(body), warnings=tuple(warnings),
                   unknown_fields=unknown, requested_model=model, shape=shape, adapter=ctx.adapter_for(model),
                   endpoint="completions", input=prompt, file=source.index)


def _prompt(prompt: Any) -> str | list[int]:
    """A completions prompt: a non-empty string or token ids (a list of one of those is that one).
    A line carries one prompt: its row holds one completion (and its n choices)."""
    if isinstance(prompt, list) and len(prompt) == 1 and (isinstance(prompt[0], str) or is_token_ids(prompt[0])):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        if not is_text(prompt):
            raise Invalid("invalid_utf8", "prompt holds a lone surrogate (\\ud800-\\udfff), which is not text",
                          "prompt")
        return prompt
    if is_token_ids(prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) or is_token_ids(p) for p in prompt):
        raise Invalid("invalid_input", f"prompt holds {len(prompt)} prompts, but a batch line carries one: its row "
                      "holds one completion. Hint: put each prompt on a line of its own, with its own custom_id",
                      "prompt")
    raise Invalid("invalid_input", f"prompt must be a non-empty string or a list of token ids, got {kind_of(prompt)} "
                  f"{short(prompt, 40)}", "prompt")


def _model(model: Any, ctx: Context) -> str | None:
    """The model the request names, if this run serves it (its name, a route or an adapter)."""
    if model is not None and not isinstance(model, str):
        raise Invalid("invalid_parameter", f"model must be a string, got {kind_of(model)}", "model")
    if model is not None and not ctx.accepts(model):
        names = ", ".join(sorted(ctx.model_names | ctx.adapters))
        raise Invalid(
            "model_mismatch",
            f"the request asks for model {short(model)} but this run serves {names}. Hint: to run "
            f"it on this model, pass --route '{short(model, 40).strip(chr(39))}=<one of those names>' "
            "(or a pattern such as 'gpt-4o*=...' or '*=...' for every name), or "
            "--served-model-name; or run with -m for that model",
            "model",
        )
    return model


def _unknown_fields(body: dict[Any, Any], warnings: list[str], known: set[str]) -> tuple[str, ...]:
    """The body's field names that the chat API does not have (warned about, kept bounded), and
    warnings for the fields that have no effect on a batch."""
    bad_key = next((k for k in body if not isinstance(k, str) or not is_text(k)), None)
    if bad_key is not None:
        raise Invalid("invalid_utf8", "a field name holds a lone surrogate (\\ud800-\\udfff), which is "
                      "not text; fix the encoding of the tool that wrote the file")
    for name, note in ACCEPTED_NO_EFFECT.items():
        if body.get(name) and note:
            warnings.append(f"{name}: {note}")
    unknown = sorted(set(body) - known)
    if unknown:
        warnings.append(f"unknown field(s) ignored: {names_list(unknown)}")
    return tuple(n if len(n) <= 64 else n[:63] + "…" for n in unknown[:MAX_UNKNOWN_FIELDS])


def _number(name: str, value: Any, kind: type, lo: float, hi: float, lo_in: bool, hi_in: bool):
    if isinstance(value, float) and kind is int and math.isfinite(value) and value.is_integer():
        value = int(value)  # 5.0: how pandas writes an optional integer column
    ok_type = (isinstance(value, int) if kind is int else isinstance(value, (int, float)))
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        raise Invalid("invalid_parameter", f"{name} must be {'an integer' if kind is int else 'a number'}, "
                      f"got {short(value)}", name)
    if (value < lo or (value == lo and not lo_in)) or (value > hi or (value == hi and not hi_in)):
        left, right = "[" if lo_in else "(", "]" if hi_in else ")"
        high = "" if hi == math.inf else f"{hi:g}"
        raise Invalid("invalid_parameter", f"{name} must be in {left}{lo:g}, {high}{right}, got {short(value)}", name)
    return value


def _stop(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise Invalid("invalid_parameter", "stop must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOP:
        raise Invalid("invalid_parameter", f"stop takes at most {MAX_STOP} strings, got {len(stops)}", "stop")
    return stops


def _logit_bias(bias: Any) -> dict[int, float]:
    if not isinstance(bias, dict):
        raise Invalid("invalid_parameter", "logit_bias must map token ids to numbers", "logit_bias")
    out = {}
    for key, value in bias.items():
        if (not isinstance(key, str) or not _TOKEN_ID.match(key) or isinstance(value, bool)
                or not isinstance(value, (int, float)) or not -100 <= value <= 100):
            raise Invalid("invalid_parameter", f"logit_bias entry {short(key)}: {short(value)} must be a "
                          "token id (digits) and a number in [-100, 100]", "logit_bias")
        out[int(key)] = float(value)
    return out


IMAGE_DETAIL = ("auto", "low", "high")


def _text(content: Any, where: str, role: str = "user") -> str | None:
    """Check message content: a string or a list of text parts (and, in user messages, image_url parts)."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Invalid("invalid_messages", f"{where}.content must be a string or a list of text parts", f"{where}.content")
    for j, part in enumerate(content):
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype == "image_url" and role == "user":
            _image_url(part.get("image_url"), f"{where}.content[{j}].image_url")
            continue
        if ptype != "text" or not isinstance(part.get("text"), str):
            what = f"a part of type {ptype!r}" if ptype else "a part that is not {\"type\": \"text\", \"text\": ...}"
            code = "unsupported_content" if ptype in ("image_url", "input_audio", "file", "video_url") else "invalid_messages"
            takes = "text parts, and images in user messages" if ptype == "image_url" else "text and image parts only"
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
            raise Invalid("invalid_messages", f"{where}.role {role!r} is not one of {', '.join(ROLES)}", f"{where}.role")
        content = _text(msg.get("content"), where, role)
        calls = msg.get("tool_calls")
        if role == "assistant" and calls:
            open_calls = _assistant_calls(calls, where)
        elif calls is not None and role != "assistant":
            raise Invalid("invalid_messages", f"{where}: only assistant messages carry tool_calls", f"{where}.tool_calls")
        if content is None and not (role == "assistant" and calls):
            raise Invalid("invalid_messages", f"{where}.content is missing", f"{where}.content")
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str):
                raise Invalid("invalid_messages", f"{where}: a tool message needs tool_call_id", f"{where}.tool_call_id")
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
            raise Invalid("invalid_messages", f"{where}.tool_calls[{k}] needs id and function.name", f"{where}.tool_calls[{k}]")
        if not isinstance(fn.get("arguments", "{}"), (str, dict)):
            raise Invalid("invalid_messages", f"{where}.tool_calls[{k}].function.arguments must be a JSON string", f"{where}.tool_calls[{k}]")
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
            raise Invalid("invalid_parameter", f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}", f"tools[{i}]")
        if not isinstance(fn.get("name"), str) or not TOOL_NAME.match(fn["name"]):
            raise Invalid("invalid_parameter", f"tools[{i}].function.name must be 1-64 letters, digits, _ or -", f"tools[{i}].function.name")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise Invalid("invalid_parameter", f"tools[{i}].function.parameters must be a JSON schema object", f"tools[{i}].function.parameters")
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
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict) or not isinstance(spec.get("name", ""), str):
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


class SeenIds:
    """An exact set of 64-bit id digests in about 8 bytes per id: the latest `recent` digests in
    a Python set, the older ones in sorted numpy arrays, one per bucket of the digest's top
    `bits` bits. A full set is merged into the buckets it touches, so growing never copies the
    whole set at once (the open-addressing table it replaces took 16 to 32 bytes per id and more
    while it doubled: 699 MiB of peak RSS for 20M ids, against 224 MiB; docs/performance.md)."""

    def __init__(self, *, bits: int = 12, recent: int = 1 << 18):
        self.shift, self.limit = 64 - bits, recent
        self.buckets = [np.empty(0, dtype=np.uint64)] * (1 << bits)
        self.recent: set[int] = set()
        self.count = 0

    def add(self, custom_id: str) -> bool:
        """Add an id; True if it was already there."""
        key = int.from_bytes(hashlib.blake2b(custom_id.encode(), digest_size=8).digest(), "little")
        if key in self.recent:
            return True
        bucket = self.buckets[key >> self.shift]
        i = int(bucket.searchsorted(key)) if len(bucket) else 0
        if i < len(bucket) and int(bucket[i]) == key:
            return True
        self.recent.add(key)
        self.count += 1
        if len(self.recent) >= self.limit:
            self._merge()
        return False

    def add_digests(self, digests: np.ndarray) -> None:
        """Add ids' digests (resume.digest): a resumed run's skipped lines. Merged as `add`'s
        are, once the recent set is full (merging at every call would cost the whole set each)."""
        self.recent.update(digests.tolist())
        self.count += len(digests)
        if len(self.recent) >= self.limit:
            self._merge()

    def _merge(self) -> None:
        if not self.recent:
            return
        keys = np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent))
        keys.sort()
        self.recent = set()
        tops = keys >> np.uint64(self.shift)
        cuts = np.flatnonzero(np.diff(tops)) + 1
        for chunk in np.split(keys, cuts):
            b = int(chunk[0]) >> self.shift
            merged = np.concatenate((self.buckets[b], chunk))
            merged.sort(kind="stable")  # two sorted runs: a linear merge
            self.buckets[b] = merged


def validate_rows(
    rows: Iterable[tuple[Source, int, Any]], ctx: Context
) -> Iterator[Request | FailedRequest]:
    """Validate a stream of (source, line, row), file after file, and flag a custom_id used twice
    in one file (two files may use the same ids: a row's key is its file and line).

    A row that is already a FailedRequest (unreadable line) passes through.
    """
    seen, shape, current = SeenIds(), None, None
    for source, line, row in rows:
        if source != current:
            seen, shape, current = SeenIds(), None, source
        if isinstance(row, Seed):  # lines a resumed run skipped: the shape they fix, their ids
            shape = detect(row.first) if isinstance(row.first, dict) else shape
            seen.add_digests(row.digests)
            continue
        if isinstance(row, FailedRequest):  # an unreadable line: it takes its file's shape, once known
            yield replace(row, shape=shape.name) if shape is not None else row
            continue
        if shape is None and isinstance(row, dict):
            shape = detect(row)  # a file's shape: that of its first object
        item = parse_row(row, source=source, line=line, ctx=ctx, shape=shape)
        id_field = shape.id_field(row) if isinstance(row, dict) else "custom_id"
        if isinstance(row, dict) and row.get(id_field) == item.custom_id and seen.add(item.custom_id):
            item = FailedRequest(
                item.custom_id, source.name, line, "duplicate_custom_id",
                f"{id_field} {short(item.custom_id)} appears earlier in this file; every request of a "
                "file needs its own id", id_field, item.user, shape=item.shape, file=source.index,
            )
        yield item

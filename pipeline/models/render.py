"""Chat rendering as vLLM 0.32 does it, and the rules that `estimate` and the engine share.

`LLM.chat` parses the messages (vllm/renderers/chat_utils.py `parse_chat_messages`) before the
chat template renders them: text parts joined with "\\n" for templates that take string content,
kept as parts for templates that loop over them (detected from the template's Jinja AST); None
content becomes ""; assistant tool-call arguments become a dict; developer messages become system
ones when the template does not know that role. Both `prompts.PromptCounter` (estimate, validate)
and the engine call `engine_tools` and `context_problem`, so they can never disagree on which
tools the template sees or on which prompts are too long.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from typing import Any

from pipeline.records import Problem

_BILLING_HEADER = "x-anthropic-billing-header"  # a system-prompt line vLLM drops


class PromptError(ValueError):
    """vLLM would refuse to render this conversation (its chat template or a tool call rejects it)."""


def engine_tools(request) -> list[dict[str, Any]] | None:
    """The tools the engine hands the chat template: none when tool_choice is "none"."""
    return request.tools if request.tool_choice != "none" and request.tools else None


def context_problem(prompt_tokens: int | None, max_model_len: int, *, at_least: bool = False,
                    field: str = "messages") -> Problem | None:
    """vLLM refuses a prompt that leaves no room for one completion token. `prompt_tokens` None:
    the engine refused the prompt for its length without counting it. `field`: the request's
    field that holds the prompt (its endpoint's `prompt_field`)."""
    if prompt_tokens is not None and prompt_tokens < max_model_len:
        return None
    size = ("longer than the context of" if prompt_tokens is None
            else f"{'at least ' if at_least else ''}{prompt_tokens} tokens and the context is")
    return Problem("context_length_exceeded",
                   f"the prompt is {size} {max_model_len} tokens (prompt + at least one completion "
                   f"token); shorten the {'conversation' if field == 'messages' else field} or raise "
                   "--max-model-len", field)


def template_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """A chat request's chat template arguments, as vLLM's server makes them (ChatCompletionRequest
    .build_chat_params): its chat_template_kwargs, its reasoning_effort over them, and
    enable_thinking (false for effort "none") where it sets reasoning_effort and no enable_thinking."""
    kwargs = dict(params.get("chat_template_kwargs") or {})
    effort = params.get("reasoning_effort")
    if effort is not None:
        kwargs["reasoning_effort"] = effort
        kwargs.setdefault("enable_thinking", effort != "none")
    return kwargs


def conversation(messages: list[dict[str, Any]], content_format: str = "string", *, developer_role: bool = True,
                 image_token: str = "<image>", audio_token: str = "<|AUDIO|>") -> list[dict[str, Any]]:
    """The messages as vLLM hands them to the chat template. Image and input_audio parts:
    {"type": "image"} and {"type": "audio"} for templates that loop over parts; for string
    templates, one `image_token` (`audio_token`) line per image (audio) before the text (vLLM's
    placeholders)."""
    tokens = {"image": image_token, "audio": audio_token}
    conv = []
    for m in messages:
        role = m["role"]
        texts = _texts(m.get("content"), role)
        content: Any = "\n".join(
            [tokens[extra["type"]] for t, extra in texts if t is None] + [t for t, _ in texts if t is not None]
        )
        if content_format == "openai" and role != "tool":
            content = [extra if t is None else {"type": "text", "text": t, **extra} for t, extra in texts]
        msg: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant":
            if m.get("tool_calls") is not None:
                msg["tool_calls"] = [_tool_call(c) for c in m["tool_calls"]]
                if not msg["tool_calls"]:
                    del msg["tool_calls"]
            if m.get("reasoning") is not None:
                msg["reasoning"] = msg["reasoning_content"] = m["reasoning"]
        elif role == "tool" and "tool_call_id" in m:
            msg["tool_call_id"] = m["tool_call_id"]
        for key in ("name", "task"):
            if isinstance(m.get(key), str):
                msg[key] = m[key]
        if role == "developer":
            msg["tools"] = m.get("tools")
        conv.append(msg)
    if not developer_role and any(m["role"] == "developer" for m in conv):
        conv = _developer_as_system(conv)
    return conv


_MEDIA = {"image_url": "image", "input_audio": "audio"}  # a part's type, and what the template sees


def _texts(content: Any, role: str) -> list[tuple[str | None, dict[str, Any]]]:
    """The text parts of a message's content, with any extra keys of each part; (None, {"type":
    "image"}) for an image, (None, {"type": "audio"}) for an input_audio part."""
    if content is None:
        return []
    if isinstance(content, str):
        parts = [(content, {})]
    else:
        parts = [
            (None, {"type": _MEDIA[p["type"]]})
            if p["type"] in _MEDIA
            else (p["text"], {k: v for k, v in p.items() if k not in ("type", "text")})
            for p in content
        ]
    if role != "system":
        return parts
    kept = []  # vLLM drops this per-request header line from system prompts, for the prefix cache
    for text, extra in parts:
        if text is not None and text.startswith(_BILLING_HEADER):
            text = text.partition("\n")[2]
            if not text:
                continue
        kept.append((text, extra))
    return kept


def image_parts(messages: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(param, part) of every image_url part of a conversation, in order."""
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.get("type") == "image_url":
                    yield f"messages[{i}].content[{j}].image_url", part


def audio_parts(messages: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(param, part) of every input_audio part of a conversation, in order."""
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.get("type") == "input_audio":
                    yield f"messages[{i}].content[{j}].input_audio", part


def image_urls(messages: list[dict[str, Any]]) -> list[str]:
    """The URLs (data: URIs, once intake has checked them) of a conversation's images, in order."""
    return [part["image_url"]["url"] for _, part in image_parts(messages)]


def audio_data(messages: list[dict[str, Any]]) -> list[str]:
    """The base64 data of a conversation's input_audio parts, in order."""
    return [part["input_audio"]["data"] for _, part in audio_parts(messages)]


def media_bytes(messages: list[dict[str, Any]]) -> int:
    """The characters of a conversation's media URLs (checked images are data: URIs): what a request
    holding them weighs in memory, beyond its text."""
    return sum(len(url) for url in image_urls(messages) if isinstance(url, str)) if messages else 0


def _tool_call(call: Any) -> dict[str, Any]:
    """A tool call with its arguments as a dict: what tool-use templates expect (vLLM coerces
    missing, invalid or non-object JSON to {})."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or call.get("type", "function") != "function":
        raise PromptError("chat completions only support assistant tool_calls of type 'function'")
    args = fn.get("arguments")
    if isinstance(args, str) and args:
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            args = None
    return {**call, "function": {**fn, "arguments": args if isinstance(args, dict) else {}}}


def _developer_as_system(conv: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Developer messages become system messages, all merged into one first message."""
    conv = [{k: v for k, v in {**m, "role": "system"}.items() if k != "tools"} if m["role"] == "developer" else m
            for m in conv]
    if not any(m["role"] == "system" for m in conv[1:]):
        return conv
    texts = []
    for m in conv:
        if m["role"] == "system":
            c = m.get("content", "")
            c = "\n".join(p["text"] for p in c) if isinstance(c, list) else c
            if c:
                texts.append(c)
    return [{"role": "system", "content": "\n\n".join(texts)}, *(m for m in conv if m["role"] != "system")]


# ---- the template's content format, detected as vLLM does (renderers/hf.py) --------------------
def content_format(template: str) -> str:
    """'openai' when the template loops over a message's content (parts stay parts), else
    'string' (parts are joined). vLLM's Jinja-AST detection, which cannot be imported from vLLM
    without torch."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        ast = _compile_jinja_template(template).environment.parse(template)
        return "openai" if _loops_over_content(ast) else "string"
    except Exception:  # vLLM's default when the template cannot be analysed
        return "string"


def _is_name(node, var) -> bool:
    from jinja2 import nodes

    return isinstance(node, nodes.Name) and node.ctx == "load" and node.name == var


def _access(node, var, key=None) -> bool:
    """`var` (or `var[key]` / `var.key`), also through filters, tests and slices."""
    from jinja2 import nodes

    if isinstance(node, (nodes.Filter, nodes.Test)):
        return node.node is not None and _access(node.node, var, key)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice):
        return _access(node.node, var, key)
    if key is None:
        return _is_name(node, var)
    if isinstance(node, nodes.Getitem):
        return _is_name(node.node, var) and isinstance(node.arg, nodes.Const) and node.arg.value == key
    return isinstance(node, nodes.Getattr) and _is_name(node.node, var) and node.attr == key


def _target(loop) -> str:
    from jinja2 import nodes

    if not isinstance(loop.target, nodes.Name):
        raise TypeError("unpacking loop target")  # vLLM's assertion: the template is not analysed
    return loop.target.name


def _loops_over_content(ast) -> bool:
    from jinja2 import nodes

    access, target = _access, _target

    # Names bound to the messages (or a slice of them), then the loops over those names.
    names, todo = {"messages"}, deque(["messages"])
    while todo:
        var = todo.popleft()
        for assign in ast.find_all(nodes.Assign):
            if access(assign.node, var):
                if not isinstance(assign.target, nodes.Name):
                    raise TypeError("unpacking assignment")
                if assign.target.name not in names:
                    names.add(assign.target.name)
                    todo.append(assign.target.name)
    message_vars = [target(loop) for loop in ast.find_all(nodes.For) if any(access(loop.iter, v) for v in names)]

    def is_content(node) -> bool:
        return any(access(node, v, "content") for v in message_vars)

    # Macro parameters that receive message.content, and the loops inside macros.
    macro_params: dict[int, set[str]] = {}
    in_macro: set[int] = set()
    for macro in ast.find_all(nodes.Macro):
        arg_names = [a.name for a in macro.args]
        params = set()
        for call in ast.find_all(nodes.Call):
            if isinstance(call.node, nodes.Name) and call.node.name == macro.name:
                params |= {arg_names[i] for i, a in enumerate(call.args[:len(arg_names)]) if is_content(a)}
                params |= {k.key for k in call.kwargs if k.key in arg_names and is_content(k.value)}
        for loop in macro.find_all(nodes.For):
            in_macro.add(id(loop))
            if params:
                macro_params[id(loop)] = params
    for loop in ast.find_all(nodes.For):
        over_name = isinstance(loop.iter, nodes.Name)
        if (is_content(loop.iter)
                or (over_name and loop.iter.name in macro_params.get(id(loop), ()))
                or (over_name and id(loop) not in in_macro and loop.iter.name == "content")):
            target(loop)
            return True
    return False


# ---- the context length vLLM derives ----------------------------------------------------------

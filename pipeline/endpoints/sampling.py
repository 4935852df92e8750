"""The body fields chat and completions share (sampling, `user`, unknown fields), checked and kept
under their OpenAI names in the normalized body; each endpoint file adds its own."""

from __future__ import annotations

import math
import re
from typing import Any

from pipeline.records import Invalid, is_text, names_list, short

MAX_STOP = 16
MAX_TOP_LOGPROBS = 20
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
# Fields of the chat API that are accepted and have no effect on a batch run.
ACCEPTED_NO_EFFECT = {
    "stream": "a batch has no stream: the whole completion is written as one row",
    "stream_options": "a batch has no stream",
    "parallel_tool_calls": None,
    "metadata": None,
    "store": None,
    "service_tier": None,
}
MAX_UNKNOWN_FIELDS = 20  # kept per request: a row with a million unknown keys stays small


def sampling(body: dict[str, Any], ctx: Any, numeric: Any) -> dict[str, Any]:
    """The sampling fields chat and completions share, checked, under their OpenAI names."""
    params: dict[str, Any] = {}
    for name, spec in NUMERIC_PARAMS.items():
        if name in numeric and body.get(name) is not None:
            params[name] = number(name, body[name], *spec)
    if body.get("n") is not None:
        params["n"] = number("n", body["n"], int, 1, ctx.max_n, True, True)
    if body.get("stop") is not None:
        params["stop"] = _stop(body["stop"])
    if body.get("logit_bias") is not None:
        params["logit_bias"] = _logit_bias(body["logit_bias"])
    return params


def user_field(body: dict[str, Any]) -> str | None:
    """The body's `user`, checked."""
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise Invalid("invalid_parameter", "user must be a string", "user")
    if user is not None and not is_text(user):
        raise Invalid("invalid_utf8", "user holds a lone surrogate (\\ud800-\\udfff), which is not text", "user")
    return user


def unknown_fields(body: dict[Any, Any], warnings: list[str], known: set[str]) -> tuple[str, ...]:
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


def number(name: str, value: Any, kind: type, lo: float, hi: float, lo_in: bool, hi_in: bool):
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


def _logit_bias(bias: Any) -> dict[str, float]:
    """Token ids (as JSON object keys: strings of digits) to biases."""
    if not isinstance(bias, dict):
        raise Invalid("invalid_parameter", "logit_bias must map token ids to numbers", "logit_bias")
    out = {}
    for key, value in bias.items():
        if (not isinstance(key, str) or not _TOKEN_ID.match(key) or isinstance(value, bool)
                or not isinstance(value, (int, float)) or not -100 <= value <= 100):
            raise Invalid("invalid_parameter", f"logit_bias entry {short(key)}: {short(value)} must be a "
                          "token id (digits) and a number in [-100, 100]", "logit_bias")
        out[str(int(key))] = float(value)
    return out

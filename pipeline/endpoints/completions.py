"""Completions (`/v1/completions`): one prompt, no chat template, as OpenAI's and vLLM's
completions API; its result line is OpenAI's `text_completion` (docs/endpoints.md)."""

from __future__ import annotations

import json
import re
from typing import Any

from pipeline.endpoints.base import (
    NO_COLUMNS,
    OPENAI_PREFIX,
    QUERY,
    Endpoint,
    Origin,
    served_model,
    usage,
)
from pipeline.endpoints.sampling import (
    ACCEPTED_NO_EFFECT,
    MAX_TOP_LOGPROBS,
    NUMERIC_PARAMS,
    number,
    sampling,
    unknown_fields,
    user_field,
)
from pipeline.records import Invalid, Request, is_text, is_token_ids, kind_of, short

MAX_TOKENS = 16  # a completions request's max_tokens when it sets none (OpenAI, vLLM)

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


def parse(body: dict[str, Any], origin: Origin, ctx: Any, warnings: list[str]) -> Request:
    """A completions body: one prompt (a string or token ids) and chat's sampling fields;
    `logprobs` is the number of alternatives per token, as in OpenAI's completions API. Its
    normalized body: the prompt, then every field the row set (max_tokens 16 where it sets none)."""
    prompt = _prompt(body.get("prompt"))
    params = sampling(body, ctx, COMPLETIONS_FIELDS)
    if body.get("logprobs") is not None:
        params["logprobs"] = number("logprobs", body["logprobs"], int, 0, MAX_TOP_LOGPROBS, True, True)
    for name, unset, hint in UNSUPPORTED_COMPLETIONS_FIELDS:
        if body.get(name) not in (None, unset):
            raise Invalid("unsupported_parameter", f"{name}: {json.dumps(body[name], default=str)[:60]} is not "
                          f"supported: vLLM's offline engine cannot honour it. Hint: drop {name}{hint}", name)
    unknown = unknown_fields(body, warnings, COMPLETIONS_FIELDS)
    user = user_field(body)
    normalized = {"prompt": prompt, **params, **({"user": user} if user is not None else {})}
    return origin.request(COMPLETIONS, normalized, warnings, unknown)


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


def prompts(request: Request) -> list[Any]:
    return [request.body["prompt"]]


def columns(request: Request, result: Any) -> dict[str, Any]:
    return {"choices": result.choices, **NO_COLUMNS}


def answers(row: dict[str, Any]) -> bool:
    return row.get("input_shape") == COMPLETIONS.shape


def response_body(row: dict[str, Any]) -> dict[str, Any]:
    """A completions row as OpenAI's text_completion response: each choice's text."""
    choices = [{"index": c["index"], "text": c["content"], "logprobs": _completion_logprobs(c.get("logprobs")),
                "finish_reason": c["finish_reason"]} for c in row["choices"]]
    return {"id": f"cmpl-{row['custom_id']}", "object": "text_completion", "model": served_model(row),
            "choices": choices, "usage": usage(row)}


def _completion_logprobs(logprobs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The row's per-token logprobs (chat's form) in the completions API's form: parallel lists
    of tokens, their logprobs, their alternatives and their offsets in the text."""
    if not logprobs:
        return None
    tokens = logprobs["content"] or []
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t["token"])
    return {"tokens": [t["token"] for t in tokens], "token_logprobs": [t["logprob"] for t in tokens],
            "top_logprobs": [{a["token"]: a["logprob"] for a in t["top_logprobs"] or []} for t in tokens],
            "text_offset": offsets}


COMPLETIONS = Endpoint(
    name="completions", runner="generate", url="/v1/completions",
    urls=re.compile(OPENAI_PREFIX + "/completions" + QUERY),
    shape="openai-completions", title="OpenAI Batch completions lines", prompt_field="prompt", parse=parse,
    columns=columns, answers=answers, response_body=response_body, prompts=prompts, default_max_tokens=MAX_TOKENS,
)

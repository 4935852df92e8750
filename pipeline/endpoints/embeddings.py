"""Embeddings (`/v1/embeddings`): OpenAI's body, vectors from vLLM's pooling runner; a row holds
them in `embedding` (one input) or `embeddings` (a list of inputs), docs/endpoints.md."""

from __future__ import annotations

import base64
import re
from typing import Any

from pipeline.endpoints.base import (
    MAX_INPUTS,
    NO_COLUMNS,
    OPENAI_PREFIX,
    QUERY,
    Endpoint,
    Origin,
    pooling_request,
    served_model,
)
from pipeline.records import Invalid, Request, embedding_inputs, is_token_ids, kind_of, short

FIELDS = {"model", "input", "dimensions", "encoding_format", "user"}
ENCODING_FORMATS = ("float", "base64")


def embeddings_input(value: Any) -> Any:
    """The `input` of an embeddings body, checked: a non-empty string, a list of them, a list of
    token ids, or a list of token-id lists."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and len(value) <= MAX_INPUTS:
        if all(isinstance(v, str) and v for v in value):
            return value
        if all(is_token_ids(v) for v in value) or is_token_ids(value):
            return value
    raise Invalid("invalid_input", f"input must be a non-empty string, a list of at most {MAX_INPUTS} "
                  f"non-empty strings, a list of token ids or a list of token-id lists; got {kind_of(value)} "
                  f"{short(value, 40)}", "input")


def parse(body: dict[str, Any], origin: Origin, ctx: Any, warnings: list[str]) -> Request:
    """An embeddings body (its model checked) as a Request; its normalized body: `input`, then
    `dimensions`, `encoding_format` (base64 only: floats are the default) and `user` where set."""
    normalized: dict[str, Any] = {}
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise Invalid("invalid_parameter", f"dimensions must be a positive integer, got {short(dimensions)}",
                          "dimensions")
        normalized["dimensions"] = dimensions
    fmt = body.get("encoding_format")
    if fmt is not None:
        if fmt not in ENCODING_FORMATS:
            raise Invalid("unsupported_parameter", f"encoding_format must be 'float' or 'base64', got "
                          f"{short(fmt)}. Hint: drop encoding_format for floats", "encoding_format")
        if fmt == "base64":  # the row keeps floats; --format openai writes the base64 (response_body)
            normalized["encoding_format"] = fmt
    normalized = {"input": embeddings_input(body.get("input")), **normalized}
    return pooling_request(body, FIELDS, EMBEDDINGS, normalized, origin, warnings)


def prompts(request: Request) -> list[Any]:
    return embedding_inputs(request.body["input"])


def template_body(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A template job's row as an embeddings body: its rendered --template-user text is the input."""
    return {"input": messages[-1]["content"]}


def columns(request: Request, result: Any) -> dict[str, Any]:
    """The `embedding` and `embeddings` columns: one vector for a line with one input, the list of
    them for a line whose input is a list."""
    if result.embeddings is None:
        return {"choices": result.choices, **NO_COLUMNS}
    fmt = request.body.get("encoding_format")
    if embedding_inputs(request.body["input"]) == [request.body["input"]]:
        return {"choices": None, **NO_COLUMNS, "embedding": result.embeddings[0], "encoding_format": fmt}
    return {"choices": None, **NO_COLUMNS, "embeddings": result.embeddings, "encoding_format": fmt}


def answers(row: dict[str, Any]) -> bool:
    return row.get("embedding") is not None or row.get("embeddings") is not None


def response_body(row: dict[str, Any]) -> dict[str, Any]:
    """An embeddings row as OpenAI's embeddings response: one `data` item per input, in order; a
    vector is a list of floats, or with encoding_format base64, as OpenAI sends it, the base64
    of its little-endian float32 bytes."""
    vectors = row["embeddings"] if row.get("embeddings") is not None else [row["embedding"]]
    encode = _base64 if row.get("encoding_format") == "base64" else (lambda v: [float(x) for x in v])
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": served_model(row),
        "usage": {"prompt_tokens": row["prompt_tokens"], "total_tokens": row["total_tokens"],
                  "estimated_cost": row["estimated_cost"]},
    }


def _base64(vector: Any) -> str:
    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


EMBEDDINGS = Endpoint(
    name="embeddings", runner="pooling", url="/v1/embeddings", urls=re.compile(OPENAI_PREFIX + "/embeddings" + QUERY),
    shape="openai-embeddings", title="OpenAI Batch embeddings lines", prompt_field="input", parse=parse,
    columns=columns, answers=answers, response_body=response_body, prompts=prompts, completes=False,
    template_body=template_body,
)

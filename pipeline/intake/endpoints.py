"""Endpoints beyond chat: OpenAI Batch lines with url `/v1/embeddings`, `/v1/completions`, and
vLLM's `/v1/score` and `/v1/rerank`, read into a `Request` whose `endpoint` names the endpoint
(see docs/endpoints.md). The completions body is validated in requests.py, with chat's sampling
fields; the embeddings, score and rerank bodies here.

One run serves one model, and a model serves the endpoints of its kind (records.ENDPOINTS):
a generative model chat and completions, a pooling (embedding, cross-encoder) model embeddings,
score and rerank. `runner_for` picks the kind a folder of request files needs, and refuses a
folder that mixes them.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.intake.reader import Scan, read_rows
from pipeline.intake.sources import InputFile
from pipeline.records import (
    ENDPOINTS,
    Invalid,
    Request,
    Source,
    is_token_ids,
    kind_of,
    names_list,
    short,
)

_OPENAI = r"^(?:/v1|/openai/v1|/openai/deployments/[^/?#]+)?"  # OpenAI's, Azure OpenAI's paths
_QUERY = r"(?:\?[^#]*)?$"
# Each endpoint's batch-line URLs: OpenAI's and Azure's forms; vLLM's (/score, /v1/score, /v2/rerank).
URL_FORMS = {
    "embeddings": re.compile(_OPENAI + "/embeddings" + _QUERY),
    "completions": re.compile(_OPENAI + "/completions" + _QUERY),
    "score": re.compile(r"^(?:/v1|/v2)?/score" + _QUERY),
    "rerank": re.compile(r"^(?:/v1|/v2)?/rerank" + _QUERY),
}
EMBEDDINGS_FIELDS = {"model", "input", "dimensions", "encoding_format", "user"}
ENCODING_FORMATS = ("float", "base64")
MAX_INPUTS = 2048  # OpenAI's limit of inputs in one embeddings request (ours for score documents)


def line_endpoint(row: dict[str, Any]) -> str | None:
    """The endpoint an OpenAI Batch line (with a body) asks for, when it is not chat's."""
    url = row.get("url")
    if not isinstance(url, str) or "body" not in row:
        return None
    return next((name for name, forms in URL_FORMS.items() if forms.match(url)), None)


def is_line_for(endpoint: str):
    """A test for OpenAI Batch lines that ask for `endpoint` (a shape's `matches`)."""
    return lambda row: line_endpoint(row) == endpoint


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


def embeddings_request(body: Any, custom_id: str, source: Source, line: int, model: str | None,
                       warnings: list[str], shape: str | None, adapter: str | None) -> Request:
    """An embeddings body (already known to be an object, its model checked) as a Request."""
    params: dict[str, Any] = {}
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise Invalid("invalid_parameter", f"dimensions must be a positive integer, got {short(dimensions)}",
                          "dimensions")
        params["dimensions"] = dimensions
    fmt = body.get("encoding_format")
    if fmt is not None:
        if fmt not in ENCODING_FORMATS:
            raise Invalid("unsupported_parameter", f"encoding_format must be 'float' or 'base64', got "
                          f"{short(fmt)}. Hint: drop encoding_format for floats", "encoding_format")
        if fmt == "base64":  # the row keeps floats; --format openai writes the base64 (output/rows.py)
            params["encoding_format"] = fmt
    return _pooling_request(body, EMBEDDINGS_FIELDS, "embeddings", embeddings_input(body.get("input")), params,
                            custom_id, source, line, model, warnings, shape, adapter)


SCORE_PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))
SCORING_FIELDS = {"model", "user", "top_n", "query", "documents", *(f for pair in SCORE_PAIRS for f in pair)}


def score_texts(value: Any, field: str, *, many: bool = True) -> list[str]:
    """A score or rerank body's texts: a non-empty string, or (`many`) a list of them."""
    if isinstance(value, str) and value:
        return [value]
    if many and isinstance(value, list) and value and len(value) <= MAX_INPUTS and all(
            isinstance(v, str) and v for v in value):
        return value
    code = "unsupported_content" if isinstance(value, dict) or (
        isinstance(value, list) and any(isinstance(v, dict) for v in value)) else "invalid_input"
    takes = f"a non-empty string or a list of at most {MAX_INPUTS} of them" if many else "a non-empty string"
    raise Invalid(code, f"{field} must be {takes} (text only: multimodal score inputs are not supported), "
                  f"got {kind_of(value)} {short(value, 40)}", field)


def scoring_request(body: Any, custom_id: str, source: Source, line: int, model: str | None,
                    warnings: list[str], shape: str | None, adapter: str | None, endpoint: str) -> Request:
    """A score body ({queries, documents}, or vLLM's other names for the pair: items, data_1 and
    data_2, text_1 and text_2) or a rerank body ({query, documents, top_n}) as a Request."""
    params: dict[str, Any] = {}
    if endpoint == "rerank":
        scored = {"query": score_texts(body.get("query"), "query", many=False)[0],
                  "documents": score_texts(body.get("documents"), "documents")}
        top_n = body.get("top_n")
        if top_n is not None:
            if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0:
                raise Invalid("invalid_parameter", f"top_n must be an integer >= 0 (0: every document), got "
                              f"{short(top_n)}", "top_n")
            params["top_n"] = top_n
    else:
        first, second = next((pair for pair in SCORE_PAIRS if pair[0] in body and pair[1] in body), None) or next(
            (pair for pair in SCORE_PAIRS if pair[0] in body), SCORE_PAIRS[0])
        queries, documents = score_texts(body.get(first), first), score_texts(body.get(second), second)
        if len(queries) not in (1, len(documents)):
            raise Invalid("invalid_input", f"{first} holds {len(queries)} texts and {second} {len(documents)}: "
                          f"give one text in {first} for all, or one for each text of {second} (pairs in order)", first)
        scored = {"queries": queries, "documents": documents}
    return _pooling_request(body, SCORING_FIELDS, endpoint, scored, params, custom_id, source, line, model,
                            warnings, shape, adapter)


def _pooling_request(body: dict[str, Any], fields: set[str], endpoint: str, input_: Any, params: dict[str, Any],
                     custom_id: str, source: Source, line: int, model: str | None, warnings: list[str],
                     shape: str | None, adapter: str | None) -> Request:
    """The Request of a pooling endpoint's body, its fields outside `fields` ignored with a warning."""
    unknown = sorted(k for k in body if k not in fields)
    if unknown:
        warnings.append(f"unknown field(s) ignored: {names_list(unknown)}")
    user = body.get("user") if isinstance(body.get("user"), str) else None
    return Request(custom_id, source.name, line, [], params, user=user, warnings=tuple(warnings),
                   unknown_fields=tuple(unknown[:20]), requested_model=model, shape=shape, adapter=adapter,
                   endpoint=endpoint, input=input_, file=source.index)


def runner_for(endpoints: dict[str, tuple[str, str]]) -> str:
    """The model kind (vLLM runner) for a folder whose files ask for these endpoints
    ({identity: (source_file, endpoint)}); raises ValueError for a folder that mixes kinds."""
    kinds: dict[str, list[str]] = {}
    for source, endpoint in endpoints.values():
        kinds.setdefault(ENDPOINTS[endpoint], []).append(source)
    if len(kinds) > 1:
        raise ValueError("these inputs mix generative (chat, completions) and pooling (embeddings, score, "
                         "rerank) requests ("
                         + "; ".join(f"{k}: {names_list([_tail(f) for f in sorted(v)], 3, 60)}"
                                     for k, v in sorted(kinds.items()))
                         + "), but one run serves one model, generative or pooling. Hint: run each kind "
                         "of file on its own")
    return next(iter(kinds), "generate")


def _tail(path: str, width: int = 60) -> str:
    """A path for a message, its end kept (the file's name) when it is long."""
    return path if len(path) <= width else "…" + path[-(width - 1):]


def file_endpoints(files: list[InputFile], scans: list[Scan], *, max_line_bytes: int) -> dict[str, tuple[str, str]]:
    """Each request file's endpoint, from its first row that is an object (as its shape is), keyed
    by the file's identity (two files may display alike: `caf\xe9` and `caf\xe8`, redacted URLs)."""
    found = {}
    for file, found_scan in zip(files, scans, strict=True):
        for _, row in read_rows(file, found_scan, max_line_bytes=max_line_bytes):
            if isinstance(row, dict):
                found[file.identity] = (file.display, line_endpoint(row) or "chat")
                break
    return found

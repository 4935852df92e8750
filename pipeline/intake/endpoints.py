"""Endpoints beyond chat: OpenAI Batch lines with url `/v1/embeddings`, read into a `Request`
whose `endpoint` is "embeddings" (see docs/endpoints.md).

One run serves one model, and a model serves the endpoints of its kind (records.ENDPOINTS):
a generative model chat, a pooling (embedding) model embeddings. `runner_for` picks the kind a
folder of request files needs, and refuses a folder that mixes them.
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

EMBEDDINGS_URL = "/v1/embeddings"
EMBEDDINGS_URL_FORMS = re.compile(r"^(?:/v1|/openai/v1|/openai/deployments/[^/?#]+)?/embeddings(?:\?[^#]*)?$")
EMBEDDINGS_FIELDS = {"model", "input", "dimensions", "encoding_format", "user"}
MAX_INPUTS = 2048  # OpenAI's limit of inputs in one embeddings request


def is_embeddings_line(row: dict[str, Any]) -> bool:
    """An OpenAI Batch line for the embeddings endpoint."""
    url = row.get("url")
    return isinstance(url, str) and bool(EMBEDDINGS_URL_FORMS.match(url)) and "body" in row


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
        if fmt != "float":
            raise Invalid("unsupported_parameter", f"encoding_format {short(fmt)} is not supported: vectors are "
                          "written as floats. Hint: drop encoding_format or set it to 'float'", "encoding_format")
    unknown = sorted(k for k in body if k not in EMBEDDINGS_FIELDS)
    if unknown:
        warnings.append(f"unknown field(s) ignored: {names_list(unknown)}")
    user = body.get("user") if isinstance(body.get("user"), str) else None
    return Request(custom_id, source.name, line, [], params, user=user, warnings=tuple(warnings),
                   unknown_fields=tuple(unknown[:20]), requested_model=model, shape=shape, adapter=adapter,
                   endpoint="embeddings", input=embeddings_input(body.get("input")), file=source.index)


def runner_for(endpoints: dict[str, str]) -> str:
    """The model kind (vLLM runner) for a folder whose files ask for these endpoints
    ({source_file: endpoint}); raises ValueError for a folder that mixes kinds."""
    kinds: dict[str, list[str]] = {}
    for source, endpoint in endpoints.items():
        kinds.setdefault(ENDPOINTS[endpoint], []).append(source)
    if len(kinds) > 1:
        raise ValueError("these inputs mix chat and embeddings requests ("
                         + "; ".join(f"{k}: {names_list(sorted(v), 3)}" for k, v in sorted(kinds.items()))
                         + "), but one run serves one model, generative or embedding. Hint: run each kind "
                         "of file on its own")
    return next(iter(kinds), "generate")


def file_endpoints(files: list[InputFile], scans: list[Scan], *, max_line_bytes: int) -> dict[str, str]:
    """Each request file's endpoint, from its first row that is an object (as its shape is)."""
    found = {}
    for file, found_scan in zip(files, scans, strict=True):
        for _, row in read_rows(file, found_scan, max_line_bytes=max_line_bytes):
            if isinstance(row, dict):
                found[file.display] = "embeddings" if is_embeddings_line(row) else "chat"
                break
    return found

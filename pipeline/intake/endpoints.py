"""Which endpoint a batch line and a request file ask for (by the URL forms of the registry,
pipeline/endpoints/), and which kind of model a folder of request files needs.

One run serves one model, and a model serves the endpoints of its kind (`Endpoint.runner`):
a generative model chat and completions, a pooling (embedding, cross-encoder) model embeddings,
score and rerank. `runner_for` picks the kind a folder of request files needs, and refuses a
folder that mixes them.
"""

from __future__ import annotations

from typing import Any

from pipeline.endpoints import DEFAULT, ENDPOINTS
from pipeline.intake.reader import Scan, read_rows
from pipeline.intake.sources import InputFile
from pipeline.records import names_list


def line_endpoint(row: dict[str, Any]) -> str | None:
    """The endpoint a batch line (with a body) asks for by its URL (None: no endpoint's URL)."""
    url = row.get("url")
    if not isinstance(url, str) or "body" not in row:
        return None
    return next((e.name for e in ENDPOINTS.values() if e.urls.match(url)), None)


def is_line_for(endpoint: str):
    """A test for OpenAI Batch lines that ask for `endpoint` (a shape's `matches`)."""
    return lambda row: line_endpoint(row) == endpoint


def runner_for(endpoints: dict[str, tuple[str, str]]) -> str:
    """The model kind (vLLM runner) for a folder whose files ask for these endpoints
    ({identity: (source_file, endpoint)}); raises ValueError for a folder that mixes kinds."""
    kinds: dict[str, list[str]] = {}
    for source, endpoint in endpoints.values():
        kinds.setdefault(ENDPOINTS[endpoint].runner, []).append(source)
    if len(kinds) > 1:
        raise ValueError("these inputs mix generative (chat, completions) and pooling (embeddings, score, "
                         "rerank) requests ("
                         + "; ".join(f"{k}: {names_list([_tail(f) for f in sorted(v)], 3, 60)}"
                                     for k, v in sorted(kinds.items()))
                         + "), but one run serves one model, generative or pooling. Hint: run each kind "
                         "of file on its own")
    return next(iter(kinds), DEFAULT.runner)


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
                found[file.identity] = (file.display, line_endpoint(row) or DEFAULT.name)
                break
    return found

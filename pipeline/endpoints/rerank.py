"""Rerank (`/v1/rerank`, vLLM's batch lines): one query's documents scored and ordered, most
relevant first; the row's `rerank`, as vLLM's rerank response orders it."""

from __future__ import annotations

import re
from typing import Any

from pipeline.endpoints.base import (
    NO_COLUMNS,
    QUERY,
    Endpoint,
    Origin,
    pooling_request,
    served_model,
    usage,
)
from pipeline.endpoints.score import FIELDS, score_texts
from pipeline.endpoints.score import prompts as score_prompts
from pipeline.records import Invalid, Request, score_pairs, short


def parse(body: dict[str, Any], origin: Origin, ctx: Any, warnings: list[str]) -> Request:
    """A rerank body ({query, documents, top_n}) as a Request."""
    scored = {"query": score_texts(body.get("query"), "query", many=False)[0],
              "documents": score_texts(body.get("documents"), "documents")}
    top_n = body.get("top_n")
    if top_n is not None:
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0:
            raise Invalid("invalid_parameter", f"top_n must be an integer >= 0 (0: every document), got "
                          f"{short(top_n)}", "top_n")
        scored["top_n"] = top_n
    return pooling_request(body, FIELDS, RERANK, scored, origin, warnings)


def columns(request: Request, result: Any) -> dict[str, Any]:
    """The `rerank` column, ordered as vLLM's rerank response orders it: by relevance, highest
    first (ties in document order), the first top_n when top_n is set (0: all)."""
    if result.scores is None:
        return {"choices": result.choices, **NO_COLUMNS}
    documents = request.body["documents"]
    results = sorted(({"index": i, "document": documents[i], "relevance_score": s}
                      for i, s in enumerate(result.scores)), key=lambda r: r["relevance_score"], reverse=True)
    top_n = request.body.get("top_n") or len(results)
    return {"choices": None, **NO_COLUMNS, "rerank": results[:top_n]}


def answers(row: dict[str, Any]) -> bool:
    return row.get("rerank") is not None


def response_body(row: dict[str, Any]) -> dict[str, Any]:
    """A rerank row as vLLM's rerank response: results most relevant first, each with its document."""
    results = [{"index": r["index"], "document": {"text": r["document"], "multi_modal": None},
                "relevance_score": r["relevance_score"]} for r in row["rerank"]]
    return {"id": f"rerank-{row['custom_id']}", "model": served_model(row), "usage": usage(row), "results": results}


RERANK = Endpoint(
    name="rerank", runner="pooling", url="/v1/rerank", urls=re.compile(r"^(?:/v1|/v2)?/rerank" + QUERY),
    shape="vllm-rerank", title="vLLM rerank lines", prompt_field="documents", parse=parse,
    columns=columns, answers=answers, response_body=response_body, prompts=score_prompts, pairs=score_pairs,
    completes=False,
)

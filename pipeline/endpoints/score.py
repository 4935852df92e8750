"""Score (`/v1/score`, vLLM's batch lines): pairs of texts scored by a pooling model (a
cross-encoder, or the cosine of an embedding model's vectors); the row's `scores`, one per pair."""

from __future__ import annotations

import re
from typing import Any

from pipeline.endpoints.base import (
    MAX_INPUTS,
    NO_COLUMNS,
    QUERY,
    Endpoint,
    Origin,
    pooling_request,
    served_model,
    usage,
)
from pipeline.records import Invalid, Request, kind_of, score_inputs, score_pairs, short

PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))
# The fields of a score or a rerank body (each reads its own, the other's are ignored)
FIELDS = {"model", "user", "top_n", "query", "documents", *(f for pair in PAIRS for f in pair)}


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


def parse(body: dict[str, Any], origin: Origin, ctx: Any, warnings: list[str]) -> Request:
    """A score body ({queries, documents}, or vLLM's other names for the pair: items, data_1 and
    data_2, text_1 and text_2) as a Request, whose normalized body names the pair as vLLM's
    ScoreQueriesDocumentsRequest does: {"queries": [...], "documents": [...]} (and `user`)."""
    first, second = next((pair for pair in PAIRS if pair[0] in body and pair[1] in body), None) or next(
        (pair for pair in PAIRS if pair[0] in body), PAIRS[0])
    queries, documents = score_texts(body.get(first), first), score_texts(body.get(second), second)
    if len(queries) not in (1, len(documents)):
        raise Invalid("invalid_input", f"{first} holds {len(queries)} texts and {second} {len(documents)}: "
                      f"give one text in {first} for all, or one for each text of {second} (pairs in order)", first)
    return pooling_request(body, FIELDS, SCORE, {"queries": queries, "documents": documents}, origin, warnings)


def prompts(request: Request) -> list[Any]:
    """The texts `estimate` counts, each a prompt of its own: the queries (one query once, however
    many documents it is paired with) and the documents. vLLM's server and run_batch bill an
    embedding model's score or rerank request so (the query once, then each document:
    engines/pooling.py); a cross-encoder's joined pairs are counted by models/tokens.py."""
    queries, documents = score_inputs(request)
    return [*queries, *documents]


def columns(request: Request, result: Any) -> dict[str, Any]:
    """The `scores` column: one score per pair, in pair order."""
    if result.scores is None:
        return {"choices": result.choices, **NO_COLUMNS}
    return {"choices": None, **NO_COLUMNS, "scores": result.scores}


def answers(row: dict[str, Any]) -> bool:
    return row.get("scores") is not None


def response_body(row: dict[str, Any]) -> dict[str, Any]:
    """A score row as vLLM's score response: one `data` item per pair, in order."""
    return {"id": f"score-{row['custom_id']}", "object": "list", "model": served_model(row),
            "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(row["scores"])],
            "usage": usage(row)}


SCORE = Endpoint(
    name="score", runner="pooling", url="/v1/score", urls=re.compile(r"^(?:/v1|/v2)?/score" + QUERY),
    shape="vllm-score", title="vLLM score lines", prompt_field="documents", parse=parse,
    columns=columns, answers=answers, response_body=response_body, prompts=prompts, pairs=score_pairs,
    completes=False,
)

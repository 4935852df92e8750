"""The endpoint record: all the pipeline knows of one endpoint, in one place.

An endpoint (chat completions, completions, embeddings, score, rerank) is one file in this
folder that builds one `Endpoint`, listed once in `pipeline/endpoints/__init__.py`. The other
rooms look an endpoint up by the name a request carries (`Request.endpoint`) instead of
branching on it: intake reads its lines with `urls` and `parse`, engines submit the body through
their own table keyed by the name (`SUBMIT`; tests/unit/test_registry.py checks every engine
has every endpoint), each taking the request's normalized body (`Request.body`, made once by
`parse`) as it is, the output row takes its `columns`, the `--format openai` line its
`response_body`, and `estimate` bounds its completion with `completes`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.records import Problem, Request, Source, names_list

# How vLLM names the kinds of model (its `runner` engine argument): each serves its endpoints.
RUNNERS = ("generate", "pooling")
# The Azure and OpenAI prefixes of a batch line's URL, and its optional api-version query.
OPENAI_PREFIX = r"^(?:/v1|/openai/v1|/openai/deployments/[^/?#]+)?"
QUERY = r"(?:\?[^#]*)?$"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request body came from and what the row around it said: what every endpoint's
    `parse` needs besides the body."""

    custom_id: str
    source: Source
    line: int
    model: str | None  # the model the body asks for, checked against the run (intake/requests.py)
    shape: str | None  # the input line's shape (intake/shapes.py)
    adapter: str | None  # the --lora adapter it runs with

    def request(self, endpoint: Endpoint, body: dict[str, Any], warnings: list[str],
                unknown_fields: tuple[str, ...] = ()) -> Request:
        """The Request of `endpoint` that carries `body`, the normalized body its `parse` made (the
        endpoint's default max_tokens added where the body sets no bound)."""
        if endpoint.default_max_tokens is not None and "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = endpoint.default_max_tokens
        return Request(self.custom_id, self.source.name, self.line, body, warnings=tuple(warnings),
                       unknown_fields=unknown_fields, requested_model=self.model, shape=self.shape,
                       adapter=self.adapter, endpoint=endpoint.name, file=self.source.index)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint, as every room needs it."""

    name: str  # as `Request.endpoint` names it: "chat", "completions", ...
    runner: str  # the kind of model that serves it (RUNNERS)
    url: str  # its batch lines' URL, for messages: "/v1/embeddings"
    urls: re.Pattern[str]  # every URL form its batch lines may carry (Azure's, vLLM's)
    shape: str  # the name of its batch lines' shape (intake/shapes.py)
    title: str  # how messages name its lines: "OpenAI Batch embeddings lines"
    prompt_field: str  # the body field that holds its prompt (or texts): where a too-long one is named
    # (body, origin, the run's intake.requests.Context, warnings to add to) -> Request, which
    # carries the normalized body this makes (the one every engine validates and runs); raises Invalid
    parse: Callable[[dict[str, Any], Origin, Any, list[str]], Request]
    # (request, engine Result) -> its own output columns (COLUMNS, and `choices`)
    columns: Callable[[Request, Any], dict[str, Any]]
    answers: Callable[[dict[str, Any]], bool]  # is this output row an answer of this endpoint?
    response_body: Callable[[dict[str, Any]], dict[str, Any]]  # an output row as its response body
    # The plain prompts `estimate` tokenizes as vLLM does (special tokens, no chat template): a
    # completion's prompt, the inputs of an embeddings request, the texts a score or rerank request
    # embeds on an embedding model (each query once, each document). None: the conversation,
    # rendered with the model's chat template (chat).
    prompts: Callable[[Request], list[Any]] | None = None
    # The (query, document) pairs it scores, which a cross-encoder joins into one prompt each
    # (estimate counts those instead of `prompts` on a cross-encoder). None: it scores no pairs.
    pairs: Callable[[Request], list[tuple[Any, Any]]] | None = None
    default_max_tokens: int | None = None  # max_tokens when the body sets none (None: the context)
    # A template job's rendered messages as this endpoint's body (None: a chat body of them)
    template_body: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    completes: bool = True  # it generates tokens (estimate bounds them); False: vectors or scores
    converses: bool = False  # it holds a conversation: thinking, tools, a repair's follow-up turn
    # How many engine prompts one request makes, each with its own context and token bound
    # (speech: one per audio clip, their tokens alike). None: one.
    parts: Callable[[Request], int] | None = None

    def unsupported(self, runner: str) -> Problem | None:
        """Why a request for this endpoint cannot run on a model of kind `runner` (None: it can)."""
        if runner == self.runner:
            return None
        what = {"generate": "a generative model (--runner generate)",
                "pooling": "an embedding or cross-encoder model (--runner pooling; --convert embed turns a "
                           "causal LM into an embedding model)"}
        kind = "an embedding (pooling)" if runner == "pooling" else "a generative"
        return Problem("unsupported_endpoint", f"{self.name} requests need {what[self.runner]}, and this run's "
                       f"model is {kind} model. Hint: one run serves one model: put these requests in a run of "
                       "their own")


# The output columns that belong to one endpoint or another: each endpoint's `columns` sets
# those it fills and leaves the rest null.
COLUMNS = ("embedding", "embeddings", "encoding_format", "scores", "rerank", "audio_segments", "audio_language")
NO_COLUMNS: dict[str, Any] = dict.fromkeys(COLUMNS)


MAX_INPUTS = 2048  # OpenAI's limit of inputs in one embeddings request (ours for score documents)


def pooling_request(body: dict[str, Any], fields: set[str], endpoint: Endpoint, normalized: dict[str, Any],
                    origin: Origin, warnings: list[str]) -> Request:
    """The Request of a pooling endpoint's body (`normalized`: its inputs and fields as checked, the
    `user` added here), its fields outside `fields` ignored with a warning."""
    unknown = sorted(k for k in body if k not in fields)
    if unknown:
        warnings.append(f"unknown field(s) ignored: {names_list(unknown)}")
    if isinstance(body.get("user"), str):
        normalized["user"] = body["user"]
    return origin.request(endpoint, normalized, warnings, tuple(unknown[:20]))


def served_model(row: dict[str, Any]) -> str:
    """The model a response body names: the adapter that ran the row, else the model."""
    return row.get("served_model") or row["model"]


def usage(row: dict[str, Any]) -> dict[str, Any]:
    """A response body's `usage`: the row's tokens and its estimated cost."""
    return {"prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
            "total_tokens": row["total_tokens"], "estimated_cost": row["estimated_cost"]}

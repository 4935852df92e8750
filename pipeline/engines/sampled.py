"""Identical sampled prompts sent once, with `n`: rows whose requests differ in nothing the
engine sees but their `n`, and whose answer sampling decides (not determined: identical.py
answers those), go to the engines as one request whose `n` is the sum of theirs; the answer's
choices are split back, in order, into each row's own `n` choices.

The same in distribution: vLLM samples every choice of an `n` request as a sequence of its own
(its V1 engine fans the request out into `n` child requests with the same sampling parameters),
so k rows with n each and one request with k x n draw the same. A request is merged when:
- its endpoint is chat or completions (embeddings, score and rerank are determined);
- it is not determined (no temperature 0, no seed of its own: those are generated once);
- its body, `n` aside, is the same (bodies.body_key: endpoint, adapter, and the normalized body
  less `user`: messages or prompt, every sampling parameter, tools, tool choice, response
  format); logprobs, stop, penalties, logit_bias, response formats and tools are per choice in
  vLLM, so they do not stop a merge;
  `best_of` would (the best of k x b is not k bests of b), but intake refuses a best_of over 1;
- the merged `n` stays at most `max_n` (MAX_N = 32 by default): a group that would pass it is
  sent as it is and a new one begins.

Each row keeps its id, its own rows, warnings and source line; its usage is billed as its own
request would be: the prompt's tokens in full, its own choices' completion (and thinking)
tokens, the engine's cached tokens; cost follows. An engine error on the merged request is
each member's error row. The report's `identical` block says how many rows went in merged
requests, how many requests carried them and the prompt tokens sent once instead of per row.

Bounded memory: at most `window` requests, and `window_bytes` of their images' data, are held
back waiting for identical ones (the oldest group is sent first when the window is full; every
group at the end of the stream). Prefix and sorted order put identical prompts side by side; in
input order, copies further apart than the window are sent in separate requests.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any, Protocol

from pipeline.endpoints import ENDPOINTS
from pipeline.engines.base import Result
from pipeline.engines.bodies import body_key, determined
from pipeline.models.render import media_bytes
from pipeline.records import Problem, Request

WINDOW = 4096
WINDOW_BYTES = 64 * 1024 * 1024  # image data (data: URIs) held back at most, whatever the count
MAX_N = 32


class _Results(Protocol):
    def results(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Result] | None]: ...


def mergeable(req: Request, max_n: int = MAX_N) -> bool:
    """Whether the request may share one `n` request with identical ones (see the module's doc)."""
    endpoint = ENDPOINTS[req.endpoint]  # a speech request's clips are engine requests of their own: no n
    return (endpoint.completes and endpoint.parts is None and not determined(req) and req.n < max_n
            and req.body.get("best_of", 1) == 1)


def split(members: list[Request], res: Result) -> Iterator[tuple[Request, Result]]:
    """The merged request's answer as each member's own: its n choices, their tokens."""
    total = sum(r.n for r in members)
    if res.error is None and len(res.choices) != total:
        res = Result(res.seq, error=Problem("output_error", f"the engine gave {len(res.choices)} choices to a "
                                            f"request of n={total} (rows sent as one request)"),
                     prompt_tokens=res.prompt_tokens, warnings=res.warnings)
    if res.error is not None:
        for req in members:
            yield req, replace(res)
        return
    tokens = _per_choice(res.choice_tokens, res.completion_tokens, total)
    thinking = _per_choice(res.choice_reasoning_tokens, res.reasoning_tokens, total)
    start = 0
    for req in members:
        end = start + req.n
        choices = [{**c, "index": i} for i, c in enumerate(res.choices[start:end])]
        yield req, replace(res, choices=choices, completion_tokens=sum(tokens[start:end]),
                           reasoning_tokens=None if res.reasoning_tokens is None else sum(thinking[start:end]),
                           choice_tokens=tokens[start:end],
                           choice_reasoning_tokens=None if res.reasoning_tokens is None else thinking[start:end])
        start = end


def _per_choice(counts: list[int] | None, total: int | None, n: int) -> list[int]:
    """Each choice's tokens: the engine's own counts, or the total shared as evenly as it goes."""
    if counts is not None and len(counts) == n:
        return list(counts)
    whole, rest = divmod(total or 0, n)
    return [whole + (i < rest) for i in range(n)]


class SampledOnce:
    """Wraps a dispatcher's `results`: identical sampled requests go as one request with `n`."""

    def __init__(self, enabled: bool = True, window: int = WINDOW, max_n: int = MAX_N,
                 window_bytes: int = WINDOW_BYTES):
        self.enabled, self.window, self.max_n, self.window_bytes = enabled, window, max_n, window_bytes
        self.groups: collections.OrderedDict[bytes, list[Request]] = collections.OrderedDict()
        self.held = 0  # requests waiting in `groups`
        self.held_bytes = 0  # ... and their images' bytes
        self.sent: dict[int, tuple[Request, list[Request]]] = {}  # id(merged request) -> it, its rows
        self.rows = 0  # rows sent in a merged request
        self.requests = 0  # merged requests sent
        self.prompt_tokens = 0  # prompt tokens of merged rows beyond each merged request's first

    def results(self, dispatcher: _Results, requests: Iterable[Request]) -> Iterator[tuple[Request, Result] | None]:
        """`dispatcher.results(requests)`, identical sampled requests sent as one."""
        if not self.enabled:
            yield from dispatcher.results(requests)
            return
        for done in dispatcher.results(self._merged(requests)):
            entry = self.sent.pop(id(done[0]), None) if done is not None else None
            if entry is None or entry[0] is not done[0]:
                yield done
                continue
            members = entry[1]
            self.prompt_tokens += (done[1].prompt_tokens or 0) * (len(members) - 1)
            yield from split(members, done[1])

    def _merged(self, requests: Iterable[Request]) -> Iterator[Request]:
        """The requests for the engines: mergeable ones held in groups until full, pushed out
        of the window, or the stream ends."""
        for req in requests:
            if not mergeable(req, self.max_n):
                yield req
                continue
            key = body_key(req, without=("n",))
            group = self.groups.get(key)
            if group is not None and sum(r.n for r in group) + req.n > self.max_n:
                yield self._send(key)
                group = None
            if group is None:
                group = self.groups[key] = []
            group.append(req)
            self.held += 1
            self.held_bytes += media_bytes(req.messages)
            if sum(r.n for r in group) == self.max_n:
                yield self._send(key)
            while self.held > self.window or (self.held_bytes > self.window_bytes and self.groups):
                yield self._send(next(iter(self.groups)))
        while self.groups:
            yield self._send(next(iter(self.groups)))

    def _send(self, key: bytes) -> Request:
        group = self.groups.pop(key)
        self.held -= len(group)
        self.held_bytes -= sum(media_bytes(r.messages) for r in group)
        if len(group) == 1:
            return group[0]
        merged = group[0].with_body(n=sum(r.n for r in group))
        self.sent[id(merged)] = (merged, group)
        self.rows += len(group)
        self.requests += 1
        return merged

    def describe(self) -> dict[str, Any]:
        """For the report's `identical` block."""
        return {"sampled_rows_merged": self.rows, "sampled_merged_requests": self.requests,
                "sampled_prompt_tokens_sent_once": self.prompt_tokens}

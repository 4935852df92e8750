"""Identical work done once: requests whose bodies are the same and whose answer is determined
by them are generated once, and the answer is written to each of their rows.

A request is determined by its body where sampling cannot make two answers differ: temperature
0 (greedy), or a `seed` of its own (vLLM seeds each such request's sampler alone, so the same
seed, prompt and parameters give the same tokens), or an embeddings, score or rerank request.
Its key is a digest of everything the engine sees (bodies.body_key): endpoint, adapter and the
normalized body but its `user` (messages or prompt or input, sampling parameters with seed, n
and max_tokens, tools, tool choice and response format).
Rows, ids and warnings stay each row's own (output/rows.py builds every row from its own
request); usage and cost are each row's as if it had been sent (billed per row), the report
says how many rows were answered this way and the tokens the engines did not compute for them.

Identical prompts with sampling (neither greedy nor seeded) go as one request with `n`
(sampled.py); the same switch (`--no-identical-once`) turns both off.

Bounded memory: at most `window` answers are remembered (the latest), and at most `window`
requests wait for an identical one in flight; past that a request is sent as it is. Prefix and
sorted order put identical requests side by side (their keys are equal), so the window is wide
enough there; in input order, identical requests further apart than the window are sent again.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any, Protocol

from pipeline.engines.base import Result
from pipeline.engines.bodies import body_key, determined
from pipeline.engines.sampled import SampledOnce
from pipeline.records import Request

WINDOW = 1 << 16


class _Results(Protocol):
    def results(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Result] | None]: ...


class Identical:
    """Wraps a dispatcher's `results`: identical determined requests go to the engines once."""

    def __init__(self, enabled: bool = True, window: int = WINDOW, sampled: SampledOnce | None = None):
        self.enabled, self.window = enabled, window
        # identical sampled requests: sent as one with `n` (sampled.py), turned off with this
        self.sampled = sampled if sampled is not None else SampledOnce(enabled)
        self.answers: collections.OrderedDict[bytes, Result] = collections.OrderedDict()
        self.waiting: dict[bytes, list[Request]] = {}
        self.held = 0  # requests waiting in `waiting`
        self.ready: collections.deque[tuple[Request, Result]] = collections.deque()
        self.rows = 0  # rows answered from an identical request
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def results(self, dispatcher: _Results, requests: Iterable[Request]) -> Iterator[tuple[Request, Result] | None]:
        """`dispatcher.results(requests)`, each identical determined request sent once."""
        if not self.enabled:
            yield from dispatcher.results(requests)
            return
        for done in self.sampled.results(dispatcher, self._leaders(requests)):
            yield from self._drain()
            if done is not None:
                req, res = done
                key = body_key(req) if determined(req) else None
                if key is not None:
                    self._remember(key, res)
                    for other in self.waiting.pop(key, []):
                        self.held -= 1
                        yield self._copy(other, res)
            yield done
        yield from self._drain()

    def _leaders(self, requests: Iterable[Request]) -> Iterator[Request]:
        """The requests the engines must answer; the others wait for theirs, or are answered."""
        for req in requests:
            key = body_key(req) if determined(req) else None
            if key is None:
                yield req
            elif key in self.answers:
                self.answers.move_to_end(key)
                self.ready.append((req, self.answers[key]))
            elif key in self.waiting and self.held < self.window:
                self.waiting[key].append(req)
                self.held += 1
            else:
                self.waiting.setdefault(key, [])
                yield req

    def _remember(self, key: bytes, res: Result) -> None:
        self.answers[key] = res
        self.answers.move_to_end(key)
        while len(self.answers) > self.window:
            self.answers.popitem(last=False)

    def _drain(self) -> Iterator[tuple[Request, Result]]:
        while self.ready:
            req, res = self.ready.popleft()
            yield self._copy(req, res)

    def _copy(self, req: Request, res: Result) -> tuple[Request, Result]:
        self.rows += 1
        self.prompt_tokens += res.prompt_tokens or 0
        self.completion_tokens += res.completion_tokens or 0
        return req, replace(res, seconds=0.0)

    def describe(self) -> dict[str, Any]:
        """For the report: how much identical work was done once."""
        return {"identical": {"enabled": self.enabled, "rows_answered_once": self.rows,
                              "prompt_tokens_not_computed": self.prompt_tokens,
                              "completion_tokens_not_computed": self.completion_tokens,
                              **self.sampled.describe()}}

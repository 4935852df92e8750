"""What each engine's prefix cache should serve, against what it served.

The order (intake/order.py) puts requests that share a prompt prefix side by side and marks
their groups; the dispatcher hands a group to one engine (and, once the input is all handed out,
lets an idle engine take the later half of another's queue). The plan follows each engine's
stream as the dispatcher hands it over: a request is predicted to be served from the cache for
the whole blocks its prefix key shares with the request handed to the same engine before it
(the key is the order's: one digest per 256 characters of the conversation). Each answer says
what the engine really served (`cached_tokens`). The report puts both side by side per engine,
as shares of the prompt (characters predicted, tokens served: the units differ, the shares
compare), and says where an engine served clearly less than predicted (its cache held less than
its groups' prefixes: evictions, or a group split over engines) or clearly more (its cache held
prefixes from further back than the request before).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.engines.base import Result
from pipeline.models.prefix import DIGEST, shared_blocks
from pipeline.records import Request

DIFFERS = 0.15  # shares of the prompt further apart than this are reported as a difference


@dataclass
class EngineTally:
    requests: int = 0
    groups: int = 0  # prefix groups handed to it (a group met again after another counts again)
    key_blocks: int = 0  # blocks of its requests' prefix keys
    predicted_blocks: int = 0  # ... shared with the request handed to it before
    prompt_tokens: int = 0  # of its answers
    cached_tokens: int = 0  # ... served from its prefix cache
    reported: bool = False  # the engine reports cached tokens at all

    def describe(self, engine: int) -> dict[str, Any]:
        predicted = self.predicted_blocks / self.key_blocks if self.key_blocks else 0.0
        served = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        out = {"engine": engine, "requests": self.requests, "groups": self.groups,
               "predicted_share": round(predicted, 4),
               "cached_share": round(served, 4) if self.reported else None,
               "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens if self.reported else None}
        out["differs"] = _differs(predicted, served) if self.reported and self.prompt_tokens else None
        return out


def _differs(predicted: float, served: float) -> str | None:
    if served < predicted - DIFFERS:
        return (f"served {served:.0%} of its prompt from cache where the plan predicted {predicted:.0%}: its cache "
                "held less than its prefix groups (evicted: more KV cache, or fewer requests in flight), or a "
                "group was split over engines")
    if served > predicted + DIFFERS:
        return (f"served {served:.0%} of its prompt from cache where the plan predicted {predicted:.0%}: its cache "
                "kept prefixes from further back than the request before (the order could group more)")
    return None


class CachePlan:
    """Per engine: the prefix blocks the dispatcher's hand-overs predict it can reuse, and the
    cached tokens its answers report. `key`: a request's prefix key (order.prefix_key)."""

    def __init__(self, key: Callable[[Request], bytes]):
        self.key = key
        self.engines: dict[int, EngineTally] = {}
        self.last: dict[int, tuple[bytes, int]] = {}  # engine -> (key, group) of its last request

    def handed(self, engine: int, req: Request) -> None:
        t = self.engines.setdefault(engine, EngineTally())
        key = self.key(req)
        before, group = self.last.get(engine, (b"", -1))
        t.requests += 1
        t.groups += not req.group or req.group != group
        t.key_blocks += len(key) // DIGEST
        t.predicted_blocks += shared_blocks(before, key)
        self.last[engine] = (key, req.group)

    def answered(self, engine: int, res: Result) -> None:
        if res.error is not None:
            return
        t = self.engines.setdefault(engine, EngineTally())
        t.prompt_tokens += res.prompt_tokens or 0
        if res.cached_tokens is not None:
            t.reported = True
            t.cached_tokens += res.cached_tokens

    def describe(self) -> dict[str, Any]:
        """For the report: each engine's plan and what it served, and where they differ."""
        engines = [t.describe(e) for e, t in sorted(self.engines.items())]
        return {"cache_plan": {"engines": engines,
                               "differs": [f"engine {e['engine']}: {e['differs']}" for e in engines if e["differs"]]}}

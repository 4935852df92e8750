"""Repairs that change something (`--repair truncated,unparsable,...`): a row whose verdict is
listed is held back, and its request runs again, changed, in the same engines as the first pass:

- `truncated`: more room, max_tokens doubled up to `--repair-max-tokens`;
- `unparsable`, `schema_mismatch`, `invalid_tool_call`, `failed_check` (chat requests): a repair
  turn, the answer given and a user message quoting what was wrong with it (the schema stays
  enforced by the engine's structured outputs where the request has a response_format; where it
  has none, no tools, and the job's check reads the content as JSON, the repair adds the
  engine's JSON grammar, `response_format` `json_object`);
- `empty`: another seed;
- `refused` (a heuristic: the verdict itself is a guess from the completion's opening words):
  another seed and a repair turn asking for the answer.

Never the identical request twice: a repair whose request body was already sent for that row
is not sent, and the row ends as it is. Each row keeps its attempts (`attempts` column: verdict,
tokens, cost and what changed, per attempt); the final row's usage and cost are the sums over
its attempts; still one row per input line. A row waiting for a repair is not committed as a
row, but its attempts so far are: `pending` is the entry the part writer commits with its next
part (its attempts, the bodies sent, and how the next request differs from the row's first),
and a killed run's rerun `resume`s the row from it: the next attempt, not the first, and the
killed run's attempts (their tokens and cost) stay in the row's sums.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from pipeline.endpoints import ENDPOINTS
from pipeline.records import CONTENT_FIELDS, Request

REPAIRABLE = ("truncated", "empty", "unparsable", "schema_mismatch", "invalid_tool_call", "failed_check", "refused")
TURN_VERDICTS = frozenset({"unparsable", "schema_mismatch", "invalid_tool_call", "failed_check"})
SUMMED = ("prompt_tokens", "completion_tokens", "total_tokens", "reasoning_tokens", "estimated_cost")


@dataclass(frozen=True)
class RepairPolicy:
    """--repair (the verdicts to repair), --repair-attempts (extra attempts per row at most),
    --repair-max-tokens (the most room a truncated row gets)."""

    verdicts: frozenset[str]
    attempts: int = 2
    max_tokens_cap: int = 4096
    json_check: bool = False  # the job's check reads the content as JSON (checks.expects_json)

    @classmethod
    def of(cls, repair: Any, attempts: int | None = None, cap: int | None = None,
           json_check: bool = False) -> RepairPolicy | None:
        """The policy of the options (None: no repairs). Raises ValueError naming the fix."""
        names = [repair] if isinstance(repair, str) else list(repair or ())
        verdicts = {v.strip() for one in names for v in str(one).split(",") if v.strip()}
        wrong = sorted(verdicts - set(REPAIRABLE))
        if wrong:
            raise ValueError(f"--repair {','.join(wrong)}: the verdicts that can be repaired are "
                             f"{', '.join(REPAIRABLE)}")
        if not verdicts:
            return None
        return cls(frozenset(verdicts), attempts if attempts is not None else 2,
                   cap if cap is not None else 4096, json_check)

    def worst_case(self, max_tokens: int | None) -> tuple[int, int | None]:
        """(extra requests, completion tokens) one request may add at most through repairs."""
        if max_tokens is None:
            return self.attempts, None
        extra, room = 0, max_tokens
        for _ in range(self.attempts):
            if "truncated" in self.verdicts:
                room = max(room, min(room * 2, self.max_tokens_cap))
            extra += room
        return self.attempts, extra


class Repairs:
    """The rows being repaired, by input line: their attempts so far and the bodies sent."""

    def __init__(self, policy: RepairPolicy, counts: Counter[str] | None = None):
        self.policy = policy
        self.attempts: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self.sent: dict[tuple[int, int], set[str]] = {}
        self.change: dict[tuple[int, int], str] = {}
        self.first: dict[tuple[int, int], Any] = {}  # the row's first request, as its input gave it
        self.counts: Counter[str] = Counter() if counts is None else counts  # repairs sent, by verdict repaired

    def next_request(self, req: Any, rows: list[dict[str, Any]]) -> Any | None:
        """Record this answer as an attempt of its row; the changed request to run next, or None
        when the rows are final (call `finish`)."""
        key = (req.file, req.line)
        first = rows[0]
        self.first.setdefault(key, req)
        attempts = self.attempts.setdefault(key, [])
        attempts.append(_attempt(first, self.change.pop(key, "first")))
        sent = self.sent.setdefault(key, {_fingerprint(req)})
        verdict = next((r["verdict"] for r in rows if r["verdict"] != "ok"), "ok")
        if verdict not in self.policy.verdicts or len(attempts) > self.policy.attempts:
            return None
        changed = repaired(req, verdict, first, self.policy, len(attempts))
        if changed is None:
            return None
        new, what = changed
        body = _fingerprint(new)
        if body in sent:
            return None
        sent.add(body)
        self.change[key] = what
        self.counts[verdict] += 1
        return new

    def finish(self, req: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The final rows of a request: with its attempts, usage and cost summed over them (a row
        answered at its first attempt is left as it is)."""
        key = (req.file, req.line)
        attempts = self.attempts.pop(key, [])
        self.sent.pop(key, None)
        self.first.pop(key, None)
        if len(attempts) <= 1:
            return rows
        for row in rows:
            row["attempts"] = attempts
            for col in SUMMED:
                values = [a.get(col) for a in attempts]
                if any(v is not None for v in values):
                    row[col] = sum(v or 0 for v in values)
        return rows


    def pending(self, new: Any) -> dict[str, Any]:
        """The entry that makes a held row's repairs durable (JSON): its attempts so far, the
        bodies sent, and its next request `new` as it differs from its first request."""
        key = (new.file, new.line)
        first = self.first[key]
        changed = {f: getattr(new, f) for f in _CHANGEABLE if getattr(new, f) != getattr(first, f)}
        entry = {"attempts": self.attempts[key], "sent": sorted(self.sent[key]), "change": self.change[key],
                 "next": {**changed, "messages": new.messages[len(first.messages):]}}
        return json.loads(json.dumps(entry, default=str))

    def resume(self, req: Any, entry: Any) -> Any:
        """The request to send for a row a killed run held for a repair (`entry`: what `pending`
        gave): its next attempt, with the attempts so far counted. `req` is its first request."""
        key = (req.file, req.line)
        try:
            new = _resumed(req, dict(entry["next"]))
            held = (list(entry["attempts"]), set(entry["sent"]), str(entry["change"]))
        except (KeyError, TypeError, ValueError):  # an entry we cannot read: the row starts again
            return req
        self.attempts[key], self.sent[key], self.change[key] = held
        self.first[key] = req
        verdict = self.attempts[key][-1].get("verdict") if self.attempts[key] else None
        self.counts[str(verdict)] += 1
        return new


_CHANGEABLE = ("params", "response_format")  # what a repair may change besides adding messages


def _resumed(first: Request, nxt: dict[str, Any]) -> Request:
    """The request a pending entry's `next` describes: the first one's body with its messages
    added to and its params and response_format as `next` says."""
    body = {**first.body, "messages": [*first.messages, *nxt.pop("messages")]}
    if "params" in nxt:
        body = {**{k: v for k, v in body.items() if k in CONTENT_FIELDS}, **nxt["params"]}
    if "response_format" in nxt:
        body["response_format"] = nxt["response_format"]
    return replace(first, body={k: v for k, v in body.items() if v is not None})


def repaired(req: Request, verdict: str, row: dict[str, Any], policy: RepairPolicy,
             attempt: int) -> tuple[Any, str] | None:
    """(the request changed to repair `verdict`, what changed), or None where it cannot be."""
    if verdict == "truncated":
        room = req.max_tokens
        if room is None or room >= policy.max_tokens_cap:
            return None
        more = min(room * 2, policy.max_tokens_cap)
        return req.with_body(max_completion_tokens=None, max_tokens=more), f"max_tokens {room} -> {more}"
    if verdict in ("empty", "refused"):
        seed = int(req.body.get("seed") or 0) + attempt
        if verdict == "empty":
            return req.with_body(seed=seed), f"seed {seed}"
        if not ENDPOINTS[req.endpoint].converses:
            return None
        turn = {"role": "user", "content": "That answer declined the request. If the request can be answered "
                                           "safely, answer it now, in the format asked for."}
        said = {"role": "assistant", "content": row.get("content") or ""}
        return req.with_body(seed=seed, messages=[*req.messages, said, turn]), f"seed {seed} and a repair turn"
    if verdict in TURN_VERDICTS and ENDPOINTS[req.endpoint].converses:
        said = row.get("content") or (json.dumps(row["tool_calls"]) if row.get("tool_calls") else "")
        answer = {"role": "assistant", "content": said}
        turn = {
            "role": "user",
            "content": f"That answer cannot be used ({verdict}: {row.get('verdict_message')}). "
            "Answer the request again, correcting exactly that, in the format asked for.",
        }
        new, what = req.with_body(messages=[*req.messages, answer, turn]), f"repair turn quoting the {verdict}"
        if policy.json_check and verdict in JSON_VERDICTS and req.response_format is None and not req.tools:
            new, what = new.with_body(response_format={"type": "json_object"}), f"{what}, with a JSON grammar"
        return new, what
    return None


JSON_VERDICTS = frozenset({"unparsable", "failed_check"})  # a JSON grammar may help these


def _attempt(row: dict[str, Any], change: str) -> dict[str, Any]:
    return {"verdict": row.get("verdict"), "verdict_message": row.get("verdict_message"), "change": change,
            "finish_reason": row.get("finish_reason"), **{col: row.get(col) for col in SUMMED}}


def _fingerprint(req: Any) -> str:
    return hashlib.blake2b(json.dumps(req.body, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


TURN_TOKENS = 64  # a repair turn's own words, in tokens, at most


def policy_of(cfg) -> RepairPolicy | None:
    """The job's --repair policy; a malformed one is the user's error."""
    from pipeline.exits import UserError

    try:
        return RepairPolicy.of(cfg.repair, cfg.repair_attempts, cfg.repair_max_tokens)
    except ValueError as e:
        raise UserError(str(e)) from None


def repair_budget(policy: RepairPolicy | None, requests: int, prompt_tokens: int, completion_upper: int,
                  price: Any = None) -> dict[str, Any] | None:
    """The worst case of --repair for an estimate: every valid request repaired every time, a
    truncated one with its room doubled each time (up to the cap), a repair turn sending the
    previous answer back. Bounds from the job's totals (None: no --repair)."""
    if policy is None:
        return None
    turns = bool(policy.verdicts & (TURN_VERDICTS | {"refused"}))
    extra_prompt = extra_completion = answers = 0
    room = completion_upper
    for k in range(1, policy.attempts + 1):
        extra_prompt += prompt_tokens + (answers + requests * TURN_TOKENS if turns else 0)
        if "truncated" in policy.verdicts:
            room = min(completion_upper * 2 ** k, completion_upper + requests * policy.max_tokens_cap)
        extra_completion += room
        answers += room
    return {"verdicts": sorted(policy.verdicts), "attempts": policy.attempts,
            "extra_requests_upper": requests * policy.attempts, "extra_prompt_tokens_upper": extra_prompt,
            "extra_completion_tokens_upper": extra_completion,
            "extra_cost_usd_upper": price.cost(extra_prompt, extra_completion, 0) if price is not None else None}


def budget_text(b: dict[str, Any]) -> str:
    cost = "" if b["extra_cost_usd_upper"] is None else f", up to ${b['extra_cost_usd_upper']:,.2f} more at list price"
    return (f"repairs (--repair {','.join(b['verdicts'])}, {b['attempts']} attempts): at most "
            f"{b['extra_requests_upper']:,} more requests, {b['extra_prompt_tokens_upper']:,} prompt and "
            f"{b['extra_completion_tokens_upper']:,} completion tokens{cost}")

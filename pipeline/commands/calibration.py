"""The calibration file: what finished runs measured, for the next estimate and ETA.

A JSON lines file on this machine: `$PIPELINE_CALIBRATION`, else
`~/.cache/pipeline/calibration.jsonl` (`PIPELINE_CALIBRATION=off` keeps none). Each finished
`pipeline run` (and each `estimate --sample-run`) appends one line per group of its requests and
one for its throughput; `estimate --sample-run` also appends its estimate, which the run of the
same job then compares with what it really produced. Lines:

    {"kind": "lengths", "model": M, "file": NAME, "max_tokens": K, "requests": n,
     "completion": {"n", "mean", "var"}, "reasoning": {"n", "mean", "var"} | null,
     "prompt_mean": P, "upper_mean": U, "at": ...}
    {"kind": "throughput", "model": M, "engine": "vllm", "gpu": "NVIDIA H100 80GB HBM3" | "cpu",
     "tokens_per_second": per GPU (prompt + completion), "engine_start_seconds": S, "at": ...}
    {"kind": "estimate", "fingerprint": F, "completion_tokens_expected": ..., "_low", "_high",
     "cost_usd_*", "gpu_hours_*", "at": ...}

A group is an input file's name (its last path component) and the requests' max_tokens (× n).
Lookups take the newest line of the most specific match: lengths by (model, file, max_tokens),
then (model, max_tokens), then (model); throughput by (model, engine, gpu), then (engine, gpu).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.commands.forecast import Lengths
from pipeline.records import Request

ENV = "PIPELINE_CALIBRATION"


def path() -> str | None:
    """The calibration file (None: switched off)."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "none") else value
    return os.path.join(os.path.expanduser("~"), ".cache", "pipeline", "calibration.jsonl")


def read() -> list[dict[str, Any]]:
    """Every line of the file (none when there is no file); a damaged line is skipped."""
    where = path()
    if where is None or not os.path.exists(where):
        return []
    out = []
    with open(where, encoding="utf-8") as f:
        for line in f:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.append(item)
    return out


def append(lines: Iterable[dict[str, Any]]) -> None:
    """Add lines to the file (one write: concurrent runs do not interleave within a line)."""
    where = path()
    lines = list(lines)
    if where is None or not lines:
        return
    os.makedirs(os.path.dirname(os.path.abspath(where)), exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = "".join(json.dumps({**line, "at": line.get("at", stamp)}) + "\n" for line in lines)
    with open(where, "a", encoding="utf-8") as f:
        f.write(text)


def group_name(file: str) -> str:
    """An input's group name: its last path component (the same file from another folder or bucket matches)."""
    return file.rstrip("/").rsplit("/", 1)[-1]


def group_key(req: Request) -> tuple[str, int | None]:
    """The group of a request for lengths: its input file and max_tokens × n (None: unbounded)."""
    return req.source_file, None if req.max_tokens is None else req.max_tokens * req.n


@dataclass
class Moments:
    """Running count, sum and sum of squares: a distribution in constant memory."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, value: float) -> None:
        self.n, self.total, self.squares = self.n + 1, self.total + value, self.squares + value * value

    def merge(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.total + other.total, self.squares + other.squares)

    def lengths(self) -> Lengths:
        mean = self.total / self.n if self.n else 0.0
        var = max(0.0, (self.squares - self.n * mean * mean) / (self.n - 1)) if self.n > 1 else 0.0
        return Lengths(self.n, mean, var)


@dataclass
class Measured:
    """A group's measured requests: completion tokens, their thinking part (`thinks`: the engine
    split them), completion / upper bound, prompt tokens and bounds."""

    completion: Moments = field(default_factory=Moments)
    reasoning: Moments = field(default_factory=Moments)
    ratio: Moments = field(default_factory=Moments)
    prompt: float = 0.0
    upper: float = 0.0
    thinking_upper: float = 0.0
    thinks: bool = False

    def merge(self, o: Measured) -> Measured:
        return Measured(self.completion.merge(o.completion), self.reasoning.merge(o.reasoning),
                        self.ratio.merge(o.ratio), self.prompt + o.prompt, self.upper + o.upper,
                        self.thinking_upper + o.thinking_upper, self.thinks or o.thinks)

    def add(self, completion: int, reasoning: int | None, prompt: int, upper: int = 0,
            thinking_upper: int = 0) -> None:
        self.completion.add(completion)
        self.reasoning.add(reasoning or 0)
        if upper:
            self.ratio.add(completion / upper)
        self.thinks = self.thinks or reasoning is not None
        self.prompt += prompt
        self.upper += upper
        self.thinking_upper += thinking_upper


def lengths_lines(model: str, groups: dict[tuple, Measured]) -> list[dict[str, Any]]:
    """The calibration lines of a run's (or sample's) measured groups (keys longer than a group's,
    a sample's strata, are merged into their group)."""
    merged: dict[tuple[str, int | None], Measured] = {}
    for key, m in groups.items():
        merged[key[:2]] = merged[key[:2]].merge(m) if key[:2] in merged else m
    out = []
    for (file, max_tokens), m in sorted(merged.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        c = m.completion.lengths()
        if not c.n:
            continue
        out.append({"kind": "lengths", "model": model, "file": group_name(file), "max_tokens": max_tokens,
                    "requests": c.n, "completion": _dist(c),
                    "reasoning": _dist(m.reasoning.lengths()) if m.thinks else None,
                    "prompt_mean": round(m.prompt / c.n, 3),
                    "upper_mean": round(m.upper / c.n, 3) if m.upper else None})
    return out


def _dist(d: Lengths) -> dict[str, float]:
    return {"n": d.n, "mean": round(d.mean, 4), "var": round(d.var, 4)}


def dist(line: dict[str, Any], key: str = "completion") -> Lengths | None:
    d = line.get(key)
    return None if not d else Lengths(int(d["n"]), float(d["mean"]), float(d["var"]))


def find_lengths(lines: list[dict[str, Any]], model: str, file: str,
                 max_tokens: int | None) -> tuple[dict[str, Any] | None, str]:
    """The newest lengths line of the most specific match, and which match it was."""
    name = group_name(file)
    levels = (("model, file and max_tokens", lambda x: x.get("file") == name and x.get("max_tokens") == max_tokens),
              ("model and max_tokens", lambda x: x.get("max_tokens") == max_tokens),
              ("model", lambda x: True))
    mine = [x for x in lines if x.get("kind") == "lengths" and x.get("model") == model]
    for label, match in levels:
        found = [x for x in mine if match(x)]
        if found:
            return found[-1], label
    return None, "none"


def find_throughput(lines: list[dict[str, Any]], model: str | None, engine: str,
                    gpu: str | None) -> tuple[dict[str, Any] | None, str]:
    """The newest throughput line of the most specific match, and which match it was: the same
    model on the same engine kind and GPU model (`gpu` None: any), else any model there."""
    mine = [x for x in lines if x.get("kind") == "throughput" and x.get("engine") == engine
            and (gpu is None or x.get("gpu") == gpu) and x.get("tokens_per_second")]
    same = [x for x in mine if x.get("model") == model]
    if same:
        return same[-1], "model, engine and GPU"
    return (mine[-1], "engine and GPU") if mine else (None, "none")


def find_estimate(lines: list[dict[str, Any]], fingerprint: str) -> dict[str, Any] | None:
    """The newest estimate made for this job (its fingerprint), if any."""
    found = [x for x in lines if x.get("kind") == "estimate" and x.get("fingerprint") == fingerprint]
    return found[-1] if found else None

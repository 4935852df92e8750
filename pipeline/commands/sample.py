"""`estimate --sample-run N`: a seeded, stratified sample of the job, run for real.

Strata are the input file × the request's max_tokens (× n) × its prompt prefix (the first KV
cache block, or for a prompt shorter than a block the first LEAD characters of its last message,
hashed into PREFIX_BUCKETS); the N rows are shared out in proportion to the strata's
sizes (largest remainders; every stratum gets one while rows last, the largest first), and within
a stratum they are the rows whose hash of (seed, file, line) is smallest: the same rows on a
rerun. Invalid rows are never chosen.

The sample runs through `pipeline run`'s own path (`commands.run.plan` and `execute`) into the
job's output folder, with the whole job's fingerprint and without the completion marker: its rows
are committed parts of the job, and a later `pipeline run` of the same job into the same folder
resumes past them. Its results are observed on their way to the writer, to measure each
request's completion tokens (thinking apart where the engine splits it) and the engine's
throughput.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.commands.calibration import Measured, group_key
from pipeline.endpoints import ENDPOINTS
from pipeline.exits import UserError
from pipeline.records import FailedRequest, Request

PREFIX_BUCKETS = 16
LEAD = 16


def stratum(req: Request, blocks: bytes) -> tuple[str, int | None, int]:
    """A request's stratum: its group (calibration.group_key) and its prefix's bucket."""
    lead = blocks[:32] if blocks else _lead(req).encode()
    bucket = int.from_bytes(hashlib.blake2b(lead, digest_size=2).digest(), "big") % PREFIX_BUCKETS
    return (*group_key(req), bucket)


def _lead(req: Request) -> str:
    """The first characters of the request's last message (or its endpoint's first prompt): what
    a template or a way of asking starts with."""
    last = req.messages[-1].get("content") if req.messages else ENDPOINTS[req.endpoint].prompts(req)[0]
    if isinstance(last, list):
        last = next((p.get("text") for p in last if isinstance(p, dict) and p.get("text")), "")
    return str(last or "")[:LEAD]


@dataclass
class Stratum:
    size: int = 0
    smallest: list = field(default_factory=list)  # a max-heap (negated hashes) of the `cap` smallest


class Stratifier:
    """Chooses the sample while the estimate counts every request."""

    def __init__(self, rows: int, seed: int):
        self.rows, self.seed = rows, str(seed).encode()
        self.strata: dict[tuple, Stratum] = {}

    def add(self, req: Request, upper: int, thinking: int, blocks: bytes) -> tuple:
        """Count a request in its stratum (returned), keeping it if its hash is among the smallest."""
        key = stratum(req, blocks)
        s = self.strata.setdefault(key, Stratum())
        s.size += 1
        h = int.from_bytes(hashlib.blake2b(self.seed + f"\0{req.source_file}\0{req.line}".encode(),
                                           digest_size=8).digest())
        entry = (-h, req.file, req.line, upper, thinking)
        if len(s.smallest) < self.rows:
            heapq.heappush(s.smallest, entry)
        elif entry > s.smallest[0]:
            heapq.heapreplace(s.smallest, entry)
        return key

    def shares(self) -> dict[tuple, int]:
        """Rows per stratum: one each while rows last (the largest first), the rest in proportion
        to what each has left (largest remainders)."""
        n = min(self.rows, sum(s.size for s in self.strata.values()))
        order = sorted(self.strata, key=lambda k: -self.strata[k].size)
        share = {k: int(i < n) for i, k in enumerate(order)}
        room = {k: self.strata[k].size - share[k] for k in order}
        left, spare = n - sum(share.values()), sum(room.values())
        if left > 0:
            exact = {k: left * room[k] / spare for k in order}
            for k in order:
                share[k] += int(exact[k])
            by_remainder = sorted(order, key=lambda k: -(exact[k] - int(exact[k])))
            for k in by_remainder[:n - sum(share.values())]:
                share[k] += 1
        return share

    def chosen(self) -> dict[tuple[int, int], tuple[int, int, tuple]]:
        """(file index, line) → (completion bound, thinking bound, stratum) of every chosen row."""
        out = {}
        for k, n in self.shares().items():
            for _, file, line, upper, thinking in heapq.nlargest(n, self.strata[k].smallest):
                out[(file, line)] = (upper, thinking, k)
        return out


@dataclass(frozen=True)
class Chosen:
    """A job's row selection (as intake/limit.Limit) that takes the chosen (file, line) keys."""

    keys: frozenset

    def __bool__(self) -> bool:
        return True

    def apply(self, items: Iterable[Request | FailedRequest], keys) -> Iterator[Request | FailedRequest]:
        return (item for item in items if (item.file, item.line) in self.keys)

    def total(self, scans) -> int | None:
        """The whole job's rows: the attempt records them, and `status` counts against them."""
        from pipeline.intake.limit import FULL

        return FULL.total(scans)

    def describe(self, scans) -> dict[str, Any]:
        return {"sample_run": len(self.keys)}


class Observed:
    """A dispatcher whose results are also measured on their way to the writer."""

    def __init__(self, dispatcher, chosen: dict[tuple[int, int], tuple[int, int]], clock=time.monotonic):
        self.dispatcher, self.chosen, self.clock = dispatcher, chosen, clock
        self.groups: dict[tuple, Measured] = {}  # by stratum
        self.begun = self.last = None
        self.longest = 0.0  # the longest hand-over-to-answer: the generation's span
        self.tokens = 0  # prompt + completion tokens answered

    def results(self, requests: Iterable[Request]):
        self.begun = self.clock()
        for done in self.dispatcher.results(requests):
            if done is not None:
                self.observe(*done)
            yield done

    def observe(self, req: Request, res) -> None:
        upper, thinking, key = self.chosen[(req.file, req.line)]
        self.groups.setdefault(key, Measured()).add(
            res.completion_tokens or 0, res.reasoning_tokens, res.prompt_tokens or 0, upper, thinking)
        self.tokens += (res.prompt_tokens or 0) + (res.completion_tokens or 0)
        self.longest = max(self.longest, res.seconds or 0.0)
        self.last = self.clock()

    def __getattr__(self, name: str):
        return getattr(self.dispatcher, name)


@dataclass(frozen=True)
class SampleRun:
    """What a sample run measured."""

    rows: int
    seed: int
    groups: dict[tuple, Measured]  # by stratum
    tokens_per_second: float | None  # per GPU, prompt + completion, engine start left out
    engine_start_seconds: float
    engine: str
    gpu: str | None
    gpus: int
    output: str
    fingerprint: str


def run_sample(job, chosen: dict[tuple[int, int], tuple[int, int]], seed: int, clock=time.monotonic) -> SampleRun:
    """Run the chosen rows into the job's output folder, uncommitted ones only, and measure them."""
    from pipeline import exits
    from pipeline.commands import run
    from pipeline.output.folder import fingerprint

    cfg = job.cfg
    if not cfg.output:
        raise UserError("--sample-run needs -o/--output: the job's output folder. The sample's rows are committed "
                        "there, and a later `pipeline run` of the same job into it does not run them again")
    p = run.plan(cfg)
    if p.complete:
        raise UserError(f"{p.out.display} already holds the whole job, complete. Hint: estimate from it with "
                        f"--calibrate-from {cfg.output}")
    p.job = replace(p.job, limit=Chosen(frozenset(chosen)))
    holder: list[Observed] = []

    def engines(plan):
        holder.append(Observed(run.start_engines(plan), chosen, clock))
        return holder[0]

    try:
        outcome = run.execute(p, clock(), engines, finish=False)
    finally:
        for o in holder:
            o.dispatcher.close()
    if outcome.exit_code != exits.OK:
        raise outcome.error or UserError(outcome.message)
    return measured(holder[0] if holder else None, p, len(chosen), seed, fingerprint(p.detail))


def measured(o: Observed | None, p, rows: int, seed: int, fp: str) -> SampleRun:
    """The sample's figures; an engine's start is the time to its last answer less the longest
    answer (the engine takes every request of a small sample at once)."""
    cfg = p.job.cfg
    if o is None or not o.groups:
        raise UserError(f"--sample-run: no row of the sample was run: {p.out.display} holds them all already "
                        "(a sample run earlier?). Hint: pass another --sample-run-seed, or estimate from a "
                        "calibration the earlier sample left")
    engines = o.dispatcher.pool.size
    gpus = engines * (cfg.tensor_parallel_size or 1)
    start = max(0.0, (o.last - o.begun) - o.longest)
    tps = o.tokens / o.longest / gpus if o.longest > 0 else None
    platform = (o.dispatcher.engine_info or {}).get("platform")
    return SampleRun(rows, seed, o.groups, tps, start, cfg.engine, platform, gpus, p.out.display, fp)


def run_values(job_file: str | None, values: dict[str, Any]) -> dict[str, Any]:
    """An estimate's values with its --job file's run options (those estimate has no option for:
    engine arguments, --format, ...) added, so that the sample runs as `pipeline run --job FILE`
    would, with the same fingerprint."""
    from pipeline import options
    from pipeline.job import load_job, parse_key_values

    if not job_file or not values.get("sample_run"):
        return values
    out = dict(values)
    for name, value in load_job(job_file).items():
        if name in out or name not in options.BY_NAME or options.RUN not in options.BY_NAME[name].commands:
            continue
        if name in options.KEY_VALUE_OPTIONS:
            value = parse_key_values(value if isinstance(value, dict) else tuple(value), options.BY_NAME[name].long)
        out[name] = tuple(value) if isinstance(value, list) else value
    return out

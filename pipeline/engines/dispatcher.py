"""Moves Requests to engine workers and Results back; restarts dead engines and isolates
the request that killed one.

The dispatch logic is transport-agnostic: a pool of workers (local processes here, Ray actors
in `ray.py`) exposes submit / wait / restart, and the `Dispatcher` feeds every worker
up to its window of requests (and of image bytes: requests with images weigh their data: URIs) as
results come back, so a slow engine never holds the others.
"""

from __future__ import annotations

import logging
import re
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.engines.base import Result
from pipeline.engines.cache_plan import CachePlan
from pipeline.exits import EngineStartError, TooManyRestarts
from pipeline.models.render import media_bytes
from pipeline.records import Problem, Request

log = logging.getLogger("pipeline.engines")
# requests of a prefix group kept back for the engine that holds the group while it is full, at
# most (per engine): past that, another engine takes the rest of the group rather than wait
OWED_MAX = 4096


@dataclass
class Event:
    worker: int
    kind: str  # "ready", "results", "died", "fatal"
    payload: Any = None
    output: str = ""  # for "died": the last lines the engine printed, where the pool keeps them


def describe_exit(exitcode: int | None) -> str:
    """How a process ended, in words: "killed by SIGKILL (the OOM killer?)", "exited with code 1"."""
    if exitcode is None:
        return "ended (exit status unknown)"
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    return f"killed by {name}" + (" (the OOM killer?)" if exitcode == -signal.SIGKILL else "")


def _killed_core(text: str) -> str:
    """vLLM's engine core process was killed by a signal while it loaded the model (its error
    lists it with a negative exit code, e.g. "Failed core proc(s): {'EngineCore': -9}"): say so."""
    found = re.search(r"Failed core proc\(s\): \{[^}]*?: (-\d+)", text)
    return f"\nIts engine core process was {describe_exit(int(found[1]))}." if found else ""


class Pool(Protocol):
    size: int

    def submit(self, worker: int, items: list[tuple[int, Request]]) -> None: ...
    def wait(self, timeout: float) -> list[Event]: ...
    def restart(self, worker: int) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Worker:
    ready: bool = False
    inflight: dict[int, Request] = field(default_factory=dict)
    sent: dict[int, float] = field(default_factory=dict)  # seq -> when it was handed over
    exclusive: bool = False  # running a suspect group alone
    info: dict[str, Any] = field(default_factory=dict)
    group: int = 0  # the prefix group of the last request it was given
    owed: deque[Request] = field(default_factory=deque)  # the rest of that group, met while it was full


def in_flight_window(max_in_flight: int | None, max_num_seqs: int | None) -> int:
    """Requests held by each engine at once: --max-in-flight, else enough to keep its batch full
    between refills (vLLM runs up to 1024 sequences on big GPUs)."""
    return max_in_flight or max(2048, 2 * (max_num_seqs or 0))


class Dispatcher:
    """Feeds requests to a pool and yields every (Request, Result) as it finishes, engine-crash
    verdicts included; it calls nothing back, so it runs the same in memory in a test.

    When an engine dies, the requests it held are re-run as a "suspect group" alone on one
    engine; a group that kills an engine again is split in halves, and a single request that
    kills an engine gets an `engine_crash` error instead of taking the batch down.
    """

    def __init__(
        self,
        pool: Pool,
        *,
        window: int,
        window_bytes: int = 256 * 1024 * 1024,
        max_restarts: int = 50,
        max_start_tries: int = 3,
        chunk: int = 256,
    ):
        self.pool, self.window, self.window_bytes, self.chunk = pool, window, window_bytes, chunk
        self.max_restarts, self.max_start_tries = max_restarts, max_start_tries
        self.start_failures = [0] * pool.size  # per worker: deaths before ready, in a row
        self.workers = [_Worker() for _ in range(pool.size)]
        self.requeued: deque[Request] = deque()
        self.suspects: deque[list[Request]] = deque()
        self.restarts = 0
        self.engine_info: dict[str, Any] = {}
        self._seq = 0
        self._ahead: Request | None = None  # taken from the source, not yet handed to an engine
        self.cache_plan: CachePlan | None = None  # what each engine's prefix cache should serve (cache_plan.py)

    def close(self) -> None:
        """Stop the engines."""
        self.pool.close()

    def results(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Result] | None]:
        """(request, result) for every request, in the order they finish; None after each
        wait for the engines (about every half second), so the caller can act on time."""
        source: Iterator[Request] | None = iter(requests)
        while True:
            for i, w in enumerate(self.workers):
                if w.ready and not w.exclusive:
                    source = self._feed(i, w, source)
            if source is None and self._ahead is None and not self.requeued and not self.suspects and not any(
                w.inflight or w.owed for w in self.workers
            ):
                return
            for ev in self.pool.wait(timeout=0.5):
                yield from self._handle(ev)
            yield None

    def _feed(self, i: int, w: _Worker, source: Iterator[Request] | None):
        if self.suspects and not w.inflight:
            group = self.suspects.popleft()
            w.exclusive = True
            self._submit(i, w, group)
            return source
        weight = sum(media_bytes(r.messages) for r in w.inflight.values())  # images held: a bound of its own
        if len(w.inflight) > self.window // 2 or weight > self.window_bytes // 2:
            return source
        batch: list[Request] = []
        while (held := len(w.inflight) + len(batch)) < 2 * self.window:
            full = held >= self.window or (held > 0 and weight >= self.window_bytes)
            if self.requeued or w.owed:
                if full and not w.owed:
                    break
                batch.append(w.owed.popleft() if w.owed else self.requeued.popleft())
                weight += media_bytes(batch[-1].messages)
                continue
            if source is None:
                break
            nxt = self._ahead if self._ahead is not None else next(source, None)
            self._ahead = None
            if nxt is None:
                source = None
                break
            if self._owe(i, nxt):
                continue
            # past the window only to finish a prefix group (intake/order.py): one engine computes its prefix
            if full and not (nxt.group and batch and nxt.group == batch[-1].group):
                self._ahead = nxt
                break
            batch.append(nxt)
            weight += media_bytes(nxt.messages)
            w.group = nxt.group
        if not batch and source is None:
            batch = self._steal(i)
        for start in range(0, len(batch), self.chunk):
            self._submit(i, w, batch[start : start + self.chunk])
        return source

    def _steal(self, i: int) -> list[Request]:
        """For an idle engine once the input is all handed out: the later half of the longest
        queue of requests owed to another engine (its prefix group, waiting for room there), up
        to the window. No engine idles while another has a queue; the group's prefix is computed
        once more, on this engine."""
        owed = max((w.owed for j, w in enumerate(self.workers) if j != i), key=len, default=deque())
        take = min(len(owed) // 2 if len(owed) > 1 else len(owed), self.window)
        batch = [owed.pop() for _ in range(take)][::-1]
        if batch:
            self.workers[i].group = batch[0].group
        return batch

    def _owe(self, i: int, req: Request) -> bool:
        """Keep `req` for the engine that holds its prefix group, if another engine does and is
        up: so a group is split across engines only when OWED_MAX of it wait (other engines take
        the groups that follow meanwhile)."""
        if not req.group or self.workers[i].group == req.group:
            return False
        for w in self.workers:
            if w.group == req.group and w.ready and not w.exclusive and len(w.owed) < OWED_MAX:
                w.owed.append(req)
                return True
        return False

    def _submit(self, i: int, w: _Worker, reqs: list[Request]) -> None:
        items = []
        now = time.monotonic()
        for req in reqs:
            self._seq += 1
            if self.cache_plan is not None:
                self.cache_plan.handed(i, req)
            w.inflight[self._seq], w.sent[self._seq] = req, now
            items.append((self._seq, req))
        self.pool.submit(i, items)

    def _handle(self, ev: Event) -> Iterator[tuple[Request, Result]]:
        w = self.workers[ev.worker]
        if ev.kind == "ready":
            w.ready, w.info = True, ev.payload
            self.start_failures[ev.worker] = 0
            self.engine_info = ev.payload
            log.info("engine %d ready: %s", ev.worker, ev.payload)
        elif ev.kind == "results":
            now = time.monotonic()
            for res in ev.payload:
                req = w.inflight.pop(res.seq, None)
                if req is not None:
                    res.engine, res.seconds = ev.worker, round(now - w.sent.pop(res.seq, now), 6)
                    if self.cache_plan is not None:
                        self.cache_plan.answered(ev.worker, res)
                    yield req, res
            if w.exclusive and not w.inflight:
                w.exclusive = False
        elif ev.kind == "fatal":
            raise EngineStartError(f"the engine could not start:\n{ev.payload}{_killed_core(str(ev.payload))}")
        elif ev.kind == "died" and not w.ready:
            self._start_failed(ev.worker, ev.payload, ev.output)
        elif ev.kind == "died":
            yield from self._died(ev.worker, w, ev.payload)

    def _start_failed(self, i: int, reason: str, output: str) -> None:
        """An engine died before it was ready (killed while loading the model, most often by the
        OOM killer): it held no requests, and another load is likely to end the same way, so it
        gets `max_start_tries` loads in a row, not the restart budget."""
        self.start_failures[i] += 1
        tries = self.start_failures[i]
        if tries < self.max_start_tries:
            log.warning("engine %d died while starting (%s); starting it again (try %d of %d)",
                        i, reason, tries + 1, self.max_start_tries)
            self.pool.restart(i)
            return
        shown = "\n".join("  " + line for line in output.splitlines())
        raise EngineStartError(
            f"engine {i} died while starting, {tries} times in a row (last: {reason})."
            + (f"\nIts last output:\n{shown}" if shown else "")
            + "\nHint: an engine killed while loading has usually run out of memory: free memory, or make the "
            "engine smaller (fewer engines with --data-parallel-size, a lower --max-model-len or "
            "--max-num-seqs, a smaller or quantized model); otherwise its output above says why."
        )

    def _died(self, i: int, w: _Worker, reason: str) -> Iterator[tuple[Request, Result]]:
        held = list(w.inflight.values())
        was_exclusive = w.exclusive
        self.requeued.extend(w.owed)  # never handed over: no suspects
        self.workers[i] = _Worker()
        self.restarts += 1
        log.warning("engine %d died (%s) holding %d request(s); restarting", i, reason, len(held))
        if self.restarts > self.max_restarts:
            self.requeued.extendleft(reversed(held))
            raise TooManyRestarts(
                f"engines died {self.restarts} times (last: {reason}); stopping. Committed output "
                "is kept: rerun the same command to finish, or lower --max-num-seqs / check memory."
            )
        if not was_exclusive:
            if held:
                self.suspects.append(held)
        elif len(held) == 1:
            yield held[0], Result(0, error=Problem(
                "engine_crash",
                f"this request crashed the engine twice ({reason}); it was isolated so the batch "
                "could go on. Check its parameters (e.g. seed on the CPU build) and rerun it alone.",
            ), engine=i)
        elif held:
            half = len(held) // 2
            self.suspects.extendleft([held[half:], held[:half]])
        self.pool.restart(i)

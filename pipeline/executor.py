"""Moves Requests to engine workers and Results back; restarts dead engines and isolates
the request that killed one.

The dispatch logic is transport-agnostic: a pool of workers (local processes here, Ray actors
in `ray_pool.py`) exposes submit / wait / restart, and the `Dispatcher` feeds every worker
up to its window of requests as results come back, so a slow engine never holds the others.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_connections
from typing import Any, Protocol

from .engine import EngineSpec, Result
from .problems import Problem
from .requests import Request

log = logging.getLogger("pipeline")


class EngineStartError(RuntimeError):
    """An engine could not start at all (bad model, no memory, missing install), or died while
    loading `max_start_tries` times in a row."""


class TooManyRestarts(RuntimeError):
    """Engines keep dying without a request to blame."""


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


class _Tail:
    """Copies an engine's output (its stdout and stderr, one pipe) to our stderr and keeps the
    last lines, so that the reason an engine died can be reported with what it printed last."""

    def __init__(self, conn, keep: int = 4096):
        self.conn, self.keep, self.text, self.done = conn, keep, b"", threading.Event()
        threading.Thread(target=self._copy, daemon=True).start()

    def _copy(self) -> None:
        fd = self.conn.fileno()
        try:
            while data := os.read(fd, 65536):
                self.text = (self.text + data)[-self.keep:]
                while data:
                    data = data[os.write(2, data):]
        except OSError:
            pass
        finally:
            self.done.set()
            self.conn.close()

    def last_lines(self, n: int = 12, wait: float = 0.5) -> str:
        """The last `n` lines (progress bars' carriage returns resolved), once the pipe has
        drained or `wait` seconds passed (the engine's own processes may still hold it)."""
        self.done.wait(wait)
        lines = [line.rsplit("\r", 1)[-1].rstrip() for line in self.text.decode(errors="replace").split("\n")]
        return "\n".join([line for line in lines if line.strip()][-n:])


class Pool(Protocol):
    size: int

    def submit(self, worker: int, items: list[tuple[int, Request]]) -> None: ...
    def wait(self, timeout: float) -> list[Event]: ...
    def restart(self, worker: int) -> None: ...
    def close(self) -> None: ...


class LocalPool:
    """One engine worker process per engine, each with its own environment (GPU set)."""

    def __init__(self, spec: EngineSpec, envs: list[dict[str, str]]):
        self.spec, self.envs, self.size = spec, envs, len(envs)
        self.ctx = mp.get_context("spawn")  # vLLM and CUDA need spawned, not forked, workers
        # Engines are killed, not shut down (see _kill): multiprocessing's resource tracker then
        # frees their shared memory itself and need not warn about it at exit.
        quiet = "ignore:resource_tracker:UserWarning"
        if quiet not in os.environ.get("PYTHONWARNINGS", ""):
            os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
        self.procs: list[Any] = [None] * self.size
        self.conns: list[Any] = [None] * self.size
        self.outboxes: list[queue.Queue] = [queue.Queue() for _ in range(self.size)]
        self.tails: list[_Tail | None] = [None] * self.size
        self.ready = [False] * self.size
        for i in range(self.size):
            self._start(i)

    def _start(self, i: int) -> None:
        from .worker import process_main

        parent, child = self.ctx.Pipe()
        out_read, out_write = self.ctx.Pipe(duplex=False)
        # The engines share this machine's memory (the CPU build sizes its KV cache from it).
        env = {"PIPELINE_ENGINES_PER_NODE": str(self.size), **self.envs[i]}
        proc = self.ctx.Process(target=process_main, args=(child, self.spec, env, out_write),
                                name=f"engine-{i}", daemon=False)
        proc.start()
        child.close()  # so that the worker's death reads as EOF here
        out_write.close()
        self.tails[i], self.ready[i] = _Tail(out_read), False
        self.procs[i], self.conns[i] = proc, parent
        self.outboxes[i] = queue.Queue()
        # Sends go through a thread: a full pipe must never block the dispatcher while the
        # worker is itself blocked sending results back.
        threading.Thread(target=self._sender, args=(parent, self.outboxes[i]), daemon=True).start()

    @staticmethod
    def _sender(conn, outbox: queue.Queue) -> None:
        while (msg := outbox.get()) is not None:
            try:
                conn.send(msg)
            except (OSError, ValueError):
                return  # the worker died; the dispatcher sees it as EOF

    def submit(self, worker: int, items: list[tuple[int, Request]]) -> None:
        self.outboxes[worker].put(("add", items))

    def wait(self, timeout: float) -> list[Event]:
        live = {c: i for i, c in enumerate(self.conns) if c is not None}
        events = []
        for conn in wait_connections(list(live), timeout):
            i = live[conn]
            try:
                kind, payload = conn.recv()
                self.ready[i] = self.ready[i] or kind == "ready"
                events.append(Event(i, kind, payload))
            except (EOFError, OSError):
                proc = self.procs[i]
                proc.join(timeout=5)
                self.conns[i] = None
                tail = self.tails[i]
                # What it printed last tells why an engine died while starting (a later death
                # is a request's doing, and the engine's output says so above).
                output = tail.last_lines() if tail and not self.ready[i] else ""
                events.append(Event(i, "died", f"engine process {describe_exit(proc.exitcode)}", output))
        return events

    def restart(self, worker: int) -> None:
        self._kill(worker)
        self._start(worker)

    def _kill(self, i: int) -> None:
        """Kill a worker's process group: the worker and its engine's own processes (vLLM's
        EngineCore ignores SIGTERM and a graceful shutdown only waits 5 s before killing it)."""
        proc = self.procs[i]
        if proc is None:
            return
        self.outboxes[i].put(None)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.join(timeout=10)
        if self.conns[i] is not None:
            self.conns[i].close()
        self.procs[i] = self.conns[i] = None

    def close(self) -> None:
        """Called once every row is committed (or the run stops): nothing in the engines is kept."""
        for i in range(self.size):
            self._kill(i)


@dataclass
class _Worker:
    ready: bool = False
    inflight: dict[int, Request] = field(default_factory=dict)
    sent: dict[int, float] = field(default_factory=dict)  # seq -> when it was handed over
    exclusive: bool = False  # running a suspect group alone
    info: dict[str, Any] = field(default_factory=dict)


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
        max_restarts: int = 50,
        max_start_tries: int = 3,
        chunk: int = 256,
    ):
        self.pool, self.window, self.chunk = pool, window, chunk
        self.max_restarts, self.max_start_tries = max_restarts, max_start_tries
        self.start_failures = [0] * pool.size  # per worker: deaths before ready, in a row
        self.workers = [_Worker() for _ in range(pool.size)]
        self.requeued: deque[Request] = deque()
        self.suspects: deque[list[Request]] = deque()
        self.restarts = 0
        self.engine_info: dict[str, Any] = {}
        self._seq = 0
        self._ahead: Request | None = None  # taken from the source, not yet handed to an engine

    def results(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Result] | None]:
        """(request, result) for every request, in the order they finish; None after each
        wait for the engines (about every half second), so the caller can act on time."""
        source: Iterator[Request] | None = iter(requests)
        while True:
            for i, w in enumerate(self.workers):
                if w.ready and not w.exclusive:
                    source = self._feed(i, w, source)
            if source is None and self._ahead is None and not self.requeued and not self.suspects and not any(
                w.inflight for w in self.workers
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
        if len(w.inflight) > self.window // 2:
            return source
        batch: list[Request] = []
        while (held := len(w.inflight) + len(batch)) < 2 * self.window:
            if self.requeued:
                if held >= self.window:
                    break
                batch.append(self.requeued.popleft())
                continue
            if source is None:
                break
            nxt = self._ahead if self._ahead is not None else next(source, None)
            self._ahead = None
            if nxt is None:
                source = None
                break
            # past the window only to finish a prefix group (schedule.py): one engine computes its prefix
            if held >= self.window and not (nxt.group and batch and nxt.group == batch[-1].group):
                self._ahead = nxt
                break
            batch.append(nxt)
        for start in range(0, len(batch), self.chunk):
            self._submit(i, w, batch[start : start + self.chunk])
        return source

    def _submit(self, i: int, w: _Worker, reqs: list[Request]) -> None:
        items = []
        now = time.monotonic()
        for req in reqs:
            self._seq += 1
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

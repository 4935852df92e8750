"""The local transport: one spawned worker process per engine on this machine, requests and
results over pipes (the `Pool` contract of dispatcher.py).

What the engines print (vLLM, torch, Triton, transformers: their logs, warnings and progress
bars) reaches our stderr only with `-v`; by default a run's stderr is our progress and summary.
Either way the last lines are kept, and an engine that cannot start shows them.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
from multiprocessing.connection import wait as wait_connections
from typing import Any

from pipeline import exits
from pipeline.engines.base import EngineSpec
from pipeline.engines.cores import pin
from pipeline.engines.dispatcher import Event, describe_exit
from pipeline.records import Request
from pipeline.storage import redact

log = logging.getLogger("pipeline.engines")


class _Tail:
    """Keeps the last lines of an engine's output (its stdout and stderr, one pipe), so that the
    reason an engine died can be reported with what it printed last; with `echo`, copies it all
    to our stderr as well."""

    def __init__(self, conn, echo: bool, keep: int = 4096):
        self.conn, self.echo, self.keep, self.text, self.done = conn, echo, keep, b"", threading.Event()
        threading.Thread(target=self._copy, daemon=True).start()

    def _copy(self) -> None:
        fd, pending = self.conn.fileno(), b""
        try:
            while data := os.read(fd, 65536):
                self.text = (self.text + data)[-self.keep:]
                if self.echo:  # whole lines, redacted (vLLM logs its arguments: hf_token=...)
                    pending += data
                    cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1 or len(pending) * (len(pending) > 1 << 20)
                    _echo(pending[:cut])
                    pending = pending[cut:]
            _echo(pending)
        except OSError:
            pass
        finally:
            self.done.set()
            self.conn.close()

    def last_lines(self, n: int = 12, wait: float = 0.5) -> str:
        """The last `n` lines (progress bars' carriage returns resolved), once the pipe has
        drained or `wait` seconds passed (the engine's own processes may still hold it)."""
        self.done.wait(wait)
        lines = [line.rsplit("\r", 1)[-1].rstrip() for line in redact(self.text.decode(errors="replace")).split("\n")]
        return "\n".join([line for line in lines if line.strip()][-n:])


def _echo(data: bytes) -> None:
    """An engine's output on our stderr, redacted."""
    data = redact(data.decode(errors="replace")).encode() if data else b""
    while data:
        data = data[os.write(2, data):]


def engine_log_env(verbose: bool) -> dict[str, str]:
    """The engine's logging settings: by default its output is only kept for error messages, so
    it keeps vLLM's warnings and errors (VLLM_LOGGING_LEVEL as -v/-vv set it: cli.py) and drops
    the rest: transformers' advice, Python warnings, progress bars. With -v, all of it."""
    if verbose:
        return {}
    return {"TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1",
            "TORCH_CPP_LOG_LEVEL": "ERROR"}


class LocalPool:
    """One engine worker process per engine, each with its own environment (GPU set)."""

    def __init__(self, spec: EngineSpec, envs: list[dict[str, str]]):
        self.spec, self.envs, self.size = spec, envs, len(envs)
        self.verbose = log.isEnabledFor(logging.INFO)  # -v: the engines' own output too
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
        self.affinity = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        self.beside: set[int] | None = None  # the cores every engine's model left free
        try:
            for i in range(self.size):
                self._start(i)
        except BaseException:  # an interruption or a failed start: no worker may outlive the pool
            self.close()
            raise

    def _start(self, i: int) -> None:
        with exits.deferred():  # a started worker is always in self.procs, so that close() stops it
            self._spawn(i)

    def _spawn(self, i: int) -> None:
        from pipeline.engines.worker import process_main

        parent, child = self.ctx.Pipe()
        out_read, out_write = self.ctx.Pipe(duplex=False)
        # The engines share this machine's memory (the CPU build sizes its KV cache from it).
        env = {"PIPELINE_ENGINES_PER_NODE": str(self.size), **engine_log_env(self.verbose), **self.envs[i]}
        proc = self.ctx.Process(target=process_main, args=(child, self.spec, env, out_write),
                                name=f"engine-{i}", daemon=False)
        proc.start()
        child.close()  # so that the worker's death reads as EOF here
        out_write.close()
        self.tails[i], self.ready[i] = _Tail(out_read, echo=self.verbose), False
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
                if kind == "ready" and payload.get("cpus_beside_model"):
                    self._beside(payload["cpus_beside_model"])
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

    def _beside(self, cores: list[int]) -> None:
        """This process onto the cores that the engines' models left free (engines/cores.py):
        writing rows must not preempt a model thread."""
        self.beside = set(cores) if self.beside is None else self.beside & set(cores)
        if self.beside:
            pin(os.getpid(), self.beside)

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
        except ProcessLookupError:  # not yet in a group of its own, or gone
            proc.kill()
        proc.join(timeout=10)
        if self.conns[i] is not None:
            self.conns[i].close()
        self.procs[i] = self.conns[i] = None

    def close(self) -> None:
        """Called once every row is committed (or the run stops): nothing in the engines is kept."""
        for i in range(self.size):
            self._kill(i)
        if self.beside and self.affinity:  # a Python session goes on with every core
            pin(os.getpid(), self.affinity)
            self.beside = None

"""Engine workers as Ray actors: the local executor's `EngineLoop` behind a Ray transport.

One actor per engine, each holding a group of `--tensor-parallel-size` GPUs on some node of the
cluster (on a cluster without GPUs, one CPU). The pool keeps at most one call outstanding per
actor: `start` until the engine is up, then `poll`, which carries the requests handed to the actor
since its last call and steps the engine until some finish or `POLL_SECONDS` pass. An actor that
dies (engine crash, out of memory, node lost) reads as a "died" event, exactly like a local
worker process exiting, and the `Dispatcher` re-runs what it held.

Ray is imported only here, and this module only when `--executor ray` is chosen.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from typing import Any

try:
    import ray
    from ray.exceptions import RayError, RayTaskError
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(f"--executor ray needs Ray ({e}): `pip install -e .[ray]`, or `make install`.") from e

from pipeline import exits
from pipeline.engines.base import KINDS, EngineSpec, Result
from pipeline.engines.dispatcher import Event
from pipeline.engines.placement import ray_layout
from pipeline.engines.worker import EngineLoop, why_not_started
from pipeline.records import Request

log = logging.getLogger("pipeline")

POLL_SECONDS = 1.0  # longest an actor steps without reporting back (new requests wait this long at most)
# Driver environment variables the engines need too (KV cache size, offline hub, caches, the
# hub token for gated weights). Storage credentials are not: actors never touch the job's files.
FORWARD_ENV = ("VLLM_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_")
# Kills the actor's process group (vLLM's EngineCore and its workers) once the actor is gone,
# however it went: vLLM's processes do not notice their parent's death, and a SIGKILLed actor
# (ray.kill, out of memory) gets no chance to stop them.
_WATCHDOG = "import os, signal, sys; sys.stdin.buffer.read(); os.killpg(int(sys.argv[1]), signal.SIGKILL)"


class EngineActor:
    """One engine inside a Ray actor; the same EngineLoop a local worker process runs."""

    def __init__(self, spec: EngineSpec, env: dict[str, str]):
        self.spec, self.env = spec, env
        self.loop: EngineLoop | None = None
        if os.getpgrp() != os.getpid():  # Ray usually starts a worker as a group leader already
            os.setsid()
        # The watchdog reads a pipe only this process holds: EOF means the actor is gone.
        self.watchdog = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG, str(os.getpid())],
                                         stdin=subprocess.PIPE)

    def start(self) -> tuple[str, Any]:
        """Build the engine: ("ready", info), or ("fatal", why) when it cannot start."""
        try:
            self.loop = EngineLoop(self.spec, self.env)
        except BaseException as e:  # report why the engine could not start
            return "fatal", why_not_started(self.spec, e)
        return "ready", self.loop.info

    def poll(self, items: list[tuple[int, Request]], max_wait_s: float) -> tuple[list[Result], bool]:
        """Add `items`, then step until some requests finish, the engine is idle, or `max_wait_s`
        pass. Returns the finished Results and whether the engine still holds requests."""
        assert self.loop is not None
        if items:
            self.loop.submit(items)
        deadline = time.monotonic() + max_wait_s
        while True:
            done = self.loop.step()
            busy = self.loop.busy()
            if done or not busy or time.monotonic() >= deadline:
                return done, busy

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.engine.close()


class RayPool:
    """The Pool protocol (dispatcher.py) over Ray actors."""

    def __init__(self, spec: EngineSpec, address: str | None, tensor_parallel: int, data_parallel: int | None):
        self.spec = spec
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:  # no address: join the cluster RAY_ADDRESS or the last `ray start` names, else start one
            if address:
                _check_reachable(address)
            ray.init(address=address or None, include_dashboard=False,
                     logging_level=logging.WARNING)
            exits.install_handlers()  # ray.init puts in its own SIGTERM handler, which exits 15
        self.actors: list[Any] = []
        self.started: list[bool] = []  # the engine is up (its "ready" event went out)
        try:
            self.size, self.resources = ray_layout(tensor_parallel, data_parallel,
                                                  ray.cluster_resources(), needs_gpus=KINDS[spec.kind].needs_gpus)
            self.env = engine_env()
            self.actor_class = ray.remote(EngineActor).options(
                **self.resources, max_restarts=0, scheduling_strategy="SPREAD")
            self.actors = [None] * self.size
            self.calls: dict[Any, int] = {}  # outstanding call → worker
            self.outbox: list[list[tuple[int, Request]]] = [[] for _ in range(self.size)]
            self.busy = [False] * self.size  # an outstanding call is in flight
            self.started = [False] * self.size
            with exits.deferred():  # each handle is kept before a signal is raised, so close() stops it
                for i in range(self.size):
                    self._start(i)
        except BaseException:
            self.close()
            raise
        log.info("ray: %d engine actor(s), each with %s", self.size, self.resources)

    def _start(self, i: int) -> None:
        self.actors[i] = self.actor_class.remote(self.spec, self.env)
        self.outbox[i], self.started[i] = [], False
        self._call(i, self.actors[i].start.remote())

    def _call(self, i: int, ref) -> None:
        self.calls[ref] = i
        self.busy[i] = True

    def _poll(self, i: int) -> None:
        items, self.outbox[i] = self.outbox[i], []
        self._call(i, self.actors[i].poll.remote(items, POLL_SECONDS))

    def submit(self, worker: int, items: list[tuple[int, Request]]) -> None:
        self.outbox[worker].extend(items)
        if not self.busy[worker] and self.started[worker]:
            with exits.deferred():  # the call is recorded before a signal is raised
                self._poll(worker)

    def wait(self, timeout: float) -> list[Event]:
        if not self.calls:
            time.sleep(timeout)
            return []
        # A signal that arrives inside Ray's code (ray.wait, ray.get, an actor's start or call) raises
        # its Interrupted there, and Ray returns it as a SystemError (exit 1, not 3), or a handle is
        # lost: every call into Ray from the run's loop raises it once Ray has returned.
        with exits.deferred():
            return self._events(timeout)

    def _events(self, timeout: float) -> list[Event]:
        refs = list(self.calls)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:  # take every call that has finished, not only the first
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        events = []
        for ref in ready:
            i = self.calls.pop(ref)
            self.busy[i] = False
            try:
                value = ray.get(ref)
            except RayError as e:  # the actor died, or the engine raised (restart() kills it)
                events.append(Event(i, "died", _reason(e)))
                continue
            if not self.started[i]:
                kind, payload = value
                self.started[i] = kind == "ready"
                events.append(Event(i, kind, payload))
                if self.outbox[i] and self.started[i]:
                    self._poll(i)
                continue
            results, engine_busy = value
            if results:
                events.append(Event(i, "results", results))
            if engine_busy or self.outbox[i]:
                self._poll(i)
        return events

    def restart(self, worker: int) -> None:
        with exits.deferred():
            self._kill(worker)
            self._start(worker)

    def _kill(self, i: int) -> None:
        for ref in [r for r, w in self.calls.items() if w == i]:
            del self.calls[ref]
        self.busy[i] = False
        if self.actors[i] is not None:
            ray.kill(self.actors[i], no_restart=True)
            self.actors[i] = None

    def close(self) -> None:
        # Engines that are up release their processes and memory; the rest (still starting,
        # or dead) are killed, and their watchdogs take their processes down with them.
        stops = [a.stop.remote() for a, up in zip(self.actors, self.started, strict=True) if a is not None and up]
        if stops:
            ray.wait(stops, num_returns=len(stops), timeout=30)
        for i in range(len(self.actors)):
            self._kill(i)
        if self.owns_ray:
            ray.shutdown()


def engine_env() -> dict[str, str]:
    """The driver's engine settings (FORWARD_ENV) that every actor gets, on whatever node."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV)}


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast where nothing answers at host:port: Ray itself retries for many minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", "local" or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ValueError(f"no Ray cluster answers at {address} ({e}). Hint: --ray-address takes the head "
                         "node's host:port (6379 by default, or ray://host:10001); leave it out to start "
                         "a local cluster.") from None


def _reason(e: RayError) -> str:
    """Why an actor call failed, in one line: the engine's own exception where there is one."""
    if isinstance(e, RayTaskError) and e.cause is not None:
        e = e.cause
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"

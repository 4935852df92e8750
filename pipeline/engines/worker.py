"""The engine worker loop, shared by the local (process) and Ray (actor) transports.

A worker owns one engine. The executor feeds it requests at any time; the worker keeps the
engine stepping and hands back results as they finish, so there is no barrier per batch.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any

from pipeline.engines.base import KINDS, Engine, EngineSpec, Result
from pipeline.records import Request


def make_engine(spec: EngineSpec) -> Engine:
    """Build the engine a spec names, importing its code here, inside the worker."""
    import importlib

    kind = KINDS.get(spec.kind)
    if kind is None:
        raise ValueError(f"unknown engine {spec.kind!r}; use one of {', '.join(KINDS)}")
    module, cls = kind.target.split(":")
    return getattr(importlib.import_module(module), cls)(spec)


class EngineLoop:
    """One engine plus the requests handed to it but not yet returned."""

    def __init__(self, spec: EngineSpec, env: dict[str, str] | None = None):
        os.environ.update(env or {})
        self.engine: Engine = make_engine(spec)
        self.ready: list[Result] = []

    @property
    def info(self) -> dict[str, Any]:
        return self.engine.info

    def submit(self, items: list[tuple[int, Request]]) -> None:
        self.ready.extend(self.engine.add(items))

    def busy(self) -> bool:
        return bool(self.ready) or self.engine.pending() > 0

    def step(self) -> list[Result]:
        """One engine step; returns what finished (including requests refused at submit)."""
        done, self.ready = self.ready, []
        if self.engine.pending():
            done.extend(self.engine.step())
        return done


def why_not_started(spec: EngineSpec, e: BaseException) -> str:
    """What a user reads when an engine cannot start: which model, the error, where it came from."""
    return f"model {spec.model}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=20)}"


def process_main(conn, spec: EngineSpec, env: dict[str, str], output=None) -> None:
    """Entry point of a local worker process: messages in over `conn`, results back.

    In: ("add", [(seq, Request), ...]). Out: ("ready", info), ("results", [...]),
    ("fatal", message) when the engine cannot start, ("died", message) when it fails later.
    The worker leads its own process group, so that the engine's own processes (vLLM's
    EngineCore) go down with it: the executor kills the group, and the worker kills it when the
    executor is gone. `output`, when given, is the write end of a pipe that takes the worker's
    and its engine's stdout and stderr (the executor shows it and keeps its last lines).
    """
    os.setsid()
    if output is not None:
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
        output.close()
        sys.stdout.reconfigure(line_buffering=True)  # a killed engine's last lines still come out
    try:
        loop = EngineLoop(spec, env)
    except BaseException as e:  # report why the engine could not start, then exit
        conn.send(("fatal", why_not_started(spec, e)))
        os.killpg(0, signal.SIGKILL)
    conn.send(("ready", loop.info))
    try:
        while True:
            # Block for work only when the engine has none; otherwise just drain the pipe.
            while conn.poll(0 if loop.busy() else None):
                loop.submit(conn.recv()[1])
            results = loop.step()
            if results:
                conn.send(("results", results))
    except (EOFError, BrokenPipeError):
        os.killpg(0, signal.SIGKILL)  # the executor is gone: nothing to hand results to
    except BaseException as e:
        try:
            conn.send(("died", f"{type(e).__name__}: {e}"))
        finally:
            os.killpg(0, signal.SIGKILL)

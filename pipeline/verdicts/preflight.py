"""Schema preflight: every distinct JSON schema a job asks the engine to enforce (a request's
`response_format` json_schema, the parameters of its tools where `tool_choice` requires a call)
is compiled once, by content, with vLLM's structured-output backend (xgrammar), on CPU, in a
child process, under a timeout, before a request that needs it reaches the engines. A schema
that does not compile, or takes longer than `--schema-timeout`, gives each of its rows one
error row (code `schema_preflight_failed`, naming the schema and the reason) instead of
stalling or failing the engine. The compile times and grammar sizes go to the report.

With the model's tokenizer (a vLLM run) the schema is compiled as vLLM compiles it
(`GrammarCompiler.compile_json_schema`; size: the compiled grammar's memory); without one (the
fake engine, `validate`) it is converted to its grammar (`Grammar.from_json_schema`; size: the
grammar's text).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from pipeline.records import FailedRequest, Problem, Request

log = logging.getLogger("pipeline")
CODE = "schema_preflight_failed"
START_TIMEOUT = 300.0  # seconds for the compiler process to import xgrammar (and load the tokenizer)
_LOCATION = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")  # "[17:37:08] /project/cpp/x.cc:4950: "


@dataclass
class Compiled:
    kind: str  # "response_format" or "tool"
    name: str
    digest: str
    error: str | None = None
    seconds: float | None = None
    grammar_size: int | None = None
    rows_refused: int = 0

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "schema": self.digest, "error": self.error,
                "seconds": None if self.seconds is None else round(self.seconds, 4),
                "grammar_size": self.grammar_size, "rows_refused": self.rows_refused}


def schemas_of(req: Any) -> list[tuple[str, str, Any]]:
    """(kind, name, schema) of every schema the engine will enforce for a request."""
    if getattr(req, "endpoint", "chat") != "chat":
        return []
    found = []
    fmt = req.response_format or {}
    spec = fmt.get("json_schema") if fmt.get("type") == "json_schema" else None
    if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
        found.append(("response_format", str(spec.get("name") or "response"), spec["schema"]))
    choice = req.tool_choice
    if req.tools and (choice == "required" or (isinstance(choice, dict) and choice.get("type") == "function")):
        for tool in req.tools:
            fn = (tool.get("function") or {}) if isinstance(tool, dict) else {}
            if isinstance(fn.get("parameters"), dict):
                found.append(("tool", str(fn.get("name")), fn["parameters"]))
    return found


def make_preflight(cfg, tokenizer: Callable[[], str | None] | None = None) -> Preflight | None:
    """The job's preflight (--schema-preflight; default: on for the vLLM engine), or None."""
    on = cfg.schema_preflight if cfg.schema_preflight is not None else cfg.engine == "vllm"
    return Preflight(cfg.schema_timeout, tokenizer) if on else None


def screened(items: Iterable[Any], pre: Preflight | None) -> Iterator[Any]:
    """`items` (requests and failed requests) with each request whose schema fails preflight
    turned into its error (a records.FailedRequest); unchanged without a preflight."""
    for item in items:
        problem = pre.problem(item) if pre is not None and isinstance(item, Request) else None
        yield item if problem is None else replace(FailedRequest.about(problem, item), carried=item.carried,
                                                   shape=item.shape)


def failed_text(described: dict[str, Any] | None) -> list[str]:
    """Lines naming the schemas that failed preflight (from `Preflight.describe()`), for validate
    and estimate."""
    return [f"schema failed preflight: {c['kind']} {c['name']!r} ({c['schema']}), {c['rows_refused']:,} rows: "
            f"{c['error']}" for c in (described or {}).get("schemas", ()) if c["error"] is not None]


class Preflight:
    """The job's schemas, compiled once each as requests meet them (`problem(req)`)."""

    def __init__(self, timeout: float, tokenizer: Callable[[], str | None] | None = None):
        self.timeout, self.tokenizer = timeout, tokenizer
        self.compiled: dict[str, Compiled] = {}
        self._proc = self._conn = None
        self.unavailable: str | None = None  # why no schema could be compiled (xgrammar missing)

    def problem(self, req: Any) -> Problem | None:
        """The error of a request one of whose schemas failed preflight, else None."""
        for kind, name, schema in schemas_of(req):
            text = json.dumps(schema, sort_keys=True)
            digest = hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
            found = self.compiled.get(digest)
            if found is None:
                found = self.compiled[digest] = self._compile(Compiled(kind, name, digest), text)
            if found.error is not None:
                found.rows_refused += 1
                where = "response_format" if kind == "response_format" else "tools"
                return Problem(CODE, f"the {kind} schema {name!r} ({digest}) failed preflight with the engine's "
                                     f"structured-output backend (xgrammar): {found.error}", where)
        return None

    def _compile(self, c: Compiled, text: str) -> Compiled:
        if self.unavailable is not None or not self._start():
            return c
        self._conn.send(text)
        if not self._conn.poll(self.timeout):
            self.close()  # the compile may never end: its process goes, a fresh one takes the next schema
            c.error = f"compiling took longer than --schema-timeout {self.timeout:g} s"
            return c
        status, value = self._conn.recv()
        if status == "ok":
            c.seconds, c.grammar_size = value
        else:
            c.error = value
        return c

    def _start(self) -> bool:
        if self._proc is not None:
            return True
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        tokenizer = self.tokenizer() if self.tokenizer is not None else None  # the model's folder or name
        self._proc = ctx.Process(target=_serve, args=(child, tokenizer), daemon=True)
        self._proc.start()
        child.close()
        if self._conn.poll(START_TIMEOUT):
            try:
                status, value = self._conn.recv()
            except EOFError:
                status, value = "error", "the compiler process ended while starting"
            if status == "ready":
                return True
        else:
            value = f"the compiler process did not start in {START_TIMEOUT:g} s"
        self.close()
        self.unavailable = str(value)
        log.warning("schema preflight skipped: %s", value)
        return False

    def describe(self) -> dict[str, Any] | None:
        """For the report: the backend and every schema's figures (None: no schema met)."""
        if not self.compiled and self.unavailable is None:
            return None
        return {"backend": "xgrammar", "with_tokenizer": self.tokenizer is not None, "timeout": self.timeout,
                "unavailable": self.unavailable, "schemas": [c.describe() for c in self.compiled.values()]}

    def failed(self) -> list[Compiled]:
        return [c for c in self.compiled.values() if c.error is not None]

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
            self._conn.close()
        self._proc = self._conn = None


def _serve(conn, tokenizer: str | None) -> None:
    """The compiler process: imports xgrammar once, then compiles each schema text it is sent
    and answers ("ok", (seconds, grammar size)) or ("error", message)."""
    try:
        import xgrammar as xgr

        compiler = None
        if tokenizer is not None:
            from transformers import AutoTokenizer

            info = xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(tokenizer))
            compiler = xgr.GrammarCompiler(info, max_threads=1)
    except Exception as e:  # no xgrammar here (no vLLM installed), or no tokenizer
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            text = conn.recv()
        except EOFError:
            return
        started = time.perf_counter()
        try:
            if compiler is not None:
                size = compiler.compile_json_schema(text).memory_size_bytes
            else:
                size = len(str(xgr.Grammar.from_json_schema(text)))
            conn.send(("ok", (time.perf_counter() - started, size)))
        except Exception as e:
            conn.send(("error", _LOCATION.sub("", str(e)).strip()[:300]))

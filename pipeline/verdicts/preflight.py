"""Schema preflight: every distinct JSON schema a job asks the engine to enforce (a request's
`response_format` json_schema, the parameters of its tools where `tool_choice` requires a call)
is compiled once, by content, with vLLM's structured-output backend (xgrammar), on CPU, in a
child process, under a timeout, before the engines start. A schema that does not compile, or
takes longer than `--schema-timeout`, gives each of its rows one error row (code
`schema_preflight_failed`, naming the schema and the reason) instead of stalling or failing the
engine. The compile times and grammar sizes go to the report.

Up front: while its engines load, a run reads the requests it has left once (`prepare` each; no
image fetched, nothing held but each distinct schema's figures) and compiles every distinct
schema it meets, before any request reaches an engine: up to `CAP` schemas, in the first
`PREPASS_ROWS` requests (so that a job of tens of millions of rows does not wait for a whole
extra pass before its first request). A schema met after those is compiled when its first
request comes up, under the same timeout. The job's `--check-regex` is compiled by
the backend too (`compile_checks`), so a pattern the engine could not enforce is named before
the run (the check itself runs with Python's `re`).

With the model's tokenizer (a vLLM run) the schema is compiled as vLLM compiles it
(`GrammarCompiler.compile_json_schema`, `compile_regex`; size: the compiled grammar's memory);
without one (the fake engine, `validate`) it is converted to its grammar
(`Grammar.from_json_schema`, `from_regex`; size: the grammar's text).
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

from pipeline.endpoints import ENDPOINTS
from pipeline.records import FailedRequest, Problem, Request

log = logging.getLogger("pipeline")
CODE = "schema_preflight_failed"
CAP = 10_000  # distinct schemas the pre-pass compiles up front at most (their figures are held)
PREPASS_ROWS = 1_000_000  # requests the pre-pass reads at most (about as long as a GPU engine takes to load)
START_TIMEOUT = 300.0  # seconds for the compiler process to import xgrammar (and load the tokenizer)
_LOCATION = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")  # "[17:37:08] /project/cpp/x.cc:4950: "


@dataclass
class Compiled:
    kind: str  # "response_format", "tool" or "check_regex"
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


REGEX = "check_regex"


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def schemas_of(req: Any) -> list[tuple[str, str, Any]]:
    """(kind, name, schema) of every schema the engine will enforce for a request."""
    if not ENDPOINTS[getattr(req, "endpoint", "chat")].converses:
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
    return Preflight(cfg.schema_timeout, tokenizer, getattr(cfg, "check_regex", None)) if on else None


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
    return [regex_text(c) if c["kind"] == REGEX else
            f"schema failed preflight: {c['kind']} {c['name']!r} ({c['schema']}), {c['rows_refused']:,} rows: "
            f"{c['error']}" for c in (described or {}).get("schemas", ()) if c["error"] is not None]


def regex_text(c: dict[str, Any]) -> str:
    return (
        f"--check-regex {c['name']!r} failed preflight with the engine's structured-output backend (xgrammar): "
        f"{c['error'].rstrip('.')}; the check still runs with Python's re, but the engine could not enforce this "
        "pattern"
    )


class Preflight:
    """The job's schemas, compiled once each: up front (`prepare(req)`, the pre-pass), else as
    requests meet them (`problem(req)`)."""

    def __init__(self, timeout: float, tokenizer: Callable[[], str | None] | None = None,
                 check_regex: str | None = None, cap: int | None = None):
        self.timeout, self.tokenizer, self.check_regex = timeout, tokenizer, check_regex
        self.cap = CAP if cap is None else cap
        self.compiled: dict[str, Compiled] = {}
        self._proc = self._conn = None
        self.unavailable: str | None = None  # why no schema could be compiled (xgrammar missing)
        self.prepass: dict[str, Any] | None = None  # the up-front pass's figures (run.py fills them)

    def _get(self, kind: str, name: str, text: str) -> Compiled:
        """The schema's (or regex's) figures, compiled the first time it is met."""
        digest = _digest(f"{REGEX}:{text}" if kind == REGEX else text)
        found = self.compiled.get(digest)
        if found is None:
            found = self.compiled[digest] = self._compile(Compiled(kind, name, digest), text)
        return found

    def prepare(self, req: Any) -> bool:
        """The pre-pass: compile each schema of `req` not met yet, no row counted. False once
        `cap` distinct schemas are held (later ones are compiled as their requests come up)."""
        for kind, name, schema in schemas_of(req):
            text = json.dumps(schema, sort_keys=True)
            if len(self.compiled) >= self.cap and _digest(text) not in self.compiled:
                return False
            self._get(kind, name, text)
        return True

    def compile_checks(self) -> str | None:
        """Compile the job's --check-regex with the backend; what is wrong with it there, or None."""
        if not self.check_regex:
            return None
        found = self._get(REGEX, self.check_regex, self.check_regex)
        return None if found.error is None else regex_text(found.describe())

    def problem(self, req: Any) -> Problem | None:
        """The error of a request one of whose schemas failed preflight, else None."""
        for kind, name, schema in schemas_of(req):
            found = self._get(kind, name, json.dumps(schema, sort_keys=True))
            digest = found.digest
            if found.error is not None:
                found.rows_refused += 1
                where = "response_format" if kind == "response_format" else "tools"
                return Problem(CODE, f"the {kind} schema {name!r} ({digest}) failed preflight with the engine's "
                                     f"structured-output backend (xgrammar): {found.error}", where)
        return None

    def _compile(self, c: Compiled, text: str) -> Compiled:
        if self.unavailable is not None or not self._start():
            return c
        self._conn.send(("regex" if c.kind == REGEX else "json", text))
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
                "unavailable": self.unavailable, "prepass": self.prepass,
                "schemas": [c.describe() for c in self.compiled.values()]}

    def failed(self) -> list[Compiled]:
        return [c for c in self.compiled.values() if c.error is not None]

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
            self._conn.close()
        self._proc = self._conn = None


def _serve(conn, tokenizer: str | None) -> None:
    """The compiler process: imports xgrammar once, then compiles each (mode, text) it is sent,
    a JSON schema ("json") or a regular expression ("regex"), and answers ("ok", (seconds,
    grammar size)) or ("error", message)."""
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
            mode, text = conn.recv()
        except EOFError:
            return
        started = time.perf_counter()
        try:
            if compiler is not None:
                compile_it = compiler.compile_regex if mode == "regex" else compiler.compile_json_schema
                size = compile_it(text).memory_size_bytes
            else:
                size = len(str((xgr.Grammar.from_regex if mode == "regex" else xgr.Grammar.from_json_schema)(text)))
            conn.send(("ok", (time.perf_counter() - started, size)))
        except Exception as e:
            conn.send(("error", _LOCATION.sub("", str(e)).strip()[:300]))

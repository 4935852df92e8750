"""`pipeline run` as a chain of steps: plan → claim → requests → engines → rows → parts → report.

`plan` is free of side effects and checks everything that can fail before anything is written:
the job (inputs, template, model names, price: `Job.open`), the output folder's state and
ownership, engine placement. A dry run is the plan plus a preview. Only then does `execute`
claim the output (the lease), stream the requests not yet committed through the engines, and
commit their rows.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline import exits, options
from pipeline.commands.learn import RunLengths, eta_model, learn
from pipeline.commands.progress import Progress
from pipeline.engines.base import KINDS, EngineSpec, Result
from pipeline.engines.cache_plan import CachePlan
from pipeline.engines.dispatcher import Dispatcher, in_flight_window
from pipeline.engines.identical import Identical
from pipeline.engines.local import LocalPool
from pipeline.engines.placement import local_envs
from pipeline.exits import UserError
from pipeline.intake.order import prefix_key
from pipeline.job import Job, open_resumed
from pipeline.models.names import check_model
from pipeline.options import command_line
from pipeline.output.folder import (
    Committed,
    Output,
    OutputConflict,
    PartWriter,
    State,
    conflict_message,
    fingerprint,
    refuse_foreign,
)
from pipeline.output.formats import LINE_FORMATS
from pipeline.output.humane import trial_text
from pipeline.output.rows import dataset_rows, error_row, result_row
from pipeline.output.stats import total_stats
from pipeline.records import FailedRequest, Request
from pipeline.storage import Location
from pipeline.verdicts import preflight
from pipeline.verdicts.checks import expects_json, row_check
from pipeline.verdicts.judge import mark
from pipeline.verdicts.preflight import Preflight, make_preflight, screened
from pipeline.verdicts.repairs import RepairPolicy, Repairs
from pipeline.verdicts.state import too_many_bad_rows
from pipeline.version import __version__

log = logging.getLogger("pipeline")
RERUN = "committed output is kept; rerun the same command to finish"


@dataclass
class Outcome:
    report: dict[str, Any]
    exit_code: int
    message: str = ""
    error: BaseException | None = None  # what stopped the run: the Python API raises this object


@dataclass
class Plan:
    """Everything a run needs, computed without writing anything: the job, and the output."""

    job: Job
    detail: dict[str, Any]  # the job's fingerprint detail
    out: Output
    state: State
    envs: list[dict[str, str]] = field(default_factory=list)  # one per local engine
    check: Callable | None = None  # the job's row check (--check, --check-schema, --check-regex)
    repair: RepairPolicy | None = None  # --repair
    preflight: Preflight | None = None  # compiles the job's schemas before the engines start

    @property
    def same_job(self) -> bool:
        return self.state.fingerprint == fingerprint(self.detail)

    @property
    def complete(self) -> bool:
        return self.state.complete and self.same_job

    @property
    def replaces_output(self) -> bool:
        return self.state.manifest is not None and not self.same_job

    def committed(self) -> Committed:
        return self.state.committed if self.same_job else Committed()


def plan(cfg) -> Plan:
    """Check the whole job without side effects; raises what the user must fix."""
    if KINDS[cfg.engine].loads_model and cfg.model:
        check_model(cfg.model)  # a mistyped name fails here, not after three engine starts
    out = Output(Location.of(cfg.output, cfg.storage_options), cfg.format)
    out.check_not_file()
    if cfg.split_errors and cfg.format not in LINE_FORMATS:
        raise UserError(f"--split-errors needs a line format (--format {'|'.join(LINE_FORMATS)}); "
                        "Parquet output keeps failed requests in its error column")
    state = out.read_state()
    job = open_resumed(cfg, out.loc, state.records, state.fingerprint,
                       lambda detail: fingerprint(detail) == state.fingerprint)
    if job.layout is not None:
        out.schema = job.layout.schema
    p = Plan(job, job.fingerprint(), out, state)
    if p.same_job and not p.complete and (changed := out.keep_committed_columns(state.records)):
        log.warning("%s", changed)
    too_many_bad_rows(cfg.max_bad_rows, {})  # a malformed --max-bad-rows fails here
    try:
        p.check = row_check(cfg.check, cfg.check_schema, cfg.check_regex)
        p.repair = RepairPolicy.of(cfg.repair, cfg.repair_attempts, cfg.repair_max_tokens, expects_json(p.check))
        # the model's tokenizer, resolved only when a schema is met (a dry run resolves no model)
        tokenizer = (lambda: cfg.tokenizer or p.job.engine_spec().model) if KINDS[cfg.engine].loads_model else None
        p.preflight = make_preflight(cfg, tokenizer)
    except ValueError as e:
        raise UserError(str(e)) from None
    if p.complete:
        return p
    refuse_foreign(out, p.state, cfg.allow_foreign_files)
    if p.replaces_output and not cfg.overwrite:
        raise OutputConflict(conflict_message(out, p.state, p.detail))
    if cfg.executor == "local":
        p.envs = local_envs(cfg.tensor_parallel_size, cfg.data_parallel_size,
                            gpus=None if KINDS[cfg.engine].needs_gpus else 0)
    return p


def run(cfg, engines: Callable[[Plan], Dispatcher] | None = None) -> Outcome:
    """Plan, then finish the job (or say it is complete, or preview it with --dry-run): the one
    logic of both faces, the command line and `pipeline.run`. Errors found before the run starts
    propagate; what stops a started run is its Outcome's `error` (its rows committed first).
    `engines(plan)`: engines already started (a Python session's), used and left running."""
    started = time.monotonic()
    p = plan(cfg)
    if p.complete:
        report = p.out.read_report()
        done = f"{p.out.display} is already complete; nothing to do"
        bad = too_many_bad_rows(cfg.max_bad_rows, report)
        return Outcome(report, exits.OK, done) if bad is None else Outcome(report, bad.exit_code, f"{done}\n{bad}", bad)
    if cfg.dry_run:
        return Outcome({}, exits.OK, preview(p))
    return execute(p, started, engines)


@dataclass
class RunStats:
    """What a run counts as it goes."""

    started: float
    resumed: int = 0  # rows committed by an earlier attempt, skipped
    rows: int = 0  # requests whose rows this run wrote
    handed: int = 0  # requests handed to the engines
    answered: int = 0  # ... and answered by them
    generated: int = 0  # completion tokens
    repairs: Counter = field(default_factory=Counter)  # repaired requests sent, by the verdict repaired
    lengths: RunLengths = field(default_factory=RunLengths)  # for the calibration file (learn.py)


def not_committed(p: Plan, committed: Committed, stats: RunStats,
                  records: list[dict[str, Any]] | None = None) -> Iterator[Request | FailedRequest]:
    """The job's rows less those an earlier attempt committed (counted as resumed), skipped before
    their images are fetched; with the commit `records`, finished files and committed prefixes
    are not read at all (intake/resume.py)."""
    resume = p.job.resume(committed, records, p.out.loc, p.out.fmt) if records is not None else None
    if resume is not None:  # a whole job: each committed line is skipped, read or not
        stats.resumed += committed.count

    def done(item: Request | FailedRequest) -> bool:
        if (item.file, item.line) in committed:
            stats.resumed += resume is None
            return True
        return False

    return p.job.rows(skip=done, resume=resume)


def preview(p: Plan) -> str:
    """What a run would do: read and validate everything, write and delete nothing."""
    stats = RunStats(time.monotonic())
    invalid = Counter(isinstance(item, FailedRequest) for item in not_committed(p, p.committed(), stats))
    replace = (" (it holds a different job's output, which --overwrite would discard)"
               if p.replaces_output else "")
    trial = trial_text(p.job.trial())
    return (f"Would process {invalid[False]} requests on {p.job.model_name} ({invalid[True]} invalid "
            f"rows would get error rows, {stats.resumed} already done) into {p.out.display}{replace}"
            f"{f'; {trial}' if trial else ''}. Nothing was written.")


class RowSink:
    """Where requests end: each one's rows to the writer, counted, on the progress bar."""

    def __init__(self, p: Plan, writer: PartWriter, stats: RunStats, progress: Progress,
                 pending: dict[tuple[int, int], Any] | None = None):
        self.p, self.writer, self.stats, self.progress = p, writer, stats, progress
        self.repairs = Repairs(p.repair, stats.repairs) if p.repair else None
        self.resend: Callable[[Request], None] | None = None  # hands a repaired request to the engines
        self.pending = pending or {}  # rows a killed run held for a repair: they go on from there

    def engine_requests(self, items: Iterable[Request | FailedRequest]) -> Iterator[Request]:
        """The requests for the engines; failed ones get their error rows here."""
        for item in screened(items, self.p.preflight):  # a schema that fails preflight: error rows
            if isinstance(item, FailedRequest):
                self.write(item, error_row(item, self.p.job.model_name))
            else:
                held = self.pending.pop((item.file, item.line), None)
                if held is not None and self.repairs is not None:
                    item = self.repairs.resume(item, held)  # its next attempt, not its first
                self.stats.handed += 1
                yield item

    def answered(self, req: Request, res: Result) -> None:
        job = self.p.job
        self.stats.answered += 1
        self.stats.generated += res.completion_tokens or 0
        self.stats.lengths.add(req, res)
        rows = self.judged(req, result_row(req, res, job.model_name, job.price))
        if self.repairs is not None and self.resend is not None:
            again = self.repairs.next_request(req, rows)
            if again is not None:  # held back: its repair goes to the same engines
                self.writer.hold(req.file, req.line, self.repairs.pending(again))  # durable
                self.stats.handed += 1
                self.resend(again)
                return
            rows = self.repairs.finish(req, rows)
        self.add(req, rows, res.completion_tokens or 0)

    def judged(self, item: Request | FailedRequest, row: dict[str, Any]) -> list[dict[str, Any]]:
        """The request's output rows, each with its verdict."""
        rows = dataset_rows(row, item, self.p.job.layout)
        return mark(rows, item if isinstance(item, Request) else None, self.p.check)

    def write(self, item: Request | FailedRequest, row: dict[str, Any]) -> None:
        self.add(item, self.judged(item, row))

    def add(self, item: Request | FailedRequest, rows: list[dict[str, Any]], tokens: int = 0) -> None:
        self.writer.add_all(rows, item.file)
        self.stats.rows += 1
        self.progress.update(1, tokens)


def execute(p: Plan, started: float, engines: Callable[[Plan], Dispatcher] | None = None, *,
            finish: bool = True) -> Outcome:
    """Claim the output, run what is not committed yet, commit its rows, finish the job (with
    `finish` False: commit only, as `estimate --sample-run` does). The engines start at the first
    request that needs them: a job whose rows left are all error rows (or none) starts none."""
    cfg, stats = p.job.cfg, RunStats(started)
    with p.out.claim(p.detail, overwrite=cfg.overwrite, allow_foreign=cfg.allow_foreign_files,
                     lease_timeout=cfg.lease_timeout, about=_about(p)) as claim, contextlib.ExitStack() as stack:
        committed = claim.committed()
        claim.positions, records = p.job.positions, list(claim.records)
        progress = Progress(p.job.total(), initial=committed.count, quiet=cfg.quiet,
                            eta=eta_model(p.job, max(len(p.envs), 1)))
        error, ordered, dispatcher = None, None, None
        identical = Identical(cfg.identical_once is not False)
        if p.preflight is not None:
            stack.callback(p.preflight.close)
        try:
            with PartWriter(claim, cfg.checkpoint_every, cfg.checkpoint_seconds) as writer:
                sink = RowSink(p, writer, stats, progress, claim.pending)
                items, head = _first_request(not_committed(p, committed, stats, records))
                ordered = p.job.ordered(itertools.chain(head, items))
                if not any(isinstance(item, Request) for item in head):  # the stream ended first
                    collections.deque(sink.engine_requests(ordered), maxlen=0)  # its error rows; no engine
                else:
                    # closed after the marker: every row is committed, engine shutdown need not delay it
                    dispatcher = engines(p) if engines else stack.enter_context(contextlib.closing(start_engines(p)))
                    preflight_all(p, committed, records)  # while the engines load, before any request
                    sink.resend = dispatcher.requeued.append  # repairs run first, in the same engines
                    for done in identical.results(dispatcher, sink.engine_requests(ordered)):
                        if done is None:  # a tick: commit on time even when nothing finishes
                            writer.tick()
                        else:
                            sink.answered(*done)
            _check_one_to_one(stats)
        except exits.STOPS as e:  # interrupted, engines keep dying, the engine cannot start
            error = _stopped(e)
        finally:
            progress.close()
        report = {**_report(p, stats, claim, dispatcher, ordered), **identical.describe()}
        if error is None and not finish:
            return Outcome(report, exits.OK)
        if error is None:
            learn(p, report, stats.lengths, dispatcher)
        if error is None and not claim.finish(report):
            error = exits.Incomplete(f"another run completed {p.out.display} first; this run's parts are kept "
                                     "but not marked")
        if error is None:
            error = too_many_bad_rows(cfg.max_bad_rows, report)
        if error is None:
            return Outcome(report, exits.OK)
        hint = getattr(error, "hint", "")
        return Outcome(report, exits.code_of(error), f"{error}\n{hint}" if hint else str(error), error)


def preflight_all(p: Plan, committed: Committed, records: list[dict[str, Any]]) -> None:
    """While the engines load, before any request reaches one: every distinct schema of the rows
    not committed yet compiled (up to preflight.CAP schemas, in the first preflight.PREPASS_ROWS
    requests), and the --check-regex. A pre-pass over the input: the rows are read and
    validated, none handed on, no image fetched, no position recorded."""
    pre = p.preflight
    if pre is None:
        return
    started, seen, capped = time.monotonic(), 0, False
    problem = pre.compile_checks()
    if problem:
        log.warning("%s", problem)

    def visit(item: Request | FailedRequest) -> bool:
        nonlocal seen, capped
        if seen >= preflight.PREPASS_ROWS:
            return False  # handed on: the pre-pass stops at it
        if isinstance(item, Request) and (item.file, item.line) not in committed:
            seen += 1
            capped = not pre.prepare(item) or capped
        return True  # read, never handed on

    rows = p.job.rows(skip=visit, resume=p.job.resume(committed, records, p.out.loc, p.out.fmt), learn=False)
    with contextlib.closing(rows):
        rows_left = next(rows, None) is not None
    pre.prepass = {"requests": seen, "schemas": sum(c.kind != "check_regex" for c in pre.compiled.values()),
                   "capped": capped, "cap": pre.cap, "rows_left": rows_left, "row_budget": preflight.PREPASS_ROWS,
                   "seconds": round(time.monotonic() - started, 3)}


def _first_request(items: Iterator[Request | FailedRequest]) -> tuple[Iterator[Request | FailedRequest], list]:
    """The stream read up to its first request (in input order, before any reordering): the items
    read so far, and the rest."""
    head: list[Request | FailedRequest] = []
    for item in items:
        head.append(item)
        if isinstance(item, Request):
            break
    return items, head


def _stopped(e: BaseException) -> exits.PipelineError:
    """The error that stopped a run in order, its finished rows committed: an error of the
    hierarchy is itself; an interruption becomes Incomplete (caused by it)."""
    if isinstance(e, (exits.Interrupted, KeyboardInterrupt)):
        stopped = exits.Incomplete(f"interrupted: finished rows were committed; {RERUN}")
        stopped.hint = ""
        stopped.__cause__ = e
        return stopped
    return e


def _check_one_to_one(stats: RunStats) -> None:
    """The seam's invariant: every request handed to the engines came back exactly once."""
    if stats.handed != stats.answered:
        raise RuntimeError(f"{stats.handed} requests went to the engines and {stats.answered} came back: "
                           "a bug of ours; the job is not marked complete. Please report it")


def _about(p: Plan) -> dict[str, Any]:
    """Who is running the job, recorded with the attempt in the manifest."""
    cfg = p.job.cfg
    return {"rows_total": p.job.total(), "host": socket.gethostname(), "pid": os.getpid(),
            "engines": cfg.data_parallel_size or max(len(p.envs), 1),
            "command": command_line(options.RUN, cfg.inputs, asdict(cfg))}


def _report(p: Plan, stats: RunStats, claim, dispatcher, ordered) -> dict[str, Any]:
    cfg, wall = p.job.cfg, time.monotonic() - stats.started
    price = p.job.price
    return {
        **total_stats(claim.records),
        "resumed": stats.resumed,
        "wall_seconds": round(wall, 3),
        "requests_per_second": round(stats.rows / wall, 3),
        "generated_tokens_per_second": round(stats.generated / wall, 3),
        "model": p.job.model_name,
        "price": None if price is None else price.describe(),
        "output": p.out.display,
        "parts": len(claim.records),
        "engines": dispatcher.pool.size if dispatcher else 0,
        "engine": dispatcher.engine_info if dispatcher else None,
        "engine_restarts": dispatcher.restarts if dispatcher else 0,
        **(dispatcher.cache_plan.describe() if dispatcher and dispatcher.cache_plan else {"cache_plan": None}),
        "repairs_sent": dict(stats.repairs),  # this run's repaired requests, by the verdict repaired
        "preflight": p.preflight.describe() if p.preflight else None,  # this run's schemas: compile time, size
        **(ordered.describe() if hasattr(ordered, "describe") else {"order": cfg.order}),
        "trial": p.job.trial(),
        "job_name": cfg.job_name,
        "pipeline_version": __version__,
        "date": cfg.date,
        "run_id": cfg.run_id,
    }


def start_engines(p: Plan) -> Dispatcher:
    """The plan's engines, started, behind a dispatcher (closing it stops them)."""
    cfg = p.job.cfg
    dispatcher = Dispatcher(_make_pool(cfg, p.job.engine_spec(), p.envs),
                            window=in_flight_window(cfg.max_in_flight, cfg.max_num_seqs),
                            window_bytes=cfg.max_in_flight_bytes,
                            max_restarts=cfg.max_engine_restarts)
    dispatcher.cache_plan = CachePlan(prefix_key)
    return dispatcher


def _make_pool(cfg, spec: EngineSpec, envs: list[dict[str, str]]):
    if cfg.executor == "ray":
        from pipeline.engines.ray import RayPool

        return RayPool(spec, cfg.ray_address, cfg.tensor_parallel_size, cfg.data_parallel_size)
    return LocalPool(spec, envs)

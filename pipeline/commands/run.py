"""`pipeline run` as a chain of steps: plan → claim → requests → engines → rows → parts → report.

`plan` is free of side effects and checks everything that can fail before anything is written:
inputs, the output folder's state and ownership, model names, price, engine placement. A dry
run is the plan plus a preview. Only then does `execute` claim the output (the lease), stream
the requests not yet committed through the engines, and commit their rows.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline import __version__, exits, options
from pipeline.commands.progress import Progress
from pipeline.engines.base import KINDS, EngineSpec
from pipeline.engines.dispatcher import Dispatcher, EngineStartError, TooManyRestarts
from pipeline.engines.local import LocalPool
from pipeline.engines.placement import local_envs
from pipeline.intake.order import PrefixOrder, order
from pipeline.intake.reader import Scan, scan
from pipeline.intake.requests import Context
from pipeline.intake.sources import InputFile, list_inputs
from pipeline.intake.stream import request_stream, run_context
from pipeline.intake.templates import OPTION_NAMES as TEMPLATE_OPTIONS
from pipeline.intake.templates import TemplateSpec
from pipeline.job import RunConfig
from pipeline.models.adapters import Adapter, adapters_fingerprint, lora_engine_args
from pipeline.models.names import output_name, resolve_model
from pipeline.models.prices import Price, find_price
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
from pipeline.output.layout import Layout
from pipeline.output.lease import OutputBusy
from pipeline.output.rows import dataset_rows, error_row, result_row
from pipeline.output.stats import total_stats
from pipeline.records import FailedRequest, Request
from pipeline.storage import Location, StorageError

log = logging.getLogger("pipeline")
RERUN = "committed output is kept; rerun the same command to finish"


@dataclass
class Outcome:
    report: dict[str, Any]
    exit_code: int
    message: str = ""


@dataclass
class Plan:
    """Everything a run needs, computed without writing anything."""

    cfg: RunConfig
    files: list[InputFile]
    scans: list[Scan]
    detail: dict[str, Any]
    out: Output
    state: State
    model_name: str
    price: Price | None
    ctx: Context
    envs: list[dict[str, str]] = field(default_factory=list)
    spec: TemplateSpec | None = None  # a template job's (None: request files)
    layout: Layout | None = None  # its extra output columns
    adapters: tuple[Adapter, ...] = ()  # --lora

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
        return self.state.committed() if self.same_job else Committed()

    def total(self) -> int | None:
        counts = [s.rows for s in self.scans]
        return None if any(c is None for c in counts) else sum(counts)

    def rows(self) -> Iterator[Request | FailedRequest]:
        return request_stream(self.files, self.scans, self.ctx, self.spec,
                              max_line_bytes=self.cfg.max_line_bytes, layout=self.layout)


def plan(cfg: RunConfig) -> Plan:
    """Check the whole job without side effects; raises what the user must fix."""
    out = Output(Location.of(cfg.output, cfg.storage_options), cfg.format)
    out.check_not_file()
    spec = TemplateSpec.from_values({n: getattr(cfg, n) for n in TEMPLATE_OPTIONS})
    files = list_inputs(list(cfg.inputs), cfg.storage_options, exclude=out.loc)
    layout = spec.layout(files) if spec else None
    scans = [scan(f, digest=cfg.verify_content) for f in files]
    detail = {"inputs": [f.fingerprint(s.digest) for f, s in zip(files, scans, strict=True)],
              "options": cfg.output_options()}
    if spec is not None:
        detail["template"] = spec.fingerprint()
        out.schema = layout.schema
    state = out.read_state()
    model_name = output_name(cfg.model, cfg.served_model_name)
    price = find_price(model_name, provider=cfg.provider, price_input=cfg.price_input,
                       price_output=cfg.price_output)
    ctx, loras = run_context(cfg.model, cfg.served_model_name, cfg.max_n, cfg.route, cfg.lora)
    if loras:
        detail["adapters"] = adapters_fingerprint(loras)
    p = Plan(cfg, files, scans, detail, out, state, model_name, price, ctx, spec=spec, layout=layout,
             adapters=loras)
    if p.complete:
        return p
    refuse_foreign(out, state, cfg.allow_foreign_files)
    if p.replaces_output and not cfg.overwrite:
        raise OutputConflict(conflict_message(out, state, detail))
    if cfg.executor == "local":
        p.envs = local_envs(cfg.tensor_parallel_size, cfg.data_parallel_size,
                            gpus=None if KINDS[cfg.engine].needs_gpus else 0)
    return p


def run(cfg: RunConfig) -> Outcome:
    started = time.monotonic()
    try:
        p = plan(cfg)
        if p.complete:
            return Outcome(_read_report(p), exits.OK, f"{p.out.display} is already complete; nothing to do")
        if cfg.dry_run:
            return Outcome({}, exits.OK, preview(p))
        return execute(p, started)
    except OutputBusy as e:
        return Outcome({}, exits.INCOMPLETE, str(e))
    except StorageError as e:
        return Outcome({}, exits.INCOMPLETE, f"{e}\n{RERUN} once storage works again")


def preview(p: Plan) -> str:
    """What a run would do: read and validate everything, write and delete nothing."""
    committed = p.committed()
    counts = {"run": 0, "invalid": 0, "resumed": 0}
    for item in p.rows():
        if (item.file, item.line) in committed:
            counts["resumed"] += 1
        else:
            counts["invalid" if isinstance(item, FailedRequest) else "run"] += 1
    replace = (" (it holds a different job's output, which --overwrite would discard)"
               if p.replaces_output else "")
    return (f"Would process {counts['run']} requests on {p.model_name} ({counts['invalid']} invalid "
            f"rows would get error rows, {counts['resumed']} already done) into {p.out.display}{replace}. "
            "Nothing was written.")


def execute(p: Plan, started: float) -> Outcome:
    cfg = p.cfg
    about = {"rows_total": p.total(), "host": socket.gethostname(), "pid": os.getpid(),
             "command": command_line(options.RUN, cfg.inputs, asdict(cfg))}
    claim = p.out.claim(p.detail, overwrite=cfg.overwrite, allow_foreign=cfg.allow_foreign_files,
                        lease_timeout=cfg.lease_timeout, about=about)
    pool = None
    try:
        committed = claim.committed()
        progress = Progress(p.total(), quiet=cfg.quiet)
        progress.done = committed.count
        if progress.bar is not None:
            progress.bar.update(committed.count)
        writer = PartWriter(claim, cfg.checkpoint_every, cfg.checkpoint_seconds)
        counts = {"resumed": 0, "rows": 0, "generated": 0}

        def fresh() -> Iterator[Request | FailedRequest]:
            for item in p.rows():
                if (item.file, item.line) in committed:
                    counts["resumed"] += 1
                else:
                    yield item

        # with --order prefix or auto, reading starts now, in a thread, while the engines start
        ordered = order(fresh(), cfg.order, buffer=cfg.order_buffer)

        def pending() -> Iterator[Request]:
            for item in ordered:
                if isinstance(item, FailedRequest):
                    writer.add_all(dataset_rows(error_row(item, p.model_name), item, p.layout), item.file)
                    counts["rows"] += 1
                    progress.update(1)
                else:
                    yield item

        spec = EngineSpec(
            kind=cfg.engine, model=resolve_model(cfg.model) if KINDS[cfg.engine].loads_model else cfg.model,
            engine_args={**lora_engine_args(p.adapters), **cfg.engine_args()}, seed_policy=cfg.seed_on_cpu,
            tool_parser=cfg.tool_call_parser, options=cfg.engine_options,
            lora={a.name: a.path for a in p.adapters},
        )
        # keep every engine's batch full between refills (vLLM runs up to 1024 sequences on big GPUs)
        window = cfg.max_in_flight or max(2048, 2 * (cfg.max_num_seqs or 0))
        message, code = "", exits.OK
        try:
            pool = _make_pool(cfg, spec, p.envs)
            dispatcher = Dispatcher(pool, window=window, max_restarts=cfg.max_engine_restarts)
            for done in dispatcher.results(pending()):
                if done is None:  # a tick: commit on time even when nothing finishes
                    writer.tick()
                    continue
                req, res = done
                writer.add_all(dataset_rows(result_row(req, res, p.model_name, p.price), req, p.layout), req.file)
                counts["rows"] += 1
                counts["generated"] += res.completion_tokens or 0
                progress.update(1, res.completion_tokens or 0)
            writer.flush()
        except (exits.Interrupted, KeyboardInterrupt):
            writer.flush()
            message, code = f"interrupted: finished rows were committed; {RERUN}", exits.INCOMPLETE
        except TooManyRestarts as e:
            writer.flush()
            message, code = str(e), exits.INCOMPLETE
        except EngineStartError as e:
            writer.flush()
            message, code = f"{e}\n{RERUN} once the engine starts", exits.ENGINE_START
        finally:
            progress.close()
        wall = time.monotonic() - started
        report = {
            **total_stats(claim.records),
            "resumed": counts["resumed"],
            "wall_seconds": round(wall, 3),
            "requests_per_second": round(counts["rows"] / wall, 3),
            "generated_tokens_per_second": round(counts["generated"] / wall, 3),
            "model": p.model_name,
            "price": None if p.price is None else f"${p.price.input}/M input, ${p.price.output}/M output ({p.price.source})",
            "output": p.out.display,
            "parts": len(claim.records),
            "engines": pool.size if pool else 0,
            "engine": dispatcher.engine_info if pool else None,
            "engine_restarts": dispatcher.restarts if pool else 0,
            **(ordered.describe() if isinstance(ordered, PrefixOrder) else {"order": cfg.order}),
            "pipeline_version": __version__,
            "date": cfg.date,
            "run_id": cfg.run_id,
        }
        if code == exits.OK and not claim.finish(report):
            message = f"another run completed {p.out.display} first; this run's parts are kept but not marked"
            code = exits.INCOMPLETE
        return Outcome(report, code, message)
    except StorageError as e:
        return Outcome({}, exits.INCOMPLETE, f"{e}\n{RERUN} once storage works again")
    finally:
        if pool is not None:
            pool.close()  # after the marker: every row is committed, engine shutdown need not delay it
        claim.release()


def _read_report(p: Plan) -> dict[str, Any]:
    import json

    data = p.out.loc.child("_report.json").cat()
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return {}


def _make_pool(cfg: RunConfig, spec: EngineSpec, envs: list[dict[str, str]]):
    if cfg.executor == "ray":
        from pipeline.engines.ray import RayPool

        return RayPool(spec, cfg.ray_address, cfg.tensor_parallel_size, cfg.data_parallel_size)
    return LocalPool(spec, envs)

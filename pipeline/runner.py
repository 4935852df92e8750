"""`pipeline run`: inputs → validation → resume filter → engines → part files → report."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import __version__
from .config import RunConfig, engine_envs
from .cost import find_price
from .engine import EngineSpec
from .executor import Dispatcher, EngineStartError, LocalPool, TooManyRestarts
from .io import InputFile, filesystem, list_inputs, read_all
from .models import canonical_name, resolve_model
from .output import OutputDir, PartWriter, StorageError, fingerprint
from .progress import Progress
from .report import total_stats
from .requests import Context, Request, RowError, validate_rows
from .rows import error_row, result_row

log = logging.getLogger("pipeline")

EXIT_OK = 0
EXIT_INCOMPLETE = 3
EXIT_ENGINE_START = 4


class Interrupted(Exception):
    """SIGTERM or SIGINT: commit what is finished and stop."""


@dataclass
class Outcome:
    report: dict[str, Any]
    exit_code: int
    message: str = ""


def count_requests(files: list[InputFile], cfg: RunConfig) -> int | None:
    """A cheap total for the progress bar: Parquet metadata, or newlines of plain local files."""
    import pyarrow.parquet as pq

    total = 0
    for f in files:
        fs, _ = filesystem(f.url if "://" in f.url else f.path, cfg.storage_options)
        if f.format == "parquet":
            with fs.open(f.path, "rb") as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        elif f.compression is None and "://" not in f.url:
            with open(f.path, "rb") as fh:
                total += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 23), b""))
        else:
            return None
    return total


def job_detail(files: list[InputFile], cfg: RunConfig) -> dict[str, Any]:
    """What identifies a job for resume: its inputs (name, size, version) and output options."""
    return {"inputs": [f.fingerprint() for f in files], "options": cfg.output_options()}


def run(cfg: RunConfig) -> Outcome:
    started = time.monotonic()
    files = list_inputs(list(cfg.inputs), cfg.storage_options)
    model_name = cfg.served_model_name[0] if cfg.served_model_name else canonical_name(cfg.model)
    price = find_price(model_name, provider=cfg.provider, price_input=cfg.price_input,
                       price_output=cfg.price_output)
    out = OutputDir(cfg.output, cfg.storage_options, cfg.format)
    detail = job_detail(files, cfg)
    manifest = out.read_json("_manifest.json") or {}
    if out.complete() and manifest.get("fingerprint") == fingerprint(detail):
        report = out.read_json("_report.json") or {}
        return Outcome(report, EXIT_OK, f"{out.url} is already complete; nothing to do")
    committed = out.open(detail, cfg.overwrite)
    ctx = Context(model_names=cfg.model_names() | {model_name}, max_n=cfg.max_n)
    progress = Progress(count_requests(files, cfg), quiet=cfg.quiet or cfg.dry_run)
    progress.done = committed.count
    if progress.bar is not None:
        progress.bar.update(committed.count)
    writer = PartWriter(out, cfg.checkpoint_every, cfg.checkpoint_seconds,
                        on_commit=lambda name, n: log.info("committed %s (%d rows)", name, n))
    counts = {"resumed": 0, "to_engine": 0, "rows": 0, "generated": 0}

    def pending() -> Iterator[Request]:
        for item in validate_rows(read_all(files, cfg.storage_options, max_line_bytes=cfg.max_line_bytes), ctx):
            if (out.file_index[item.source_file], item.line) in committed:
                counts["resumed"] += 1
                continue
            if isinstance(item, RowError):
                if not cfg.dry_run:
                    writer.add(error_row(item, model_name))
                    counts["rows"] += 1
                progress.update(1)
                continue
            counts["to_engine"] += 1
            yield item

    if cfg.dry_run:
        for _ in pending():
            pass
        msg = (f"Would process {counts['to_engine']} requests on {model_name}"
               f" ({progress.done - committed.count} invalid rows would get error rows,"
               f" {counts['resumed']} already done) into {out.url}")
        return Outcome({}, EXIT_OK, msg)

    def on_result(req: Request, res) -> None:
        writer.add(result_row(req, res, model_name, price))
        counts["rows"] += 1
        counts["generated"] += res.completion_tokens or 0
        progress.update(1, res.completion_tokens or 0)

    spec = EngineSpec(
        kind=cfg.engine, model=resolve_model(cfg.model) if cfg.engine == "vllm" else cfg.model,
        engine_args=cfg.engine_args(), seed_policy=cfg.seed_on_cpu,
        tool_parser=cfg.tool_call_parser, options=cfg.engine_options,
        # keep every engine's batch full between refills (vLLM runs up to 1024 sequences on big GPUs)
        max_in_flight=cfg.max_in_flight or max(2048, 2 * (cfg.max_num_seqs or 0)),
    )
    pool = _make_pool(cfg, spec)
    message, code = "", EXIT_OK
    dispatcher = Dispatcher(pool, window=spec.max_in_flight, on_result=on_result,
                            on_tick=writer.tick, max_restarts=cfg.max_engine_restarts)
    rerun = "committed output is kept; rerun the same command to finish"
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        try:
            dispatcher.run(pending())
            writer.flush()
        except (Interrupted, KeyboardInterrupt):
            writer.flush()
            message, code = f"interrupted: finished rows were committed; {rerun}", EXIT_INCOMPLETE
        except TooManyRestarts as e:
            writer.flush()
            message, code = str(e), EXIT_INCOMPLETE
        except EngineStartError as e:
            writer.flush()
            message, code = f"{e}\n{rerun} once the engine starts", EXIT_ENGINE_START
        finally:
            signal.signal(signal.SIGTERM, previous)
            progress.close()
        wall = time.monotonic() - started
        report = {
            **total_stats(out.manifest["parts"]),
            "resumed": counts["resumed"],
            "wall_seconds": round(wall, 3),
            "requests_per_second": round(counts["rows"] / wall, 3),
            "generated_tokens_per_second": round(counts["generated"] / wall, 3),
            "model": model_name,
            "price": None if price is None else f"${price.input}/M input, ${price.output}/M output ({price.source})",
            "output": out.url,
            "parts": len(out.manifest["parts"]),
            "engines": pool.size,
            "engine": dispatcher.engine_info,
            "engine_restarts": dispatcher.restarts,
            "pipeline_version": __version__,
        }
        if code == EXIT_OK and not out.finish(report):
            message = f"another run completed {out.url} first; this run's parts are kept but not marked"
            code = EXIT_INCOMPLETE
    except StorageError as e:
        report = {}
        message, code = f"{e}\n{rerun} once storage works again", EXIT_INCOMPLETE
    finally:
        pool.close()  # after the marker: every row is committed, engine shutdown need not delay it
    return Outcome(report, code, message)


def _raise_interrupted(signum, frame):
    raise Interrupted()


def _make_pool(cfg: RunConfig, spec: EngineSpec):
    if cfg.executor == "ray":
        from .ray_pool import RayPool

        return RayPool(spec, cfg)
    envs = engine_envs(cfg, gpus=0 if cfg.engine == "fake" else None)
    return LocalPool(spec, envs)


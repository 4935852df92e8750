"""`pipeline estimate`: what a job will cost, before it spends GPU time.

Prompt tokens are counted exactly as the engine will count them (models/render.py, models/tokens.py: the model's
tokenizer and chat template; no engine, no weights). Completion tokens get an upper bound per
request (n × max_tokens, never more than the context left after the prompt, which is the bound
where max_tokens is absent) and an expected figure: the bound × a completion ratio, given with
--completion-ratio or calibrated from a previous run of the job. Dollars come at the hosted
list price (prices.yaml) and on our own GPUs: GPU-hours at a throughput per GPU × --gpu-hour-usd.

GPU-hours count the prompt tokens a run computes, not those billed: requests are taken in the
order a run of the same job takes (--order, intake/order.py), and the whole KV cache blocks each prompt shares
with the one before it are served by vLLM's prefix cache. So --rows-file lists rows in that order.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import click

from pipeline.commands.outlook import Outlook, outlook_text
from pipeline.endpoints import ENDPOINTS
from pipeline.exits import UserError
from pipeline.intake.requests import Context
from pipeline.intake.stream import trial_keys
from pipeline.job import Job
from pipeline.models.prefix import shared_blocks
from pipeline.models.prices import Price, hosted_price
from pipeline.models.reasoning import thinking_upper
from pipeline.models.tokens import PromptCounter, cpu_count
from pipeline.output.folder import Output
from pipeline.output.humane import figure, trial_text, usd
from pipeline.output.rows import error_column
from pipeline.records import FailedRequest, Request
from pipeline.storage import Location
from pipeline.verdicts.preflight import failed_text, make_preflight, screened
from pipeline.verdicts.repairs import budget_text, policy_of, repair_budget

DEFAULT_COMPLETION_RATIO = 0.5


def completion_upper(request: Request, prompt_tokens: int, max_model_len: int) -> int:
    """The most completion tokens the engine can produce for a request: n choices of at most
    max_tokens each, and never past the context (vLLM stops a sequence at max_model_len)."""
    endpoint = ENDPOINTS[request.endpoint]
    if not endpoint.completes:  # vectors and scores, no completion
        return 0
    parts = endpoint.parts(request) if endpoint.parts is not None else 1  # a speech request's clips
    room = max_model_len - -(-prompt_tokens // parts)
    return parts * request.n * (min(request.max_tokens, room) if request.max_tokens else room)


@dataclass
class Tally:
    """Counts for one input file or for the whole job."""

    requests: int = 0
    invalid: int = 0
    prompt_tokens: int = 0  # of valid requests: what would be billed
    prompt_tokens_computed: int = 0  # ...less what the prefix cache would serve, in the run's order
    completion_tokens_upper: int = 0
    reasoning_tokens_upper: int = 0  # of completion_tokens_upper, what thinking may take
    audio_seconds: float = 0.0  # of valid requests' audio (intake/audio.py measured it)
    audio_billed: int = 0  # ...each request's rounded up to a whole second, as it is billed
    errors: Counter = field(default_factory=Counter)

    def add(self, item: Request | FailedRequest, prompt_tokens: int | None, upper: int | None,
            computed: int | None = None, thinking: int = 0) -> None:
        self.requests += 1
        if isinstance(item, FailedRequest):
            self.invalid += 1
            self.errors[item.code] += 1
        else:
            self.prompt_tokens += prompt_tokens
            self.prompt_tokens_computed += prompt_tokens if computed is None else computed
            self.completion_tokens_upper += upper
            self.reasoning_tokens_upper += thinking
            self.audio_seconds += item.audio_seconds or 0.0
            self.audio_billed += math.ceil(item.audio_seconds or 0.0)


def computed_tokens(prompt_tokens: int, blocks: bytes, before: bytes, block_size: int) -> int:
    """The prompt tokens an engine computes for a request whose prompt's block digests are
    `blocks` right after one whose are `before` (--order prefix puts each request after the one
    it shares most with): the shared whole blocks come from the prefix cache, except that vLLM
    always computes the last token (so a fully cached prompt recomputes its last block)."""
    cached = min(shared_blocks(before, blocks) * block_size, (prompt_tokens - 1) // block_size * block_size)
    return prompt_tokens - max(0, cached)


@dataclass(frozen=True)
class Rates:
    """What turns token counts into expected tokens, dollars and GPU-hours, and where each came from."""

    completion_ratio: float
    ratio_source: str
    price: Price | None
    tokens_per_second: float | None  # per GPU, prompt + completion tokens
    throughput_source: str
    gpu_hour_usd: float
    # a reasoning model's: the expected share of the thinking's bound (the answer's: completion_ratio)
    reasoning_ratio: float | None = None

    def figures(self, t: Tally) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": t.requests, "valid": t.requests - t.invalid, "invalid": t.invalid,
            "errors_by_code": dict(sorted(t.errors.items())), "prompt_tokens": t.prompt_tokens,
            "prompt_tokens_computed": t.prompt_tokens_computed, "audio_seconds": round(t.audio_seconds, 3),
        }
        think_ratio = self.completion_ratio if self.reasoning_ratio is None else self.reasoning_ratio
        thinking = {"expected": t.reasoning_tokens_upper * think_ratio, "upper": t.reasoning_tokens_upper}
        answer = t.completion_tokens_upper - t.reasoning_tokens_upper
        bounds = {"expected": thinking["expected"] + answer * self.completion_ratio, "upper": t.completion_tokens_upper}
        for bound, completion in bounds.items():
            out[f"completion_tokens_{bound}"] = round(completion)
            out[f"reasoning_tokens_{bound}"] = round(thinking[bound])
        for bound, completion in bounds.items():
            out[f"cost_usd_{bound}"] = (self.price.cost(t.prompt_tokens, completion, thinking[bound], t.audio_billed)
                                        if self.price else None)
        for bound, completion in bounds.items():
            # the GPU computes the prompt tokens the prefix cache does not serve
            hours = ((t.prompt_tokens_computed + completion) / self.tokens_per_second / 3600
                     if self.tokens_per_second else None)
            out[f"gpu_hours_{bound}"] = hours
            out[f"compute_cost_usd_{bound}"] = None if hours is None else hours * self.gpu_hour_usd
        return out


def rates_for(*, upper: int, report: dict[str, Any] | None, calibrate_from: str | None,
              completion_ratio: float | None, tokens_per_second: float | None,
              price: Price | None, gpu_hour_usd: float, thinking_upper: int = 0) -> Rates:
    """The completion ratio and throughput: given on the command line, else calibrated from a
    run's report, else the default ratio and no throughput.

    Calibrated ratio = the run's completion tokens / the upper bounds of the same inputs' valid
    requests, counted now; for a reasoning model's run (its report counts reasoning tokens),
    thinking and answer apart: thinking ratio = its reasoning tokens / the bound's thinking part
    (`thinking_upper`), answer ratio = its other completion tokens / the rest of the bound.
    Calibrated throughput per GPU = the run's prompt + completion tokens /
    its wall time / its engines; that wall time includes engine start, so a short run understates
    what a long job will reach.
    """
    ratio, ratio_source = DEFAULT_COMPLETION_RATIO, "default; pass --completion-ratio or --calibrate-from DIR"
    tps, tps_source = None, "none; pass --tokens-per-second or --calibrate-from DIR"
    thinking_ratio = None
    if report is not None:
        if upper and report.get("completion_tokens") is not None:
            ratio, ratio_source = report["completion_tokens"] / upper, f"calibrated from {calibrate_from}"
            thought = report.get("reasoning_tokens") or 0
            if thinking_upper and upper > thinking_upper:
                thinking_ratio = thought / thinking_upper
                ratio = (report["completion_tokens"] - thought) / (upper - thinking_upper)
                ratio_source += ", thinking and answer apart"
        if report.get("resumed"):
            tps_source = f"none: the run in {calibrate_from} was resumed, so its wall time covers part of its tokens"
        elif report.get("wall_seconds"):
            tokens = report.get("prompt_tokens", 0) + report.get("completion_tokens", 0)
            tps = tokens / report["wall_seconds"] / (report.get("engines") or 1)
            tps_source = f"calibrated from {calibrate_from}, whose wall time includes engine start"
    if completion_ratio is not None:
        ratio, ratio_source, thinking_ratio = completion_ratio, "--completion-ratio", None
    if tokens_per_second is not None:
        tps, tps_source = tokens_per_second, "--tokens-per-second"
    return Rates(ratio, ratio_source, price, tps, tps_source, gpu_hour_usd, thinking_ratio)


def read_report(directory: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """The _report.json of a finished run's output directory."""
    report = Output(Location.of(directory, storage_options)).read_report()
    if report:
        return report
    raise UserError(f"--calibrate-from {directory}: no _report.json there. "
                     "Hint: pass the output directory of a finished `pipeline run` of this job")


def estimate(job: Job) -> dict[str, Any]:
    """Count, estimate, print the table (or one JSON object) and write --rows-file; returns the
    figures. Requests are taken in the order a run of the same job takes (`Job.ordered`)."""
    cfg, started = job.cfg, time.monotonic()
    report = read_report(cfg.calibrate_from, cfg.storage_options) if cfg.calibrate_from else None
    if report and report.get("model") not in (None, job.model_name):
        click.echo(f"warning: {cfg.calibrate_from} is a run of {report['model']}, not {job.model_name}", err=True)
    counter = PromptCounter(cfg.model, max_model_len=cfg.max_model_len, tokenizer=cfg.tokenizer,
                            trust_remote_code=cfg.trust_remote_code)
    workers, block_size = cfg.workers or cpu_count(), job.kv_block_tokens()
    tallies, total, routes = [Tally() for _ in job.files], Tally(), {}
    pre = make_preflight(cfg)  # schemas that fail preflight are counted as invalid rows
    ordered = job.ordered(screened(job.rows(), pre))
    # a calibrating trial run (--limit) took only some rows: its ratio is against their bound
    calibration = trial_keys((report or {}).get("trial"), job.files, job.scans, max_line_bytes=cfg.max_line_bytes)
    calibration_upper = calibration_thinking = 0
    thinks, outlook = job.reasoning_parser is not None, Outlook(job)
    with RequestRows(cfg.rows_file, cfg.storage_options) if cfg.rows_file else contextlib.nullcontext() as out:
        before = b""
        for item, prompt_tokens, blocks in counter.check_all(ordered, workers=workers, block_size=block_size):
            upper, computed, thinking = None, None, 0
            if isinstance(item, Request):
                upper = completion_upper(item, prompt_tokens, counter.max_model_len)
                converses = thinks and ENDPOINTS[item.endpoint].converses
                thinking = thinking_upper(item.body, item.n, upper) if converses else 0
                if calibration is not None and (item.file, item.line) in calibration:
                    calibration_upper += upper
                    calibration_thinking += thinking
                computed, before = computed_tokens(prompt_tokens, blocks, before, block_size), blocks
                outlook.add(item, upper, thinking, blocks)
                routes.setdefault((item.requested_model, item.adapter), Tally()).add(item, prompt_tokens, upper,
                                                                                     computed, thinking)
            for tally in (tallies[item.file], total):
                tally.add(item, prompt_tokens, upper, computed, thinking)
            if out is not None:
                out.add(item, prompt_tokens, upper, thinking)
        if calibration is None:
            calibration_upper, calibration_thinking = total.completion_tokens_upper, total.reasoning_tokens_upper
        rates = outlook.refine(_rates(job, report, calibration_upper, calibration_thinking))
        if out is not None:
            out.finish(rates)
    seconds = time.monotonic() - started
    result = {
        "model": job.model_name, "max_model_len": counter.max_model_len, **rates.figures(total),
        "completion_ratio": rates.completion_ratio, "completion_ratio_source": rates.ratio_source,
        "reasoning_parser": job.reasoning_parser, "reasoning_ratio": rates.reasoning_ratio,
        "price": _price(job.price),
        "tokens_per_second": rates.tokens_per_second, "throughput_source": rates.throughput_source,
        "gpu_hour_usd": cfg.gpu_hour_usd, "block_size": block_size,
        **order_figures(ordered),
        "files": [{"file": f.display, **rates.figures(t)} for f, t in zip(job.files, tallies, strict=True)],
        "routes": route_figures(routes, rates, job.model_name, job.ctx),
        "rows_file": cfg.rows_file, "trial": job.trial(), "seconds": round(seconds, 3),
        **_verdict_figures(job, pre, total),
    }
    result.update(outlook.figures(result, rates))
    click.echo(json.dumps(result, indent=2) if cfg.as_json else "\n".join([table(result), *outlook_text(result)]))
    click.echo(f"counted {total.requests:,} requests in {seconds:.1f} s ({total.requests / max(seconds, 1e-9):,.0f}/s, "
               f"{workers} tokenizer process{'es' if workers > 1 else ''})", err=True)
    return result


def _rates(job: Job, report: dict[str, Any] | None, upper: int, thinking_upper: int) -> Rates:
    """`rates_for` with the job's options and price."""
    cfg = job.cfg
    return rates_for(upper=upper, report=report, calibrate_from=cfg.calibrate_from,
                     completion_ratio=cfg.completion_ratio, tokens_per_second=cfg.tokens_per_second,
                     price=job.price, gpu_hour_usd=cfg.gpu_hour_usd, thinking_upper=thinking_upper)


def _verdict_figures(job: Job, pre, total: Tally) -> dict[str, Any]:
    """The schemas that failed preflight (its compiler process closed), and --repair's worst case."""
    if pre is not None:
        pre.close()
    return {"preflight": pre.describe() if pre else None,
            "repair_budget": repair_budget(policy_of(job.cfg), total.requests - total.invalid, total.prompt_tokens,
                                           total.completion_tokens_upper, job.price)}


def order_figures(ordered: Any) -> dict[str, Any]:
    """The order decision, as the run's report gives it."""
    return ordered.describe() if hasattr(ordered, "describe") else {"order": "input"}


def route_figures(routes: dict[tuple[str | None, str | None], Tally], rates: Rates, model_name: str,
                  ctx: Context) -> list[dict[str, Any]]:
    """Per route (the model the requests named → what runs them: the model or a --lora adapter),
    the figures at the price of what they run on (an adapter at its base model's price: it adds
    no tokens), and, where the price table knows the requested model, at its price there."""
    out = []
    for (requested, adapter), t in sorted(routes.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or "")):
        figures = rates.figures(t)
        hosted = None
        if requested is not None and requested not in ctx.model_names and requested not in ctx.adapters:
            price = hosted_price(requested)
            if price is not None:
                there = replace(rates, price=price).figures(t)
                hosted = {"price": _price(price), "cost_usd_expected": there["cost_usd_expected"],
                          "cost_usd_upper": there["cost_usd_upper"]}
        out.append({"requested_model": requested, "served_model": adapter or model_name,
                    "adapter": adapter is not None, **figures, "price": _price(rates.price), "hosted": hosted})
    return out


def _price(price: Price | None) -> dict[str, Any] | None:
    if price is None:
        return None
    thinking = {"reasoning": price.reasoning} if price.reasoning is not None else {}
    return {"input": price.input, "output": price.output, **thinking, "source": price.source}


# ---- the terminal table ------------------------------------------------------------------------
def table(r: dict[str, Any]) -> str:
    """Per file and total: requests, invalid, prompt tokens, completion tokens, list-price
    dollars and GPU-hours (expected / upper), then where each rate came from."""
    head = ("file", "requests", "invalid", "prompt tokens", "completion (exp / max)",
            "list price (exp / max)", "GPU-hours (exp / max)")
    lines = [_cells(_short(f["file"]), f) for f in r["files"]]
    if len(r["files"]) > 1:
        lines.append(_cells("total", r))
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
           for row in [head, *lines]]
    errors = ", ".join(f"{code} ×{n}" for code, n in r["errors_by_code"].items())
    out += [
        "",
        f"{r['model']}, context {r['max_model_len']:,} tokens: {r['requests']:,} requests, {r['invalid']:,} invalid"
        + (f" ({errors})" if errors else ""),
        f"completion tokens expected: {r['completion_ratio']:.3g} × the upper bound ({r['completion_ratio_source']})",
        *_thinking_lines(r),
        f"prompt tokens a run computes: {r['prompt_tokens_computed']:,} of {r['prompt_tokens']:,} "
        f"({_share(r['prompt_tokens_computed'], r['prompt_tokens'])}; the rest is shared prefixes served from the "
        f"prefix cache in --order prefix, {r['block_size']}-token blocks); GPU-hours count these",
    ]
    price = r["price"]
    if price is None:
        out.append(f"hosted: no list price for {r['model']}; pass --price-input and --price-output")
    else:
        out.append(f"hosted, at ${price['input']:g}/M input and ${price['output']:g}/M output ({price['source']}): "
                   f"{usd(r['cost_usd_expected'])} expected, up to {usd(r['cost_usd_upper'])}")
    if r["tokens_per_second"] is None:
        out.append(f"own GPUs: no throughput ({r['throughput_source']})")
    else:
        out.append(f"own GPUs, at {r['tokens_per_second']:,.0f} tokens/s per GPU ({r['throughput_source']}) and "
                   f"${r['gpu_hour_usd']:g}/GPU-hour: {figure(r['gpu_hours_expected'])} GPU-hours, "
                   f"{usd(r['compute_cost_usd_expected'])} expected; up to {figure(r['gpu_hours_upper'])}, "
                   f"{usd(r['compute_cost_usd_upper'])}")
    if r["trial"]:
        out.append(f"{trial_text(r['trial'])}: the figures are for these rows only")
    out += failed_text(r.get("preflight"))
    if r.get("repair_budget"):
        out.append(budget_text(r["repair_budget"]))
    return "\n".join(out + _route_lines(r["routes"]))


def _thinking_lines(r: dict[str, Any]) -> list[str]:
    """Which part of the completion tokens is thinking, for a reasoning model."""
    if not r.get("reasoning_parser"):
        return []
    ratio = r["completion_ratio"] if r["reasoning_ratio"] is None else r["reasoning_ratio"]
    return [f"thinking ({r['reasoning_parser']} reasoning parser): {r['reasoning_tokens_expected']:,} expected "
            f"({ratio:.3g} × its bound), up to {r['reasoning_tokens_upper']:,} of the completion tokens (each "
            "request's thinking_token_budget, else all of max_tokens); the answer takes the rest"]


def _route_lines(routes: list[dict[str, Any]]) -> list[str]:
    """Per route: its valid requests and tokens, their cost at the price of what runs them, and
    at the requested model's own list price where the table knows it. Nothing for a job whose
    requests all run on the model under its own name."""
    if all(g["requested_model"] is None and not g["adapter"] for g in routes):
        return []
    head = ("requested → served", "requests", "prompt tokens", "completion (exp / max)",
            "list price (exp / max)", "at the requested model's price (exp / max)")
    lines = []
    for g in routes:
        hosted = g["hosted"]
        lines.append((
            f"{g['requested_model'] or '(none)'} → {g['served_model']}" + (" (LoRA)" if g["adapter"] else ""),
            f"{g['valid']:,}", f"{g['prompt_tokens']:,}",
            f"{g['completion_tokens_expected']:,} / {g['completion_tokens_upper']:,}",
            "-" if g["cost_usd_upper"] is None else f"{usd(g['cost_usd_expected'])} / {usd(g['cost_usd_upper'])}",
            "-" if hosted is None else f"{usd(hosted['cost_usd_expected'])} / {usd(hosted['cost_usd_upper'])} "
            f"({hosted['price']['source']})",
        ))
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    return ["", "per route:"] + [
        "  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w)
                  for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in [head, *lines]]


def _cells(name: str, f: dict[str, Any]) -> tuple[str, ...]:
    return (
        name, f"{f['requests']:,}", f"{f['invalid']:,}", f"{f['prompt_tokens']:,}",
        f"{f['completion_tokens_expected']:,} / {f['completion_tokens_upper']:,}",
        "-" if f["cost_usd_upper"] is None else f"{usd(f['cost_usd_expected'])} / {usd(f['cost_usd_upper'])}",
        "-" if f["gpu_hours_upper"] is None else f"{figure(f['gpu_hours_expected'])} / {figure(f['gpu_hours_upper'])}",
    )


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _short(url: str, width: int = 48) -> str:
    return url if len(url) <= width else "…" + url[-(width - 1):]


# ---- --output: one row per request -------------------------------------------------------------
def row_schema(final: bool = True):
    """The --output file's schema (pipeline.schema.ESTIMATE_SCHEMA); without the columns that
    need the completion ratio while rows are still streaming (`final=False`)."""
    import pyarrow as pa

    from pipeline.schema import ESTIMATE_SCHEMA

    late = {"completion_tokens_expected", "cost_usd_expected", "cost_usd_upper"}
    if final:
        return ESTIMATE_SCHEMA
    # while streaming, each request's audio seconds too: its cost needs them (audio-minute prices)
    return pa.schema([*(f for f in ESTIMATE_SCHEMA if f.name not in late), pa.field("audio_seconds", pa.float64())])


class RequestRows:
    """One Parquet row per request (invalid ones with `error` set). Rows stream to a local
    temporary file; `finish` adds the columns that need the completion ratio (known only at the
    end when it is calibrated) and writes the file to its destination."""

    def __init__(self, url: str, storage_options: dict[str, Any], batch_rows: int = 65536):
        import pyarrow.parquet as pq

        self.url, self.storage_options, self.batch_rows = url, storage_options, batch_rows
        self.first = row_schema(final=False)
        fd, self.tmp = tempfile.mkstemp(suffix=".parquet", prefix="estimate-")
        os.close(fd)
        self.writer = pq.ParquetWriter(self.tmp, self.first)
        self.columns: dict[str, list] = {name: [] for name in self.first.names}

    def add(self, item: Request | FailedRequest, prompt_tokens: int | None, upper: int | None,
            thinking: int = 0) -> None:
        c = self.columns
        c["custom_id"].append(item.custom_id)
        c["source_file"].append(item.source_file)
        c["source_line"].append(item.line)
        c["prompt_tokens"].append(prompt_tokens)
        c["completion_tokens_upper"].append(upper)
        c["reasoning_tokens_upper"].append(None if upper is None else thinking)
        c["audio_seconds"].append(None if upper is None else getattr(item, "audio_seconds", None))
        c["error"].append(error_column(item) if isinstance(item, FailedRequest) else None)
        if len(c["custom_id"]) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.columns["custom_id"]:
            self.writer.write_table(pa.table(self.columns, schema=self.first))
            self.columns = {name: [] for name in self.first.names}

    def finish(self, rates: Rates) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        self._flush()
        self.writer.close()
        price, schema = rates.price, row_schema()
        target = Location.of(self.url, self.storage_options)
        if target.local:
            os.makedirs(os.path.dirname(target.path), exist_ok=True)
        with target.open("wb") as f, pq.ParquetWriter(f, schema) as writer:
            for batch in pq.ParquetFile(self.tmp).iter_batches(self.batch_rows):
                columns = dict(zip(batch.schema.names, batch.columns, strict=True))
                prompt = pc.cast(columns["prompt_tokens"], pa.float64())
                upper = pc.cast(columns["completion_tokens_upper"], pa.float64())
                thinking = pc.cast(columns["reasoning_tokens_upper"], pa.float64())
                audio = pc.ceil(pc.fill_null(columns["audio_seconds"], 0.0))
                think_ratio = rates.completion_ratio if rates.reasoning_ratio is None else rates.reasoning_ratio
                thought = pc.multiply(thinking, think_ratio)
                columns["completion_tokens_expected"] = expected = pc.add(
                    thought, pc.multiply(pc.subtract(upper, thinking), rates.completion_ratio))
                for bound, tokens, thinks in (("expected", expected, thought), ("upper", upper, thinking)):
                    columns[f"cost_usd_{bound}"] = pa.nulls(len(batch), pa.float64()) if price is None else _cost(
                        price, prompt, tokens, thinks, audio)
                writer.write_batch(pa.record_batch([columns[name] for name in schema.names], schema=schema))

    def __enter__(self) -> RequestRows:
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.tmp)


def _cost(price: Price, prompt, completion, thinking, audio):
    """Price.cost over Arrow columns: thinking at the reasoning price (else the output price), and
    the audio's whole seconds (`audio`) at the audio-minute price."""
    import pyarrow.compute as pc

    per_thought = price.output if price.reasoning is None else price.reasoning
    answer = pc.subtract(completion, thinking)
    tokens = pc.divide(pc.add(pc.add(pc.multiply(prompt, price.input), pc.multiply(answer, price.output)),
                              pc.multiply(thinking, per_thought)), 1e6)
    return pc.add(tokens, pc.multiply(audio, (price.audio_minute or 0.0) / 60))


__all__ = ["estimate", "completion_upper", "rates_for", "row_schema", "Rates", "Tally", "table"]

"""What a run learns for the next estimate, and what it tells while it runs.

A run measures its requests' completion lengths per group and its throughput (RunLengths);
when it finishes, they go to the calibration file (calibration.py) and its report compares them
with the estimate made for the same job (`estimate` section of `_report.json`). While it runs,
its ETA comes from the calibrated lengths and throughput (`eta_model`), not from a linear
extrapolation of its first minutes.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.commands import calibration
from pipeline.commands.calibration import Measured, group_key
from pipeline.commands.forecast import EtaModel


class RunLengths:
    """Completion lengths per group and the tokens of what this run answered, in constant memory
    per group; the throughput counts from the first answer (engine start left out)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.groups: dict[tuple[str, int | None], Measured] = {}
        self.first = self.last = None
        self.tokens = 0  # prompt + completion of the answers after the first

    def add(self, req, res) -> None:
        if res.error is not None:
            return
        self.groups.setdefault(group_key(req), Measured()).add(
            res.completion_tokens or 0, res.reasoning_tokens, res.prompt_tokens or 0)
        now = self.clock()
        if self.first is None:
            self.first = now
        else:
            self.tokens += (res.prompt_tokens or 0) + (res.completion_tokens or 0)
        self.last = now

    def tokens_per_second(self, gpus: int) -> float | None:
        span = (self.last or 0) - (self.first or 0)
        return self.tokens / span / max(gpus, 1) if span > 0 and self.tokens else None


def gpus_of(cfg, engines: int) -> int:
    return max(engines, 1) * (cfg.tensor_parallel_size or 1)


def eta_model(job, engines: int, lines: list[dict[str, Any]] | None = None) -> EtaModel | None:
    """The ETA of a run of this job on `engines` engines (see `calibrated_eta`)."""
    return calibrated_eta(job.model_name, job.cfg.engine, gpus_of(job.cfg, engines), lines)


def calibrated_eta(model: str | None, engine: str, gpus: int,
                   lines: list[dict[str, Any]] | None = None) -> EtaModel | None:
    """An ETA from the calibration file: the model's newest lengths (prompt + completion tokens
    per request, over its last 20 groups) at its engine kind's throughput per GPU (any GPU
    model: a run's is known only once an engine is up) × `gpus`. None: nothing calibrated."""
    lines = calibration.read() if lines is None else lines
    found = [x for x in lines if x.get("kind") == "lengths" and x.get("model") == model][-20:]
    speed, level = calibration.find_throughput(lines, model, engine, None)
    if model is None or not found or speed is None:
        return None
    per_request = sum(x["requests"] * (x["prompt_mean"] + x["completion"]["mean"]) for x in found)
    per_request /= sum(x["requests"] for x in found)
    return EtaModel(per_request, speed["tokens_per_second"] * max(gpus, 1),
                    f"calibrated: {model}'s lengths, throughput by {level}")


def status_eta(manifest: dict[str, Any], rows_left: int) -> tuple[float | None, str | None]:
    """`pipeline status`'s ETA for a job's rows left, on the engines its last attempt ran."""
    from pipeline.models.names import output_name

    options = (manifest.get("job") or {}).get("options") or {}
    attempts = manifest.get("attempts") or [{}]
    if not options.get("model"):
        return None, None
    model = output_name(options["model"], tuple(options.get("served_model_name") or ()))
    gpus = (attempts[-1].get("engines") or 1) * (options.get("tensor_parallel_size") or 1)
    eta = calibrated_eta(model, options.get("engine") or "vllm", gpus)
    return (None, None) if eta is None else (round(eta.seconds_left(rows_left), 1), eta.source)


def learn(p, report: dict[str, Any], lengths: RunLengths, dispatcher) -> None:
    """A finished run's calibration lines, appended; its report compares the estimate made for
    this job (if any) with what it produced."""
    from pipeline.output.folder import fingerprint

    lines = calibration.read()
    estimate = calibration.find_estimate(lines, fingerprint(p.detail))
    if estimate is not None:
        report["estimate"] = compare(estimate, report)
    model, cfg = p.job.model_name, p.job.cfg
    new = calibration.lengths_lines(model, lengths.groups) if model else []
    engines = dispatcher.pool.size if dispatcher else 0
    tps = lengths.tokens_per_second(gpus_of(cfg, engines)) if engines else None
    if tps:
        new.append({"kind": "throughput", "model": model, "engine": cfg.engine,
                    "gpu": (dispatcher.engine_info or {}).get("platform"), "tokens_per_second": round(tps, 3),
                    "engine_start_seconds": None, "source": "run"})
    calibration.append(new)


def compare(estimate: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """The estimate beside the run's real figures: each figure's expected, low and high, the
    actual, and whether it fell inside the 90% interval."""
    out: dict[str, Any] = {"made": estimate.get("at"), "source": estimate.get("source")}
    actual = {"completion_tokens": report.get("completion_tokens"), "cost_usd": report.get("estimated_cost"),
              "wall_seconds": report.get("wall_seconds")}
    for name in ("completion_tokens", "cost_usd"):
        low, high = estimate.get(f"{name}_low"), estimate.get(f"{name}_high")
        value = actual[name]
        out[name] = {"expected": estimate.get(f"{name}_expected"), "low": low, "high": high, "actual": value,
                     "inside": None if None in (low, high, value) else low <= value <= high}
    out["seconds_expected"] = estimate.get("seconds_expected")
    out["wall_seconds"] = actual["wall_seconds"]
    return out


"""The estimate's measured side: completion lengths from a sample run or the calibration file,
extrapolated with 90% intervals (forecast.py), and a plan for --deadline / --budget.

`estimate` hands every valid request to `Outlook.add` while it counts; `Outlook.refine` then
replaces the default completion ratio and the missing throughput with measured ones (running the
sample first with --sample-run) unless the command line or --calibrate-from gave them, and
`figures` adds the `_low` / `_high` figures, where they came from, and the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pipeline.commands import calibration
from pipeline.commands.calibration import Moments, group_key
from pipeline.commands.forecast import (
    Group,
    Interval,
    Lengths,
    extrapolate,
    parse_deadline,
    plan,
    utc_now,
)
from pipeline.commands.sample import SampleRun, Stratifier, run_sample
from pipeline.exits import UserError
from pipeline.output.humane import usd

UNIFORM = Lengths(1, 0.5, 1 / 12)  # completion / bound of a group nothing measured: anywhere in [0, 1]


@dataclass
class Bounds:
    requests: int = 0
    upper: int = 0
    thinking: int = 0


class Outlook:
    def __init__(self, job, now=utc_now):
        self.job, self.cfg, self.now = job, job.cfg, now
        self.groups: dict[tuple[str, int | None], Bounds] = {}
        self.sampler = Stratifier(self.cfg.sample_run, self.cfg.sample_run_seed) if self.cfg.sample_run else None
        self.sample: SampleRun | None = None
        self.completion = self.thinking = None  # Intervals, once measured
        self.sources: dict[str, str] = {}  # group name → where its lengths came from
        self.deadline = None
        if self.cfg.deadline:
            try:
                self.deadline = parse_deadline(self.cfg.deadline, now())
            except ValueError as e:
                raise UserError(str(e)) from None

    def add(self, req, upper: int, thinking: int, blocks: bytes) -> None:
        """Count a valid request in its group (with --sample-run: its stratum, and maybe sample it)."""
        key = self.sampler.add(req, upper, thinking, blocks) if self.sampler is not None else group_key(req)
        b = self.groups.setdefault(key, Bounds())
        b.requests, b.upper, b.thinking = b.requests + 1, b.upper + upper, b.thinking + thinking

    def refine(self, rates):
        """The rates with the measured completion ratio and throughput in place of the default
        ones (never in place of --completion-ratio, --tokens-per-second or --calibrate-from)."""
        lines = calibration.read()
        if self.sampler is not None:
            self.sample = run_sample(self.job, self.sampler.chosen(), self.cfg.sample_run_seed)
            calibration.append(self._sample_lines())
            groups, ratio = self._from_sample()
            ratio_source = (f"sample run of {self.sample.rows} rows (seed {self.sample.seed}) into "
                            f"{self.sample.output}, extrapolated per group")
        else:
            groups, ratio = self._from_calibration(lines)
            ratio_source = "calibration file " + str(calibration.path())
        measured = self.sample is not None or rates.ratio_source.startswith("default")
        if groups is not None and measured and self.cfg.completion_ratio is None:
            rates = self._with_lengths(rates, groups, ratio, ratio_source)
        if self.cfg.tokens_per_second is None and (rates.tokens_per_second is None or self.sample is not None):
            rates = self._with_throughput(rates, lines)
        return rates

    def _from_sample(self):
        groups, thinking, ratio = [], [], Moments()
        for key, b in self.groups.items():
            m = self.sample.groups.get(key)
            if m is None:
                groups.append(Group(b.requests, b.upper))
                thinking.append(Group(b.requests, b.thinking))
                self.sources[_name(key)] = "the sample's pooled ratio (no row of this group in the sample)"
                continue
            groups.append(Group(b.requests, b.upper, m.completion.n, int(m.upper), m.completion.total,
                                m.completion.lengths()))
            thinking.append(Group(b.requests, b.thinking, m.completion.n, int(m.thinking_upper), m.reasoning.total,
                                  m.reasoning.lengths()))
            ratio = ratio.merge(m.ratio)
            self.sources[_name(key)] = f"the sample: {m.completion.n} rows"
        return (groups, thinking), ratio.lengths()

    def _from_calibration(self, lines):
        model = self.job.model_name
        groups, thinking, found = [], [], 0
        for key, b in self.groups.items():
            line, level = calibration.find_lengths(lines, model, key[0], key[1])
            c = calibration.dist(line) if line else None
            r = calibration.dist(line, "reasoning") if line else None
            found += line is not None
            groups.append(Group(b.requests, b.upper, lengths=c))
            thinking.append(Group(b.requests, b.thinking, lengths=r))
            self.sources[_name(key)] = (f"calibration ({level}, {line['requests']} requests, {line['at']})"
                                        if line else "none: anywhere up to the bound")
        return ((groups, thinking) if found else None), UNIFORM

    def _with_lengths(self, rates, groups, ratio, source):
        completion, thinking = groups
        self.completion = extrapolate(completion, ratio)
        upper = sum(g.upper for g in completion)
        think_upper = sum(g.upper for g in thinking)
        if self.job.reasoning_parser is not None and think_upper:
            self.thinking = extrapolate(thinking, ratio)
            answer_upper = upper - think_upper
            return replace(rates, reasoning_ratio=self.thinking.expected / think_upper, ratio_source=source,
                           completion_ratio=(self.completion.expected - self.thinking.expected) / answer_upper
                           if answer_upper else 0.0)
        self.thinking = Interval(0.0, 0.0, 0.0)
        return replace(rates, completion_ratio=self.completion.expected / upper if upper else 0.0,
                       ratio_source=source, reasoning_ratio=None)

    def _with_throughput(self, rates, lines):
        if self.sample is not None and self.sample.tokens_per_second:
            return replace(rates, tokens_per_second=self.sample.tokens_per_second,
                           throughput_source=f"measured on the sample run ({self.sample.gpu}; engine start left out)")
        line, level = calibration.find_throughput(lines, self.job.model_name, self.cfg.engine, None)
        if line is None:
            return rates
        return replace(rates, tokens_per_second=line["tokens_per_second"],
                       throughput_source=f"calibration file ({level}: {line.get('gpu')}, {line['at']})")

    def _sample_lines(self) -> list[dict[str, Any]]:
        s = self.sample
        lines = calibration.lengths_lines(self.job.model_name, s.groups) if self.job.model_name else []
        if s.tokens_per_second:
            lines.append({"kind": "throughput", "model": self.job.model_name, "engine": s.engine, "gpu": s.gpu,
                          "tokens_per_second": round(s.tokens_per_second, 3),
                          "engine_start_seconds": round(s.engine_start_seconds, 3), "source": "sample run"})
        return lines

    def figures(self, result: dict[str, Any], rates) -> dict[str, Any]:
        """The intervals, where they came from, and the plan; appends the estimate to the
        calibration file so that the run of the same job compares with it."""
        out: dict[str, Any] = {}
        if self.completion is not None and rates.completion_ratio is not None and self.cfg.completion_ratio is None:
            out.update(_bounds(result, self.completion, self.thinking, rates))
        out["sample_run"] = None if self.sample is None else {
            "rows": self.sample.rows, "seed": self.sample.seed, "output": self.sample.output,
            "engine_start_seconds": round(self.sample.engine_start_seconds, 3), "gpu": self.sample.gpu}
        out["lengths_source"] = dict(sorted(self.sources.items()))
        out["plan"] = self._plan(result, out) if (self.deadline or self.cfg.budget is not None) else None
        if "completion_tokens_low" in out:
            figures = {k: v for k, v in {**result, **out}.items() if k.startswith(FIGURES)}
            calibration.append([{"kind": "estimate", "fingerprint": self._fingerprint(), "source": rates.ratio_source,
                                 "seconds_expected": self._seconds(result), **figures}])
        return out

    def _seconds(self, result) -> float | None:
        """How long a run on the sample's engines takes, expected (None: no sample or no throughput)."""
        if self.sample is None or result.get("gpu_hours_expected") is None:
            return None
        return round(result["gpu_hours_expected"] * 3600 / self.sample.gpus + self.sample.engine_start_seconds, 3)

    def _fingerprint(self) -> str:
        from pipeline.output.folder import fingerprint

        return self.sample.fingerprint if self.sample else fingerprint(self.job.fingerprint())

    def _plan(self, result, out) -> dict[str, Any]:
        if result.get("gpu_hours_expected") is None:
            raise UserError("--deadline and --budget need a throughput: pass --sample-run N, --tokens-per-second, "
                            "or --calibrate-from DIR (or run the job once: runs calibrate)")
        hours = Interval(result["gpu_hours_expected"], out.get("gpu_hours_low", result["gpu_hours_expected"]),
                         out.get("gpu_hours_high", result["gpu_hours_upper"]))
        hosted = (Interval(result["cost_usd_expected"], out.get("cost_usd_low", result["cost_usd_expected"]),
                           out.get("cost_usd_high", result["cost_usd_upper"]))
                  if result.get("cost_usd_expected") is not None else None)
        start = self.sample.engine_start_seconds if self.sample else _start_seconds(self.job)
        return plan(gpu_hours=hours, gpus_per_engine=self.cfg.tensor_parallel_size or 1, start_seconds=start,
                    gpu_hour_usd=self.cfg.gpu_hour_usd, hosted=hosted, deadline=self.deadline,
                    budget=self.cfg.budget, now=self.now())


FIGURES = ("completion_tokens_", "reasoning_tokens_", "cost_usd_", "gpu_hours_", "compute_cost_usd_")


def _bounds(result, completion: Interval, thinking: Interval, rates) -> dict[str, Any]:
    """Low and high figures beside the expected ones: the thinking keeps its expected share of
    the completion at both ends; GPU-hours count the prompt tokens computed at the same rate."""
    out: dict[str, Any] = {}
    share = thinking.expected / completion.expected if completion.expected else 0.0
    for bound in ("low", "high"):
        tokens = getattr(completion, bound)
        out[f"completion_tokens_{bound}"] = round(tokens)
        out[f"reasoning_tokens_{bound}"] = round(tokens * share)
        out[f"cost_usd_{bound}"] = (rates.price.cost(result["prompt_tokens"], tokens, tokens * share)
                                    if rates.price else None)
        hours = ((result["prompt_tokens_computed"] + tokens) / rates.tokens_per_second / 3600
                 if rates.tokens_per_second else None)
        out[f"gpu_hours_{bound}"] = hours
        out[f"compute_cost_usd_{bound}"] = None if hours is None else hours * rates.gpu_hour_usd
    return out


def _name(key: tuple) -> str:
    """A group's name (a stratum's: with its prefix bucket)."""
    prefix = f", prefix {key[2]}" if len(key) > 2 else ""
    return f"{calibration.group_name(key[0])}, max_tokens {'none' if key[1] is None else key[1]}{prefix}"


def _start_seconds(job) -> float:
    """An engine's start time from the calibration file's newest sample run of this engine kind (0: none)."""
    lines = [x for x in calibration.read() if x.get("kind") == "throughput" and x.get("engine") == job.cfg.engine
             and x.get("engine_start_seconds") is not None]
    return lines[-1]["engine_start_seconds"] if lines else 0.0


def outlook_text(r: dict[str, Any]) -> list[str]:
    """The intervals and the plan, for the terminal table."""
    from pipeline.commands.forecast import plan_text

    lines = []
    if r.get("completion_tokens_low") is not None:
        lines.append("90% interval: completion tokens "
                     f"{r['completion_tokens_low']:,} to {r['completion_tokens_high']:,}"
                     + (f", list price {usd(r['cost_usd_low'])} to {usd(r['cost_usd_high'])}"
                        if r.get("cost_usd_low") is not None else "")
                     + (f", {r['gpu_hours_low']:.3g} to {r['gpu_hours_high']:.3g} GPU-hours"
                        if r.get("gpu_hours_low") is not None else ""))
    for group, source in (r.get("lengths_source") or {}).items():
        lines.append(f"  lengths of {group}: {source}")
    if r.get("plan"):
        lines += plan_text(r["plan"])
    return lines
